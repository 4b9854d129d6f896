"""Translation, style-transfer and analogy images (docs/method.md §5c).

Three layers, each usable on its own:
- `translation_panels` (pure, jittable): decoded images for a batch of pairs;
- `grid_layouts` / `tile` (pure NumPy): those images arranged into grids of cells
  and the grids into single images;
- `write_png` (the side effect): an image in [-1, 1] saved as an 8-bit PNG.

Every image uses test-time inference: z_s is the mean of r(z_s | one domain),
exclusive codes are means of q(z_x|x) / q(z_y|y), or N(0, I) draws.
"""
import os
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from iiae_jax import metrics as metrics_lib
from iiae_jax.inference import decode, exclusive_embedding, shared_embedding

PAD = 2            # pixels between cells and around the grid
PAD_VALUE = 1.0    # white lines
CORNER_VALUE = -1.0  # the empty top-left cell of a grid with headers: black

# name -> what a person sees in the PNG (used by the HTML index).
GRID_DESCRIPTIONS = {
    "reconstruction": "Columns: x, x reconstructed from (r^x z_s mean, q z_x mean), y, y reconstructed likewise.",
    "translation_x_to_y": "Columns: x, its true pair y, then X->Y translations with z_y drawn from N(0, I) (one column per draw).",
    "translation_y_to_x": "Columns: y, its true pair x, then Y->X translations with z_x drawn from N(0, I) (one column per draw).",
    "style_transfer_x_to_y": "Row i: z_s of x_i (left column); column j: z_y of the reference y_j (top row). The diagonal uses each x's own pair.",
    "style_transfer_y_to_x": "Row i: z_s of y_i (left column); column j: z_x of the reference x_j (top row). The diagonal uses each y's own pair.",
    "analogy_x": "Domain X. Row i: z_s of x_i (left column); column j: z_x of x_j (top row). The diagonal is the reconstruction.",
    "analogy_y": "Domain Y. Row i: z_s of y_i (left column); column j: z_y of y_j (top row). The diagonal is the reconstruction.",
}


def combine(model, variables, z_s: jax.Array, z_exclusive: jax.Array, domain: str) -> jax.Array:
  """(N, M, H, W, C): cell [i, j] decodes z_s[i] with z_exclusive[j] in `domain`."""
  n, m = z_s.shape[0], z_exclusive.shape[0]
  z_s_rep = jnp.repeat(z_s, m, axis=0)
  z_ex_rep = jnp.tile(z_exclusive, (n,) + (1,) * (z_exclusive.ndim - 1))
  images = decode(model, variables, z_s_rep, z_ex_rep, domain)
  return images.reshape((n, m) + images.shape[1:])


def translation_panels(model, variables, x: jax.Array, y: jax.Array, rng: jax.Array,
                       num_samples: int) -> Dict[str, jax.Array]:
  """Decoded images for N pairs (x_i, y_i); values in [-1, 1].

  Returns:
    recon_x, recon_y: (N, H, W, C) single-domain reconstructions from the means.
    x_to_y, y_to_x: (num_samples, N, H, W, C) translations; sample k draws the
      target's exclusive code from N(0, I) with key `fold_in(rng, k)`, the same
      draw for both directions' sample k.
    style_x_to_y: (N, N, ...) [i, j] = decode_y(z_s of x_i, z_y of y_j).
    style_y_to_x: (N, N, ...) [i, j] = decode_x(z_s of y_i, z_x of x_j).
    analogy_x: (N, N, ...) [i, j] = decode_x(z_s of x_i, z_x of x_j).
    analogy_y: (N, N, ...) [i, j] = decode_y(z_s of y_i, z_y of y_j).
  """
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"x and y must hold the same number of pairs; got {x.shape} and {y.shape}")
  n = x.shape[0]
  z_s_x, z_s_y = shared_embedding(model, variables, x, "x"), shared_embedding(model, variables, y, "y")
  z_x, z_y = exclusive_embedding(model, variables, x, "x"), exclusive_embedding(model, variables, y, "y")
  draws = [jax.random.normal(jax.random.fold_in(rng, k), (n, model.exclusive_dim), jnp.float32)
           for k in range(num_samples)]
  out = {
      "recon_x": decode(model, variables, z_s_x, z_x, "x"),
      "recon_y": decode(model, variables, z_s_y, z_y, "y"),
      "style_x_to_y": combine(model, variables, z_s_x, z_y, "y"),
      "style_y_to_x": combine(model, variables, z_s_y, z_x, "x"),
      "analogy_x": combine(model, variables, z_s_x, z_x, "x"),
      "analogy_y": combine(model, variables, z_s_y, z_y, "y"),
  }
  if num_samples:
    out["x_to_y"] = jnp.stack([decode(model, variables, z_s_x, z, "y") for z in draws])
    out["y_to_x"] = jnp.stack([decode(model, variables, z_s_y, z, "x") for z in draws])
  else:
    empty = jnp.zeros((0,) + x.shape, jnp.float32)
    out["x_to_y"], out["y_to_x"] = empty, empty
  return out


# One compile per (model, N, num_samples).
translation_panels_jit = jax.jit(translation_panels, static_argnums=(0, 5))


# ---------------------------------------------------------------------------
# Layout (NumPy)


def with_headers(cells: np.ndarray, row_header: np.ndarray, col_header: np.ndarray,
                 corner_value: float = CORNER_VALUE) -> np.ndarray:
  """(R, C, H, W, ch) cells framed by a left column `row_header` (R, H, W, ch) and a
  top row `col_header` (C, H, W, ch): (R + 1, C + 1, H, W, ch)."""
  cells = np.asarray(cells)
  r, c = cells.shape[:2]
  row_header, col_header = np.asarray(row_header), np.asarray(col_header)
  if row_header.shape != (r,) + cells.shape[2:] or col_header.shape != (c,) + cells.shape[2:]:
    raise ValueError(f"headers {row_header.shape}, {col_header.shape} do not fit cells {cells.shape}")
  corner = np.full((1,) + cells.shape[2:], corner_value, cells.dtype)
  top = np.concatenate([corner, col_header.astype(cells.dtype)])[None]
  body = np.concatenate([row_header.astype(cells.dtype)[:, None], cells], axis=1)
  return np.concatenate([top, body])


def columns(*images: np.ndarray) -> np.ndarray:
  """Stacks several (N, H, W, ch) arrays as the columns of an (N, len(images)) grid."""
  return np.stack([np.asarray(a) for a in images], axis=1)


def grid_layouts(panels: Dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> Dict[str, np.ndarray]:
  """The grids of GRID_DESCRIPTIONS as cell arrays (rows, cols, H, W, ch)."""
  p = {k: np.asarray(v) for k, v in panels.items()}
  x, y = np.asarray(x), np.asarray(y)
  return {
      "reconstruction": columns(x, p["recon_x"], y, p["recon_y"]),
      "translation_x_to_y": columns(x, y, *p["x_to_y"]),
      "translation_y_to_x": columns(y, x, *p["y_to_x"]),
      "style_transfer_x_to_y": with_headers(p["style_x_to_y"], x, y),
      "style_transfer_y_to_x": with_headers(p["style_y_to_x"], y, x),
      "analogy_x": with_headers(p["analogy_x"], x, x),
      "analogy_y": with_headers(p["analogy_y"], y, y),
  }


def grid_size(rows: int, cols: int, height: int, width: int, pad: int = PAD) -> Tuple[int, int]:
  """(height, width) in pixels of a tiled grid."""
  return rows * height + (rows + 1) * pad, cols * width + (cols + 1) * pad


def tile(cells: np.ndarray, pad: int = PAD, pad_value: float = PAD_VALUE) -> np.ndarray:
  """(R, C, H, W, ch) cells -> one (R H + (R+1) pad, C W + (C+1) pad, ch) image."""
  cells = np.asarray(cells)
  if cells.ndim != 5:
    raise ValueError(f"cells must have shape (rows, cols, H, W, channels); got {cells.shape}")
  r, c, h, w, ch = cells.shape
  out = np.full(grid_size(r, c, h, w, pad) + (ch,), pad_value, cells.dtype)
  for i in range(r):
    for j in range(c):
      top, left = pad + i * (h + pad), pad + j * (w + pad)
      out[top:top + h, left:left + w] = cells[i, j]
  return out


def to_uint8(image: np.ndarray) -> np.ndarray:
  """[-1, 1] -> [0, 255] (clipped, rounded); NaN becomes mid-grey."""
  image = np.nan_to_num(np.asarray(image, np.float32), nan=0.0)
  return np.round((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def write_png(path: str, image: np.ndarray) -> str:
  """Saves an (H, W, 1 | 3) image in [-1, 1] as an 8-bit PNG; returns the path."""
  pixels = to_uint8(image)
  if pixels.ndim == 3 and pixels.shape[-1] == 1:
    pixels = pixels[..., 0]
  if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
    raise ValueError(f"a PNG needs 1, 3 or 4 channels; got an image of shape {image.shape}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(pixels).save(path, format="PNG")
  return path


# What a reader sees above each grid, and above its columns (none: the grid has image headers).
GRID_TITLES = {
    "reconstruction": "Reconstructions from the test-time means",
    "translation_x_to_y": "X -> Y: z_s of x, z_y drawn from N(0, I)",
    "translation_y_to_x": "Y -> X: z_s of y, z_x drawn from N(0, I)",
    "style_transfer_x_to_y": "X -> Y style transfer: z_s of the left column, z_y of the top row",
    "style_transfer_y_to_x": "Y -> X style transfer: z_s of the left column, z_x of the top row",
    "analogy_x": "Analogies in X: z_s of the left column, z_x of the top row",
    "analogy_y": "Analogies in Y: z_s of the left column, z_y of the top row",
}


def column_labels(name: str, num_columns: int) -> Tuple[str, ...]:
  """The label above each column of grid `name`."""
  if name == "reconstruction":
    return ("x", "x rebuilt", "y", "y rebuilt")
  if name.startswith("translation_"):
    source, target = ("x", "y") if name.endswith("x_to_y") else ("y", "x")
    return (f"{source} (source)", f"{target} (true pair)") + tuple(
        f"draw {k}" for k in range(1, num_columns - 1))
  kind = "z_y" if name.endswith(("x_to_y", "_y")) else "z_x"
  return ("sources (z_s)",) + tuple(f"{kind} of #{j}" for j in range(1, num_columns))


FIGURE_MIN_CELL = 96   # pixels: small images are enlarged (each pixel repeated) to at least this


def figure(cells: np.ndarray, title: str = "", labels: Tuple[str, ...] = (), pad: int = PAD) -> np.ndarray:
  """A grid a person can read: the tiled `cells` (R, C, H, W, ch) in [-1, 1], each pixel
  repeated so that a cell is at least FIGURE_MIN_CELL wide (no smoothing), under a title line
  and a label above each column; uint8 (height, width, 3). `figure_offset` says where the
  enlarged tile starts."""
  cells = np.asarray(cells)
  scale = figure_scale(cells.shape[3])
  grid = to_uint8(tile(cells, pad))
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  if grid.shape[-1] == 1:
    grid = np.repeat(grid, 3, axis=-1)
  top, _ = figure_offset(bool(title), bool(labels))
  canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + top), "white")
  canvas.paste(Image.fromarray(grid), (0, top))
  draw = ImageDraw.Draw(canvas)
  if title:
    draw.text((pad * scale, 2), title, fill="black", font=_FONT)
  cell_width = cells.shape[3] * scale
  for j, label in enumerate(labels):
    left = (pad + j * (cells.shape[3] + pad)) * scale
    width = draw.textlength(label, font=_FONT)
    draw.text((left + max(0, (cell_width - width) / 2), top - _LINE + 1), label, fill="black", font=_FONT)
  return np.asarray(canvas)


def figure_scale(cell_width: int) -> int:
  return max(1, -(-FIGURE_MIN_CELL // cell_width))


def figure_offset(title: bool, labels: bool) -> Tuple[int, int]:
  """(top, left) pixel of the enlarged tile inside a `figure`."""
  return _LINE * (int(title) + int(labels)), 0


_FONT = ImageFont.load_default(size=12)
_LINE = 18   # pixels per text line


def grid_figures(layouts: Dict[str, np.ndarray], pad: int = PAD) -> Dict[str, np.ndarray]:
  """Every layout as a titled, labelled `figure`."""
  return {name: figure(cells, GRID_TITLES.get(name, name), column_labels(name, cells.shape[1]), pad)
          for name, cells in layouts.items()}


def write_grids(out_dir: str, layouts: Dict[str, np.ndarray], pad: int = PAD) -> Dict[str, str]:
  """Writes every layout as a labelled figure <out_dir>/<name>.png; {name: path}."""
  paths = {}
  for name, image in grid_figures(layouts, pad).items():
    paths[name] = os.path.join(out_dir, name + ".png")
    os.makedirs(out_dir, exist_ok=True)
    Image.fromarray(image).save(paths[name], format="PNG")
  return paths


def retrieval_strip(query, query_labels, gallery, gallery_labels, classes, ranks: int,
                    cell: Tuple[int, int] = (84, 22)) -> np.ndarray:
  """uint8 (H, W, 3): a row per query, its class, then the classes of its `ranks` top-ranked
  gallery items (cosine distance; ties by gallery index), green where relevant, red where not."""
  top = metrics_lib.ranked_by_cosine(query, gallery)[:, :ranks]
  width, height = cell
  image = Image.new("RGB", (width * (ranks + 1), height * (len(top) + 1)), "white")
  draw = ImageDraw.Draw(image)
  draw.text((2, 4), "query", fill="black", font=_FONT)
  for j in range(ranks):
    draw.text((width * (j + 1) + 2, 4), f"rank {j + 1}", fill="black", font=_FONT)
  for i, row in enumerate(top):
    y = height * (i + 1)
    draw.text((2, y + 4), str(classes[int(query_labels[i])]), fill="black", font=_FONT)
    for j, g in enumerate(row):
      relevant = gallery_labels[g] == query_labels[i]
      box = (width * (j + 1) + 1, y + 1, width * (j + 2) - 1, y + height - 1)
      draw.rectangle(box, fill=(170, 225, 170) if relevant else (240, 170, 170))
      draw.text((box[0] + 2, y + 4), str(classes[int(gallery_labels[g])]), fill="black", font=_FONT)
  return np.asarray(image)


def translation_errors(panels: Dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> Dict[str, float]:
  """Mean absolute pixel errors of the reconstructions and of the paired translations
  (the diagonal of the style-transfer grids: each source with its own pair's code)."""
  p = {k: np.asarray(v) for k, v in panels.items()}
  diag = lambda a: np.stack([a[i, i] for i in range(a.shape[0])])
  mae = lambda a, b: float(np.mean(np.abs(a - np.asarray(b))))
  return {
      "recon_mae_x": mae(p["recon_x"], x),
      "recon_mae_y": mae(p["recon_y"], y),
      "translation_mae_x_to_y": mae(diag(p["style_x_to_y"]), y),
      "translation_mae_y_to_x": mae(diag(p["style_y_to_x"]), x),
  }


def make_panels(model, variables, x, y, *, num_samples: int, seed: int = 0,
                jit: bool = True) -> Dict[str, np.ndarray]:
  """`translation_panels` on host arrays, as NumPy."""
  fn = translation_panels_jit if jit else translation_panels
  variables = jax.device_put({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
  out = fn(model, variables, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
           jax.random.key(int(seed)), int(num_samples))
  return {k: np.asarray(v) for k, v in out.items()}


__all__ = ["GRID_DESCRIPTIONS", "GRID_TITLES", "column_labels", "combine", "columns", "figure",
           "figure_offset", "figure_scale", "grid_figures", "grid_layouts", "grid_size", "make_panels",
           "retrieval_strip",
           "tile", "to_uint8", "translation_errors", "translation_panels", "with_headers",
           "write_grids", "write_png"]
