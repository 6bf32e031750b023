"""Per-layer kernels: SparseGPT against numpy least squares / sequential OBS, Wanda, magnitude."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune import oneshot
from jaxprune.oneshot import _select


def _layer(seed, d=12, o=5, n=256, correlated=True):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  if correlated:  # a shared factor and uneven scales, as in real activations
    x = x @ rng.normal(size=(d, d)) + 3 * rng.normal(size=(n, 1)) * rng.normal(size=(1, d))
    x = x * rng.uniform(0.1, 3.0, size=(1, d))
  w = rng.normal(size=(d, o))
  return x.astype(np.float32), w.astype(np.float32), (2 * x.T @ x / n).astype(np.float32)


def _least_squares(w, h, keep):
  """min (v - w)ᵀ H (v - w) over v with v = 0 where not kept, per output column (float64)."""
  h, out = h.astype(np.float64), np.zeros(w.shape)
  for c in range(w.shape[1]):
    k = np.flatnonzero(keep[:, c])
    out[k, c] = np.linalg.solve(h[np.ix_(k, k)], h[k] @ w[:, c].astype(np.float64))
  return out


def _sequential_obs(w, h, keep, bits=None):
  """The paper's update, written out: fix inputs in order (pruned to 0, kept ones rounded to
  the ``bits`` grid of the input kernel, clipped), re-fit only the later ones."""
  qmax = None if bits is None else 2 ** (bits - 1) - 1
  step = None if bits is None else np.abs(w).max(axis=0) / qmax
  h, w = h.astype(np.float64), w.astype(np.float64).copy()
  d = w.shape[0]
  for c in range(w.shape[1]):
    for i in range(d):
      target = 0.0 if not keep[i, c] else (
          w[i, c] if bits is None else np.clip(np.round(w[i, c] / step[c]), -qmax, qmax) * step[c])
      later = np.arange(i + 1, d)
      if len(later):
        w[later, c] += np.linalg.solve(h[np.ix_(later, later)], h[later, i]) * (w[i, c] - target)
      w[i, c] = target
  return w


def _err(x, w, v):
  return float(np.sum((x.astype(np.float64) @ (np.asarray(w, np.float64) - np.asarray(v)))**2))


@pytest.mark.parametrize("block", [12, 5])
def test_fixed_mask_pruned_first_is_least_squares(block):
  x, w, h = _layer(0)
  keep = np.zeros(w.shape, bool)
  for c in range(w.shape[1]):  # pruned inputs first, then kept ones (of varying counts)
    keep[3 + c:, c] = True
  new_w, mask = oneshot.sparsegpt(w, h, mask=keep, block=block, damping=0.0)
  ref = _least_squares(w, h, keep)
  np.testing.assert_allclose(np.asarray(new_w), ref, atol=2e-3 * np.abs(ref).max())
  np.testing.assert_array_equal(np.asarray(mask), keep)


@pytest.mark.parametrize("block", [12, 5, 3])
def test_fixed_mask_is_least_squares(block):
  """Any fixed mask (block = width or not): the closed-form least-squares optimum."""
  x, w, h = _layer(1)
  keep = np.random.default_rng(2).random(w.shape) < 0.5
  keep[:, 0] = False  # an output unit with nothing kept
  keep[:, 1] = True  # and one with everything kept
  new_w, mask = oneshot.sparsegpt(w, h, mask=keep, block=block, damping=0.0)
  ref = _least_squares(w, h, keep)
  np.testing.assert_allclose(np.asarray(new_w), ref, atol=2e-3 * np.abs(ref).max())
  np.testing.assert_array_equal(np.asarray(mask), keep)
  assert _err(x, w, new_w) < _err(x, w, np.where(keep, w, 0))  # better than no update


def test_fixed_mask_with_bits_is_sequential_obs():
  """With joint quantisation, a fixed mask runs the paper's sequential update."""
  x, w, h = _layer(11)
  keep = np.random.default_rng(3).random(w.shape) < 0.5
  new_w, mask = oneshot.sparsegpt(w, h, mask=keep, block=5, damping=0.0, bits=4)
  ref = _sequential_obs(w, h, keep, bits=4)
  np.testing.assert_allclose(np.asarray(new_w), ref, atol=2e-3 * np.abs(ref).max())
  np.testing.assert_array_equal(np.asarray(mask), keep)


def test_reconstruction_error_order_on_random_layers():
  errs = {"sparsegpt": [], "wanda": [], "magnitude": []}
  for seed in range(4):
    x, w, h = _layer(10 + seed, d=32, o=16, n=512)
    norms = np.linalg.norm(x, axis=0)
    errs["sparsegpt"].append(_err(x, w, oneshot.sparsegpt(w, h, 0.5, block=8)[0]))
    errs["wanda"].append(_err(x, w, oneshot.wanda(w, norms, 0.5)[0]))
    errs["magnitude"].append(_err(x, w, oneshot.magnitude(w, 0.5)[0]))
  mean = {k: np.mean(v) for k, v in errs.items()}
  assert mean["sparsegpt"] <= mean["wanda"] <= mean["magnitude"], mean


@pytest.mark.parametrize("kw", [dict(sparsity=0.7), dict(n=2, m=4)])
def test_sparsegpt_beats_wanda_per_layer(kw):
  x, w, h = _layer(3, d=32, o=8, n=512)
  sg = _err(x, w, oneshot.sparsegpt(w, h, block=16, **kw)[0])
  wa = _err(x, w, oneshot.wanda(w, np.linalg.norm(x, axis=0), **kw)[0])
  assert sg < wa


@pytest.mark.parametrize("s", [0.0, 0.73, 1.0])
def test_exact_counts_unstructured(s):
  x, w, h = _layer(4, d=20, o=7)
  size = w.size
  _, mask = oneshot.sparsegpt(w, h, s, block=6)
  assert int(mask.sum()) == size - round(s * size)
  _, mask = oneshot.wanda(w, np.linalg.norm(x, axis=0), s)
  np.testing.assert_array_equal(np.asarray(mask.sum(0)), 20 - round(s * 20))
  _, mask = oneshot.magnitude(w, s, per="layer")
  assert int(mask.sum()) == size - round(s * size)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
def test_n_of_m_exact_in_every_group(method, n, m):
  x, w, h = _layer(5, d=16, o=6)
  if method == "sparsegpt":
    new_w, mask = oneshot.sparsegpt(w, h, n=n, m=m, block=8)
  elif method == "wanda":
    new_w, mask = oneshot.wanda(w, np.linalg.norm(x, axis=0), n=n, m=m)
  else:
    new_w, mask = oneshot.magnitude(w, n=n, m=m)
  groups = np.asarray(mask).reshape(16 // m, m, 6).sum(axis=1)
  assert (groups == n).all()
  assert (np.asarray(new_w)[~np.asarray(mask)] == 0).all()


def test_wanda_matches_sort_reference():
  rng = np.random.default_rng(6)
  w, norms = rng.normal(size=(10, 4)).astype(np.float32), rng.uniform(size=10).astype(np.float32)
  _, mask = oneshot.wanda(w, norms[:, None], 0.4)
  score = np.abs(w) * norms[:, None]
  for c in range(4):
    kept = set(np.argsort(-score[:, c], kind="stable")[:6])
    assert set(np.flatnonzero(np.asarray(mask[:, c]))) == kept


def test_dead_inputs_and_dtypes():
  x, w, h = _layer(7, d=8, o=4)
  h[2, :] = h[:, 2] = 0.0  # input 2 never fired
  new_w, mask = oneshot.sparsegpt(jnp.asarray(w, jnp.bfloat16), h, 0.5, block=4)
  assert new_w.dtype == jnp.bfloat16 and int(mask.sum()) == 16
  assert bool(jnp.all(jnp.isfinite(new_w.astype(jnp.float32))))


def test_joint_quantisation_grid():
  x, w, h = _layer(8, d=16, o=4)
  new_w, mask = oneshot.sparsegpt(w, h, 0.5, block=8, bits=3)
  step = np.abs(w).max(axis=0) / 3
  levels = np.asarray(new_w) / step[None, :]
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert np.abs(levels).max() <= 3 + 1e-4 and int(mask.sum()) == 32
  assert (np.asarray(new_w)[~np.asarray(mask)] == 0).all()


def test_jit():
  x, w, h = _layer(9, d=8, o=4)
  f = jax.jit(lambda w, h: oneshot.sparsegpt(w, h, 0.5, block=4))
  a, b = f(w, h), oneshot.sparsegpt(w, h, 0.5, block=4)
  np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


@pytest.mark.parametrize("call,match", [
    (lambda w, h: oneshot.sparsegpt(w, h, 1.5), r"\[0, 1\]"),
    (lambda w, h: oneshot.sparsegpt(w, h, -0.1), r"\[0, 1\]"),
    (lambda w, h: oneshot.sparsegpt(w, h), "sparsity="),
    (lambda w, h: oneshot.sparsegpt(w, h[:4], 0.5), r"shape \(in, in\)"),
    (lambda w, h: oneshot.sparsegpt(w, h, n=2, m=4, block=6), "multiple of m=4"),
    (lambda w, h: oneshot.sparsegpt(w[:6], h[:6, :6], n=2, m=4), "does not divide 6"),
    (lambda w, h: oneshot.sparsegpt(w, h, n=2), "both n= and m="),
    (lambda w, h: oneshot.sparsegpt(w, h, 0.3, n=2, m=4), "contradicts"),
    (lambda w, h: oneshot.sparsegpt(w, -h, 0.5, damping=0.0), "positive definite"),
    (lambda w, h: oneshot.sparsegpt(w[0], h, 0.5), "2-D kernel"),
    (lambda w, h: oneshot.wanda(w, jnp.ones(3), 0.5), r"input_norms must have shape \(8,\)"),
    (lambda w, h: oneshot.magnitude(w, 0.5, per="row"), "per must be"),
])
def test_errors(call, match):
  _, w, h = _layer(0, d=8, o=4)
  with pytest.raises((ValueError, TypeError), match=match):
    call(jnp.asarray(w), jnp.asarray(h))


def _sorted_top(row, keep):
  """Reference: a stable sort, NaN lowest, ties to the lower index."""
  order = sorted(range(len(row)), key=lambda j: (np.isnan(row[j]), -np.nan_to_num(row[j]), j))
  out = np.zeros(len(row), bool)
  out[order[:keep]] = True
  return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 12), st.data())
def test_top_per_row_matches_a_sort(rows, length, data):
  values = data.draw(st.lists(st.sampled_from([-2.0, -0.5, 0.5, 1.0, 3.0, np.inf, -np.inf, np.nan]),
                              min_size=rows * length, max_size=rows * length))
  score = np.asarray(values, np.float32).reshape(rows, length)
  keep = data.draw(st.integers(0, length))
  got = np.asarray(_select.top_per_row(jnp.asarray(score), keep))
  for r in range(rows):
    np.testing.assert_array_equal(got[r], _sorted_top(score[r], keep))
  flat = np.asarray(_select.top_flat(jnp.asarray(score), keep))
  np.testing.assert_array_equal(flat.reshape(-1), _sorted_top(score.reshape(-1), keep))


@pytest.mark.parametrize("n,m", [(0, 4), (2, 4), (3, 8), (4, 4)])
def test_n_best_of_m_matches_a_sort(n, m):
  score = np.random.default_rng(n + m).integers(-2, 3, (m, 6)).astype(np.float32)
  got = np.asarray(_select.n_best_of_m(jnp.asarray(score), n))
  for c in range(6):
    np.testing.assert_array_equal(got[:, c], _sorted_top(score[:, c], n))


@pytest.mark.parametrize("block", [7, 128])
def test_block_need_not_divide_the_width(block):
  """Blocks are padded with decoupled inputs: counts exact, result = one block's result."""
  x, w, h = _layer(12, d=20, o=6)
  new_w, mask = oneshot.sparsegpt(w, h, 0.6, block=block)
  assert int(mask.sum()) == w.size - round(0.6 * w.size)
  assert (np.asarray(new_w)[~np.asarray(mask)] == 0).all()
  assert _err(x, w, new_w) < _err(x, w, oneshot.magnitude(w, 0.6, per="layer")[0])


def test_fixed_mask_under_jit_is_least_squares():
  x, w, h = _layer(13)
  keep = np.random.default_rng(4).random(w.shape) < 0.6
  new_w = jax.jit(lambda k: oneshot.sparsegpt(w, h, mask=k, damping=0.0)[0])(keep)
  ref = _least_squares(w, h, keep)
  np.testing.assert_allclose(np.asarray(new_w), ref, atol=2e-3 * np.abs(ref).max())
