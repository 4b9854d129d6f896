"""Pins the pix2pix folder loader (iiae_jax.data.pix2pix): pairing, scaling, and errors before training."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from iiae_jax.data import pix2pix
from iiae_jax.errors import DatasetFormatError, DatasetNotFoundError


def _pair_image(index: int, size: int) -> np.ndarray:
  """A (size, 2*size, 3) pair: X = flat (20*index, 10, 200) on the left, Y = flat (30, 250 - 20*index, 90)
  (mod 256)."""
  image = np.zeros((size, 2 * size, 3), np.uint8)
  image[:, :size] = ((20 * index) % 256, 10, 200)
  image[:, size:] = (30, (250 - 20 * index) % 256, 90)
  return image


def write_pix2pix(root, splits=("train", "val", "test"), count=3, size=16, ext="png", names=None):
  """Writes `count` pair files per split; returns {split: [paths]}."""
  written = {}
  for split in splits:
    os.makedirs(os.path.join(root, split), exist_ok=True)
    written[split] = []
    for i in range(count):
      name = names[i] if names else f"{i + 1}.{ext}"
      path = os.path.join(root, split, name)
      # 4:4:4 JPEG so that chroma does not bleed across the X|Y boundary.
      options = {"quality": 100, "subsampling": 0} if ext == "jpg" else {}
      Image.fromarray(_pair_image(i, size)).save(path, **options)
      written[split].append(path)
  return written


def _expected(value):
  return np.float32(value) / np.float32(127.5) - np.float32(1.0)


def test_x_is_left_half_and_y_right_half_png(tmp_path):
  write_pix2pix(tmp_path, count=3, size=16, ext="png")
  data = pix2pix.load_pix2pix(str(tmp_path), "test", resolution=16, name="facades")
  assert data.name == "facades" and data.split == "test"
  assert len(data) == 3 and data.x.shape == (3, 16, 16, 3) and data.y.shape == (3, 16, 16, 3)
  batch = data.batch(np.array([2, 0]))
  assert batch["x"].dtype == np.float32 and batch["y"].dtype == np.float32
  # Flat halves: exact colours, so X really is the left half and Y the right one.
  np.testing.assert_array_equal(batch["x"][0], np.broadcast_to(_expected([40, 10, 200]), (16, 16, 3)))
  np.testing.assert_array_equal(batch["y"][0], np.broadcast_to(_expected([30, 210, 90]), (16, 16, 3)))
  np.testing.assert_array_equal(batch["x"][1], np.broadcast_to(_expected([0, 10, 200]), (16, 16, 3)))
  assert data.x.paths == sorted(data.x.paths) and os.path.basename(data.x.paths[2]) == "3.png"


def test_mnist_cdcb_x_is_the_right_half(tmp_path):
  """docs/method.md §6: X = coloured digit on black, Y = digit on a coloured background; the release's
  files (cross-domain-disen DATA/MNISTCDCB) hold Y on the left and X on the right."""
  write_pix2pix(tmp_path, splits=("test",), count=3, size=8, ext="png")
  batch = pix2pix.load_pix2pix(str(tmp_path), "test", resolution=8, name="mnist_cdcb").batch(np.array([2]))
  np.testing.assert_array_equal(batch["x"][0], np.broadcast_to(_expected([30, 210, 90]), (8, 8, 3)))
  np.testing.assert_array_equal(batch["y"][0], np.broadcast_to(_expected([40, 10, 200]), (8, 8, 3)))


def test_jpeg_pairs_scale_to_resolution_in_range(tmp_path):
  write_pix2pix(tmp_path, splits=("train",), count=2, size=32, ext="jpg")
  data = pix2pix.load_pix2pix(str(tmp_path), "train", resolution=8)
  x, y = np.asarray(data.x), np.asarray(data.y)
  assert x.shape == (2, 8, 8, 3) and y.shape == (2, 8, 8, 3)
  assert x.min() >= -1 and x.max() <= 1 and y.min() >= -1 and y.max() <= 1
  # JPEG at quality 100, 4:4:4 keeps flat colours within a few levels.
  np.testing.assert_allclose(x[1], np.broadcast_to(_expected([20, 10, 200]), (8, 8, 3)), atol=6 / 127.5)
  np.testing.assert_allclose(y[1], np.broadcast_to(_expected([30, 230, 90]), (8, 8, 3)), atol=6 / 127.5)


def test_resize_averages_areas_when_shrinking():
  image = np.zeros((4, 4, 3), np.uint8)
  image[:2, :2] = 200  # top-left 2x2 block
  image[0, 2] = 100
  out = pix2pix.resize(image, 2)
  assert out[0, 0, 0] == 200 and out[1, 1, 0] == 0 and out[0, 1, 0] == 25
  # Enlarging repeats pixels.
  np.testing.assert_array_equal(pix2pix.resize(image, 8)[::2, ::2], image)


def _area_matrix(n_in, n_out):
  """Brute force: output i averages input j by the overlap of [i s, (i+1) s) with [j, j+1)."""
  s = n_in / n_out
  lo, hi = np.arange(n_out)[:, None] * s, np.arange(1, n_out + 1)[:, None] * s
  j = np.arange(n_in)[None, :]
  return np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None) / s


@pytest.mark.parametrize("n_in,n_out", [(7, 3), (600, 256), (23, 8), (5, 7)])
def test_resize_weights_input_pixels_by_the_area_they_share(n_in, n_out):
  """Fractional scales (Maps: 600 -> 256) split an input pixel between outputs by area, as TF's
  AREA resize does (Pillow's BOX filter gives it wholly to one: up to 64 levels off on noise)."""
  rng = np.random.default_rng(n_in)
  image = rng.integers(0, 256, (n_in, n_in, 3)).astype(np.uint8)
  w = _area_matrix(n_in, n_out)
  want = np.stack([w @ image[..., c].astype(np.float64) @ w.T for c in range(3)], axis=-1)
  got = pix2pix.resize(image, n_out).astype(np.float64)
  assert np.abs(got - want).max() <= 0.5 + 1e-9       # rounding to uint8 only
  impulse = np.zeros((7, 7, 1), np.uint8)
  impulse[2, :] = 100                                  # a row: 1-D along the height
  np.testing.assert_array_equal(pix2pix.resize(impulse, 3)[:, 0, 0], [14, 29, 0])  # 100/7*(1, 2, 0)


def test_valid_maps_to_val_folder_then_valid_folder(tmp_path):
  write_pix2pix(tmp_path / "a", splits=("val",), count=2)
  assert os.path.basename(os.path.dirname(
      pix2pix.load_pix2pix(str(tmp_path / "a"), "valid", resolution=4).x.paths[0])) == "val"
  write_pix2pix(tmp_path / "b", splits=("valid",), count=1)
  assert len(pix2pix.load_pix2pix(str(tmp_path / "b"), "valid", resolution=4)) == 1


def test_maps_splits_follow_the_reference_in_either_layout(tmp_path):
  """docs/method.md §6 Maps test = 1,098 pairs = the pix2pix release's val/. The release has no test/ or
  valid/: 'test' reads val/ and 'valid' training pairs 1..800 (what the reference copies into
  valid/). The reference's own layout (train/, valid/, test/) is read as it is."""
  def files(root, split):
    paths = pix2pix.load_pix2pix(str(root), split, resolution=4, name="maps", verify=False).x.paths
    return [os.path.relpath(p, root) for p in paths]
  release = tmp_path / "release"
  write_pix2pix(release, splits=("train",), count=802, size=4)
  write_pix2pix(release, splits=("val",), count=3, size=4)
  assert files(release, "test") == ["val/1.png", "val/2.png", "val/3.png"]
  assert files(release, "valid") == [f"train/{i}.png" for i in range(1, 801)]
  assert len(files(release, "train")) == 802
  reference = tmp_path / "reference"
  write_pix2pix(reference, splits=("train", "valid", "test"), count=2, size=4)
  assert files(reference, "valid") == ["valid/1.png", "valid/2.png"]
  assert files(reference, "test") == ["test/1.png", "test/2.png"]
  # The release's train/ and val/ with the reference's valid/ beside them: validation
  # reads valid/, and test (val/) stays apart from it.
  both = tmp_path / "both"
  write_pix2pix(both, splits=("train", "val"), count=3, size=4)
  write_pix2pix(both, splits=("valid",), count=2, size=4)
  assert files(both, "valid") == ["valid/1.png", "valid/2.png"]
  assert files(both, "test") == ["val/1.png", "val/2.png", "val/3.png"]
  # Test is never valid/ (training pairs): an empty val/ fails, no val/ is named as missing.
  empty_val = tmp_path / "empty_val"
  write_pix2pix(empty_val, splits=("train", "valid"), count=2, size=4)
  os.makedirs(empty_val / "val")
  with pytest.raises(DatasetNotFoundError, match="holds no"):
    files(empty_val, "test")
  os.rmdir(empty_val / "val")
  with pytest.raises(DatasetNotFoundError, match="'test' is missing"):
    files(empty_val, "test")
  # An empty valid/ beside the release's folders: training pairs 1..800 as without it.
  empty_valid = tmp_path / "empty_valid"
  write_pix2pix(empty_valid, splits=("train",), count=801, size=4)
  write_pix2pix(empty_valid, splits=("val",), count=2, size=4)
  os.makedirs(empty_valid / "valid")
  assert files(empty_valid, "valid") == [f"train/{i}.png" for i in range(1, 801)]


def test_an_empty_val_folder_does_not_hide_valid(tmp_path):
  write_pix2pix(tmp_path, splits=("valid",), count=2)
  os.makedirs(tmp_path / "val")
  paths = pix2pix.load_pix2pix(str(tmp_path), "valid", resolution=4).x.paths
  assert [os.path.relpath(p, tmp_path) for p in paths] == ["valid/1.png", "valid/2.png"]


def test_numeric_names_sort_by_number_others_by_name(tmp_path):
  write_pix2pix(tmp_path / "n", splits=("test",), count=3, names=["10.png", "9.png", "100.png"])
  names = [os.path.basename(p) for p in pix2pix.load_pix2pix(str(tmp_path / "n"), "test", 4).x.paths]
  assert names == ["9.png", "10.png", "100.png"]
  write_pix2pix(tmp_path / "s", splits=("test",), count=3, names=["b.png", "a10.png", "a9.png"])
  names = [os.path.basename(p) for p in pix2pix.load_pix2pix(str(tmp_path / "s"), "test", 4).x.paths]
  assert names == ["a10.png", "a9.png", "b.png"]


def test_same_inputs_give_same_arrays_and_lazy_reader_pickles(tmp_path):
  write_pix2pix(tmp_path, splits=("train",), count=3, ext="jpg")
  a = pix2pix.load_pix2pix(str(tmp_path), "train", resolution=8)
  b = pix2pix.load_pix2pix(str(tmp_path), "train", resolution=8, cache_size=0)
  np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
  np.testing.assert_array_equal(a.y[[2, 1, 2]], b.y[np.array([2, 1, 2])])
  np.testing.assert_array_equal(a.x[1], a.x[-2])
  np.testing.assert_array_equal(a.x[1:3], a.x[np.array([False, True, True])])
  restored = pickle.loads(pickle.dumps(a.y))
  np.testing.assert_array_equal(restored[[0, 2]], a.y[[0, 2]])
  with pytest.raises(IndexError):
    a.x[3]


def test_missing_directory_raises_dataset_not_found(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(DatasetNotFoundError, match="nowhere"):
    pix2pix.load_pix2pix(missing, "train", name="facades")


def test_missing_split_folder_is_named(tmp_path):
  write_pix2pix(tmp_path, splits=("train",), count=1)
  with pytest.raises(DatasetNotFoundError, match=r"test"):
    pix2pix.load_pix2pix(str(tmp_path), "test")
  with pytest.raises(FileNotFoundError, match=r"'valid'.*val"):
    pix2pix.load_pix2pix(str(tmp_path), "valid")


def test_empty_split_folder_is_named(tmp_path):
  os.makedirs(tmp_path / "train")
  (tmp_path / "train" / "notes.txt").write_text("not an image")
  with pytest.raises(DatasetNotFoundError, match=r"train.*no .*images"):
    pix2pix.load_pix2pix(str(tmp_path), "train")


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_truncated_image_raises_naming_the_file(tmp_path, ext):
  paths = write_pix2pix(tmp_path, splits=("train",), count=3, size=64, ext=ext)["train"]
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 128, 3), np.uint8)).save(paths[1])
  data = open(paths[1], "rb").read()
  with open(paths[1], "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(DatasetFormatError, match=os.path.basename(paths[1])) as info:
    pix2pix.load_pix2pix(str(tmp_path), "train", resolution=8)
  assert paths[1] in str(info.value)


def test_undecodable_file_raises_naming_the_file(tmp_path):
  write_pix2pix(tmp_path, splits=("train",), count=1)
  bad = tmp_path / "train" / "2.jpg"
  bad.write_bytes(b"this is not a jpeg")
  with pytest.raises(ValueError, match=str(bad)):
    pix2pix.load_pix2pix(str(tmp_path), "train")


@pytest.mark.parametrize("shape, problem", [((16, 31, 3), "odd"), ((16, 48, 3), "twice the height")])
def test_bad_pair_size_raises_naming_the_file(tmp_path, shape, problem):
  write_pix2pix(tmp_path, splits=("train",), count=1)
  bad = tmp_path / "train" / "7.png"
  Image.fromarray(np.zeros(shape, np.uint8)).save(bad)
  with pytest.raises(DatasetFormatError, match=problem) as info:
    pix2pix.load_pix2pix(str(tmp_path), "train", verify=False)
  assert str(bad) in str(info.value)


def test_x_then_y_of_a_batch_larger_than_the_cache_decodes_each_pair_once():
  """Evaluation reads x[idx] then y[idx] in batches of 128 (embed.py), the resident training
  set all of x then all of y: neither may decode the pairs twice (cache 64)."""
  decoded = []

  def decode(i):
    decoded.append(i)
    return np.full((2, 2, 3), i, np.uint8), np.full((2, 2, 3), 100 + i, np.uint8)
  reader = pix2pix.PairReader(10, (2, 2, 3), decode, cache_size=2)
  idx = np.arange(10)[::-1]
  x, y = np.asarray(reader.x[idx]), np.asarray(reader.y[idx])
  assert sorted(decoded) == list(range(10))
  np.testing.assert_array_equal(x[:, 0, 0, 0], pix2pix.to_float(idx.astype(np.uint8)))
  np.testing.assert_array_equal(y[:, 0, 0, 0], pix2pix.to_float((100 + idx).astype(np.uint8)))
  np.asarray(reader.y[np.arange(3)])                  # other indices: decoded afresh, right values
  np.testing.assert_array_equal(np.asarray(reader.x[np.arange(3)])[:, 0, 0, 0],
                                pix2pix.to_float(np.arange(3, dtype=np.uint8)))
  idx = np.array([1, 2, 3])                            # the caller's array, reused
  reader.half(0, idx)
  idx[:] = [7, 8, 9]
  np.testing.assert_array_equal(reader.half(1, idx)[:, 0, 0, 0], 100 + idx)
  decoded.clear()
  reader.OTHER_HALF_BYTES = 2 * 2 * 3 * 4 - 1          # more than this is not kept
  reader.x[np.arange(4)], reader.y[np.arange(4)]
  assert len(decoded) == 4 + 4 - reader.cache_size


def test_the_resident_training_set_decodes_each_pair_once():
  from configs import digits_cdcb
  from iiae_jax import input_pipeline
  from iiae_jax.data import PairedData
  decoded = []

  def decode(i):
    decoded.append(i)
    return np.full((32, 32, 3), i % 256, np.uint8), np.full((32, 32, 3), 255 - i % 256, np.uint8)
  reader = pix2pix.PairReader(600, (32, 32, 3), decode, cache_size=8)
  reader.OTHER_HALF_BYTES = 1 << 20   # less than a half of the whole set (1.8 MB)
  config = digits_cdcb.get_config()
  train_input = input_pipeline.PairedInput(config, PairedData("lazy", "train", reader.x, reader.y))
  resident = train_input.resident()
  assert sorted(decoded) == list(range(600))
  np.testing.assert_array_equal(resident["y"][:, 0, 0, 0],
                                pix2pix.to_float((255 - np.arange(600) % 256).astype(np.uint8)))
