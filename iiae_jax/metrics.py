"""Evaluation metrics (SPEC §5): zero-shot retrieval, paired retrieval, disentanglement probes.

Pure functions: arrays in (NumPy or JAX, any real dtype), a dict of Python
floats out. The leading axis indexes examples; trailing axes are flattened, so
a spatial z_s of shape (N, 8, 8, 128) is one 8192-d embedding per example.
Non-finite embeddings raise a ValueError naming the argument: a metric is never
silently computed from NaN.
"""
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------
# Input checks (the public boundary).


def _embeddings(x, name: str) -> np.ndarray:
  """`x` as a finite 2-D float array (N, D), trailing axes flattened."""
  a = np.asarray(x)
  if a.ndim < 2 or a.shape[0] == 0 or a[0].size == 0:
    raise ValueError(f"{name} must have shape (N, D, ...) with N >= 1 and D >= 1; got shape {a.shape}")
  if a.dtype.kind in "iub":
    a = a.astype(np.float64)
  elif a.dtype.kind == "f" and a.dtype.itemsize > 8:
    a = a.astype(np.float64)
  elif a.dtype.kind == "f" and a.dtype.itemsize < 4 or a.dtype.kind == "V":
    try:
      a = a.astype(np.float32)  # float16, bfloat16 (ml_dtypes)
    except (TypeError, ValueError):
      raise ValueError(f"{name} must be real-valued; got dtype {a.dtype}") from None
  elif a.dtype.kind != "f":
    raise ValueError(f"{name} must be real-valued; got dtype {a.dtype}")
  a = a.reshape(a.shape[0], -1)
  bad = ~np.isfinite(a).all(axis=1)
  if bad.any():
    rows = np.flatnonzero(bad)
    raise ValueError(f"{name} has non-finite values (NaN or inf) in {rows.size} of {a.shape[0]} "
                     f"rows (first: row {rows[0]}); metrics are undefined for them")
  return a


def _labels(labels, n: int, name: str, of: str) -> np.ndarray:
  a = np.asarray(labels)
  if a.ndim != 1 or a.shape[0] != n:
    raise ValueError(f"{name} must have shape ({n},), one label per row of {of}; got shape {a.shape}")
  return a


def _positive_ints(ks, name: str = "ks") -> Tuple[int, ...]:
  ks = (ks,) if np.ndim(ks) == 0 else tuple(np.asarray(ks, dtype=object).reshape(-1))
  for k in ks:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k <= 0:
      raise ValueError(f"{name} must hold positive integers; got {k!r}")
  return tuple(int(k) for k in ks)


def _num_threads(num_threads: Optional[int]) -> int:
  if num_threads is None:
    try:
      return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
      return max(1, os.cpu_count() or 1)
  if int(num_threads) < 1:
    raise ValueError(f"num_threads must be >= 1; got {num_threads!r}")
  return int(num_threads)


@contextlib.contextmanager
def _single_threaded_blas(active: bool):
  """Limits BLAS to one thread while our own worker threads run matmuls.

  Each worker's small matmul then runs in the worker's thread; BLAS's own pool
  would otherwise contend with the workers for the cores (a process-wide
  setting for the duration; a no-op without threadpoolctl).
  """
  if not active:
    yield
    return
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    yield
    return
  with threadpool_limits(limits=1, user_api="blas"):
    yield


def _unit_rows(a: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (float64); an all-zero row stays zero."""
  a = a.astype(np.float64)
  peak = np.abs(a).max(axis=1, keepdims=True)
  a = a / np.where(peak > 0, peak, 1.0)  # first to [-1, 1]: squares can neither overflow nor vanish
  norm = np.sqrt(np.einsum("ij,ij->i", a, a))[:, None]
  return a / np.where(norm > 0, norm, 1.0)


# ---------------------------------------------------------------------------
# Zero-shot retrieval (SPEC §5a).


def ranked_by_cosine(query, gallery) -> np.ndarray:
  """(queries, gallery) gallery indices, nearest first by cosine distance; ties by gallery index."""
  q, g = _unit_rows(_embeddings(query, "query")), _unit_rows(_embeddings(gallery, "gallery"))
  return np.argsort(1.0 - q @ g.T, axis=1, kind="stable")

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


def zero_shot_retrieval(query, query_labels, gallery, gallery_labels,
                        ks: Union[int, Iterable[int]] = (100,), *, chunk_size: int = 256,
                        num_threads: Optional[int] = None) -> Dict[str, float]:
  """Category-level retrieval of `gallery` items for each `query` by cosine distance.

  For every query the gallery is ranked by cosine distance 1 - cos(q, g)
  (ascending); a gallery item is relevant when its label equals the query's.
  With rel_i in {0, 1} the relevance at rank i and prec_i = (1/i) sum_{j<=i} rel_j:

  - "map_all": mean over queries of sum_i prec_i rel_i / (# relevant in the gallery).
  - "precision@K": mean over queries of (1/K) sum_{i<=K} rel_i.
  - "map@K_reference": mean of (1/K) sum_{i<=K} prec_i rel_i (the reference
    release's definition).
  - "map@K": mean of sum_{i<=K} prec_i rel_i / (# relevant in the top K), the
    usual definition; a query with none in its top K contributes 0.
  - "num_queries", and "queries_without_relevant": the number of queries whose
    label is absent from the gallery.

  Rules:
  - Ties: the distance 1 - q.g of the unit-normalised rows is computed in
    float64, rounded to float32 and clipped at 0 (against round-off); items
    with equal float32 distances tie, and a tie is broken by gallery index:
    the lower index ranks first, the order of `np.argsort(dist,
    kind="stable")`. A metric therefore moves only as far as reordering the
    tied items within their run of ranks allows. Duplicate gallery rows always
    tie (float64 keeps equal products equal whatever the BLAS kernel does).
  - K larger than the gallery: ranks beyond the gallery count as not relevant,
    so precision@K and map@K_reference still divide by K.
  - A query whose label is absent from the gallery has no defined AP: it is
    excluded from the mean in "map_all" (which is NaN if no query has a relevant
    item) and counted in "queries_without_relevant"; it contributes 0 to
    precision@K and to both map@K.
  - A zero-norm embedding has cosine similarity 0 with everything (distance 1),
    as in scikit-learn; a zero query thus sees one tie over the whole gallery.
  - NaN or inf in an embedding raises ValueError.

  Args:
    query: (Nq, D, ...) query embeddings (e.g. sketches' z_s means).
    query_labels: (Nq,) labels (any comparable dtype).
    gallery: (Ng, D, ...) gallery embeddings (e.g. photos' z_s means).
    gallery_labels: (Ng,) labels.
    ks: one K or several; each reported metric family gets one entry per K.
    chunk_size: queries ranked per step; work memory is about
      20 * chunk_size * Ng bytes per thread.
    num_threads: worker threads (default: the CPUs available to this process).

  Returns:
    A dict of Python floats (and ints for the counts).

  Cost: one float64 matmul and one sort of Ng 32-bit keys per query (about
  2 s for 14,421 x 14,626 on two cores), with memory linear in chunk_size.
  """
  q = _embeddings(query, "query")
  g = _embeddings(gallery, "gallery")
  if q.shape[1] != g.shape[1]:
    raise ValueError(f"query and gallery must have the same embedding size; got query shape "
                     f"{q.shape} and gallery shape {g.shape}")
  ql = _labels(query_labels, q.shape[0], "query_labels", "query")
  gl = _labels(gallery_labels, g.shape[0], "gallery_labels", "gallery")
  if (ql.dtype.kind in "US") != (gl.dtype.kind in "US"):  # else np.unique would equate 1 and "1"
    raise ValueError(f"query_labels ({ql.dtype}) and gallery_labels ({gl.dtype}) must both be "
                     "numbers or both be strings")
  ks = _positive_ints(ks)
  chunk_size = _positive_ints(chunk_size, "chunk_size")[0]
  threads = _num_threads(num_threads)

  n_query, n_gallery = q.shape[0], g.shape[0]
  classes, codes = np.unique(np.concatenate([ql, gl]), return_inverse=True)
  q_codes = codes[:n_query].astype(np.int32)
  g_codes = codes[n_query:].astype(np.int32)
  n_relevant = np.bincount(g_codes, minlength=classes.size)[q_codes]

  # Queries in label order, so a chunk holds few labels (the metrics are means
  # over queries, so the order is free).
  by_label = np.argsort(q_codes, kind="stable")
  q_codes, n_relevant = q_codes[by_label], n_relevant[by_label]
  q_unit = _unit_rows(q[by_label])
  g_unit_t = np.ascontiguousarray(_unit_rows(g).T)
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
    _ranking_keys(q_unit[start:stop], g_unit_t, q_codes[start:stop], g_codes, local.sim[:n], keys)
    # The float64 buffer is free again: it serves as the byte scratch.
    counts = n_relevant[start:stop]
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
  per_query = np.concatenate(parts, axis=1)  # (1 + 2 * len(ks), Nq) sums over ranks

  has_rel = n_relevant > 0
  ap = per_query[0][has_rel] / n_relevant[has_rel]
  out = {
      "map_all": float(ap.mean()) if ap.size else float("nan"),
      "num_queries": int(n_query),
      "queries_without_relevant": int(n_query - has_rel.sum()),
  }
  for i, k in enumerate(ks):
    hits, prec_sum = per_query[1 + 2 * i], per_query[2 + 2 * i]
    out[f"precision@{k}"] = float(np.mean(hits / k))
    out[f"map@{k}_reference"] = float(np.mean(prec_sum / k))
    out[f"map@{k}"] = float(np.mean(np.divide(prec_sum, hits, out=np.zeros_like(prec_sum),
                                              where=hits > 0)))
  return out


# ---------------------------------------------------------------------------
# Paired retrieval (SPEC §5b).

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


def paired_retrieval_accuracy(emb_x, emb_y, *, chunk_size: int = 1024) -> Dict[str, float]:
  """Paired cross-domain retrieval accuracy by squared-L2 nearest neighbour.

  X->Y: pair i is a hit when the nearest emb_y[j] to emb_x[i] is j = i; Y->X
  likewise with the roles swapped. Accuracies are fractions in [0, 1].

  Ties: when several items are equally near, the lowest index is the nearest,
  so pair i misses when some j < i is exactly as near as i. Distances are
  computed as |x|^2 - 2 x.y + |y|^2 in float32 on mean-centred embeddings;
  whenever that cannot separate the pair from its closest competitor (their gap
  is within the float32 error bound), the decision is redone exactly on the
  original values as sum((x - y)^2) in float64, so ties and near-ties follow
  the rule above regardless of round-off.

  Args:
    emb_x: (N, ...) embeddings of domain X, trailing axes flattened.
    emb_y: (N, ...) embeddings of domain Y; row i pairs with emb_x[i].
    chunk_size: rows of emb_x per step; work memory is about
      12 * chunk_size * N bytes on top of float32 copies of both inputs.

  Returns:
    {"x_to_y": float, "y_to_x": float, "num_pairs": int}.
  """
  x = _embeddings(emb_x, "emb_x")
  y = _embeddings(emb_y, "emb_y")
  if x.shape != y.shape:
    raise ValueError(f"emb_x and emb_y must hold the same number of pairs and embedding size; "
                     f"got emb_x {x.shape} and emb_y {y.shape} (flattened)")
  chunk_size = _positive_ints(chunk_size, "chunk_size")[0]
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

  out = {"num_pairs": int(n)}
  for name, q, g, qc, gc, nq, ng, best in (("x_to_y", x, y, xc, yc, nx, ny, row_min),
                                          ("y_to_x", y, x, yc, xc, ny, nx, col_min)):
    # best = min over competitors j of (distance -/+ unit |g_j|^2): a sure hit beats every
    # one by the pair's part of the bound, a sure miss loses to one by the same.
    own_bound = unit * (2.0 * nq.astype(np.float64) + ng.astype(np.float64))
    low, high = best.astype(np.float64) - diag
    hits = low > own_bound
    unsure = np.flatnonzero(~hits & (high >= -own_bound))
    hits[unsure] = _resolve_nearest(unsure, q, g, qc, gc, nq, ng, unit, exponent)
    out[name] = float(hits.mean())
  return out


# ---------------------------------------------------------------------------
# Disentanglement probes.


def linear_probe_accuracy(train_z, train_labels, test_z, test_labels, *, l2: float = 1e-3) -> float:
  """Test accuracy of a closed-form ridge-regression probe onto one-hot labels.

  Features are standardised with the training mean and standard deviation
  (constant features become 0) and a bias is fit without penalty. The weights
  minimise (1/n) |X W + b - Y|^2 + l2 |W|^2 over the n training rows, solved
  in float64 in the primal or dual form, whichever is smaller (cost
  O(n d min(n, d))). A test example is predicted as the training class with the
  largest score; test labels never seen in training count as errors.
  """
  xtr = _embeddings(train_z, "train_z").astype(np.float64)
  xte = _embeddings(test_z, "test_z").astype(np.float64)
  if xtr.shape[1] != xte.shape[1]:
    raise ValueError(f"train_z and test_z must have the same feature size; got {xtr.shape} and {xte.shape}")
  ytr = _labels(train_labels, xtr.shape[0], "train_labels", "train_z")
  yte = _labels(test_labels, xte.shape[0], "test_labels", "test_z")
  if not l2 > 0:
    raise ValueError(f"l2 must be positive; got {l2!r}")
  mean, std = xtr.mean(axis=0), xtr.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  xtr = (xtr - mean) / std
  xte = (xte - mean) / std
  classes, idx = np.unique(ytr, return_inverse=True)
  onehot = np.eye(classes.size)[idx]
  bias = onehot.mean(axis=0)
  target = onehot - bias  # with centred features the unpenalised bias is the mean
  n, d = xtr.shape
  penalty = l2 * n
  if d <= n:
    w = np.linalg.solve(xtr.T @ xtr + penalty * np.eye(d), xtr.T @ target)
  else:
    w = xtr.T @ np.linalg.solve(xtr @ xtr.T + penalty * np.eye(n), target)
  pred = classes[np.argmax(xte @ w + bias, axis=1)]
  return float(np.mean(pred == yte))


def disentanglement(latents: Mapping[str, Tuple[object, object]],
                    factors: Mapping[str, Tuple[object, object]], *,
                    l2: float = 1e-3) -> Dict[str, float]:
  """Linear-probe accuracy of every factor from every latent, with chance levels.

  Args:
    latents: {name: (train_z, test_z)}, e.g. "z_s_x", "z_x", "z_y".
    factors: {name: (train_labels, test_labels)}, e.g. "digit", "x_color".
    l2: ridge strength of `linear_probe_accuracy`.

  Returns:
    {"<latent>/<factor>": probe accuracy, "<latent>/<factor>_chance": the
    frequency of the most common test label} for every pair. A latent that
    encodes a factor scores near 1; one independent of it, near chance.
  """
  out = {}
  for f_name, (f_train, f_test) in factors.items():
    values, counts = np.unique(np.asarray(f_test), return_counts=True)
    chance = float(counts.max() / counts.sum()) if counts.size else float("nan")
    for z_name, (z_train, z_test) in latents.items():
      n_train, n_test = np.shape(z_train)[:1], np.shape(z_test)[:1]
      if np.shape(f_train)[:1] != n_train or np.shape(f_test)[:1] != n_test:
        raise ValueError(f"factor {f_name!r} has {np.shape(f_train)[:1]} train and "
                         f"{np.shape(f_test)[:1]} test labels; latent {z_name!r} has "
                         f"{n_train} train and {n_test} test rows")
      out[f"{z_name}/{f_name}"] = linear_probe_accuracy(z_train, f_train, z_test, f_test, l2=l2)
      out[f"{z_name}/{f_name}_chance"] = chance
  return out
