"""Speed and memory of the retrieval metrics against the reference release's method.

Zero-shot retrieval on Sketchy-scale random features (14,421 queries x 14,626
gallery items, 64-d, 25 classes; the generator of shared/peers/ref_eval_path.py):
`iiae_jax.metrics.zero_shot_retrieval` (mAP@all, P@100 and both mAP@100 in one
call), then the reference's method in the same process: scikit-learn
brute-force cosine NearestNeighbors over the whole gallery, the ranked
relevance matrix, and a column-by-column cumulative count. Then paired
retrieval accuracy on N x N random embeddings of 8,192 dimensions.

Peak memory is this process's resident set size, sampled every 5 ms by a
background thread, minus its size just before the measured call. Ours runs
first so that its peak is not inflated by the reference's allocations.

Usage:
  python benchmarks/eval_retrieval.py [--skip-reference] [--paired-n 10000]
"""
import argparse
import os
import sys
import threading
import time

import numpy as np
import psutil

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from iiae_jax import metrics  # noqa: E402


class PeakRSS:
  """Context manager: wall time, CPU time and peak RSS growth of the enclosed block."""

  def __init__(self, interval: float = 0.005):
    self.interval = interval
    self.proc = psutil.Process()

  def __enter__(self):
    self.before = self.proc.memory_info().rss
    self.peak = self.before
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    self._t0 = time.perf_counter()
    self._c0 = time.process_time()
    return self

  def _sample(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, self.proc.memory_info().rss)
      time.sleep(self.interval)

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self._t0
    self.cpu_seconds = time.process_time() - self._c0  # all threads; includes the sampler
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, self.proc.memory_info().rss)
    self.growth_mib = (self.peak - self.before) / 2**20
    return False


def sketchy_like(nq: int, ng: int, dim: int):
  """The data of ref_eval_path.py: 25 Gaussian class centres, noise 1.5, float32."""
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(25, dim))
  ql = rng.integers(0, 25, nq)
  gl = rng.integers(0, 25, ng)
  q = (centers[ql] + 1.5 * rng.normal(size=(nq, dim))).astype(np.float32)
  g = (centers[gl] + 1.5 * rng.normal(size=(ng, dim))).astype(np.float32)
  return q, ql, g, gl


def reference_method(q, ql, g, gl, k: int):
  """The reference release's evaluation, as in ref_eval_path.py, plus both mAP@K
  read off the same ranked relevance matrix."""
  from sklearn.neighbors import NearestNeighbors
  ng = g.shape[0]
  _, idx = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(g).kneighbors(q)
  rel = (gl[idx] == ql[:, None]).astype(np.float64)
  p_at_k = rel.mean(1).mean()
  _, idx = NearestNeighbors(n_neighbors=ng, metric="cosine", algorithm="brute").fit(g).kneighbors(q)
  rel = (gl[idx] == ql[:, None]).astype(np.float64)
  del idx
  cum = np.copy(rel)
  for j in range(1, cum.shape[1]):
    cum[:, j] += cum[:, j - 1]
  ap = (cum * rel / np.arange(1, ng + 1)).sum(1) / rel.sum(1)
  top = cum[:, :k] * rel[:, :k] / np.arange(1, k + 1)
  hits = rel[:, :k].sum(1)
  return {
      "map_all": float(ap.mean()),
      f"precision@{k}": float(p_at_k),
      f"map@{k}_reference": float((top.sum(1) / k).mean()),
      f"map@{k}": float(np.mean(np.divide(top.sum(1), hits, out=np.zeros_like(hits), where=hits > 0))),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n-query", type=int, default=14421)
  parser.add_argument("--n-gallery", type=int, default=14626)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3, help="runs of ours; the best is reported")
  parser.add_argument("--threads", type=int, default=None, help="worker threads for ours")
  parser.add_argument("--chunk-size", type=int, default=256)
  parser.add_argument("--skip-reference", action="store_true")
  parser.add_argument("--paired-n", type=int, default=10000, help="pairs for paired retrieval (0: skip)")
  parser.add_argument("--paired-dim", type=int, default=8192)
  args = parser.parse_args(argv)

  print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"{psutil.virtual_memory().available / 2**30:.1f} GiB available")
  q, ql, g, gl = sketchy_like(args.n_query, args.n_gallery, args.dim)
  print(f"zero-shot retrieval: {q.shape[0]} queries x {g.shape[0]} gallery, {q.shape[1]}-d, 25 classes")

  times, cpus, peaks = [], [], []
  for _ in range(args.repeats):
    with PeakRSS() as m:
      ours = metrics.zero_shot_retrieval(q, ql, g, gl, ks=(args.k,), chunk_size=args.chunk_size,
                                         num_threads=args.threads)
    times.append(m.seconds)
    cpus.append(m.cpu_seconds)
    peaks.append(m.growth_mib)
  names = ["map_all", f"precision@{args.k}", f"map@{args.k}_reference", f"map@{args.k}"]
  print(f"ours:      wall {min(times):.2f} s best of {len(times)} "
        f"({', '.join(f'{t:.2f}' for t in times)}), CPU {min(cpus):.2f} s, "
        f"peak memory +{max(peaks):.0f} MiB")
  print("ours:      " + "  ".join(f"{n} {ours[n]:.6f}" for n in names))

  if args.skip_reference:
    print("reference: skipped (--skip-reference)")
  else:
    need_gib = 6 * q.shape[0] * g.shape[0] * 8 / 2**30  # ~9 GiB at the default sizes
    free_gib = psutil.virtual_memory().available / 2**30
    if free_gib < need_gib:
      print(f"reference: skipped, needs about {need_gib:.0f} GiB and {free_gib:.1f} GiB is available")
    else:
      with PeakRSS() as m:
        ref = reference_method(q, ql, g, gl, args.k)
      print(f"reference: wall {m.seconds:.2f} s, CPU {m.cpu_seconds:.2f} s, "
            f"peak memory +{m.growth_mib:.0f} MiB")
      print("reference: " + "  ".join(f"{n} {ref[n]:.6f}" for n in names))
      diff = max(abs(ours[n] - ref[n]) for n in names)
      print(f"agreement: largest difference {diff:.2e} (ties in distance may be ordered differently)")
      print(f"speed-up:  {m.seconds / min(times):.1f}x wall, "
            f"{m.growth_mib / max(max(peaks), 1):.0f}x less peak memory")

  if args.paired_n > 0:
    n, d = args.paired_n, args.paired_dim
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = x + 2.0 * rng.standard_normal((n, d), dtype=np.float32)
    with PeakRSS() as m:
      acc = metrics.paired_retrieval_accuracy(x, y)
    print(f"paired retrieval: {n} x {n} pairs, {d}-d: wall {m.seconds:.2f} s, "
          f"CPU {m.cpu_seconds:.2f} s, peak memory "
          f"+{m.growth_mib:.0f} MiB over the {2 * x.nbytes / 2**20:.0f} MiB of inputs; "
          f"x_to_y {acc['x_to_y']:.4f} y_to_x {acc['y_to_x']:.4f}")


if __name__ == "__main__":
  main()
