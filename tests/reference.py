"""Independent sort-based references for the mask tests."""

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
