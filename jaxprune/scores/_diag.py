"""Diagonals of the Hessian, the Gauss-Newton matrix and the Fisher, from products only.

Stochastic estimates (Hutchinson) draw Rademacher probes cheaply: one ``uint32`` threefry draw
per entry seeds every probe, which then costs a few integer operations per entry (a threefry
draw per probe can cost as much as the Hessian-vector product itself on CPU). Probes and
examples are processed ``batch_size`` at a time (``lax.scan`` over chunks, a ``vmap`` inside a
chunk), which caps memory at ``batch_size`` products.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxprune.core import check_key as core_check_key, is_array
from jaxprune.scores import curvature as h

F32 = jnp.float32

METHODS = ("hutchinson", "ggn", "exact", "fisher", "empirical_fisher")
_ACCELERATOR_BATCH = 16


def hessian_diag(loss_fn, params, *args, key=None, probes: int = 16,
                 method: str = "hutchinson", batch_size: int | None = None):
  """Diagonal of the curvature of ``loss_fn`` at ``params``, one value per weight (float32).

  Methods:

  * ``"hutchinson"``: ``mean_k v_k ⊙ H v_k`` over ``probes`` Rademacher vectors ``v_k``
    (unbiased; exact for a diagonal Hessian with one probe; error falls like 1/√probes).
    Needs ``key``. Entries can be negative where the Hessian is indefinite.
  * ``"ggn"``: the same estimator on Gauss-Newton products (PSD in expectation). Needs ``key``
    and ``loss_fn`` a :class:`ModelLoss`.
  * ``"exact"``: the exact Hessian diagonal from one product per weight (basis vectors,
    ``batch_size`` at a time): for small models or checking estimates.
  * ``"fisher"``: the exact Fisher (= GGN) diagonal ``mean_n diag(J_nᵀ H_n J_n)`` from
    per-example Jacobian-vector products with a factor of each example's output Hessian ``H_n``
    (for softmax cross-entropy this is the Fisher expected over classes,
    ``mean_n Σ_c p_c (∇ log p_c)²``). Costs one gradient per example and output dimension.
    Needs a :class:`ModelLoss`.
  * ``"empirical_fisher"``: ``mean_n g_n²`` with ``g_n`` the gradient of the loss on example
    ``n`` alone. Works for any ``loss_fn``.

  The per-example methods slice every array in ``args`` with a leading axis into examples and
  call the loss on batches of one: the loss must be a mean over examples.

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar`` (a :class:`ModelLoss` for "ggn"/"fisher").
    params: any pytree; only floating array leaves are differentiated.
    *args: extra arguments of ``loss_fn`` (e.g. ``inputs, targets``).
    key: ``jax.random`` key for the stochastic methods.
    probes: number of Rademacher probes (>= 1) for "hutchinson" and "ggn".
    method: one of the methods above.
    batch_size: products (probes, basis vectors or examples) computed at once (``vmap``);
      chunks run one after the other (``lax.scan``), so memory grows with ``batch_size``, not
      with ``probes``. Default: 1 on CPU (where XLA's batched products are slower than a loop),
      16 on GPU/TPU. Results do not depend on it (probe ``i`` is the same in any chunking).

  Returns:
    A float32 pytree like ``params`` (None at non-floating leaves).

  >>> import jax, jax.numpy as jnp
  >>> loss = lambda p: jnp.sum(jnp.array([1., 2., 3.]) * p["w"] ** 2)  # diag H = 2, 4, 6
  >>> p = {"w": jnp.ones(3)}
  >>> hessian_diag(loss, p, key=jax.random.key(0), probes=1)["w"].tolist()
  [2.0, 4.0, 6.0]
  """
  fn_name = "hessian_diag"
  if method not in METHODS:
    raise ValueError(f"{fn_name}: method must be one of {METHODS}; got {method!r}.")
  if batch_size is not None:
    batch_size = h.check_positive_int(batch_size, "batch_size", fn_name)
  s = h.split(params, fn_name)
  if method in ("fisher", "empirical_fisher"):
    examples(args, fn_name, method)  # a clear error before the loss sees mismatched arrays
  h.check_loss(loss_fn, s, args, fn_name)
  if method in ("hutchinson", "ggn"):
    probes = h.check_positive_int(probes, "probes", fn_name)
    check_key(key, f"{fn_name}(method={method!r})")
    if method == "ggn":
      model = h.require_model(loss_fn, method, fn_name)
      h.check_model(model, s, args, fn_name)
      matvec = h.ggn_operator(model, s, args, fn_name)
    else:
      matvec = h.hessian_operator(loss_fn, s, args)[1]
    total = probe_sum(matvec, rademacher(key, s.diff), probes,
                      min(probes, batch_size or default_batch()), s.diff)
    return s.tree([t / probes for t in total])
  if method == "exact":
    n = sum(int(np.prod(x.shape, dtype=np.int64)) for x in s.diff)
    matvec = h.hessian_operator(loss_fn, s, args)[1]
    total = probe_sum(matvec, basis(s.diff), n, min(n, batch_size or default_batch()), s.diff)
    return s.tree(total)
  batched, rebuild, n = examples(args, fn_name, method)
  size = min(n, batch_size or default_batch())
  if method == "fisher":
    model = h.require_model(loss_fn, method, fn_name)
    h.check_model(model, s, args, fn_name)
    one = lambda ex: _fisher_one(model, s, rebuild(ex))
  else:
    one = lambda ex: _squared_grad_one(loss_fn, s, rebuild(ex))
  chunk = lambda ex: [jnp.sum(x, 0) for x in jax.vmap(one)(ex)]
  total = chunked_sum(chunk, batched, n, size, [jnp.zeros(x.shape, F32) for x in s.diff])
  return s.tree([t / n for t in total])


def default_batch() -> int:
  """Products per chunk: 1 on CPU (a loop beats XLA's batched dots there), else 16."""
  return 1 if jax.default_backend() == "cpu" else _ACCELERATOR_BATCH


def check_key(key, where: str):
  """``core.check_key``, with the ``ValueError`` for a missing key that callers expect."""
  if key is None:
    raise ValueError(f"{where} draws random probes and needs key=, e.g. key=jax.random.key(0).")
  return core_check_key(key, where)


def rademacher(key, like):
  """``probe_fn(idx)``: Rademacher probes ``(len(idx), *shape)`` per leaf, at ~10 integer ops each.

  One ``uint32`` draw per entry (``base``, threefry, made once here, outside any probe loop)
  seeds all probes: probe ``i`` takes bit ``i % 32`` of ``mix(base ^ c(i // 32))`` with ``mix``
  a bijective integer finaliser. Entries are independent (their ``base`` words are), so
  ``E[v vᵀ] = I`` exactly and the Hutchinson estimate is unbiased; the 32 probes of a group
  are the independent bits of one uniform word.
  """
  bases = [jax.random.bits(jax.random.fold_in(key, i), tuple(x.shape), jnp.uint32)
           for i, x in enumerate(like)]

  def probe_fn(idx):
    idx = idx.astype(jnp.uint32)
    salt = _mix((idx // 32 + 1) * jnp.uint32(0x9E3779B9))
    out = []
    for base, x in zip(bases, like):
      expand = lambda a: a.reshape(a.shape + (1,) * x.ndim)
      words = _mix(base[None] ^ expand(salt))
      bits = (words >> expand(idx % 32)) & jnp.uint32(1)
      out.append(jnp.where(bits == 0, jnp.ones((), x.dtype), -jnp.ones((), x.dtype)))
    return out

  return probe_fn


def _mix(h):
  """A bijective avalanche mix of uint32 words (the MurmurHash3 finaliser)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def basis(like):
  """``probe_fn(idx)``: unit vectors ``e_idx`` over the concatenation of the leaves."""
  sizes = [int(np.prod(x.shape, dtype=np.int64)) for x in like]
  offsets = np.cumsum([0] + sizes[:-1])

  def probe_fn(idx):
    return [(idx[:, None] == (o + jnp.arange(n))[None, :]).reshape((-1,) + tuple(x.shape))
            .astype(x.dtype) for x, n, o in zip(like, sizes, offsets)]

  return probe_fn


def probe_sum(matvec, probe_fn, count: int, batch_size: int, like):
  """``Σ_k v_k ⊙ A v_k`` over ``count`` probes, ``batch_size`` products at a time (float32)."""
  def chunk(idx):
    vs = probe_fn(idx)
    avs = jax.vmap(matvec)(vs)
    return [jnp.sum(h.as_f32(v) * h.as_f32(av), 0) for v, av in zip(vs, avs)]

  zeros = [jnp.zeros(x.shape, F32) for x in like]
  return chunked_sum(chunk, jnp.arange(count, dtype=jnp.int32), count, batch_size, zeros)


def chunked_sum(fn, data, n: int, batch_size: int, zeros):
  """``Σ fn(chunk)`` over consecutive chunks of ``batch_size`` rows of ``data`` (any pytree)."""
  full, rest = divmod(n, batch_size)
  add = lambda a, b: [x + y for x, y in zip(a, b)]
  acc = zeros
  if full == 1:
    acc = add(acc, fn(jax.tree.map(lambda a: a[:batch_size], data)))
  elif full > 1:
    stacked = jax.tree.map(
        lambda a: a[:full * batch_size].reshape((full, batch_size) + a.shape[1:]), data)
    acc = jax.lax.scan(lambda c, x: (add(c, fn(x)), None), acc, stacked)[0]
  if rest:
    tail = jax.tree.map(lambda a: a[full * batch_size:], data)
    if full:
      # The tail chunk runs after the full ones, not beside them: XLA:CPU (jaxlib 0.10) can
      # deadlock running two independent vmapped chunks (e.g. batched eigh) concurrently.
      tail, acc = jax.lax.optimization_barrier((tail, acc))
    acc = add(acc, fn(tail))
  return acc


def examples(args, fn_name: str, method: str):
  """Splits ``args`` into per-example arrays (leading axis) and the rest (broadcast).

  Returns ``(batched, rebuild, n)``: the arrays with a leading example axis, a function
  mapping one example's arrays back to ``args`` with a batch axis of one, and ``n``.
  """
  leaves, treedef = jax.tree.flatten(args)
  index = [i for i, x in enumerate(leaves) if is_array(x) and x.ndim >= 1]
  if not index:
    raise ValueError(
        f"{fn_name}(method={method!r}) computes per-example gradients and needs a batch in "
        "args (arrays with a leading example axis); got no such array. Pass e.g. "
        "(inputs, targets).")
  sizes = {int(leaves[i].shape[0]) for i in index}
  if len(sizes) != 1:
    shapes = [tuple(leaves[i].shape) for i in index]
    raise ValueError(
        f"{fn_name}(method={method!r}): every array in args must share the leading example "
        f"axis; got shapes {shapes}. Pass per-example arrays of equal length (and close over "
        "the rest in loss_fn).")

  def rebuild(batched):
    out = list(leaves)
    for i, x in zip(index, batched):
      out[i] = x[None]
    return jax.tree.unflatten(treedef, out)

  return [leaves[i] for i in index], rebuild, sizes.pop()


def _squared_grad_one(loss_fn, s, args):
  g = jax.grad(lambda d: loss_fn(s.rebuild(d), *args))(s.diff)
  return [jnp.square(h.as_f32(x)) for x in g]


def _fisher_one(model, s, args):
  """``diag(Jᵀ H_out J)`` for one example: ``Σ_k (Jᵀ l_k)²`` with ``H_out = Σ_k l_k l_kᵀ``."""
  inputs, rest = args[0], args[1:]
  out, vjp_fn = jax.vjp(lambda d: model.apply_fn(s.rebuild(d), inputs), s.diff)
  flat, unravel = ravel_pytree(out)
  hess = jax.hessian(lambda z: model.output_loss(unravel(z), *rest))(flat)
  hess = h.as_f32(hess)
  evals, evecs = jnp.linalg.eigh(0.5 * (hess + hess.T))
  factors = evecs * jnp.sqrt(jnp.maximum(evals, 0.0))[None, :]  # columns l_k

  def column(acc, l):  # a loop, not a vmap: batched per-column VJPs are slow on CPU
    g = vjp_fn(unravel(l.astype(flat.dtype)))[0]
    return [a + jnp.square(h.as_f32(x)) for a, x in zip(acc, g)], None

  zeros = [jnp.zeros(x.shape, F32) for x in s.diff]
  return jax.lax.scan(column, zeros, factors.T)[0]
