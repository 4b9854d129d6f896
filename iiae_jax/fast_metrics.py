"""Fast paths of the retrieval metrics: the numbers of `iiae_jax.metrics`, for large inputs.

`iiae_jax.metrics` states each metric plainly (an argsort or an argmin and a few lines) and calls
the functions here when the inputs are large (each public function's docstring says when); the
tests hold these to the plain definitions on inputs full of ties, duplicates and extreme scales.

- Zero-shot retrieval: one 32-bit sort key per (query, gallery item) that orders by the float32
  cosine distance and carries the item's relevance in its lowest bit, so that one integer sort
  per query replaces a stable argsort and a gather; the few ties that hold both relevant and
  non-relevant items are then put back in gallery-index order. Queries go in chunks over worker
  threads, so memory is linear in the chunk size rather than quadratic in the data.
- Paired retrieval: float32 distances |x|^2 - 2 x.y + |y|^2 on the device with an error bound
  per comparison; only the pairs that the bound cannot decide are compared exactly in float64.
"""
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits


def _available_cpus() -> int:
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not Linux
    return max(1, os.cpu_count() or 1)


def _single_threaded_blas(active: bool):
  """Limits BLAS to one thread (process-wide, for the duration) while our worker threads run
  matmuls: each worker's small matmul then runs in its own thread instead of contending with
  BLAS's pool for the cores."""
  return threadpool_limits(limits=1, user_api="blas") if active else contextlib.nullcontext()


# ---------------------------------------------------------------------------
# Zero-shot retrieval.

_REL_BIT = np.uint32(1)


def _ranking_keys(q_unit, g_unit_t, q_codes, g_codes, sim, keys) -> None:
  """Writes one uint32 sort key per (query, gallery item) into `keys`.

  Keys ascend with the cosine distance: the high 31 bits are the bits of the
  float32 distance (non-negative floats order as integers) and the low bit is
  1 for a relevant item (same label code), so equal distances give equal high
  bits. `q_codes` must be sorted; `sim` is a float64 work buffer.
  """
  # float64, so that equal distances (duplicate rows, say) stay equal whatever
  # path the BLAS kernel takes for each output element; then rounded once.
  np.matmul(q_unit, g_unit_t, out=sim)
  np.subtract(1.0, sim, out=keys.view(np.float32), casting="same_kind")
  bits = keys.view(np.int32)
  np.maximum(bits, 0, out=bits)  # a round-off distance below 0 (its sign bit set) becomes +0
  np.left_shift(keys, 1, out=keys)  # distances <= 2.0 = 0x40000000: nothing is lost
  bounds = np.flatnonzero(np.diff(q_codes)) + 1
  for a, b in zip(np.r_[0, bounds], np.r_[bounds, q_codes.size]):
    np.bitwise_or(keys[a:b], (g_codes == q_codes[a]).astype(np.uint32), out=keys[a:b])


def _segment_positions(rows: np.ndarray) -> np.ndarray:
  """1-based position of each entry within its run of equal (sorted) row ids."""
  n = rows.size
  if n == 0:
    return np.zeros(0, np.int64)
  starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
  return np.arange(1, n + 1) - np.repeat(starts, np.diff(np.r_[starts, n]))


def _relevant_positions(keys: np.ndarray, scratch: Optional[np.ndarray] = None) -> np.ndarray:
  """Flat indices of the keys whose relevance bit is set (row-major order)."""
  bits = np.empty(keys.size, np.uint8) if scratch is None else scratch[:keys.size]
  np.bitwise_and(keys.reshape(-1), _REL_BIT, out=bits, casting="unsafe")
  return np.flatnonzero(bits.view(bool))  # nonzero of a bool array is much faster


# A row with more mixed ties than this is re-sorted on 64-bit keys instead of
# having each tie resolved by a scan of the row (one scan costs about 1/20 of
# a 64-bit sort).
_MAX_TIE_SCANS_PER_ROW = 16


def _untie_by_scan(keys, srt, pos, first, ranks, batch: int = 256):
  """Moves the relevant items of mixed ties to their gallery-index places, in place.

  `first[t]` indexes (into `pos`) the first relevant entry of a tie that the
  key sort ordered non-relevant first. The tie's members are found by scanning
  the unsorted row; the relevant member with the t-th lowest gallery index
  ranks above the non-relevant members with higher gallery indices.
  """
  n_gallery = keys.shape[1]
  for s in range(0, first.size, batch):
    f = first[s:s + batch]
    nonrel_key = srt[pos[f] - 1]
    members = keys[pos[f] // n_gallery]
    nonrel = np.flatnonzero(members == nonrel_key[:, None])
    rel = np.flatnonzero(members == (nonrel_key + _REL_BIT)[:, None])
    tie = rel // n_gallery
    n_nonrel = np.bincount(nonrel // n_gallery, minlength=f.size)[tie]
    nonrel_below = np.searchsorted(nonrel, rel) - np.searchsorted(nonrel, tie * n_gallery)
    ranks[f[tie] + _segment_positions(tie) - 1] -= n_nonrel - nonrel_below


def _relevant_ranks(keys: np.ndarray, srt: np.ndarray, counts: np.ndarray,
                    scratch: Optional[np.ndarray] = None) -> np.ndarray:
  """1-based ranks of the relevant items, in the tie-by-index order.

  Row after row, ascending within a row; row r has counts[r] relevant items.
  `srt` receives the keys sorted along rows. Sorting the uint32 keys orders by
  distance and, within an exact tie, puts non-relevant items first. Only a
  tie holding both relevant and non-relevant items can differ from the
  gallery-index order, and sorted such a tie shows a relevant key right after
  a non-relevant key one less. Such ties are resolved exactly: by a scan of
  the row, or, in a row with many of them, by re-sorting it on 64-bit keys
  (distance, gallery index).
  """
  n_rows, n_gallery = keys.shape
  np.copyto(srt, keys)
  srt.sort(axis=1)
  srt = srt.reshape(-1)
  pos = _relevant_positions(srt, scratch)
  if pos.size != counts.sum():
    raise AssertionError("relevance bits do not match the label counts")
  ranks = pos - np.repeat(np.arange(n_rows, dtype=np.int64) * n_gallery - 1, counts)
  first = np.flatnonzero((ranks > 1) & (srt[pos - 1] == srt[pos] - _REL_BIT))
  if first.size:
    rows = pos // n_gallery
    heavy = np.bincount(rows[first], minlength=n_rows) > _MAX_TIE_SCANS_PER_ROW
    _untie_by_scan(keys, srt, pos, first[~heavy[rows[first]]], ranks)
    if heavy.any():
      sub = keys[heavy]
      exact = ((sub >> 1).astype(np.uint64) << np.uint64(32)) | np.arange(n_gallery, dtype=np.uint64)
      exact.sort(axis=1)
      order = (exact & np.uint64(0xFFFFFFFF)).astype(np.intp)
      del exact
      # Same number of relevant items per row, both row-major: entries align.
      ranks[heavy[rows]] = _relevant_positions(np.take_along_axis(sub, order, axis=1)) % n_gallery + 1
  return ranks


def zero_shot_sums(q_unit: np.ndarray, q_codes: np.ndarray, g_unit: np.ndarray, g_codes: np.ndarray,
                   n_relevant: np.ndarray, ks: Sequence[int], *, chunk_size: int = 256,
                   num_threads: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The per-query sums of `iiae_jax.metrics._zero_shot_sums`, chunk by chunk in threads.

  Args:
    q_unit, g_unit: (Nq, D) and (Ng, D) unit-norm rows (float64).
    q_codes, g_codes: integer label codes; an item is relevant when the codes are equal.
    n_relevant: (Nq,) number of relevant gallery items of each query.
    ks, chunk_size, num_threads: as `iiae_jax.metrics.zero_shot_retrieval`; work memory is about
      20 * chunk_size * Ng bytes per thread.

  Returns:
    (sum_i prec_i rel_i of shape (Nq,), and per K the top-K sums of rel_i and of prec_i rel_i,
    each (len(ks), Nq)), in the queries' order. Each query's sums are added up on their own, so
    neither the chunk size nor the thread count changes a bit of them.
  """
  threads = _available_cpus() if num_threads is None else num_threads
  n_query, n_gallery = q_unit.shape[0], g_unit.shape[0]
  # Queries in label order, so a chunk holds few labels (the order of queries is free).
  by_label = np.argsort(q_codes, kind="stable")
  q_codes_sorted = q_codes[by_label].astype(np.int32)
  counts_sorted = n_relevant[by_label]
  g_codes = g_codes.astype(np.int32)
  g_unit_t = g_unit.T  # a view: BLAS reads the transpose in place
  rows_per_step = min(chunk_size, n_query)
  starts = range(0, n_query, rows_per_step)
  local = threading.local()  # per-thread work buffers, reused across chunks

  def one_chunk(start):
    stop = min(start + rows_per_step, n_query)
    n = stop - start
    if not hasattr(local, "sim"):
      local.sim = np.empty((rows_per_step, n_gallery), np.float64)
      local.keys = np.empty((rows_per_step, n_gallery), np.uint32)
      local.srt = np.empty((rows_per_step, n_gallery), np.uint32)
    keys, srt = local.keys[:n], local.srt[:n]
    _ranking_keys(q_unit[by_label[start:stop]], g_unit_t, q_codes_sorted[start:stop], g_codes,
                  local.sim[:n], keys)
    # The float64 buffer is free again: it serves as the byte scratch.
    counts = counts_sorted[start:stop]
    ranks = _relevant_ranks(keys, srt, counts, local.sim.reshape(-1).view(np.uint8))
    row_start = np.cumsum(counts) - counts
    prec = (np.arange(1, ranks.size + 1) - np.repeat(row_start, counts)) / ranks
    sums = np.zeros((1 + 2 * len(ks), n))
    some = counts > 0
    if some.any():
      # Summed row by row, not as a running sum over the chunk, so that the
      # chunking cannot change a single bit of the result.
      def row_sum(v):
        return np.add.reduceat(v, row_start[some])
      sums[0, some] = row_sum(prec)
      for i, k in enumerate(ks):
        top = ranks <= k
        sums[1 + 2 * i, some] = row_sum(top.astype(np.float64))
        sums[2 + 2 * i, some] = row_sum(np.where(top, prec, 0.0))
    return sums

  with _single_threaded_blas(len(starts) > 1):
    if threads == 1 or len(starts) == 1:
      parts = [one_chunk(s) for s in starts]
    else:
      with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(one_chunk, starts))
  per_query = np.empty((1 + 2 * len(ks), n_query))
  per_query[:, by_label] = np.concatenate(parts, axis=1)
  return per_query[0], per_query[1::2], per_query[2::2]


# ---------------------------------------------------------------------------
# Paired retrieval.

# Round-off of float32 u = 2**-24; a dot product over D terms errs by about
# sqrt(D) u |x||y| in practice (the worst case is D u). The distance of query
# i to item j errs by at most `unit` (8 sqrt(D) + 3 times 2u) times
# |q_i|^2 + |g_j|^2, a bound on |q|^2 + 2|q.g| + |g|^2 over 2; comparing the
# pair's distance with item j's adds the two: unit (2|q_i|^2 + |g_i|^2 + |g_j|^2).
# Each competitor's bound uses its own norm, so one far-off item (an outlier)
# widens no other comparison.
def _gram_tolerance(dim: int) -> float:
  return (8.0 * np.sqrt(dim) + 3.0) * 2.0 ** -24 * 2.0


@jax.jit
def _paired_chunk(xc, y, nx, ny, offset, valid, unit):
  """Squared distances of a chunk of x rows to all of y: the diagonal, and the row and column
  minima of the distances less and plus each competitor's own error bound (unit |y_j|^2
  along rows, unit |x_i|^2 along columns): ((low, high) per row, (low, high) per column).

  The pair's own entry (column offset + row) is left out of the minima, and
  padding rows (valid False) out of the column minima.
  """
  d = nx[:, None] - 2.0 * jnp.dot(xc, y.T, precision=jax.lax.Precision.HIGHEST) + ny[None, :]
  own = jnp.arange(y.shape[0])[None, :] == (offset + jnp.arange(xc.shape[0]))[:, None]
  diag = jnp.sum(jnp.where(own, d, 0.0), axis=1)
  excluded = own | ~valid[:, None]
  minima = lambda bound, axis: tuple(jnp.where(excluded, jnp.inf, d + sign * unit * bound).min(axis=axis)
                                     for sign in (-1.0, 1.0))
  return diag, minima(ny[None, :], 1), minima(nx[:, None], 0)


def _exact_sq_dist(a: np.ndarray, b: np.ndarray, exponent: int) -> np.ndarray:
  """sum((b - a)^2) in float64 after scaling both by 2**exponent (exact), which keeps
  the squares finite without changing any comparison."""
  diff = np.ldexp(b.astype(np.float64), exponent) - np.ldexp(a.astype(np.float64), exponent)
  return (diff * diff).sum(axis=-1)


def _scaled_mean(a: np.ndarray, exponent: int, block: int = 1024) -> np.ndarray:
  """The column means of a * 2**exponent in float64, a block of rows at a time (no overflow)."""
  total = np.zeros(a.shape[1], np.float64)
  for s in range(0, a.shape[0], block):
    total += np.ldexp(a[s:s + block].astype(np.float64), exponent).sum(axis=0)
  return total / a.shape[0]


def _centred_float32(a: np.ndarray, mean: np.ndarray, exponent: int, block: int = 1024):
  """a * 2**exponent - mean as float32, and its squared row norms, a block of rows at a time."""
  out = np.empty(a.shape, np.float32)
  norms = np.empty(a.shape[0], np.float32)
  for s in range(0, a.shape[0], block):
    c = np.ldexp(a[s:s + block].astype(np.float64), exponent) - mean
    out[s:s + block] = c
    norms[s:s + block] = np.einsum("ij,ij->i", c, c)
  return out, norms


def _resolve_nearest(idx, q, g, qc, gc, nq, ng, unit, exponent, rows: int = 256,
                     batch: int = 64) -> np.ndarray:
  """Whether g[i] is q[i]'s first nearest neighbour, decided in float64 for each i in idx.

  Items whose float32 distance exceeds the pair's by more than twice the two
  distances' error bounds cannot win; the others are compared exactly, nearest
  first, stopping at the first that beats the pair (an equal distance beats it
  from a lower index).
  """
  hits = np.zeros(len(idx), bool)
  ng64 = ng.astype(np.float64)
  for start in range(0, len(idx), rows):
    block = idx[start:start + rows]
    d32 = nq[block, None] - 2.0 * (qc[block] @ gc.T) + ng[None, :]
    for n, i in enumerate(block):
      reach = d32[n, i] + 2.0 * unit * (float(nq[i]) + float(ng[i]))
      cand = np.flatnonzero(d32[n] - 2.0 * unit * ng64 <= reach)
      cand = cand[cand != i]
      cand = cand[np.argsort(d32[n, cand], kind="stable")]
      own = _exact_sq_dist(q[i], g[i:i + 1], exponent)[0]
      hit = True
      for s in range(0, cand.size, batch):
        c = cand[s:s + batch]
        d = _exact_sq_dist(q[i], g[c], exponent)
        if np.any((d < own) | ((d == own) & (c < i))):
          hit = False
          break
      hits[start + n] = hit
  return hits


def paired_hits(x: np.ndarray, y: np.ndarray, *, chunk_size: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
  """The hits of `iiae_jax.metrics._nearest_is_own_pair` in both directions, for large inputs.

  Distances are |x|^2 - 2 x.y + |y|^2 in float32 on mean-centred embeddings;
  whenever that cannot separate the pair from its closest competitor (their gap
  is within the float32 error bound), the decision is redone exactly on the
  original values as sum((x - y)^2) in float64, so ties and near-ties follow
  the lowest-index rule regardless of round-off.

  Args:
    x, y: (N, D) finite float arrays; row i of x pairs with row i of y.
    chunk_size: rows of x per step; work memory is about 12 * chunk_size * N
      bytes on top of float32 copies of both inputs.

  Returns:
    (x_to_y, y_to_x): (N,) booleans, whether pair i is a hit in that direction.
  """
  n, dim = x.shape
  # Centring leaves distances unchanged and shrinks the float32 round-off of
  # the |x|^2 - 2 x.y + |y|^2 form when embeddings share a large offset; a
  # power-of-two scale (exact, applied first) keeps float32 squares, and the float64 mean of
  # float64 inputs near the range's ends, from overflowing or vanishing.
  peak = max(float(np.abs(x).max()), float(np.abs(y).max()))
  exponent = 10 - int(np.frexp(peak)[1]) if peak > 0 else 0
  mean = (_scaled_mean(x, exponent) + _scaled_mean(y, exponent)) / 2
  xc, nx = _centred_float32(x, mean, exponent)
  yc, ny = _centred_float32(y, mean, exponent)
  y_dev, ny_dev = jax.device_put(yc), jax.device_put(ny)  # one copy (jnp.asarray may make two)

  unit = _gram_tolerance(dim)
  rows = min(chunk_size, n)
  diag = np.empty(n, np.float32)
  row_min = np.empty((2, n), np.float32)      # (low, high) bounds of the nearest competitor
  col_min = np.full((2, n), np.inf, np.float32)
  for start in range(0, n, rows):
    stop = min(start + rows, n)
    xb = np.zeros((rows, dim), np.float32)
    nb = np.zeros((rows,), np.float32)
    xb[:stop - start], nb[:stop - start] = xc[start:stop], nx[start:stop]
    valid = np.arange(rows) < stop - start
    d, r, c = _paired_chunk(xb, y_dev, nb, ny_dev, np.int32(start), valid, np.float32(unit))
    diag[start:stop] = np.asarray(d)[:stop - start]
    row_min[:, start:stop] = np.asarray(r)[:, :stop - start]
    np.minimum(col_min, np.asarray(c), out=col_min)
  del y_dev

  out = []
  for q, g, qc, gc, nq, ng, best in ((x, y, xc, yc, nx, ny, row_min), (y, x, yc, xc, ny, nx, col_min)):
    # best = min over competitors j of (distance -/+ unit |g_j|^2): a sure hit beats every
    # one by the pair's part of the bound, a sure miss loses to one by the same.
    own_bound = unit * (2.0 * nq.astype(np.float64) + ng.astype(np.float64))
    low, high = best.astype(np.float64) - diag
    hits = low > own_bound
    unsure = np.flatnonzero(~hits & (high >= -own_bound))
    hits[unsure] = _resolve_nearest(unsure, q, g, qc, gc, nq, ng, unit, exponent)
    out.append(hits)
  return out[0], out[1]
