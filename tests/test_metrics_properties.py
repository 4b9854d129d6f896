"""Property tests of the zero-shot retrieval metrics (hypothesis)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from iiae_jax.metrics import zero_shot_retrieval
from tests.test_metrics import metrics_path, naive_distances, naive_retrieval, tied_embeddings

SETTINGS = settings(max_examples=50, deadline=None)
TIE_BOUNDED = ("map_all", "precision@{k}", "map@{k}_reference")  # monotone in a relevant item's rank


@st.composite
def problems(draw, tied: bool):
  """(query, query_labels, gallery, gallery_labels, ks, rng) of a few rows."""
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  nq, ng = draw(st.integers(1, 5)), draw(st.integers(1, 20))
  n_labels = draw(st.integers(1, 4))
  if tied:
    q, g = tied_embeddings(rng, nq), tied_embeddings(rng, ng)
  else:
    dim = draw(st.integers(1, 5))
    q, g = rng.normal(size=(nq, dim)), rng.normal(size=(ng, dim))
  ql, gl = rng.integers(0, n_labels, nq), rng.integers(0, n_labels, ng)
  ks = tuple(draw(st.lists(st.integers(1, 25), min_size=1, max_size=3)))
  return q, ql, g, gl, ks, rng


def has_ties(q, g):
  return any(np.unique(d).size < d.size for d in naive_distances(q, g))


@SETTINGS
@given(problems(tied=False))
def test_gallery_order_does_not_matter_without_ties(problem):
  q, ql, g, gl, ks, rng = problem
  assume(not has_ties(q, g))
  perm = rng.permutation(len(g))
  a = zero_shot_retrieval(q, ql, g, gl, ks)
  b = zero_shot_retrieval(q, ql, g[perm], gl[perm], ks)
  for name in a:
    assert a[name] == pytest.approx(b[name], abs=1e-12, nan_ok=True), name


@SETTINGS
@given(problems(tied=True))
def test_gallery_order_moves_metrics_only_within_ties(problem):
  # Permuting the gallery only reorders tied items: every permutation gives the
  # index-order value of its own gallery, and stays between breaking every tie
  # against and for the relevant items (bounds the permutation cannot change).
  q, ql, g, gl, ks, rng = problem
  worst = naive_retrieval(q, ql, g, gl, ks, tie="relevant_last")
  best = naive_retrieval(q, ql, g, gl, ks, tie="relevant_first")
  for _ in range(2):
    perm = rng.permutation(len(g))
    got = zero_shot_retrieval(q, ql, g[perm], gl[perm], ks)
    want = naive_retrieval(q, ql, g[perm], gl[perm], ks)
    for name in want:
      assert got[name] == pytest.approx(want[name], abs=1e-12, nan_ok=True), name
    for k in ks:
      for name in (n.format(k=k) for n in TIE_BOUNDED):
        if not np.isnan(got[name]):
          assert worst[name] - 1e-12 <= got[name] <= best[name] + 1e-12, name


@SETTINGS
@given(problems(tied=False) | problems(tied=True))
def test_every_metric_lies_in_the_unit_interval(problem):
  q, ql, g, gl, ks, _ = problem
  got = zero_shot_retrieval(q, ql, g, gl, ks)
  assert got["num_queries"] == len(q)
  for name, value in got.items():
    if name in ("num_queries", "queries_without_relevant"):
      continue
    if name == "map_all" and got["queries_without_relevant"] == len(q):
      assert np.isnan(value)  # no query has a relevant item: AP is undefined for all
    else:
      assert 0.0 <= value <= 1.0, name


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(0, 4))
def test_class_prototype_queries_of_separated_clusters_score_one(seed, n_classes, extra_dims):
  rng = np.random.default_rng(seed)
  dim = n_classes + extra_dims
  counts = rng.integers(1, 7, n_classes)
  gl = np.repeat(np.arange(n_classes), counts)
  prototypes = np.eye(n_classes, dim)
  g = prototypes[gl] + rng.uniform(-0.05, 0.05, size=(len(gl), dim))
  perm = rng.permutation(len(gl))
  g, gl = g[perm], gl[perm]
  ql = rng.integers(0, n_classes, rng.integers(1, 6))
  k = int(counts[ql].min())  # every query has at least k relevant items
  got = zero_shot_retrieval(prototypes[ql], ql, g, gl, ks=(1, k))
  for name in ("map_all", "precision@1", f"precision@{k}", f"map@{k}", f"map@{k}_reference"):
    assert got[name] == pytest.approx(1.0, abs=1e-12), name


@SETTINGS
@given(problems(tied=False) | problems(tied=True), st.integers(1, 4), st.integers(1, 3))
def test_fast_path_equals_the_definitions(problem, chunk_size, num_threads):
  q, ql, g, gl, ks, _ = problem
  with metrics_path("plain"):
    want = zero_shot_retrieval(q, ql, g, gl, ks)
  with metrics_path("fast"):
    got = zero_shot_retrieval(q, ql, g, gl, ks, chunk_size=chunk_size, num_threads=num_threads)
  assert set(got) == set(want)
  for name in want:
    assert got[name] == pytest.approx(want[name], abs=1e-12, nan_ok=True), name
