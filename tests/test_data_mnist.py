"""The `mnist_cdcb_rebuilt` loader (iiae_jax.data.mnist): MNIST idx files coloured into pairs, no tfds needed."""
import gzip
import os

import numpy as np
import pytest

from iiae_jax.data import mnist
from iiae_jax.data import offline
from iiae_jax.errors import DatasetFormatError, DatasetNotFoundError


def _write_idx(path, array, compress):
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
  if compress:
    with gzip.open(path + ".gz", "wb") as f:
      f.write(payload)
  else:
    with open(path, "wb") as f:
      f.write(payload)


def write_fake_mnist(root, num_train=12, num_test=4):
  """Tiny MNIST idx files: image i is a bar whose length encodes i; train gzipped, test plain."""
  os.makedirs(root, exist_ok=True)
  for part, n, compress in (("train", num_train, True), ("test", num_test, False)):
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
      images[i, 10:18, 4:6 + i] = 255
    labels = (np.arange(n) * 3 % 10).astype(np.uint8)
    _write_idx(os.path.join(root, mnist.MNIST_FILES[(part, "images")]), images, compress)
    _write_idx(os.path.join(root, mnist.MNIST_FILES[(part, "labels")]), labels, compress)
  return root


def test_mnist_cdcb_direct_pairs_follow_the_colouring_recipe(tmp_path):
  mnist_dir = write_fake_mnist(str(tmp_path / "mnist"))
  sizes = {s: len(mnist.mnist_cdcb(mnist_dir, s, resolution=28)) for s in ("train", "valid", "test")}
  assert sizes == {"train": 10, "valid": 2, "test": 4}
  data = mnist.mnist_cdcb(mnist_dir, "valid", resolution=28, seed=3)
  np.testing.assert_array_equal(data.factors["image"], [10, 11])
  np.testing.assert_array_equal(data.factors["digit"], [0, 3])  # labels 3*i % 10
  gray = np.zeros((28, 28), np.float32)
  gray[10:18, 4:6 + 10] = 1.0
  x, y = offline.colorize_pair(gray[None], offline.PALETTE[data.factors["x_color"][:1]],
                               offline.PALETTE[data.factors["y_color"][:1]])
  np.testing.assert_allclose(data.x[0], x[0], atol=1e-6)
  np.testing.assert_allclose(data.y[0], y[0], atol=1e-6)


def test_bad_idx_file_is_named(tmp_path):
  mnist_dir = write_fake_mnist(str(tmp_path / "mnist"))
  bad = os.path.join(mnist_dir, mnist.MNIST_FILES[("test", "images")])
  with open(bad, "rb") as f:
    data = f.read()
  with open(bad, "wb") as f:
    f.write(data[:-5])
  with pytest.raises(DatasetFormatError, match=bad):
    mnist.mnist_cdcb(mnist_dir, "test")
  os.remove(os.path.join(mnist_dir, mnist.MNIST_FILES[("test", "labels")]))
  with pytest.raises(DatasetNotFoundError, match="t10k-labels"):
    mnist.mnist_cdcb(mnist_dir, "test")
