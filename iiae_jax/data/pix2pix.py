"""Paired image folders in the pix2pix layout (MNIST-CDCB, Facades, Maps; docs/method.md §6).

A dataset root holds `train/`, `val/` (or `valid/`) and `test/`; each file is
one JPEG or PNG whose left half is the X image and whose right half is the Y
image (MNIST-CDCB the other way round: `X_ON_THE_RIGHT`). `load_pix2pix` checks every file of the split (it decodes each once, in
a thread pool) and returns a `PairedData` whose `x` and `y` are lazy readers:
they decode only the files asked for, scale each half to `resolution` x
`resolution` with area averaging (the reference's `ResizeMethod.AREA`) and map
uint8 values to float32 in [-1, 1].

Cost of the check, measured on 2 cores with worst-case (noise) JPEGs: about
1.6 ms per 256x512 file (Facades train, 400 files: under a second) and about
11 ms per 600x1200 file (Maps train, 1,096 files: about 12 s). Pass
`verify=False` to skip it for data already checked (headers are still read).
Truncation is caught by Pillow's default `ImageFile.LOAD_TRUNCATED_IMAGES =
False`; code that turns that flag on also turns this check off.
"""
import collections
import concurrent.futures
import functools
import io
import os
import threading
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from iiae_jax.data import errors
from iiae_jax.errors import DatasetFormatError, DatasetNotFoundError
from iiae_jax.data.types import PairedData

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# `valid` is `val/` in the pix2pix releases (Facades, Maps) and `valid/` in the
# reference's MNIST-CDCB and Maps folders: both are accepted, `val/` first.
SPLIT_FOLDERS = {
    "train": ("train",),
    "valid": ("val", "valid"),
    "val": ("val", "valid"),
    "test": ("test",),
}

# Pixel modes that convert to RGB without losing meaning.
_RGB_CONVERTIBLE_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1")


def dataset_not_found(name: str, root: str, message: str) -> DatasetNotFoundError:
  """A DatasetNotFoundError saying `message`, then how to get dataset `name` into `root`."""
  how = errors.DOWNLOADS.get(name, "")
  return DatasetNotFoundError(f"{name}: {message}." + (" " + how.format(root=root) if how else ""))


def _default_threads() -> int:
  return min(8, os.cpu_count() or 1)


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
  """One shared decoding pool (Pillow releases the GIL while decoding)."""
  global _POOL
  with _POOL_LOCK:
    if _POOL is None:
      _POOL = concurrent.futures.ThreadPoolExecutor(_default_threads(), thread_name_prefix="iiae_decode")
    return _POOL


def _forget_pool() -> None:
  """A forked child has none of the parent's threads: it starts its own pool."""
  global _POOL, _POOL_LOCK
  _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
  os.register_at_fork(after_in_child=_forget_pool)


def parallel_map(fn: Callable, items: Sequence, num_threads: Optional[int] = None) -> list:
  """[fn(item) for item in items], in order, decoded in a thread pool when there are several."""
  if len(items) <= 1 or num_threads == 1:
    return [fn(item) for item in items]
  if num_threads is None:
    return list(_pool().map(fn, items))
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    return list(pool.map(fn, items))


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(images) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255], rounded (the inverse of `to_float` up to 1/255)."""
  images = np.asarray(images, np.float32)
  return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize(image: np.ndarray, resolution: int) -> np.ndarray:
  """Scales a uint8 (H, W, C) image to (resolution, resolution, C) by area averaging.

  Each output pixel is the mean of the input over its footprint, input pixels
  weighted by the fraction of them it covers (TF's `ResizeMethod.AREA`, which
  the reference uses; exact for fractional scales such as Maps' 600 -> 256,
  where Pillow's BOX filter gives each input pixel wholly to one output), then
  rounded to uint8. Enlarging by an integer factor repeats pixels.
  """
  if image.shape[0] == resolution and image.shape[1] == resolution:
    return image
  out = np.asarray(image, np.float32)
  for axis in (0, 1):
    index, weight = _area_taps(out.shape[axis], resolution)
    out = np.moveaxis(out, axis, 0)
    out = sum(weight[:, t, None, None] * out[index[:, t]] for t in range(index.shape[1]))
    out = np.moveaxis(out, 0, axis)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _area_taps(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray]:
  """(index, weight), each (n_out, taps): output i = sum_t weight[i, t] * input[index[i, t]].

  weight = the share of output i's footprint [i s, (i+1) s), s = n_in / n_out,
  that input pixel [j, j+1) covers; a footprint spans at most `taps` inputs.
  """
  s = n_in / n_out
  lo, hi = np.arange(n_out) * s, np.arange(1, n_out + 1) * s
  j = np.arange(n_in)
  share = np.clip(np.minimum(hi[:, None], j + 1) - np.maximum(lo[:, None], j), 0, None) / s
  taps = int((share > 0).sum(axis=1).max())
  start = np.minimum(np.floor(lo).astype(np.int64), n_in - taps)
  index = start[:, None] + np.arange(taps)
  return index, np.take_along_axis(share, index, axis=1).astype(np.float32)


def as_float32(rows) -> np.ndarray:
  return np.asarray(rows, np.float32)


class LazyImages:
  """An array-like (N, R, R, C) float32 in [-1, 1] whose rows are fetched on demand.

  `fetch(indices)` returns uint8 images (len(indices), R, R, C) for an int64
  index array; `convert` maps them to float32 (default `to_float`; pass
  `as_float32` for rows that are already float, e.g. feature vectors).
  Supports `len()`, `.shape`, `.dtype`, `.ndim`, indexing with an int, a
  slice, an int index array or a boolean mask, and `np.asarray` (which decodes
  everything). `paths` (optional) names the source of each row.
  """

  def __init__(self, length: int, image_shape: Tuple[int, ...], fetch: Callable[[np.ndarray], np.ndarray],
               paths: Optional[Sequence[str]] = None, convert: Callable = to_float):
    self._length = int(length)
    self._image_shape = tuple(int(d) for d in image_shape)
    self._fetch = fetch
    self._convert = convert
    self.paths = paths

  def __len__(self) -> int:
    return self._length

  @property
  def shape(self) -> Tuple[int, ...]:
    return (self._length,) + self._image_shape

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(np.float32)

  @property
  def ndim(self) -> int:
    return 1 + len(self._image_shape)

  def __repr__(self) -> str:
    return f"LazyImages(shape={self.shape}, dtype=float32)"

  def _indices(self, key) -> Tuple[np.ndarray, bool]:
    if isinstance(key, (int, np.integer)):
      return np.array([key], np.int64), True
    if isinstance(key, slice):
      return np.arange(self._length)[key], False
    key = np.asarray(key)
    if key.size == 0:
      return np.zeros(key.shape, np.int64), False
    if key.dtype == bool:
      if key.shape != (self._length,):
        raise IndexError(f"boolean index of shape {key.shape} for {self._length} rows")
      return np.flatnonzero(key), False
    if key.dtype.kind not in "iu":
      raise IndexError(f"index must be integers, got dtype {key.dtype}")
    return key.astype(np.int64), False

  def __getitem__(self, key) -> np.ndarray:
    rest = ()
    if isinstance(key, tuple):
      key, rest = key[0], key[1:]
    indices, scalar = self._indices(key)
    flat = indices.reshape(-1)
    if flat.size and (flat.min() < -self._length or flat.max() >= self._length):
      raise IndexError(f"index out of range for {self._length} rows")
    flat = np.where(flat < 0, flat + self._length, flat)
    if flat.size:
      images = self._convert(self._fetch(flat))
    else:
      images = np.zeros((0,) + self._image_shape, np.float32)
    images = images.reshape(indices.shape + self._image_shape)
    if scalar:
      images = images[0]
    return images[rest] if rest else images

  def __array__(self, dtype=None, copy=None):
    out = self[np.arange(self._length)]
    return out if dtype is None else out.astype(dtype)


class PairCache:
  """A small thread-safe LRU cache of decoded (x, y) pairs, keyed by index."""

  def __init__(self, size: int):
    self.size = int(size)
    self._items = collections.OrderedDict()
    self._lock = threading.Lock()

  def get(self, key):
    with self._lock:
      item = self._items.get(key)
      if item is not None:
        self._items.move_to_end(key)
      return item

  def put(self, key, value):
    if self.size <= 0:
      return
    with self._lock:
      self._items[key] = value
      self._items.move_to_end(key)
      while len(self._items) > self.size:
        self._items.popitem(last=False)


class PairReader:
  """Decodes pairs `decode(index) -> (x_u8, y_u8)` through a bounded cache.

  `x` and `y` are `LazyImages` over the two halves; asking `x` then `y` (or
  `y` then `x`) for the same indices decodes each pair once, for up to
  OTHER_HALF_BYTES of images: the other half of the last request is kept until
  it is asked for or another request comes. Pickles without its cache (for
  multi-process input pipelines).
  """

  OTHER_HALF_BYTES = 64 << 20  # a batch of 128 pairs at 256x256 is 25 MB

  def __init__(self, length: int, image_shape, decode: Callable, cache_size: int = 64,
               paths: Optional[Sequence[str]] = None):
    self.length = int(length)
    self.image_shape = tuple(image_shape)
    self.decode = decode
    self.cache_size = int(cache_size)
    self.paths = paths
    self._cache = PairCache(self.cache_size)
    self._other_half = None  # (indices, which, images) of the last request's unasked half
    self.x = LazyImages(self.length, self.image_shape, functools.partial(self.half, 0), paths)
    self.y = LazyImages(self.length, self.image_shape, functools.partial(self.half, 1), paths)
    self.x.reader = self.y.reader = self  # for `keep_all_decoded`

  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_cache"], state["_other_half"], state["x"], state["y"]
    return state

  def __setstate__(self, state):
    self.__init__(state["length"], state["image_shape"], state["decode"], state["cache_size"],
                  state["paths"])

  def keep_all_decoded(self, max_bytes: int) -> bool:
    """Lets the cache hold every pair when their uint8 images take at most `max_bytes`
    (a split read again and again, e.g. validated thousands of times); True if it does."""
    if 2 * self.length * int(np.prod(self.image_shape)) > max_bytes:
      return False
    self.cache_size = self._cache.size = max(self._cache.size, self.length)
    return True

  def half(self, which: int, indices: np.ndarray) -> np.ndarray:
    """uint8 X (which=0) or Y (which=1) images at `indices`."""
    key = np.array(indices, np.int64)  # a copy: the caller may reuse its array
    other, self._other_half = self._other_half, None
    if other is not None and other[1] == which and np.array_equal(other[0], key):
      return other[2]
    halves = self.pairs(key)
    if halves[1 - which].nbytes <= self.OTHER_HALF_BYTES:
      self._other_half = (key, 1 - which, halves[1 - which])
    return halves[which]

  def pairs(self, indices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 X and Y images (n, R, R, C) at `indices`."""
    indices = [int(i) for i in indices]
    found = {i: self._cache.get(i) for i in sorted(set(indices))}
    missing = [i for i, pair in found.items() if pair is None]
    for i, pair in zip(missing, parallel_map(self.decode, missing)):
      found[i] = pair
      self._cache.put(i, pair)
    return (np.stack([found[i][0] for i in indices]), np.stack([found[i][1] for i in indices]))


def split_dir(root: str, split: str, name: str = "pix2pix") -> str:
  """The folder of `split` under `root`; raises DatasetNotFoundError naming what is missing."""
  if split not in SPLIT_FOLDERS:
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_FOLDERS)}")
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise dataset_not_found(name, root, f"dataset directory {root} does not exist")
  candidates = [os.path.join(root, folder) for folder in SPLIT_FOLDERS[split]]
  existing = [path for path in candidates if os.path.isdir(path)]
  # Of two (val/ and valid/), an empty one does not hide the other's images.
  for path in existing:
    if list_pair_files(path):
      return path
  if existing:
    return existing[0]
  raise dataset_not_found(
      name, root, f"split folder for {split!r} is missing: expected {' or '.join(candidates)}")


# Maps (docs/method.md §6: test 1,098 pairs). The pix2pix release has only train/ (1,096) and val/
# (1,098): its val/ is the test split. The reference's folders add valid/, a copy of training
# pairs 1..800 (its tools/copy_file.py); without valid/ those training files are the split.
MAPS_VALID_FROM_TRAIN = 800


def split_files(root: str, split: str, name: str = "pix2pix") -> List[str]:
  """The pair files of `split` under `root`, sorted (see `split_dir`; Maps has its own rule).

  Maps: 'test' is test/, else the release's val/ (never valid/, which holds training
  pairs); 'valid' is valid/ when it holds images, else val/ beside a test/, else
  training pairs 1..800.
  """
  if name != "maps" or split not in ("valid", "val", "test"):
    return list_pair_files(split_dir(root, split, name))
  if not os.path.isdir(os.fspath(root)):
    return list_pair_files(split_dir(root, split, name))  # raises, naming the missing root
  folder = lambda f: os.path.join(os.fspath(root), f)
  has = lambda f: os.path.isdir(folder(f))
  if split == "test":
    if not (has("test") or has("val")):
      raise dataset_not_found(name, os.fspath(root), f"split folder for 'test' is missing: expected "
                              f"{folder('test')} or the release's {folder('val')}")
    return list_pair_files(folder("test" if has("test") else "val"))
  valid = list_pair_files(folder("valid")) if has("valid") else []
  if valid:  # the reference's copy of training pairs
    return valid
  if has("test") and has("val"):
    return list_pair_files(folder("val"))
  train = list_pair_files(split_dir(root, "train", name))
  numbered = {os.path.splitext(os.path.basename(p))[0]: p for p in train}
  wanted = [str(i) for i in range(1, MAPS_VALID_FROM_TRAIN + 1)]
  if all(w in numbered for w in wanted):
    return [numbered[w] for w in wanted]
  return train[:MAPS_VALID_FROM_TRAIN]


def list_pair_files(folder: str) -> List[str]:
  """The JPEG/PNG files of `folder`, sorted as the reference sorts them.

  By number when every file stem is a number (so `10.jpg` follows `9.jpg`),
  otherwise by name.
  """
  names = [n for n in os.listdir(folder)
           if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))]
  stems = [os.path.splitext(n)[0] for n in names]
  if names and all(s.isdigit() for s in stems):
    names.sort(key=lambda n: (int(os.path.splitext(n)[0]), n))
  else:
    names.sort()
  return [os.path.join(folder, n) for n in names]


def _check_pair_size(width: int, height: int, path: str) -> None:
  if width % 2:
    raise DatasetFormatError(f"{path}: width {width} is odd; a pix2pix pair is X and Y side by side")
  if width != 2 * height:
    raise DatasetFormatError(
        f"{path}: size {width}x{height} is not two square halves (width must be twice the height)")


class EncodedFile(NamedTuple):
  """The bytes of an image file kept elsewhere (a TFDS record), and the name errors give it."""
  data: bytes
  name: str


ImageFile = Union[str, os.PathLike, EncodedFile]


def file_name(file: ImageFile) -> str:
  """The name errors give `file`: its path, or an EncodedFile's name."""
  return file.name if isinstance(file, EncodedFile) else os.fspath(file)


def decode_image(file: ImageFile) -> np.ndarray:
  """Decodes an image file (a path or an EncodedFile) to uint8 RGB (H, W, 3).

  Raises DatasetFormatError naming the file when it is truncated, corrupt or
  of a pixel mode without an RGB meaning.
  """
  name = file_name(file)
  try:
    with Image.open(io.BytesIO(file.data) if isinstance(file, EncodedFile) else file) as image:
      image.load()  # Raises on truncated or corrupt data.
      mode, pixels = image.mode, None
      if mode in _RGB_CONVERTIBLE_MODES:
        pixels = np.asarray(image if mode == "RGB" else image.convert("RGB"))
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... on bad data.
    raise DatasetFormatError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e
  if mode not in _RGB_CONVERTIBLE_MODES:
    raise DatasetFormatError(f"{name}: unsupported pixel mode {mode!r} (expected 8-bit RGB or grey)")
  return pixels


def encode_png(image: np.ndarray) -> bytes:
  """uint8 (H, W, 3) -> PNG bytes (lossless; what `decode_image` reads back exactly)."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def read_pair_file(file: ImageFile) -> np.ndarray:
  """Decodes one pair file (a path or an EncodedFile) to uint8 RGB (H, 2H, 3); raises
  DatasetFormatError naming the file."""
  pixels = decode_image(file)
  _check_pair_size(pixels.shape[1], pixels.shape[0], file_name(file))
  return pixels


def check_pair_file(path: str) -> Tuple[int, int]:
  """Decodes `path` fully and checks its layout; returns (height, width)."""
  image = read_pair_file(path)
  return image.shape[0], image.shape[1]


def check_pair_files(paths: Sequence[str], num_threads: Optional[int] = None) -> None:
  """Checks every file (in a thread pool); raises for the first bad file in order."""
  def check(path):
    try:
      check_pair_file(path)
      return None
    except DatasetFormatError as e:
      return e
  bad = [e for e in parallel_map(check, list(paths), num_threads) if e is not None]
  if bad:
    more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
    raise DatasetFormatError(f"{bad[0]}{more}") from bad[0]


# docs/method.md §6: MNIST-CDCB's X is the coloured digit on black and Y the digit on a coloured
# background. The cross-domain-disen release files put Y on the left (checked on its sample
# pairs), so X is their right half; the other pix2pix datasets have X on the left.
X_ON_THE_RIGHT = ("mnist_cdcb",)


def split_pair(image: np.ndarray, resolution: int, x_on_the_right: bool = False
               ) -> Tuple[np.ndarray, np.ndarray]:
  """A uint8 (H, 2H, 3) pair -> X and Y halves at `resolution` (X left unless `x_on_the_right`)."""
  half = image.shape[1] // 2
  left, right = resize(image[:, :half], resolution), resize(image[:, half:], resolution)
  return (right, left) if x_on_the_right else (left, right)


def load_pix2pix(root: str, split: str, resolution: int = 256, name: str = "pix2pix", *,
                 verify: bool = True, cache_size: int = 64,
                 num_threads: Optional[int] = None) -> PairedData:
  """The `split` ('train', 'valid' or 'test') of a pix2pix folder as lazy PairedData.

  Args:
    root: folder holding `train/`, `val/` (or `valid/`) and `test/`. Maps
      (`name="maps"`) may hold only the release's `train/` and `val/`: then
      'test' is `val/` (the 1,098 test pairs of docs/method.md §6) and 'valid' is training
      pairs 1..800, as the reference's copy of them in `valid/` is.
    split: 'train', 'valid' (alias 'val') or 'test'.
    resolution: side of the square X and Y images returned.
    name: the dataset's name in the returned PairedData.
    verify: decode every file once now to catch truncated or malformed files
      before training (see the module docstring for the cost).
    cache_size: decoded pairs kept (uint8, least recently used first out).
    num_threads: threads for the check; default min(8, cpu_count).

  Returns:
    PairedData with `x`, `y` lazy (N, R, R, 3) float32 arrays in [-1, 1], no
    factors; `x.paths` (and `y.paths`) name each pair's file.

  Raises:
    DatasetNotFoundError: `root` or the split folder is missing, or it holds no
      .jpg/.jpeg/.png files.
    DatasetFormatError: (a ValueError) a file is truncated or undecodable, or
      is not two square halves side by side (the message names the file).
  """
  if resolution < 1:
    raise ValueError(f"resolution must be positive, got {resolution}")
  paths = split_files(root, split, name)
  if not paths:
    raise dataset_not_found(
        name, os.fspath(root), f"the {split!r} split under {root} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
  if verify:
    check_pair_files(paths, num_threads)
  else:  # Headers only: catches wrong sizes, not truncation.
    for path in paths:
      try:
        with Image.open(path) as image:
          _check_pair_size(image.width, image.height, path)
      except (UnidentifiedImageError, OSError) as e:
        raise DatasetFormatError(f"{path}: cannot decode image ({e})") from e
  decoder = PairFileDecoder(tuple(paths), resolution, name in X_ON_THE_RIGHT)
  reader = PairReader(len(paths), (resolution, resolution, 3), decoder, cache_size=cache_size, paths=paths)
  return PairedData(name=name, split=split, x=reader.x, y=reader.y)


class PairFileDecoder:
  """index -> uint8 (x, y) halves at `resolution` of the pair file `files[index]`.

  `files` holds paths (`load_pix2pix`) or EncodedFiles (a prepared TFDS dataset's
  records): both decode alike. A class, so that readers pickle.
  """

  def __init__(self, files: Sequence[ImageFile], resolution: int, x_on_the_right: bool = False):
    self.files = files
    self.resolution = resolution
    self.x_on_the_right = x_on_the_right

  def __call__(self, index: int):
    return split_pair(read_pair_file(self.files[index]), self.resolution, self.x_on_the_right)


class ImagePairDecoder:
  """index -> uint8 (x, y) at `resolution` of `pairs[index]`: two image files (paths or EncodedFiles)."""

  def __init__(self, pairs: Sequence[Tuple[ImageFile, ImageFile]], resolution: int):
    self.pairs = pairs
    self.resolution = resolution

  def __call__(self, index: int):
    return tuple(resize(decode_image(file), self.resolution) for file in self.pairs[index])
