"""Cars: 3D car renderings from `car_NNN_mesh.mat` files (docs/method.md §6).

Layout, as the reference's `preprocess_cars.py` reads it with
`scipy.io.loadmat`: each file holds one uint8 array `im` of shape
(H, W, 3, 24, 4) = (rows, columns, RGB, azimuth, elevation). A pair is
X = the azimuth-0 view and Y = one of the other 23 azimuths at the same
elevation, so each car gives 4 x 23 = 92 pairs, ordered by car, then
elevation, then azimuth (the reference's file numbering). Cars 1-191 are the
training split and 192-199 the test split; missing car files are skipped, as
the reference does, with a warning. Cars have no validation split (the
reference saves a checkpoint every 50 epochs instead), so 'valid' is refused.

Unlike the reference, which re-encodes the pairs as JPEG before training, the
views go straight from the .mat array to the model (no JPEG loss); they are
scaled to `resolution` with area averaging (repetition when enlarging) and
mapped to float32 in [-1, 1].
"""
import os
import threading
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import scipy.io

from iiae_jax.data import pix2pix
from iiae_jax.data.errors import missing_dataset
from iiae_jax.errors import DatasetFormatError
from iiae_jax.data.types import PairedData

NUM_AZIMUTHS = 24
NUM_ELEVATIONS = 4
CHANNELS = 3
TRAIN_CARS = tuple(range(1, 192))
TEST_CARS = tuple(range(192, 200))
SPLIT_CARS = {"train": TRAIN_CARS, "test": TEST_CARS}
ARRAY_NAME = "im"

FACTOR_NAMES = {
    # Factor values are the car number of the file name, so names are indexed by it.
    "car": [f"car_{n:03d}" for n in range(max(TEST_CARS) + 1)],
    "elevation": [f"elevation_{e}" for e in range(NUM_ELEVATIONS)],
    "azimuth": [f"azimuth_{a:02d}" for a in range(NUM_AZIMUTHS)],
}


def car_file_name(car: int) -> str:
  return f"car_{car:03d}_mesh.mat"


def split_cars(split: str) -> Tuple[int, ...]:
  """The car numbers of `split`; 'valid' raises (the protocol has none)."""
  if split in ("valid", "val"):
    raise ValueError(
        "Cars has no validation split: the paper's protocol trains on cars 1-191 and tests on "
        "192-199, saving a checkpoint every 50 epochs instead of selecting one on validation "
        "data. Use split='train' or split='test'.")
  if split not in SPLIT_CARS:
    raise ValueError(f"unknown Cars split {split!r}; expected 'train' or 'test'")
  return SPLIT_CARS[split]


def check_layout(shape: Sequence[int], path: str) -> None:
  """Raises DatasetFormatError naming `path` unless `shape` is (H, H, 3, 24, 4).

  Views must be square: they are scaled to square images, which would stretch others.
  """
  shape = tuple(int(d) for d in shape)
  expected = ("H", "W", CHANNELS, NUM_AZIMUTHS, NUM_ELEVATIONS)
  if len(shape) != 5 or shape[2:] != expected[2:] or min(shape[:2]) < 1:
    raise DatasetFormatError(
        f"{path}: array '{ARRAY_NAME}' has shape {shape}; expected (H, W, 3, 24, 4) = "
        "(rows, columns, RGB, azimuth, elevation)")
  if shape[0] != shape[1]:
    raise DatasetFormatError(
        f"{path}: array '{ARRAY_NAME}' has {shape[0]}x{shape[1]} views; expected square views "
        "(H = W), which are scaled to square images without stretching")


def as_uint8(im: np.ndarray, path: str) -> np.ndarray:
  """`im` as uint8: uint8 as is; floats in [0, 1] scaled by 255; other values in [0, 255] rounded."""
  if im.dtype == np.uint8:
    return im
  if im.dtype.kind not in "biuf":
    raise DatasetFormatError(f"{path}: array '{ARRAY_NAME}' has non-numeric dtype {im.dtype}")
  if im.size == 0:
    return im.astype(np.uint8)
  lo, hi = float(np.min(im)), float(np.max(im))
  if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
    raise DatasetFormatError(
        f"{path}: array '{ARRAY_NAME}' values span [{lo}, {hi}]; expected [0, 255] or [0, 1]")
  if im.dtype.kind == "f" and hi <= 1.0:
    im = im * 255.0
  return np.rint(im).astype(np.uint8)


def _read_hdf5(path: str) -> np.ndarray:
  """`im` from a MATLAB v7.3 (HDF5) file, which stores arrays with dimensions reversed."""
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DatasetFormatError(f"{path}: a MATLAB v7.3 (HDF5) file; reading it needs `pip install h5py`") from e
  with h5py.File(path, "r") as f:
    if ARRAY_NAME not in f:
      raise DatasetFormatError(f"{path}: no array '{ARRAY_NAME}' (found: {sorted(f.keys())})")
    return np.asarray(f[ARRAY_NAME]).transpose()


def read_car(path: str) -> np.ndarray:
  """The uint8 (H, W, 3, 24, 4) array `im` of one car file; raises DatasetFormatError naming the file."""
  try:
    variables = scipy.io.loadmat(path, variable_names=[ARRAY_NAME])
  except NotImplementedError:  # scipy refuses v7.3 files.
    im = _read_hdf5(path)
  except Exception as e:  # Truncated or not a .mat file at all.
    raise DatasetFormatError(f"{path}: cannot read MATLAB file ({type(e).__name__}: {e})") from e
  else:
    if ARRAY_NAME not in variables:
      try:
        found = sorted(name for name, _, _ in scipy.io.whosmat(path))
      except Exception:  # pylint: disable=broad-except
        found = "?"
      raise DatasetFormatError(f"{path}: no array '{ARRAY_NAME}' (found: {found})")
    im = variables[ARRAY_NAME]
  check_layout(im.shape, path)
  return as_uint8(np.asarray(im), path)


class CarArrays:
  """Reads car files on demand and keeps up to `max_cars` of them (None: all)."""

  def __init__(self, paths: Dict[int, str], max_cars: Optional[int] = None):
    self.paths = dict(paths)
    self.max_cars = max_cars
    self._arrays: Dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    return {"paths": self.paths, "max_cars": self.max_cars}

  def __setstate__(self, state):
    self.__init__(state["paths"], state["max_cars"])

  def __call__(self, car: int) -> np.ndarray:
    with self._lock:
      im = self._arrays.pop(car, None)
      if im is not None:
        self._arrays[car] = im  # Most recently used last.
        return im
    im = read_car(self.paths[car])
    self.put(car, im)
    return im

  def put(self, car: int, im: np.ndarray) -> None:
    with self._lock:
      self._arrays[car] = im
      while self.max_cars is not None and len(self._arrays) > max(self.max_cars, 0):
        del self._arrays[next(iter(self._arrays))]

  def view(self, car: int, elevation: int, azimuth: int) -> np.ndarray:
    """The uint8 (H, W, 3) view of `car` at (`elevation`, `azimuth`)."""
    return np.ascontiguousarray(self(car)[:, :, :, azimuth, elevation])


def pair_factors(cars: Sequence[int]) -> Dict[str, np.ndarray]:
  """Factors of every pair of `cars`, in the reference's order: car, elevation, azimuth 1..23."""
  car, elevation, azimuth = np.meshgrid(
      np.asarray(cars, np.int32), np.arange(NUM_ELEVATIONS, dtype=np.int32),
      np.arange(1, NUM_AZIMUTHS, dtype=np.int32), indexing="ij")
  return {"car": car.reshape(-1), "elevation": elevation.reshape(-1), "azimuth": azimuth.reshape(-1)}


class CarPairDecoder:
  """pair index -> (azimuth-0 view, azimuth-a view) at the same elevation, uint8 at `resolution`.

  `views(car, elevation, azimuth)` gives one uint8 (H, W, 3) view: `CarArrays.view`
  reads the car files, a prepared TFDS dataset its records. A class, so readers pickle.
  """

  def __init__(self, views: Callable[[int, int, int], np.ndarray], factors: Dict[str, np.ndarray],
               resolution: int):
    self.views = views
    self.factors = factors
    self.resolution = resolution

  def __call__(self, index: int):
    car, elevation, azimuth = (int(self.factors[k][index]) for k in ("car", "elevation", "azimuth"))
    return (pix2pix.resize(self.views(car, elevation, 0), self.resolution),
            pix2pix.resize(self.views(car, elevation, azimuth), self.resolution))


def paired_data(split: str, factors: Dict[str, np.ndarray], decoder: CarPairDecoder,
                cache_size: int) -> PairedData:
  """The lazy PairedData of `factors`' pairs decoded by `decoder` (files or TFDS records alike)."""
  resolution = decoder.resolution
  reader = pix2pix.PairReader(len(factors["car"]), (resolution, resolution, CHANNELS), decoder,
                              cache_size=cache_size)
  return PairedData(name="cars", split=split, x=reader.x, y=reader.y, factors=factors,
                    factor_names={k: list(v) for k, v in FACTOR_NAMES.items()})


def check_car_files(arrays: CarArrays, num_threads: Optional[int] = None) -> None:
  """Reads every car file of `arrays` (in a thread pool, keeping at most its `max_cars`);
  raises the DatasetFormatError of the first bad file in car order."""
  def read(car):
    try:
      arrays.put(car, read_car(arrays.paths[car]))
    except DatasetFormatError as e:
      return e
    return None
  bad = [r for r in pix2pix.parallel_map(read, sorted(arrays.paths), num_threads) if r is not None]
  if bad:
    raise bad[0]


def find_car_files(root: str, split: str) -> Dict[int, str]:
  """{car number: path} of the split's car files present under `root`."""
  cars = split_cars(split)
  if not os.path.isdir(root):
    raise missing_dataset("cars", root)
  paths = {car: os.path.join(root, car_file_name(car)) for car in cars}
  present = {car: path for car, path in paths.items() if os.path.isfile(path)}
  if not present:
    raise pix2pix.dataset_not_found(
        "cars", root, f"{root} holds none of the {split} files "
        f"{car_file_name(cars[0])} .. {car_file_name(cars[-1])}")
  missing = [car_file_name(car) for car in cars if car not in present]
  if missing:
    warnings.warn(f"Cars {split}: {len(missing)} car files missing under {root!r} and skipped "
                  f"(as the reference does): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
  return present


def load_cars(root: str, split: str, resolution: int = 256, *, verify: bool = True,
              max_cars_in_memory: Optional[int] = None, cache_size: int = 64,
              num_threads: Optional[int] = None) -> PairedData:
  """The Cars `split` ('train' or 'test') as lazy PairedData.

  Args:
    root: folder holding the `car_NNN_mesh.mat` files.
    split: 'train' (cars 1-191) or 'test' (cars 192-199).
    resolution: side of the square X and Y images returned.
    verify: read every car file now (in a thread pool) to catch truncated
      files, missing `im` arrays and wrong shapes before training; without it
      only the headers are checked now.
    max_cars_in_memory: uint8 car arrays kept after reading (None: all of
      them; 191 cars at 128x128 take about 0.9 GB, at 64x64 about 0.23 GB).
    cache_size: decoded pairs kept at `resolution`.
    num_threads: threads for the check; default min(8, cpu_count).

  Returns:
    PairedData with `x` (azimuth 0) and `y` lazy (N, R, R, 3) float32 arrays
    in [-1, 1], N = 92 x number of cars, and factors "car" (the file's car
    number), "elevation" (0-3) and "azimuth" (of the Y view, 1-23).

  Raises:
    DatasetNotFoundError: `root` is missing or holds none of the split's files.
    ValueError: 'valid' asked for.
    DatasetFormatError: (a ValueError) a file lacks `im`, has the wrong shape
      or values, or cannot be read (the message names the file).
  """
  if resolution < 1:
    raise ValueError(f"resolution must be positive, got {resolution}")
  root = os.fspath(root)
  paths = find_car_files(root, split)
  cars = sorted(paths)
  arrays = CarArrays(paths, max_cars_in_memory)
  if verify:
    check_car_files(arrays, num_threads)
  else:
    for car in cars:
      _check_header(paths[car])
  factors = pair_factors(cars)
  return paired_data(split, factors, CarPairDecoder(arrays.view, factors, resolution), cache_size)


def _check_header(path: str) -> None:
  """Checks `im`'s presence and shape from the file's header (v5 files; v7.3 are read whole)."""
  try:
    variables = {name: shape for name, shape, _ in scipy.io.whosmat(path)}
  except NotImplementedError:
    check_layout(_read_hdf5(path).shape, path)
    return
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetFormatError(f"{path}: cannot read MATLAB file ({type(e).__name__}: {e})") from e
  if ARRAY_NAME not in variables:
    raise DatasetFormatError(f"{path}: no array '{ARRAY_NAME}' (found: {sorted(variables)})")
  check_layout(variables[ARRAY_NAME], path)

