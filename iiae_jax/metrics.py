"""Evaluation metrics (docs/method.md §5): zero-shot retrieval, paired retrieval, disentanglement probes.

Pure functions: arrays in (NumPy or JAX, any real dtype), a dict of Python
floats out. The leading axis indexes examples; trailing axes are flattened, so
a spatial z_s of shape (N, 8, 8, 128) is one 8192-d embedding per example.
Non-finite embeddings raise a ValueError naming the argument: a metric is never
silently computed from NaN.

Each metric is defined here in a few lines (a stable argsort, an argmin, a
least-squares solve); these definitions are what the tests hold every
implementation to. Large retrieval problems go to `iiae_jax.fast_metrics`,
which computes the same numbers with less time and memory (tested equal to the
definitions); each public function's docstring says which one runs when.
"""
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np

from iiae_jax import fast_metrics

# ---------------------------------------------------------------------------
# Zero-shot retrieval (docs/method.md §5a): the definitions.


def _cosine_distances(q_unit: np.ndarray, g_unit: np.ndarray) -> np.ndarray:
  """(Nq, Ng) distances 1 - q.g of unit rows: float64 products rounded once to float32, with
  round-off below 0 clipped to 0."""
  return np.maximum((1.0 - q_unit @ g_unit.T).astype(np.float32), np.float32(0))


def ranked_by_cosine(query, gallery) -> np.ndarray:
  """(Nq, Ng) gallery indices, nearest first: the ranking of `zero_shot_retrieval` (cosine
  distance, ties by gallery index)."""
  q, g = _unit_rows(_embeddings(query, "query")), _unit_rows(_embeddings(gallery, "gallery"))
  return _ranking(_cosine_distances(q, g))


def _ranking(dist: np.ndarray) -> np.ndarray:
  return np.argsort(dist, axis=1, kind="stable")  # ties: the lower gallery index ranks first


def _zero_shot_sums(dist: np.ndarray, q_codes: np.ndarray, g_codes: np.ndarray,
                    ks: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per query, with rel_i and prec_i the relevance and precision at rank i:
  sum_i prec_i rel_i (Nq,), and per K sum_{i<=K} rel_i and sum_{i<=K} prec_i rel_i (len(ks), Nq).
  """
  order = _ranking(dist)
  rel = g_codes[order] == q_codes[:, None]                        # rel_i
  prec = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)  # prec_i
  gain = np.where(rel, prec, 0.0)                                 # prec_i rel_i
  top_hits = np.stack([rel[:, :k].sum(axis=1) for k in ks])  # ranks beyond the gallery: not relevant
  top_gain = np.stack([gain[:, :k].sum(axis=1) for k in ks])
  return gain.sum(axis=1), top_hits, top_gain


def _zero_shot_summary(gain, top_hits, top_gain, n_relevant, ks) -> Dict[str, float]:
  """The means over queries of the per-query sums (see `zero_shot_retrieval`)."""
  has_rel = n_relevant > 0
  ap = gain[has_rel] / n_relevant[has_rel]
  out = {
      "map_all": float(ap.mean()) if ap.size else float("nan"),
      "num_queries": int(n_relevant.size),
      "queries_without_relevant": int(n_relevant.size - has_rel.sum()),
  }
  for hits, gain_k, k in zip(top_hits, top_gain, ks):
    out[f"precision@{k}"] = float(np.mean(hits / k))
    out[f"map@{k}_reference"] = float(np.mean(gain_k / k))
    out[f"map@{k}"] = float(np.mean(np.divide(gain_k, hits, out=np.zeros(hits.shape), where=hits > 0)))
  return out


# From this many (query, gallery item) pairs on, zero_shot_retrieval runs the fast path; below
# it the definitions take at most ~15 ms.
_FAST_RETRIEVAL_MIN_PAIRS = 2 ** 16


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

  Which code runs: below `_FAST_RETRIEVAL_MIN_PAIRS` (2**16) query-gallery
  pairs, the definitions as written (`_zero_shot_sums`: a stable argsort of
  the whole distance matrix; at most ~15 ms there); from there on
  `fast_metrics.zero_shot_sums`, the same numbers (up to round-off in the last
  bits of a sum) from one integer sort per query, chunk by chunk in threads,
  in memory linear in chunk_size: 6-10x faster at every size, and the only one
  whose memory stays bounded at Sketchy's size.

  Args:
    query: (Nq, D, ...) query embeddings (e.g. sketches' z_s means).
    query_labels: (Nq,) labels (any comparable dtype).
    gallery: (Ng, D, ...) gallery embeddings (e.g. photos' z_s means).
    gallery_labels: (Ng,) labels.
    ks: one K or several; each reported metric family gets one entry per K.
    chunk_size: queries ranked per step of the fast path; its work memory is
      about 20 * chunk_size * Ng bytes per thread.
    num_threads: the fast path's worker threads (default: the CPUs available
      to this process).

  Returns:
    A dict of Python floats (and ints for the counts).

  Cost: one float64 matmul and one sort per query (the fast path: about 2 s for
  14,421 x 14,626 on two cores).
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
  num_threads = _num_threads(num_threads)

  classes, codes = np.unique(np.concatenate([ql, gl]), return_inverse=True)
  q_codes, g_codes = codes[:q.shape[0]], codes[q.shape[0]:]
  n_relevant = np.bincount(g_codes, minlength=classes.size)[q_codes]
  q_unit, g_unit = _unit_rows(q), _unit_rows(g)
  if q.shape[0] * g.shape[0] < _FAST_RETRIEVAL_MIN_PAIRS:
    sums = _zero_shot_sums(_cosine_distances(q_unit, g_unit), q_codes, g_codes, ks)
  else:
    sums = fast_metrics.zero_shot_sums(q_unit, q_codes, g_unit, g_codes, n_relevant, ks,
                                       chunk_size=chunk_size, num_threads=num_threads)
  return _zero_shot_summary(*sums, n_relevant, ks)


# ---------------------------------------------------------------------------
# Paired retrieval (docs/method.md §5b).


def _nearest_is_own_pair(q: np.ndarray, g: np.ndarray) -> np.ndarray:
  """(N,) booleans: whether g[i] is the nearest row of g to q[i] by sum((g_j - q_i)^2) in
  float64 (ties: the lowest index, as np.argmin)."""
  return np.array([np.argmin(((g - q[i]) ** 2).sum(axis=1)) == i for i in range(q.shape[0])])


# From this much work (pairs squared times embedding size) on, paired_retrieval_accuracy runs
# the fast path; below it the definition takes at most ~20 ms, less than compiling the fast one.
_FAST_PAIRED_MIN_WORK = 2 ** 22


def paired_retrieval_accuracy(emb_x, emb_y, *, chunk_size: int = 1024) -> Dict[str, float]:
  """Paired cross-domain retrieval accuracy by squared-L2 nearest neighbour.

  X->Y: pair i is a hit when the nearest emb_y[j] to emb_x[i] is j = i; Y->X
  likewise with the roles swapped. Accuracies are fractions in [0, 1].

  Ties: when several items are equally near, the lowest index is the nearest,
  so pair i misses when some j < i is exactly as near as i. Distances are
  sum((x - y)^2) in float64, after one exact power-of-two scaling of both
  inputs that keeps the squares finite.

  Which code runs: while N * N * D is below `_FAST_PAIRED_MIN_WORK` (2**22),
  the definition as written (`_nearest_is_own_pair`: an argmin per row; at
  most ~20 ms there, less than the fast path's compilation for a new shape);
  from there on `fast_metrics.paired_hits`, which computes the distances as
  |x|^2 - 2 x.y + |y|^2 in float32 on the device and redoes in float64 every
  decision that float32's error bound cannot settle, so both give the same
  hits (30-100x faster once compiled).

  Args:
    emb_x: (N, ...) embeddings of domain X, trailing axes flattened.
    emb_y: (N, ...) embeddings of domain Y; row i pairs with emb_x[i].
    chunk_size: rows of emb_x per step of the fast path; its work memory is
      about 12 * chunk_size * N bytes on top of float32 copies of both inputs.

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
  if n * n * dim < _FAST_PAIRED_MIN_WORK:
    xs, ys = _scaled_to_unit_peak(x, y)
    x_to_y, y_to_x = _nearest_is_own_pair(xs, ys), _nearest_is_own_pair(ys, xs)
  else:
    x_to_y, y_to_x = fast_metrics.paired_hits(x, y, chunk_size=chunk_size)
  return {"num_pairs": int(n), "x_to_y": float(x_to_y.mean()), "y_to_x": float(y_to_x.mean())}


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


# ---------------------------------------------------------------------------
# Input checks (the public boundary) and scaling.


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


def _num_threads(num_threads: Optional[int]) -> Optional[int]:
  if num_threads is not None and int(num_threads) < 1:
    raise ValueError(f"num_threads must be >= 1; got {num_threads!r}")
  return None if num_threads is None else int(num_threads)


def _unit_rows(a: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (float64); an all-zero row stays zero."""
  a = a.astype(np.float64)
  peak = np.abs(a).max(axis=1, keepdims=True)
  a = a / np.where(peak > 0, peak, 1.0)  # first to [-1, 1]: squares can neither overflow nor vanish
  norm = np.sqrt(np.einsum("ij,ij->i", a, a))[:, None]
  return a / np.where(norm > 0, norm, 1.0)


def _scaled_to_unit_peak(*arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
  """The arrays in float64 times the power of two that brings their largest magnitude into
  [1/2, 1): exact, and it keeps squared differences finite whatever the inputs' scale."""
  peak = max(float(np.abs(a).max()) for a in arrays)
  exponent = -int(np.frexp(peak)[1]) if peak > 0 else 0
  return tuple(np.ldexp(a.astype(np.float64), exponent) for a in arrays)
