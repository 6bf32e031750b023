"""Independent sort-based references for the mask tests."""

import jax.numpy as jnp
import numpy as np


def rank_order(scores: np.ndarray) -> np.ndarray:
  """Flat indices from most to least important: score descending, NaN last, ties by index."""
  flat = np.asarray(scores, np.float64).ravel()
  nan = np.isnan(flat)
  key = np.where(nan, 0.0, -flat)
  return np.lexsort((np.arange(flat.size), key, nan))


def topk_reference(scores, sparsity, eligible=None) -> np.ndarray:
  """Keeps ``n - round(s n)`` best entries (among eligible ones) of one array."""
  scores = np.asarray(scores, np.float64)
  n = scores.size
  k = n - int(round(sparsity * n))
  order = rank_order(scores)
  if eligible is not None:
    order = order[np.asarray(eligible).ravel()[order]]
  keep = np.zeros(n, bool)
  keep[order[:k]] = True
  return keep.reshape(scores.shape)


def global_reference(leaves, sparsity) -> list:
  """Global top-k over several arrays by concatenation and a sort (leaf order breaks ties)."""
  flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves])
  keep = topk_reference(flat, sparsity)
  out, start = [], 0
  for x in leaves:
    out.append(keep[start:start + x.size].reshape(x.shape))
    start += x.size
  return out


def top_k_reference(leaves, eligible, k) -> list:
  """Keeps the k best eligible entries over all leaves (leaf order, then index, break ties)."""
  flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves])
  ok = np.concatenate([np.ones(np.size(x), bool) if e is None else np.asarray(e).ravel()
                       for x, e in zip(leaves, eligible)])
  order = rank_order(flat)
  order = order[ok[order]]
  keep = np.zeros(flat.size, bool)
  keep[order[:max(k, 0)]] = True
  out, start = [], 0
  for x in leaves:
    out.append(keep[start:start + np.size(x)].reshape(np.shape(x)))
    start += np.size(x)
  return out


def check_top_k(top_k, leaves, eligible, k) -> None:
  """Asserts ``top_k(leaves, eligible, k)`` (jax arrays in) equals :func:`top_k_reference`."""
  got = top_k([jnp.asarray(x) for x in leaves],
              [None if e is None else jnp.asarray(e) for e in eligible], k)
  for g, want in zip(got, top_k_reference(leaves, eligible, k)):
    np.testing.assert_array_equal(np.asarray(g), want)
