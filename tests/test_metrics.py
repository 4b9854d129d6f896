"""Evaluation metrics against deliberately naive implementations of their definitions, on the
plain definitions and on the fast paths alike, and the fast paths against the plain ones."""
import contextlib
from unittest import mock

import numpy as np
import pytest

from iiae_jax import fast_metrics, metrics
from iiae_jax.metrics import (disentanglement, linear_probe_accuracy, paired_retrieval_accuracy,
                              zero_shot_retrieval)


# ---------------------------------------------------------------------------
# Naive references: one query at a time, a stable argsort, explicit loops.


def naive_distances(q, g):
  """The documented distance: 1 - cos in float64, rounded to float32, clipped at 0."""
  q = np.asarray(q, np.float64).reshape(len(q), -1)
  g = np.asarray(g, np.float64).reshape(len(g), -1)
  qn = np.linalg.norm(q, axis=1, keepdims=True)
  gn = np.linalg.norm(g, axis=1, keepdims=True)
  qu = q / np.where(qn > 0, qn, 1.0)
  gu = g / np.where(gn > 0, gn, 1.0)
  return [np.maximum((1.0 - gu @ qu[i]).astype(np.float32), 0) for i in range(len(q))]


def naive_retrieval(q, ql, g, gl, ks, tie="index"):
  """Every metric of `zero_shot_retrieval` from its definition, query by query."""
  aps, without = [], 0
  per_k = {k: {"p": [], "ref": [], "usual": []} for k in ks}
  for i, dist in enumerate(naive_distances(q, g)):
    rel_all = np.asarray(gl) == ql[i]
    if tie == "index":
      order = np.argsort(dist, kind="stable")
    elif tie == "relevant_first":
      order = np.lexsort((~rel_all, dist))
    else:  # "relevant_last"
      order = np.lexsort((rel_all, dist))
    rel = rel_all[order].astype(float)
    prec = np.zeros(len(rel))
    hits = 0
    for r in range(len(rel)):
      hits += rel[r]
      prec[r] = hits / (r + 1)
    if rel.sum() > 0:
      aps.append(sum(prec[r] * rel[r] for r in range(len(rel))) / rel.sum())
    else:
      without += 1
    for k in ks:
      top_rel = rel[:k]  # ranks beyond the gallery count as not relevant
      s = sum(prec[r] * rel[r] for r in range(len(top_rel)))
      per_k[k]["p"].append(top_rel.sum() / k)
      per_k[k]["ref"].append(s / k)
      per_k[k]["usual"].append(s / top_rel.sum() if top_rel.sum() else 0.0)
  out = {"map_all": float(np.mean(aps)) if aps else float("nan"), "num_queries": len(q),
         "queries_without_relevant": without}
  for k in ks:
    out[f"precision@{k}"] = float(np.mean(per_k[k]["p"]))
    out[f"map@{k}_reference"] = float(np.mean(per_k[k]["ref"]))
    out[f"map@{k}"] = float(np.mean(per_k[k]["usual"]))
  return out


def assert_metrics_equal(got, want, atol=1e-12):
  assert set(got) == set(want)
  for name in want:
    if isinstance(want[name], float) and np.isnan(want[name]):
      assert np.isnan(got[name]), name
    else:
      assert got[name] == pytest.approx(want[name], abs=atol), name


def tied_embeddings(rng, n, dim=6):
  """Low-cardinality rows whose norms are powers of two (1, 2 or 4) or zero.

  Their cosines are sums of multiples of 1/16, exact in any summation order,
  so mathematically equal distances are equal in every implementation and
  ties are frequent, including all-zero rows (distance 1 to everything).
  """
  x = np.zeros((n, dim))
  for i in range(n):
    nnz = rng.choice([0, 1, 4])
    cols = rng.choice(dim, nnz, replace=False)
    x[i, cols] = rng.choice([-1.0, 1.0], nnz) * rng.choice([1.0, 2.0])
  return x


@contextlib.contextmanager
def metrics_path(name: str):
  """Makes the public metrics run the plain definitions ("plain") or the fast paths ("fast")
  whatever the size of their inputs."""
  threshold = 0 if name == "fast" else np.inf
  with mock.patch.object(metrics, "_FAST_RETRIEVAL_MIN_PAIRS", threshold), \
       mock.patch.object(metrics, "_FAST_PAIRED_MIN_WORK", threshold):
    yield


@pytest.fixture(params=["plain", "fast"])
def each_path(request):
  """Runs a test once on the plain definitions and once on the fast paths."""
  with metrics_path(request.param):
    yield request.param


# ---------------------------------------------------------------------------
# Zero-shot retrieval.


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.usefixtures("each_path")
def test_retrieval_matches_naive_on_random_data_with_duplicates(seed):
  rng = np.random.default_rng(seed)
  q, g = rng.normal(size=(60, 8)), rng.normal(size=(150, 8))
  ql, gl = rng.integers(0, 4, 60), rng.integers(0, 4, 150)
  g[[10, 40, 77]] = g[3]  # forced ties of mixed relevance
  g[100:110] = g[120:130]
  q[5] = g[3]  # a query at distance 0 from a tie
  ks = (1, 7, 100, 150, 400)  # 400 > gallery
  want = naive_retrieval(q, ql, g, gl, ks)
  assert_metrics_equal(zero_shot_retrieval(q, ql, g, gl, ks, chunk_size=16, num_threads=2), want)


@pytest.mark.parametrize("max_scans", [0, 2, 10**9])
def test_retrieval_matches_naive_with_low_cardinality_ties(max_scans, monkeypatch):
  # 0: every mixed tie goes through the 64-bit re-sort; 10**9: every one is
  # resolved by scanning its row; 2: both paths in one run.
  monkeypatch.setattr(fast_metrics, "_MAX_TIE_SCANS_PER_ROW", max_scans)
  monkeypatch.setattr(metrics, "_FAST_RETRIEVAL_MIN_PAIRS", 0)
  rng = np.random.default_rng(3)
  q, g = tied_embeddings(rng, 50), tied_embeddings(rng, 120)
  ql, gl = rng.integers(0, 3, 50), rng.integers(0, 3, 120)
  ks = (3, 50, 500)
  want = naive_retrieval(q, ql, g, gl, ks)
  # The ties matter: breaking them the other way changes the metrics.
  assert naive_retrieval(q, ql, g, gl, ks, tie="relevant_first")["map_all"] > want["map_all"] + 1e-3
  assert_metrics_equal(zero_shot_retrieval(q, ql, g, gl, ks, chunk_size=8, num_threads=2), want)


@pytest.mark.usefixtures("each_path")
def test_retrieval_single_query_and_string_labels():
  rng = np.random.default_rng(4)
  q, g = rng.normal(size=(1, 5)), rng.normal(size=(30, 5))
  gl = rng.choice(np.array(["cat", "dog", "owl"]), 30)
  ql = np.array(["dog"])
  want = naive_retrieval(q, ql, g, gl, (5, 31))
  assert_metrics_equal(zero_shot_retrieval(q, ql, g, gl, ks=(5, 31)), want)


@pytest.mark.usefixtures("each_path")
def test_hand_worked_example_with_a_tie():
  # Query (1, 0) against five items; cosine distances 1 - cos:
  #   g0 (0, 1): 1      g1 (1, 0): 0      g2 (1, 1): 1 - 1/sqrt(2)
  #   g3 (-1, 0): 2     g4 (1, -1): 1 - 1/sqrt(2)   (tie with g2)
  # Ranking (the tie broken by gallery index, g2 before g4): g1, g2, g4, g0, g3.
  # Labels a, b, a, b... give rel = [1, 0, 1, 0, 1], prec = [1, 1/2, 2/3, 1/2, 3/5],
  # three relevant items in the gallery.
  #   AP = (1 + 2/3 + 3/5) / 3 = 34/45.
  #   K=2: P = 1/2; mAP_ref = (1/2)(1) = 1/2; mAP = 1/1 = 1.
  #   K=3: P = 2/3; mAP_ref = (1/3)(1 + 2/3) = 5/9; mAP = (1 + 2/3)/2 = 5/6.
  #   K=10 (> gallery): P = 3/10; mAP_ref = (34/15)/10 = 17/75; mAP = (34/15)/3 = 34/45.
  # Were the tie broken the other way (g4 first), rel = [1, 1, 0, 0, 1], AP = 13/15.
  q = np.array([[1.0, 0.0]])
  g = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [1.0, -1.0]])
  gl = np.array(["b", "a", "b", "a", "a"])
  got = zero_shot_retrieval(q, np.array(["a"]), g, gl, ks=(2, 3, 10))
  want = {"map_all": 34 / 45, "num_queries": 1, "queries_without_relevant": 0,
          "precision@2": 1 / 2, "map@2_reference": 1 / 2, "map@2": 1.0,
          "precision@3": 2 / 3, "map@3_reference": 5 / 9, "map@3": 5 / 6,
          "precision@10": 3 / 10, "map@10_reference": 17 / 75, "map@10": 34 / 45}
  assert_metrics_equal(got, want, atol=1e-12)


@pytest.mark.usefixtures("each_path")
def test_query_class_absent_from_gallery_is_left_out_of_map_all():
  rng = np.random.default_rng(5)
  q, g = rng.normal(size=(20, 4)), rng.normal(size=(40, 4))
  ql, gl = rng.integers(0, 3, 20), rng.integers(0, 3, 40)
  ql[[2, 11, 17]] = 9  # no gallery item has label 9
  got = zero_shot_retrieval(q, ql, g, gl, ks=(5,))
  assert got["queries_without_relevant"] == 3
  present = ql != 9
  # map_all averages over the 17 queries with relevant items only ...
  only_present = zero_shot_retrieval(q[present], ql[present], g, gl, ks=(5,))
  assert got["map_all"] == pytest.approx(only_present["map_all"], abs=1e-12)
  # ... while the top-K metrics count the other three as 0.
  for name in ("precision@5", "map@5_reference", "map@5"):
    assert got[name] == pytest.approx(only_present[name] * 17 / 20, abs=1e-12)
  assert_metrics_equal(got, naive_retrieval(q, ql, g, gl, (5,)))


@pytest.mark.usefixtures("each_path")
def test_no_query_with_relevant_items_gives_nan_map_all():
  rng = np.random.default_rng(6)
  got = zero_shot_retrieval(rng.normal(size=(3, 4)), [7, 7, 8], rng.normal(size=(5, 4)),
                            [0, 1, 2, 3, 4], ks=(2,))
  assert np.isnan(got["map_all"])
  assert got["queries_without_relevant"] == 3 and got["precision@2"] == 0.0


@pytest.mark.usefixtures("each_path")
def test_zero_norm_embeddings_sit_at_distance_one():
  # A zero query ties with the whole gallery: the ranking is the gallery order.
  g = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]])
  gl = np.array([0, 1, 1, 0])
  got = zero_shot_retrieval(np.zeros((1, 2)), [1], g, gl, ks=(2,))
  # rel = [0, 1, 1, 0]: AP = (1/2 + 2/3) / 2.
  assert got["map_all"] == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-12)
  # A zero gallery item ranks with the orthogonal ones (distance 1), before
  # the opposite one (distance 2) and after the aligned one (distance 0).
  g2 = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
  got = zero_shot_retrieval(np.array([[1.0, 0.0]]), [5], g2, [0, 5, 0], ks=(1, 2))
  assert got["precision@1"] == 0.0 and got["precision@2"] == 0.5
  assert got["map_all"] == pytest.approx(1 / 2, abs=1e-12)


@pytest.mark.usefixtures("each_path")
def test_retrieval_is_independent_of_chunking_and_threads():
  rng = np.random.default_rng(7)
  q, g = tied_embeddings(rng, 70), rng.normal(size=(90, 6))
  g[::9] = g[1]
  ql, gl = rng.integers(0, 5, 70), rng.integers(0, 5, 90)
  runs = [zero_shot_retrieval(q, ql, g, gl, ks=(10,), chunk_size=c, num_threads=t)
          for c, t in ((1, 1), (7, 2), (64, 3), (1000, None))]
  for r in runs[1:]:
    assert r == runs[0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["query", "gallery"])
def test_non_finite_embeddings_raise_naming_the_argument(bad, which):
  rng = np.random.default_rng(8)
  args = {"query": rng.normal(size=(4, 3)), "gallery": rng.normal(size=(6, 3))}
  args[which][2, 1] = bad
  with pytest.raises(ValueError, match=rf"{which} has non-finite values .* row 2"):
    zero_shot_retrieval(args["query"], [0, 1, 0, 1], args["gallery"], [0, 1, 0, 1, 0, 1])


def test_bad_retrieval_inputs_raise_naming_the_argument():
  rng = np.random.default_rng(9)
  q, g = rng.normal(size=(4, 3)), rng.normal(size=(6, 3))
  ql, gl = [0, 1, 0, 1], [0, 1, 0, 1, 0, 1]
  with pytest.raises(ValueError, match=r"query_labels must have shape \(4,\).*got shape \(3,\)"):
    zero_shot_retrieval(q, ql[:3], g, gl)
  with pytest.raises(ValueError, match=r"gallery_labels must have shape \(6,\).*got shape \(6, 1\)"):
    zero_shot_retrieval(q, ql, g, np.array(gl)[:, None])
  with pytest.raises(ValueError, match=r"same embedding size.*\(4, 3\).*\(6, 2\)"):
    zero_shot_retrieval(q, ql, g[:, :2], gl)
  with pytest.raises(ValueError, match=r"query must have shape \(N, D, \.\.\.\).*got shape \(4,\)"):
    zero_shot_retrieval(q[:, 0], ql, g, gl)
  with pytest.raises(ValueError, match=r"gallery must have shape .*got shape \(0, 3\)"):
    zero_shot_retrieval(q, ql, g[:0], [])
  for k in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match=r"ks must hold positive integers; got"):
      zero_shot_retrieval(q, ql, g, gl, ks=(10, k))
  with pytest.raises(ValueError, match=r"chunk_size must hold positive integers"):
    zero_shot_retrieval(q, ql, g, gl, chunk_size=0)
  with pytest.raises(ValueError, match=r"num_threads must be >= 1; got 0"):
    zero_shot_retrieval(q, ql, g, gl, num_threads=0)
  with pytest.raises(ValueError, match=r"must be real-valued"):
    zero_shot_retrieval(q.astype(complex), ql, g, gl)
  # Mixed label kinds: np.unique would silently take the number 1 for the string "1".
  with pytest.raises(ValueError, match=r"query_labels \(int64\) and gallery_labels \(<U1\) must both"):
    zero_shot_retrieval(q, ql, g, [str(c) for c in gl])


@pytest.mark.usefixtures("each_path")
def test_extreme_magnitudes_neither_overflow_nor_vanish():
  # Cosine distances ignore row scale, even where squares leave float64's range.
  rng = np.random.default_rng(17)
  q, g = rng.normal(size=(6, 5)), rng.normal(size=(12, 5))
  ql, gl = rng.integers(0, 2, 6), rng.integers(0, 2, 12)
  scales = np.where(np.arange(12) % 2 == 0, 1e200, 1e-200)[:, None]
  assert (zero_shot_retrieval(q * 1e-300, ql, g * scales, gl, ks=(4,))
          == zero_shot_retrieval(q, ql, g, gl, ks=(4,)))


@pytest.mark.usefixtures("each_path")
def test_trailing_axes_are_flattened():
  rng = np.random.default_rng(10)
  q, g = rng.normal(size=(5, 2, 3)), rng.normal(size=(9, 2, 3))
  ql, gl = rng.integers(0, 2, 5), rng.integers(0, 2, 9)
  assert (zero_shot_retrieval(q, ql, g, gl, ks=(3,))
          == zero_shot_retrieval(q.reshape(5, 6), ql, g.reshape(9, 6), gl, ks=(3,)))


def hard_retrieval_problem(rng, n_query, n_gallery, n_labels=3):
  """Tied low-cardinality rows (zero rows among them) with duplicated gallery rows."""
  q, g = tied_embeddings(rng, n_query), tied_embeddings(rng, n_gallery)
  g[rng.integers(0, n_gallery, n_gallery // 5)] = g[rng.integers(0, n_gallery, n_gallery // 5)]
  return q, rng.integers(0, n_labels, n_query), g, rng.integers(0, n_labels, n_gallery)


@pytest.mark.parametrize("chunk_size, num_threads", [(1, 1), (7, 2), (256, None)])
def test_fast_retrieval_equals_the_definitions_with_ties_duplicates_and_extreme_scales(
    chunk_size, num_threads):
  rng = np.random.default_rng(20)
  q, ql, g, gl = hard_retrieval_problem(rng, 90, 400)
  ks = (1, 10, 133, 1000)
  with metrics_path("plain"):
    want = zero_shot_retrieval(q, ql, g, gl, ks)
  # The ties matter: breaking them the other way changes the metrics.
  assert naive_retrieval(q, ql, g, gl, ks, tie="relevant_first")["map_all"] > want["map_all"] + 1e-3
  # Rows of +-1 and +-2 scaled by 1e+-200: their unit rows, so their ties, stay exactly the same.
  q = q * rng.choice([1.0, 1e200, 1e-200], (len(q), 1))
  g = g * rng.choice([1.0, 1e200, 1e-200], (len(g), 1))
  with metrics_path("plain"):
    assert zero_shot_retrieval(q, ql, g, gl, ks) == want
  with metrics_path("fast"):
    got = zero_shot_retrieval(q, ql, g, gl, ks, chunk_size=chunk_size, num_threads=num_threads)
  assert_metrics_equal(got, want)


def test_fast_retrieval_equals_the_definitions_on_random_data_with_duplicates():
  rng = np.random.default_rng(21)
  q, g = rng.normal(size=(120, 16)), rng.normal(size=(700, 16))
  g[rng.integers(0, 700, 150)] = g[rng.integers(0, 700, 150)]
  q[:10] = g[:10]
  ql, gl = rng.integers(0, 8, 120), rng.integers(0, 8, 700)
  with metrics_path("plain"):
    want = zero_shot_retrieval(q, ql, g, gl, (5, 100))
  with metrics_path("fast"):
    got = zero_shot_retrieval(q, ql, g, gl, (5, 100), chunk_size=32, num_threads=2)
  assert_metrics_equal(got, want)


def test_large_retrieval_problems_run_the_fast_path(monkeypatch):
  calls = []
  fast = fast_metrics.zero_shot_sums

  def counting(*args, **kwargs):
    calls.append(args[0].shape[0])
    return fast(*args, **kwargs)
  monkeypatch.setattr(fast_metrics, "zero_shot_sums", counting)
  rng = np.random.default_rng(22)
  g, gl = rng.normal(size=(256, 3)), rng.integers(0, 4, 256)
  for n_query in (255, 256):  # 255 * 256 < 2**16 <= 256 * 256
    q = rng.normal(size=(n_query, 3))
    got = zero_shot_retrieval(q, rng.integers(0, 4, n_query), g, gl, ks=(5,))
    assert got["num_queries"] == n_query
  assert calls == [256]


# ---------------------------------------------------------------------------
# Paired retrieval.


def naive_paired(x, y):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  y = np.asarray(y, np.float64).reshape(len(y), -1)
  x_to_y = np.mean([np.argmin(((y - x[i]) ** 2).sum(1)) == i for i in range(len(x))])
  y_to_x = np.mean([np.argmin(((x - y[i]) ** 2).sum(1)) == i for i in range(len(y))])
  return x_to_y, y_to_x  # np.argmin: the lowest index among equal minima


@pytest.mark.usefixtures("each_path")
def test_paired_retrieval_matches_naive_including_ties():
  rng = np.random.default_rng(11)
  x = rng.normal(size=(120, 4, 2, 3))
  y = x + 1.2 * rng.normal(size=x.shape)
  y[5] = y[3]  # x_5 is as near y_3 as y_5: index 3 wins, a miss
  y[40] = y[60]  # likewise x_60 loses to y_40
  x[7] = x[9]  # and y_9 to x_7
  got = paired_retrieval_accuracy(x, y, chunk_size=32)
  want = naive_paired(x, y)
  assert (got["x_to_y"], got["y_to_x"]) == pytest.approx(want, abs=0)
  assert got["num_pairs"] == 120


@pytest.mark.usefixtures("each_path")
def test_paired_retrieval_tie_goes_to_the_lowest_index():
  x = np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 0.0]])
  y = np.array([[0.0, 0.0], [0.0, 0.0], [9.0, 0.0]])  # y0 == y1: x1 is nearest to both
  # X->Y: x0 -> y0 (tie with y1, index 0 wins): hit; x1 -> y0 (tie): miss; x2 -> y2: hit.
  # Y->X: y0 -> x0: hit; y1 -> x0: miss; y2 -> x2: hit.
  got = paired_retrieval_accuracy(x, y)
  assert got["x_to_y"] == pytest.approx(2 / 3) and got["y_to_x"] == pytest.approx(2 / 3)


@pytest.mark.usefixtures("each_path")
def test_paired_retrieval_exact_despite_a_large_common_offset():
  # |x|^2 - 2 x.y + |y|^2 in float32 would lose these 1e-3 differences to the
  # 1e4 offset; the result must still match the float64 naive loop.
  rng = np.random.default_rng(12)
  x = 1e4 + 1e-3 * rng.normal(size=(150, 16))
  y = x + 1e-3 * rng.normal(size=x.shape)
  got = paired_retrieval_accuracy(x, y, chunk_size=64)
  assert (got["x_to_y"], got["y_to_x"]) == pytest.approx(naive_paired(x, y), abs=0)


@pytest.mark.usefixtures("each_path")
def test_paired_retrieval_survives_float32_overflow_and_underflow():
  rng = np.random.default_rng(18)
  x = rng.normal(size=(80, 6))
  y = x + 0.8 * rng.normal(size=x.shape)
  want = naive_paired(x, y)
  # Squares beyond float32's range either way; float64 inputs whose sum overflows, or
  # subnormal ones whose scale 2**(10 - exponent) does.
  for scale in (1e30, 1e-30, 2e307, 1e-310):
    got = paired_retrieval_accuracy(x * scale, y * scale)
    assert (got["x_to_y"], got["y_to_x"]) == pytest.approx(want, abs=0), scale


def test_paired_retrieval_is_not_slowed_by_one_far_off_embedding(monkeypatch):
  """One outlier used to widen every pair's float32 error bound until every pair went to the
  exact float64 check against every item (quadratic: minutes at the MNIST-CDCB test size)."""
  rng = np.random.default_rng(19)
  x = rng.normal(size=(400, 64)).astype(np.float32)
  y = x + 2.0 * rng.normal(size=x.shape).astype(np.float32)
  y[7] *= 1000.0
  checked = []
  resolve = fast_metrics._resolve_nearest  # pylint: disable=protected-access

  def counting(idx, *args, **kwargs):
    checked.append(len(idx))
    return resolve(idx, *args, **kwargs)
  monkeypatch.setattr(fast_metrics, "_resolve_nearest", counting)
  monkeypatch.setattr(metrics, "_FAST_PAIRED_MIN_WORK", 0)
  got = paired_retrieval_accuracy(x, y)
  assert (got["x_to_y"], got["y_to_x"]) == pytest.approx(naive_paired(x, y), abs=0)
  assert sum(checked) < 0.2 * 2 * len(x), checked


@pytest.mark.usefixtures("each_path")
def test_paired_retrieval_of_identical_embeddings_is_only_the_first_pair():
  x = np.ones((40, 8))
  got = paired_retrieval_accuracy(x, x.copy())
  assert got["x_to_y"] == pytest.approx(1 / 40) and got["y_to_x"] == pytest.approx(1 / 40)


def test_paired_retrieval_validates_inputs():
  rng = np.random.default_rng(13)
  x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
  y[4, 0] = np.nan
  with pytest.raises(ValueError, match=r"emb_y has non-finite values .* row 4"):
    paired_retrieval_accuracy(x, y)
  x_bad = x.copy()
  x_bad[0, 0] = np.inf
  with pytest.raises(ValueError, match=r"emb_x has non-finite values"):
    paired_retrieval_accuracy(x_bad, x)
  with pytest.raises(ValueError, match=r"emb_x \(10, 3\) and emb_y \(9, 3\)"):
    paired_retrieval_accuracy(x, x[:9])
  with pytest.raises(ValueError, match=r"emb_x must have shape"):
    paired_retrieval_accuracy(x[0], x[1])


@pytest.mark.parametrize("scale", [1.0, 1e30, 1e-30, 2e307, 1e-310])
def test_fast_paired_hits_equal_the_definition_with_ties_duplicates_and_extreme_scales(scale):
  # Points of a small integer grid: many pairs and competitors at exactly equal distances.
  rng = np.random.default_rng(23)
  x = rng.integers(-2, 3, size=(150, 5)).astype(np.float64)
  y = x + rng.integers(-1, 2, size=x.shape)
  y[10:20] = y[30:40]
  x[50:55] = x[60:65]
  x, y = x * scale, y * scale
  xs, ys = metrics._scaled_to_unit_peak(x, y)  # pylint: disable=protected-access
  want = (metrics._nearest_is_own_pair(xs, ys), metrics._nearest_is_own_pair(ys, xs))  # pylint: disable=protected-access
  got = fast_metrics.paired_hits(x, y, chunk_size=64)
  for hits, expected in zip(got, want):
    assert 0 < expected.sum() < len(x)
    np.testing.assert_array_equal(hits, expected)


def test_large_paired_problems_run_the_fast_path(monkeypatch):
  calls = []
  fast = fast_metrics.paired_hits

  def counting(x, y, **kwargs):
    calls.append(x.shape[0])
    return fast(x, y, **kwargs)
  monkeypatch.setattr(fast_metrics, "paired_hits", counting)
  rng = np.random.default_rng(24)
  for n in (255, 256):  # 255 * 255 * 64 < 2**22 <= 256 * 256 * 64
    x = rng.normal(size=(n, 64))
    got = paired_retrieval_accuracy(x, x + rng.normal(size=x.shape))
    assert got["num_pairs"] == n
  assert calls == [256]


# ---------------------------------------------------------------------------
# Disentanglement probes.


def test_probe_reads_a_linear_factor_and_not_an_independent_one():
  rng = np.random.default_rng(14)
  n = 1200
  digit, color = rng.integers(0, 10, n), rng.integers(0, 3, n)
  z_s = rng.normal(size=(10, 24))[digit] + 0.3 * rng.normal(size=(n, 24))
  z_x = np.eye(3)[color] @ rng.normal(size=(3, 8)) + 0.3 * rng.normal(size=(n, 8))
  tr, te = slice(0, 900), slice(900, n)
  got = disentanglement({"z_s_x": (z_s[tr], z_s[te]), "z_x": (z_x[tr], z_x[te])},
                        {"digit": (digit[tr], digit[te]), "x_color": (color[tr], color[te])})
  assert set(got) == {f"{z}/{f}{s}" for z in ("z_s_x", "z_x") for f in ("digit", "x_color")
                      for s in ("", "_chance")}
  assert got["z_s_x/digit"] > 0.97 and got["z_x/x_color"] > 0.97
  chance_digit = np.bincount(digit[te]).max() / len(digit[te])
  assert got["z_x/digit_chance"] == got["z_s_x/digit_chance"] == pytest.approx(chance_digit)
  assert abs(got["z_x/digit"] - 0.1) < 0.06  # independent of the digit: about 1/10
  assert abs(got["z_s_x/x_color"] - 1 / 3) < 0.08


def test_probe_handles_more_features_than_examples_and_unseen_test_labels():
  rng = np.random.default_rng(15)
  labels = rng.integers(0, 2, 60)
  z = rng.normal(size=(60, 4, 4, 8)) + 3.0 * labels[:, None, None, None]  # 128-d > 40 train rows
  test_labels = labels[40:].copy()
  test_labels[:5] = 7  # never seen in training: always wrong
  acc = linear_probe_accuracy(z[:40], labels[:40], z[40:], test_labels)
  assert acc == pytest.approx(15 / 20)


def test_probe_validates_inputs():
  rng = np.random.default_rng(16)
  z = rng.normal(size=(10, 3))
  with pytest.raises(ValueError, match=r"train_labels must have shape \(10,\)"):
    linear_probe_accuracy(z, np.zeros(9), z, np.zeros(10))
  with pytest.raises(ValueError, match=r"same feature size"):
    linear_probe_accuracy(z, np.zeros(10), z[:, :2], np.zeros(10))
  with pytest.raises(ValueError, match=r"l2 must be positive"):
    linear_probe_accuracy(z, np.zeros(10), z, np.zeros(10), l2=0.0)
  z[3, 2] = np.nan
  with pytest.raises(ValueError, match=r"test_z has non-finite"):
    linear_probe_accuracy(z[:3], np.zeros(3), z, np.zeros(10))
  with pytest.raises(ValueError, match=r"factor 'digit' has"):
    disentanglement({"z": (z[:5], z[5:])}, {"digit": (np.zeros(4), np.zeros(5))})
