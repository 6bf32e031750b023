"""Whole-model one-shot pruning: sequential, layer by layer, on calibration batches."""

from __future__ import annotations

import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import filters
from jaxprune.core import describe, flatten_with_paths, is_floating, leaves_like, listing
from jaxprune.oneshot import _checks, _layer, _owl, _trace

METHODS = ("sparsegpt", "wanda", "magnitude")


def prune(apply_fn, params, calibration, *, method: str = "sparsegpt", sparsity=0.5, n=None,
          m=None, where=None, owl=None, block: int = 128, damping: float = 0.01, bits=None,
          per: str = "output", keep_activations: bool = True, progress: bool = False):
  """Prunes a pretrained model in one shot, layer by layer, from calibration batches.

  ``apply_fn(params, *batch)`` is traced to a jaxpr. Its linear layers are the
  ``dot_general`` s with a selected params leaf as one operand (possibly cast or transposed;
  flax/equinox ``Dense``, attention projections, ``einsum`` s), found also inside
  ``jax.jit``, ``checkpoint`` and custom-derivative calls, and per slice of stacked kernels
  sliced by ``lax.scan`` (each slice is its own layer). They are pruned in forward order;
  each layer's input ``X`` is collected on all calibration batches run through the
  *already pruned* earlier layers, so errors of earlier layers are compensated later (layers
  reading the same input, e.g. query/key/value, are pruned together from it). Per layer, for
  its ``(in, out)`` view (contracted kernel axes first):

  * ``"sparsegpt"``: :func:`sparsegpt` with ``H = 2XᵀX/rows`` (``block``, ``damping``, ``bits``);
    unstructured counts exact per layer;
  * ``"wanda"``: :func:`wanda` with ``‖X‖`` per input; counts exact per output unit;
  * ``"magnitude"``: :func:`magnitude` (``per="output"`` or ``"layer"``); needs no data.

  Memory: one ``d_in × d_in`` Hessian at a time. With ``keep_activations=True`` (default)
  every batch's interpreter pauses at the current layer, holding that batch's live
  activations (so in total the activations of the calibration set at one layer, as in the
  SparseGPT reference); with False each layer re-runs every batch from the start (memory: one
  batch's activations, time: quadratic in depth).

  Args:
    apply_fn: ``apply_fn(params, *batch)``, e.g. ``lambda p, x: model.apply({"params": p}, x)``.
    params: any pytree.
    calibration: a non-empty sequence of batches; a tuple batch is passed as ``*batch``,
      anything else as one argument. All batches must give the same layers.
    method: ``"sparsegpt"``, ``"wanda"`` or ``"magnitude"``.
    sparsity: fraction of zeros in [0, 1], one float or a pytree of float|None per leaf (as
      from :mod:`jaxprune.allocate`); ignored with ``n``/``m``.
    n, m: N:M sparsity (keep ``n`` of every ``m`` inputs of each output unit).
    where: which leaves may be pruned (default ``ndim >= 2``); selected leaves that are not
      the kernel of a linear layer stay dense, with a warning naming them.
    owl: None, True, or :class:`OWL` options: outlier-weighted per-layer sparsities (OWL)
      around the one float ``sparsity``, from the dense model's Wanda scores.
    block, damping, bits: SparseGPT options (see :func:`sparsegpt`).
    per: magnitude's comparison group.
    keep_activations: see Memory above.
    progress: show a progress bar (tqdm if installed, else one line per layer).

  Returns:
    ``(params, masks)``: pruned params (same structure and dtypes) and masks (bool, True =
    kept, per pruned leaf; None elsewhere) for :func:`jaxprune.keep_sparse` or export.

  >>> import jax, jax.numpy as jnp, jaxprune
  >>> p = {"a": jax.random.normal(jax.random.key(0), (8, 8)),
  ...      "b": jax.random.normal(jax.random.key(1), (8, 4))}
  >>> f = lambda p, x: jnp.tanh(x @ p["a"]) @ p["b"]
  >>> data = [jax.random.normal(jax.random.key(2), (32, 8))]
  >>> new, masks = jaxprune.oneshot.prune(f, p, data, method="wanda", sparsity=0.5)
  >>> int(masks["a"].sum()), int(masks["b"].sum())
  (32, 16)
  """
  fn = "oneshot.prune"
  if method not in METHODS:
    raise ValueError(f"{fn}: method must be one of {METHODS}; got {method!r}.")
  if not callable(apply_fn):
    raise TypeError(f"{fn}: apply_fn must be callable as apply_fn(params, *batch); got "
                    f"{describe(apply_fn)}.")
  options = _owl.options(owl, fn)
  if n is not None or m is not None:
    _, n, m = _checks.pattern(None, n, m, fn=fn)
    if options is not None:
      raise ValueError(f"{fn}: OWL sets an unstructured sparsity per layer; it does not apply "
                       "to N:M patterns. Use owl=None with n=/m=.")
  block = _checks.block_size(block, fn)
  batches = _batches(calibration, fn)
  paths, leaves, treedef = flatten_with_paths(params)
  targets = _sparsities(params, sparsity, n, where, options, fn)
  index = [i for i, s in enumerate(targets) if s is not None and is_floating(leaves[i])]
  if not index:
    raise ValueError(f"{fn}: no leaf is selected for pruning (where= and sparsity= select "
                     "none among " + listing(paths) + ").")
  rest = [x for i, x in enumerate(leaves) if i not in index]
  store = _trace.Store([leaves[i] for i in index])
  plans = _Plans(apply_fn, treedef, index, rest, store, len(leaves), fn)
  sites = plans.sites(batches)
  layers = _layers(sites, [paths[i] for i in index], fn)
  _warn_unused(layers, [paths[i] for i in index], fn)
  names = [_name(paths[index[s.leaf]], s.index) for _, s in layers]
  level = [targets[index[s.leaf]] for _, s in layers]
  if options is not None:
    norms = _dense_norms(plans, batches, layers, store)
    level = _owl.allocate(options, [s for _, s in layers], names, norms,
                          [store.kernels[s.leaf] for _, s in layers], level)
  masks = [None] * len(index)
  runners = [None] * len(batches)
  bar = _progress(progress, len(layers))
  for group in _groups(layers):
    stats = None
    if method != "magnitude":
      stats = _collect(plans, batches, runners, group[0][0], method, keep_activations)
    for k, site in group:
      pos = next(i for i, (kk, _) in enumerate(layers) if kk == k)
      _prune_layer(store, masks, site, stats, method, level[pos], n, m, per, block, damping,
                   bits, names[pos])
      bar(names[pos], level[pos] if n is None else f"{n}:{m}")
  out, out_masks, it = list(leaves), [None] * len(leaves), iter(range(len(index)))
  for j in it:
    out[index[j]] = store.kernels[j]
    out_masks[index[j]] = masks[j]
  return treedef.unflatten(out), treedef.unflatten(out_masks)


def _batches(calibration, fn):
  if isinstance(calibration, (jax.Array, np.ndarray)):
    raise TypeError(f"{fn}: calibration must be a sequence of batches (e.g. a list of arrays), "
                    f"not one array {describe(calibration)}; wrap it as [batch] or split it.")
  try:
    batches = list(calibration)
  except TypeError:
    raise TypeError(f"{fn}: calibration must be a sequence of batches; got "
                    f"{describe(calibration)}.") from None
  if not batches:
    raise ValueError(f"{fn}: calibration is empty; give at least one batch.")
  return [b if isinstance(b, tuple) else (b,) for b in batches]


def _sparsities(params, sparsity, n, where, options, fn):
  """Per leaf: a static sparsity for the selected leaves, None elsewhere."""
  chosen = filters.select(params, where)
  if n is not None:
    return [1.0 if c else None for c in chosen]
  if isinstance(sparsity, (numbers.Real, np.ndarray, jax.Array)) and np.ndim(
      sparsity) == 0:  # pyright: ignore[reportArgumentType]
    s = _checks.pattern(sparsity, None, None, fn=fn)[0]
    return [s if c else None for c in chosen]
  if options is not None:
    raise TypeError(f"{fn}: OWL needs one float sparsity (the average); got a pytree.")
  per_leaf = leaves_like(params, sparsity, name="sparsity")
  paths, _, _ = flatten_with_paths(params)
  return [None if s is None or not c else _checks.pattern(s, None, None, path=p, fn=fn)[0]
          for p, s, c in zip(paths, per_leaf, chosen)]


class _Plans:
  """Jaxprs of ``apply_fn`` per batch signature and the sites found in them."""

  def __init__(self, apply_fn, treedef, index, rest, store, count, fn):
    self.apply_fn, self.treedef, self.index, self.rest = apply_fn, treedef, index, rest
    self.store, self.count, self.fn, self.cache = store, count, fn, {}

  def _rebuild(self, sel, rest):
    out, it_s, it_r, chosen = [], iter(sel), iter(rest), set(self.index)
    for i in range(self.count):
      out.append(next(it_s) if i in chosen else next(it_r))
    return self.treedef.unflatten(out)

  def closed(self, b, batch):
    flat, tree = jax.tree.flatten(batch)
    key = (tree, tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x)))) for x in flat))
    if key not in self.cache:
      try:
        closed = jax.make_jaxpr(lambda sel, rest, a: self.apply_fn(self._rebuild(sel, rest), *a))(
            self.store.kernels, self.rest, batch)
      except Exception as err:  # noqa: BLE001  (re-raised with the batch named)
        raise ValueError(
            f"{self.fn}: apply_fn(params, *batch) failed on calibration batch {b} (shapes "
            f"{[np.shape(x) for x in flat]}): {type(err).__name__}: {err}. Each batch must be "
            "what apply_fn takes after params (a tuple for several arguments).") from err
      sel = len(self.store.kernels)
      origin = [(j, (), tuple(range(np.ndim(k)))) for j, k in enumerate(self.store.kernels)]
      origin += [None] * (len(closed.jaxpr.invars) - sel)
      self.cache[key] = (closed, origin, None)
    return self.cache[key]

  def start(self, b, batch):
    closed, origin, _ = self.closed(b, batch)
    inputs = [None] * len(self.store.kernels) + jax.tree.leaves((self.rest, batch))
    return _Runner(_trace.run(closed, inputs, origin, self.store))

  def sites(self, batches):
    found = None
    for b, batch in enumerate(batches):
      closed, origin, sites = self.closed(b, batch)
      if sites is None:
        sites = []

        def walk(kernels, rest, args, closed=closed, origin=origin, sites=sites):
          gen = _trace.run(closed, [None] * len(kernels) + jax.tree.leaves((rest, args)),
                           origin, _trace.Store(kernels))
          for item in gen:
            sites.append(item[0][0])
          return 0

        jax.eval_shape(walk, self.store.kernels, self.rest, batch)
        self.cache[self._key(batch)] = (closed, origin, sites)
      if found is None:
        found = sites
      elif [s[:5] for s in sites] != [s[:5] for s in found]:
        raise ValueError(f"{self.fn}: calibration batch {b} runs different linear layers than "
                         "batch 0 (shapes differ in a way that changes the model); give batches "
                         "of one shape.")
    return found

  def _key(self, batch):
    flat, tree = jax.tree.flatten(batch)
    return (tree, tuple((tuple(np.shape(x)), str(getattr(x, "dtype", type(x)))) for x in flat))


class _Runner:
  """One batch's paused interpreter: ``upto(k)`` runs to the k-th site and returns its input."""

  def __init__(self, gen):
    self.gen, self.done = gen, 0

  def upto(self, k):
    item = None
    while self.done <= k:
      item = next(self.gen)
      self.done += 1
    if item is None:
      raise RuntimeError("oneshot.prune: internal error, site already passed.")
    return _trace.layer_input(item)


def _layers(sites, paths, fn):
  """First use of every kernel slice, as ``(site number, Site)`` in forward order."""
  if not sites:
    raise ValueError(f"{fn}: no linear layer found: no dot_general of apply_fn has a selected "
                     f"leaf as an operand (selected: {listing(paths)}). Convolutions, gathers "
                     "(embeddings) and kernels used inside while_loop/cond are not supported.")
  seen, layers = set(), []
  for k, s in enumerate(sites):
    if (s.leaf, s.index) not in seen:
      seen.add((s.leaf, s.index))
      layers.append((k, s))
  return layers


def _warn_unused(layers, paths, fn):
  used = {s.leaf for _, s in layers}
  unused = [paths[j] for j in range(len(paths)) if j not in used]
  if unused:
    warnings.warn(f"{fn}: {len(unused)} selected leaves are not the kernel of any linear layer "
                  f"found by tracing and stay dense: {listing(unused)}. Exclude them with "
                  "where= to silence this.", stacklevel=3)


def _name(path, index):
  return path + "".join(f"[{i}]" for i in index)


def _groups(layers):
  """Consecutive layers reading the same input."""
  groups = []
  for k, s in layers:
    if groups and s.x_key is not None and groups[-1][-1][1].x_key == s.x_key:
      groups[-1].append((k, s))
    else:
      groups.append([(k, s)])
  return groups


def _collect(plans, batches, runners, k, method, keep):
  """Sums ``XᵀX`` (sparsegpt) or ``x²`` per input (wanda) of site ``k`` over all batches."""
  total, rows = None, 0
  for b, batch in enumerate(batches):
    if runners[b] is None or not keep:
      runners[b] = plans.start(b, batch)
    x = runners[b].upto(k).astype(jnp.float32)
    part = x.T @ x if method == "sparsegpt" else jnp.sum(jnp.square(x), axis=0)
    total = part if total is None else total + part
    rows += x.shape[0]
    if not keep:
      runners[b] = None
  return total, rows


def _dense_norms(plans, batches, layers, store):
  """``sum x²`` per input of every layer on the dense model (one pass per batch)."""
  wanted = {k: i for i, (k, _) in enumerate(layers)}
  norms: list = [None] * len(layers)
  for b, batch in enumerate(batches):
    runner = plans.start(b, batch)
    for k, i in wanted.items():
      sq = jnp.sum(jnp.square(runner.upto(k).astype(jnp.float32)), axis=0)
      norms[i] = sq if norms[i] is None else norms[i] + sq
  return [jnp.sqrt(x) for x in norms]


def _prune_layer(store, masks, site, stats, method, s, n, m, per, block, damping, bits, name):
  full = store.kernels[site.leaf]
  kernel = full[site.index] if site.index else full
  w, perm = _trace.matrix_of(kernel, site.contract)
  _checks.groups(n, m, w.shape[0], "oneshot.prune", name, block if method == "sparsegpt" else None)
  sparsity = None if n is not None else s
  if method == "sparsegpt":
    total, rows = stats
    new_w, mask = _layer.sparsegpt(w, 2.0 * total / rows, sparsity, n=n, m=m,
                                   block=min(block, w.shape[0]) if n is None else block,
                                   damping=damping, bits=bits)
  elif method == "wanda":
    new_w, mask = _layer.wanda(w, jnp.sqrt(stats[0]), sparsity, n=n, m=m)
  else:
    new_w, mask = _layer.magnitude(w, sparsity, n=n, m=m, per=per)
  new_k = _trace.from_matrix(new_w, kernel.shape, perm).astype(full.dtype)
  new_m = _trace.from_matrix(mask, kernel.shape, perm)
  if masks[site.leaf] is None:
    masks[site.leaf] = jnp.ones(full.shape, bool)
  if site.index:
    store.kernels[site.leaf] = full.at[site.index].set(new_k)
    masks[site.leaf] = masks[site.leaf].at[site.index].set(new_m)
  else:
    store.kernels[site.leaf] = new_k
    masks[site.leaf] = new_m


def _progress(on, total):
  if not on:
    return lambda *_: None
  try:
    from tqdm.auto import tqdm  # noqa: PLC0415
  except ImportError:
    tqdm = None
  if tqdm is not None:
    bar = tqdm(total=total, desc="oneshot.prune", unit="layer")

    def step(name, s):
      bar.set_postfix_str(f"{name} @ {s if isinstance(s, str) else f'{s:.2f}'}")
      bar.update(1)
      if bar.n >= total:
        bar.close()
    return step
  count = [0]

  def show(name, s):
    count[0] += 1
    print(f"oneshot.prune [{count[0]}/{total}] {name} @ {s if isinstance(s, str) else f'{s:.2f}'}",
          flush=True)
  return show
