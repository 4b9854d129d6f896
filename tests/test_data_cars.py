"""Pins the Cars loader (iiae_jax.data.cars): the reference's `im` layout, pairing and errors."""
import warnings

import numpy as np
import pytest
import scipy.io

from iiae_jax.data import cars
from iiae_jax.errors import DatasetFormatError, DatasetNotFoundError

SIZE = 4


def car_array(car: int) -> np.ndarray:
  """`im` in the reference layout (H, W, 3, azimuth, elevation), each view a flat, unique colour.

  View (car, azimuth a, elevation e) has RGB (car, 10 * a, 60 * e); the pixel at
  row r, column c adds (0, 0, r + 4 * c) so that transposed rows and columns show.
  """
  im = np.zeros((SIZE, SIZE, 3, cars.NUM_AZIMUTHS, cars.NUM_ELEVATIONS), np.uint8)
  for a in range(cars.NUM_AZIMUTHS):
    for e in range(cars.NUM_ELEVATIONS):
      im[:, :, 0, a, e] = car
      im[:, :, 1, a, e] = 10 * a
      im[:, :, 2, a, e] = 60 * e + np.arange(SIZE)[:, None] + 4 * np.arange(SIZE)[None, :]
  return im


def write_cars(root, numbers=(1, 2, 192)):
  root.mkdir(parents=True, exist_ok=True)
  for car in numbers:
    scipy.io.savemat(str(root / cars.car_file_name(car)), {"im": car_array(car)})
  return root


def _load(*args, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # most cars are absent from these tiny folders
    return cars.load_cars(*args, **kwargs)


def test_pairs_share_car_and_elevation_and_x_is_azimuth_zero(tmp_path):
  root = write_cars(tmp_path / "cars")
  data = _load(str(root), "train", resolution=SIZE)
  assert data.name == "cars" and len(data) == 2 * 4 * 23
  assert data.x.shape == (184, SIZE, SIZE, 3) and data.x.dtype == np.float32
  # The reference's order: car, then elevation, then azimuth 1..23.
  np.testing.assert_array_equal(data.factors["car"][:92], 1)
  np.testing.assert_array_equal(data.factors["car"][92:], 2)
  np.testing.assert_array_equal(data.factors["elevation"][:92], np.repeat(np.arange(4), 23))
  np.testing.assert_array_equal(data.factors["azimuth"][:23], np.arange(1, 24))
  batch = data.batch(np.arange(len(data)))
  to_float = lambda v: np.float32(v) / np.float32(127.5) - np.float32(1.0)
  for i in (0, 50, 183):
    car, elevation, azimuth = (int(batch[k][i]) for k in ("car", "elevation", "azimuth"))
    im = car_array(car)
    np.testing.assert_array_equal(batch["x"][i], to_float(im[:, :, :, 0, elevation]))
    np.testing.assert_array_equal(batch["y"][i], to_float(im[:, :, :, azimuth, elevation]))
  assert batch["x"].min() >= -1 and batch["y"].max() <= 1
  assert data.factor_names["car"][192] == "car_192" and len(data.factor_names["azimuth"]) == 24


def test_test_split_holds_cars_192_to_199_and_resolution_scales(tmp_path):
  root = write_cars(tmp_path / "cars")
  data = _load(str(root), "test", resolution=2 * SIZE)
  assert set(data.factors["car"].tolist()) == {192}
  assert data.y.shape == (92, 8, 8, 3)
  # Enlarging repeats pixels: every 2x2 block equals the source pixel.
  y = data.y[5]
  np.testing.assert_array_equal(y[::2, ::2], y[1::2, 1::2])


def test_same_files_give_same_arrays(tmp_path):
  root = write_cars(tmp_path / "cars", numbers=(3,))
  a = _load(str(root), "train", resolution=SIZE)
  b = _load(str(root), "train", resolution=SIZE, verify=False, max_cars_in_memory=0, cache_size=0)
  np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
  np.testing.assert_array_equal(a.y[[7, 3]], b.y[[7, 3]])


def test_float_arrays_in_unit_range_are_scaled(tmp_path):
  root = tmp_path / "cars"
  root.mkdir()
  scipy.io.savemat(str(root / cars.car_file_name(1)), {"im": car_array(1) / 255.0})
  data = _load(str(root), "train", resolution=SIZE)
  np.testing.assert_allclose(data.x[0], np.float32(car_array(1)[:, :, :, 0, 0]) / 127.5 - 1, atol=1e-6)


def test_valid_split_is_refused(tmp_path):
  root = write_cars(tmp_path / "cars")
  with pytest.raises(ValueError, match="no validation split"):
    _load(str(root), "valid")


def test_missing_directory_raises_dataset_not_found(tmp_path):
  with pytest.raises(DatasetNotFoundError, match="no_cars_here"):
    _load(str(tmp_path / "no_cars_here"), "train")


def test_directory_without_split_files_names_them(tmp_path):
  root = write_cars(tmp_path / "cars", numbers=(192,))
  with pytest.raises(DatasetNotFoundError, match="car_001_mesh.mat"):
    _load(str(root), "train")


@pytest.mark.parametrize("verify", [True, False])
def test_mat_without_im_raises_naming_the_file(tmp_path, verify):
  root = write_cars(tmp_path / "cars", numbers=(1,))
  bad = root / cars.car_file_name(2)
  scipy.io.savemat(str(bad), {"images": car_array(2)})
  with pytest.raises(DatasetFormatError, match="no array 'im'") as info:
    _load(str(root), "train", verify=verify)
  assert str(bad) in str(info.value)


@pytest.mark.parametrize("shape", [(SIZE, SIZE, 3, 24), (SIZE, SIZE, 3, 4, 24), (SIZE, SIZE, 1, 24, 4)])
def test_wrong_shape_raises_naming_the_file(tmp_path, shape):
  root = tmp_path / "cars"
  root.mkdir()
  bad = root / cars.car_file_name(5)
  scipy.io.savemat(str(bad), {"im": np.zeros(shape, np.uint8)})
  with pytest.raises(DatasetFormatError, match="expected \\(H, W, 3, 24, 4\\)") as info:
    _load(str(root), "train")
  assert str(bad) in str(info.value)


def test_truncated_mat_raises_naming_the_file(tmp_path):
  root = write_cars(tmp_path / "cars", numbers=(1, 2))
  bad = root / cars.car_file_name(2)
  bad.write_bytes(bad.read_bytes()[:300])
  with pytest.raises(DatasetFormatError) as info:
    _load(str(root), "train")
  assert str(bad) in str(info.value)


@pytest.mark.parametrize("verify", [True, False])
def test_non_square_views_are_refused_naming_the_file(tmp_path, verify):
  root = write_cars(tmp_path / "cars", numbers=(1,))
  bad = root / cars.car_file_name(2)
  scipy.io.savemat(str(bad), {"im": np.zeros((SIZE, 2 * SIZE, 3, 24, 4), np.uint8)})
  with pytest.raises(DatasetFormatError, match=f"{SIZE}x{2 * SIZE} views; expected square") as info:
    _load(str(root), "train", verify=verify)
  assert str(bad) in str(info.value)


def test_the_check_keeps_no_more_cars_than_max_cars_in_memory(tmp_path, monkeypatch):
  """verify=True reads every car: at most max_cars_in_memory of them (and the one just read)
  may be alive at once, or 191 cars at 256x256 take 3.6 GB whatever the option says."""
  import weakref
  root = write_cars(tmp_path / "cars", numbers=(1, 2, 3, 4, 5))
  refs, peak = [], [0]
  real_read = cars.read_car

  def tracked_read(path):
    im = real_read(path)
    refs.append(weakref.ref(im))
    peak[0] = max(peak[0], sum(r() is not None for r in refs))
    return im
  monkeypatch.setattr(cars, "read_car", tracked_read)
  _load(str(root), "train", resolution=SIZE, max_cars_in_memory=2, num_threads=1)
  assert len(refs) == 5 and peak[0] <= 3
