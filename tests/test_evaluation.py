"""Pins the evaluation package: embeddings, evaluators, image grids and checkpoint errors.

Tiny models on small synthetic splits; every model call is jitted.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from iiae_jax import checkpointing, evaluate, inference, models, recipes, run_config, train_state
from iiae_jax import evaluation
from iiae_jax.errors import UsageError
from iiae_jax.data import PairedData, ZeroShotData
from iiae_jax.evaluation import grids
from tests.helpers import figure_grid

RES = 16


def _model_config(architecture):
  if architecture == "features":
    return ml_collections.ConfigDict(dict(
        architecture="features", x_dim=12, y_dim=12, exclusive_width=8, shared_width=8, exclusive_dim=3, shared_dim=4, decoder_width=8,
        shared_posterior="joint", prior_expert=True, num_classes=0))
  return ml_collections.ConfigDict(dict(
      architecture="spatial", resolution=RES, channels=3, latent_resolution=4, channel_cap=8,
      exclusive_width=4, shared_width=4, exclusive_dim=3, shared_dim=6, decoder_width=4, dropout_rate=0.5,
      shared_posterior="joint", prior_expert=True, num_classes=0))


def _config(architecture="spatial", evals=None, valid_split=""):
  config = recipes.default()
  config.model = _model_config(architecture)
  config.data = recipes.data("digits_cdcb")  # a known name (validated); the splits come from a _Loader
  config.data.valid_split = valid_split
  config.evals = ml_collections.ConfigDict(evals or {})
  return config


def _init(architecture):
  """A tiny model and random variables of the right shapes (no compile of model.init)."""
  model = models.build_model(_model_config(architecture))
  x_shape, y_shape = models.input_shapes(_model_config(architecture))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2,) + x_shape), jnp.zeros((2,) + y_shape))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(s.dtype), shapes["params"])
  stats = jax.tree_util.tree_map_with_path(
      lambda path, s: np.full(s.shape, 1.0 if "var" in jax.tree_util.keystr(path) else 0.0, s.dtype),
      shapes["batch_stats"])
  return model, {"params": params, "batch_stats": stats}


@pytest.fixture(scope="module")
def spatial():
  return _init("spatial")


@pytest.fixture(scope="module")
def features():
  return _init("features")


def _paired(split="test", n=10, seed=0, shape=(RES, RES, 3), same=False):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (n,) + shape).astype(np.float32)
  y = x.copy() if same else rng.uniform(-1, 1, (n,) + shape).astype(np.float32)
  return PairedData("synthetic", split, x, y,
                    factors={"digit": np.arange(n) % 3, "color": (np.arange(n) // 2) % 2,
                             "image": np.arange(n)},
                    factor_names={"digit": ["a", "b", "c"], "color": ["red", "blue"]})


class _Loader:
  """Serves fixed splits and records which ones were asked for."""

  def __init__(self, **splits):
    self.splits, self.requests = splits, []

  def __call__(self, split):
    self.requests.append(split)
    return self.splits[split]


def _suite(config, loader, training=False):
  return evaluation.EvaluationSuite.from_config(
      config, training=training, datasets=evaluation.Datasets(config.data, loader=loader))


def _replace(variables, module, fn):
  """`variables` with fn applied to every parameter of submodule `module`."""
  params = dict(variables["params"])
  params[module] = jax.tree.map(fn, params[module])
  return {"params": params, "batch_stats": variables["batch_stats"]}


def _copy_module(variables, src, dst):
  out = {}
  for col in ("params", "batch_stats"):
    out[col] = dict(variables[col])
    out[col][dst] = jax.tree.map(np.copy, variables[col][src])
  return out


def _mirror_shared_encoders(variables):
  """r^y = r^x with its input kernel negated: r^y(-v) == r^x(v) bit for bit (the first
  layer is a bias-free Dense on the input), while r^x(-v) is another embedding."""
  out = _copy_module(variables, "shared_encoder_x", "shared_encoder_y")
  first = "['PreNorm_0']['Dense_0']['kernel']"
  out["params"]["shared_encoder_y"] = jax.tree_util.tree_map_with_path(
      lambda path, p: -p if jax.tree_util.keystr(path) == first else p, out["params"]["shared_encoder_y"])
  return out


def _with_batch_stats(variables, seed):
  """`variables` with running statistics away from the defaults (means != 0, variances != 1)."""
  rng = np.random.default_rng(seed)
  stats = jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.uniform(0.5, 2.0, s.shape) if "var" in jax.tree_util.keystr(path)
                       else rng.normal(0.0, 0.3, s.shape)).astype(s.dtype),
      variables["batch_stats"])
  return {"params": variables["params"], "batch_stats": stats}


# ---------------------------------------------------------------------------
# Embeddings


def test_embedding_pads_the_last_batch_and_equals_the_inference_api(spatial):
  model, variables = spatial
  data = _paired(n=10)
  emb = evaluation.embed_paired(model, variables, data, batch_size=4)  # 4 + 4 + 2 (padded)
  assert set(emb) == {"z_s_x", "z_s_y", "z_x", "z_y"}
  direct = jax.jit(inference.shared_embedding, static_argnums=(0, 3))
  direct_ex = jax.jit(inference.exclusive_embedding, static_argnums=(0, 3))
  np.testing.assert_allclose(emb["z_s_x"], direct(model, variables, data.x, "x"), atol=1e-5)
  np.testing.assert_allclose(emb["z_s_y"], direct(model, variables, data.y, "y"), atol=1e-5)
  np.testing.assert_allclose(emb["z_x"], direct_ex(model, variables, data.x, "x"), atol=1e-5)
  np.testing.assert_allclose(emb["z_y"], direct_ex(model, variables, data.y, "y"), atol=1e-5)
  assert emb["z_s_x"].shape[:2] == (10, 4) and emb["z_x"].shape == (10, 3)
  sub = evaluation.embed_paired(model, variables, data, indices=np.array([7, 2]), batch_size=4)
  np.testing.assert_allclose(sub["z_y"], emb["z_y"][[7, 2]], atol=1e-6)


def test_nan_embedding_raises_a_value_error_naming_the_embedding(spatial, features):
  model, variables = spatial
  broken = _replace(variables, "exclusive_encoder_y", lambda p: np.full_like(p, np.nan))
  with pytest.raises(ValueError, match=r"embedding z_y \(mean of q\(z_y\|y\)\)"):
    evaluation.embed_paired(model, broken, _paired(), batch_size=4)
  model, variables = features
  broken = _replace(variables, "shared_encoder_y", lambda p: np.full_like(p, np.inf))
  data = ZeroShotData("synthetic", "test", np.ones((5, 12), np.float32), np.zeros(5, np.int32),
                      np.ones((4, 12), np.float32), np.zeros(4, np.int32), ["a"])
  with pytest.raises(ValueError, match="embedding photo_z_s"):
    evaluation.embed_zero_shot(model, broken, data, batch_size=4)


# ---------------------------------------------------------------------------
# Evaluators


PAIRED_KEYS = {"shared_x_to_y", "shared_y_to_x", "exclusive_x_to_y", "exclusive_y_to_x",
               "shared_x_to_y_hits", "shared_y_to_x_hits", "exclusive_x_to_y_hits",
               "exclusive_y_to_x_hits", "num_pairs", "chance"}


def test_paired_retrieval_pairs_example_i_with_example_i(features):
  model, variables = features
  # Identical shared encoders and x = y: z_s_x == z_s_y, so every pair finds its partner.
  same = _copy_module(variables, "shared_encoder_x", "shared_encoder_y")
  # A constant exclusive code for y: every distance ties, so only one pair is "found" each way.
  same = _replace(same, "exclusive_encoder_y", np.zeros_like)
  config = _config("features", {"pr": dict(type="paired_retrieval")})
  n = 12
  out = _suite(config, _Loader(test=_paired(n=n, shape=(12,), same=True)))(model, same, step=3)
  assert set(out) == {f"test/pr/{k}" for k in PAIRED_KEYS}
  assert out["test/pr/shared_x_to_y"] == out["test/pr/shared_y_to_x"] == 1.0
  assert out["test/pr/shared_x_to_y_hits"] == n and out["test/pr/num_pairs"] == n
  assert out["test/pr/exclusive_x_to_y_hits"] == out["test/pr/exclusive_y_to_x_hits"] == 1
  assert out["test/pr/exclusive_x_to_y"] == pytest.approx(1 / n)
  assert _suite(config, None).selection_score(out) == 2.0
  # Pairs shuffled: x_i's shared twin is now y_{perm^-1(i)}, never y_i.
  data = _paired(n=n, shape=(12,), same=True)
  perm = np.roll(np.arange(n), 1)
  shuffled = PairedData("synthetic", "test", data.x, data.x[perm])
  out = _suite(config, _Loader(test=shuffled))(model, same, step=3)
  assert out["test/pr/shared_x_to_y"] == out["test/pr/shared_y_to_x"] == 0.0
  for key in PAIRED_KEYS - {"num_pairs", "chance"}:
    if key.endswith("_hits"):
      assert isinstance(out[f"test/pr/{key}"], int) and 0 <= out[f"test/pr/{key}"] <= n
    else:
      assert 0.0 <= out[f"test/pr/{key}"] <= 1.0
  # Duplicates make the directions differ: x = (b, b, c), y = (b, c, c), identical encoders.
  # X->Y: x_0 finds y_0; x_1 ties y_0 and y_1 at 0 (y_0, lower index); x_2 ties y_1 first: 1 hit.
  # Y->X: y_0 ties x_0 and x_1 (x_0: a hit); y_1 finds x_2 (a miss); y_2 finds x_2: 2 hits.
  b, c = np.random.default_rng(3).uniform(-1, 1, (2, 12)).astype(np.float32)
  lopsided = PairedData("synthetic", "test", np.stack([b, b, c]), np.stack([b, c, c]))
  out = _suite(config, _Loader(test=lopsided))(model, same, step=3)
  assert (out["test/pr/shared_x_to_y_hits"], out["test/pr/shared_y_to_x_hits"]) == (1, 2), out
  assert out["test/pr/shared_x_to_y"] == pytest.approx(1 / 3) and out["test/pr/shared_y_to_x"] == pytest.approx(2 / 3)
  # The constant z_y ties every y for each x (y_0 first); all y share one nearest x: 1 hit each way.
  assert out["test/pr/exclusive_x_to_y_hits"] == out["test/pr/exclusive_y_to_x_hits"] == 1
  assert out["test/pr/num_pairs"] == 3 and out["test/pr/chance"] == pytest.approx(1 / 3)


def test_zs_retrieval_reports_every_labelled_metric(features):
  model, variables = features
  same = _copy_module(variables, "shared_encoder_x", "shared_encoder_y")
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(9, 12)).astype(np.float32)
  labels = np.arange(9, dtype=np.int32) % 3
  # Each sketch's own copy is in the gallery at distance 0: precision@1 = 1.
  data = ZeroShotData("synthetic", "test", feats, labels, feats, labels, ["a", "b", "c"])
  config = _config("features", {"zs": dict(type="zs_retrieval", ks=(1, 5), batch_size=4)})
  out = _suite(config, _Loader(test=data))(model, same, step=0)
  expected = {"map_all", "num_queries", "queries_without_relevant"} | {
      f"{m}@{k}{s}" for k in (1, 5) for m, s in (("precision", ""), ("map", ""), ("map", "_reference"))}
  assert set(out) == {f"test/zs/{k}" for k in expected}
  assert out["test/zs/precision@1"] == 1.0 and out["test/zs/map@1"] == 1.0
  assert out["test/zs/num_queries"] == 9
  for k in expected - {"num_queries", "queries_without_relevant"}:
    assert 0.0 <= out[f"test/zs/{k}"] <= 1.0
  # Photos are embedded by r^y, sketches by r^x: with mirrored encoders photo -v_i is the exact
  # twin of sketch v_i (r^x(-v_i) is not), and with one photo per class each query's only
  # relevant photo is at rank 1.
  names = [f"c{i}" for i in range(9)]
  mirrored = _mirror_shared_encoders(variables)
  data = ZeroShotData("synthetic", "test", feats, np.arange(9, dtype=np.int32), -feats,
                      np.arange(9, dtype=np.int32), names)
  emb = evaluation.embed_zero_shot(model, mirrored, data, batch_size=4)
  np.testing.assert_array_equal(emb["photo_z_s"], emb["sketch_z_s"])
  out = _suite(config, _Loader(test=data))(model, mirrored, step=0)
  assert out["test/zs/map_all"] == 1.0 and out["test/zs/precision@1"] == 1.0, out
  assert out["test/zs/map@5"] == 1.0 and out["test/zs/precision@5"] == pytest.approx(1 / 5)
  assert out["test/zs/map@5_reference"] == pytest.approx(1 / 5) and out["test/zs/queries_without_relevant"] == 0
  default = evaluation.make_evaluator("zs", {"type": "zs_retrieval"}, None)
  assert default.options["ks"] == (100,)


def test_disentanglement_probes_each_named_factor_from_each_latent(spatial):
  model, variables = spatial
  test = _paired("test", n=9, seed=1)
  config = _config(evals={"dis": dict(type="disentanglement", train_split="valid", batch_size=8)})
  loader = _Loader(valid=_paired("valid", n=12, seed=2), test=test)
  out = _suite(config, loader)(model, variables, step=0)
  # factor_names of the data (digit, color), not every factor ("image" has no names).
  expected = {f"test/dis/{z}/{f}{s}" for z in ("z_s_x", "z_x", "z_y") for f in ("digit", "color")
              for s in ("", "_chance")}
  assert set(out) == expected
  assert all(0.0 <= v <= 1.0 for v in out.values())
  assert out["test/dis/z_x/digit_chance"] == pytest.approx(3 / 9)   # test labels 0,1,2 x 3
  assert out["test/dis/z_x/color_chance"] == pytest.approx(5 / 9)   # (i // 2) % 2 over 0..8
  assert sorted(set(loader.requests)) == ["test", "valid"]
  # One split for both: fit on the even examples, score on the odd ones (4 of 9).
  config = _config(evals={"dis": dict(type="disentanglement", train_split="test", factor_names=["color"])})
  out = _suite(config, _Loader(test=test))(model, variables, step=0)
  assert set(out) == {f"test/dis/{z}/color{s}" for z in ("z_s_x", "z_x", "z_y") for s in ("", "_chance")}
  assert out["test/dis/z_s_x/color_chance"] == pytest.approx(2 / 4)  # odd i: colours 0, 1, 1, 0
  config = _config(evals={"dis": dict(type="disentanglement", factor_names=["shape"])})
  with pytest.raises(ValueError, match="shape"):
    _suite(config, _Loader(test=test, train=test))(model, variables, step=0)


def _digit_coded(split, n, seed):
  """Pairs whose x is one of three fixed vectors, chosen by the digit (i % 3); y is noise."""
  rng = np.random.default_rng(seed)
  prototypes = np.random.default_rng(11).uniform(-1, 1, (3, 12)).astype(np.float32)
  digit = np.arange(n) % 3
  return PairedData("synthetic", split, prototypes[digit], rng.uniform(-1, 1, (n, 12)).astype(np.float32),
                    factors={"digit": digit, "color": (np.arange(n) // 2) % 2},
                    factor_names={"digit": ["a", "b", "c"], "color": ["red", "blue"]})


def test_disentanglement_probes_score_each_latent_on_its_own_code(features):
  """z_s_x and z_x take one value per digit (x is a function of the digit): a probe fitted on
  the train split's labels reads the digit perfectly. z_y is constant (a zeroed encoder):
  its probe can only answer the train split's most frequent label, which is also the test
  split's: exactly chance."""
  model, variables = features
  constant_z_y = _replace(variables, "exclusive_encoder_y", np.zeros_like)
  # Train: 10 pairs, digits 4/3/3 and colours 6/4 (label 0 most frequent, no tie).
  # Test: 9 pairs, digits 3/3/3 (chance 1/3), colours 5/4 (chance 5/9).
  loader = _Loader(valid=_digit_coded("valid", 10, seed=2), test=_digit_coded("test", 9, seed=1))
  config = _config("features", {"dis": dict(type="disentanglement", train_split="valid", batch_size=8)})
  out = _suite(config, loader)(model, constant_z_y, step=0)
  assert out["test/dis/z_s_x/digit"] == 1.0 and out["test/dis/z_x/digit"] == 1.0, out
  assert out["test/dis/z_y/digit"] == out["test/dis/z_y/digit_chance"] == pytest.approx(1 / 3), out
  assert out["test/dis/z_y/color"] == out["test/dis/z_y/color_chance"] == pytest.approx(5 / 9), out


def test_unknown_evaluator_type_or_field_is_a_clear_error():
  with pytest.raises(ValueError, match="known evaluator types"):
    evaluation.make_evaluator("x", {"type": "fid"}, None)
  with pytest.raises(ValueError, match="unknown field"):
    evaluation.make_evaluator("x", {"type": "paired_retrieval", "k": 3}, None)
  with pytest.raises(ValueError, match="ks"):
    evaluation.make_evaluator("x", {"type": "zs_retrieval", "ks": (0,)}, None)


def test_the_training_suite_runs_the_during_training_entries_on_the_validation_split(features):
  model, variables = features
  assert evaluation.EvaluationSuite.for_training(_config("features"), "/nonexistent") is None
  evals = {"pr": dict(type="paired_retrieval", split="test"),
           "grid": dict(type="translation_grid", split="test")}
  data = {"valid": _paired("valid", n=6, shape=(12,)), "test": _paired("test", n=8, shape=(12,))}
  loader = _Loader(**data)
  config = _config("features", evals, valid_split="valid")
  suite = evaluation.EvaluationSuite.for_training(config, "/nonexistent",
                                                     datasets=evaluation.Datasets(config.data, loader))
  out = suite(model, variables, 5)
  assert set(out) == {f"valid/pr/{k}" for k in PAIRED_KEYS}      # no translation_grid
  assert out["valid/pr/num_pairs"] == 6 and loader.requests == ["valid"]
  loader = _Loader(**data)
  config = _config("features", evals)
  suite = evaluation.EvaluationSuite.for_training(config, "/nonexistent",
                                                     datasets=evaluation.Datasets(config.data, loader))
  assert suite(model, variables, 5)["test/pr/num_pairs"] == 8 and loader.requests == ["test"]
  only_grid = _config("features", {"grid": evals["grid"]})
  suite = evaluation.EvaluationSuite.for_training(only_grid, "/nonexistent")   # it only draws
  assert suite.evaluators == [] and [e.name for e in suite.drawing] == ["grid"]


# ---------------------------------------------------------------------------
# Translation, style transfer, analogies


def test_translation_panels_decode_the_swapped_latents(spatial):
  model, variables = spatial
  data = _paired(n=3, seed=4)
  x, y = data.x, data.y
  panels = grids.make_panels(model, variables, x, y, num_samples=2, seed=7)
  img = (RES, RES, 3)
  assert panels["recon_x"].shape == panels["recon_y"].shape == (3,) + img
  assert panels["x_to_y"].shape == panels["y_to_x"].shape == (2, 3) + img
  for k in ("style_x_to_y", "style_y_to_x", "analogy_x", "analogy_y"):
    assert panels[k].shape == (3, 3) + img
  shared = jax.jit(inference.shared_embedding, static_argnums=(0, 3))
  exclusive = jax.jit(inference.exclusive_embedding, static_argnums=(0, 3))
  dec = jax.jit(inference.decode, static_argnums=(0, 4))
  z_s_x, z_x = shared(model, variables, x, "x"), exclusive(model, variables, x, "x")
  z_s_y, z_y = shared(model, variables, y, "y"), exclusive(model, variables, y, "y")
  # The analogy of a sample with its own exclusive code is its reconstruction from the means.
  recon_x = dec(model, variables, z_s_x, z_x, "x")
  np.testing.assert_allclose(panels["recon_x"], recon_x, atol=1e-5)
  for i in range(3):
    np.testing.assert_allclose(panels["analogy_x"][i, i], recon_x[i], atol=1e-5)
  # Off the diagonal: z_s of sample i with the exclusive code of sample j.
  for i, j in ((0, 1), (2, 0)):
    want = dec(model, variables, z_s_x[i:i + 1], z_x[j:j + 1], "x")[0]
    np.testing.assert_allclose(panels["analogy_x"][i, j], want, atol=1e-5)
    assert np.abs(panels["analogy_x"][i, j] - panels["analogy_x"][i, i]).max() > 1e-4
    want = dec(model, variables, z_s_y[i:i + 1], z_y[j:j + 1], "y")[0]
    np.testing.assert_allclose(panels["analogy_y"][i, j], want, atol=1e-5)
    # Style transfer: x_i's content in y_j's style, as inference.translate does it.
    want = jax.jit(lambda v, r: inference.translate(model, variables, v, "y", reference=r))(
        x[i:i + 1], y[j:j + 1])[0]
    np.testing.assert_allclose(panels["style_x_to_y"][i, j], want, atol=1e-5)
    want = dec(model, variables, z_s_y[i:i + 1], z_x[j:j + 1], "x")[0]
    np.testing.assert_allclose(panels["style_y_to_x"][i, j], want, atol=1e-5)
  # Random codes: sample k uses key fold_in(key(seed), k), like translate(rng=...).
  translate = jax.jit(lambda v, k: inference.translate(model, variables, v, "y", rng=k))
  for k in range(2):
    want = translate(x, jax.random.fold_in(jax.random.key(7), k))
    np.testing.assert_allclose(panels["x_to_y"][k], want, atol=1e-5)
  assert np.abs(panels["x_to_y"][0] - panels["x_to_y"][1]).max() > 1e-4


def test_to_uint8_maps_the_model_range_onto_bytes():
  np.testing.assert_array_equal(grids.to_uint8(np.array([-1.0, 0.0, 1.0, -3.0, 2.0, np.nan])),
                                [0, 128, 255, 0, 255, 128])


def test_tile_places_cells_row_major_between_padding():
  cells = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1, 1) * np.ones((1, 1, 2, 3, 1), np.float32)
  image = grids.tile(cells, pad=1, pad_value=-1.0)
  assert image.shape == grids.grid_size(2, 3, 2, 3, pad=1) + (1,) == (7, 13, 1)
  assert image[1, 1, 0] == 0 and image[1, 5, 0] == 1 and image[4, 9, 0] == 5
  assert image[0, :, 0].tolist() == [-1.0] * 13 and image[3, :, 0].tolist() == [-1.0] * 13


def test_translation_grid_writes_pngs_of_the_expected_pixel_sizes(spatial, tmp_path):
  model, variables = spatial
  data = _paired(n=10, seed=5)
  config = _config(evals={"grid": dict(type="translation_grid", num_examples=3, num_samples=2)})
  suite = _suite(config, _Loader(test=data))
  out = suite(model, variables, step=1, out_dir=str(tmp_path))
  assert out["test/grid/images_written"] == 7 and out["test/grid/num_examples"] == 3
  assert {"test/grid/recon_mae_x", "test/grid/recon_mae_y", "test/grid/translation_mae_x_to_y",
          "test/grid/translation_mae_y_to_x"} <= set(out)
  assert all(0.0 <= out[k] <= 2.0 for k in out if "mae" in k)
  size = lambda rows, cols: grids.grid_size(rows, cols, RES, RES)   # (height, width)
  expected = {"reconstruction": size(3, 4), "translation_x_to_y": size(3, 4), "translation_y_to_x": size(3, 4),
              "style_transfer_x_to_y": size(4, 4), "style_transfer_y_to_x": size(4, 4),
              "analogy_x": size(4, 4), "analogy_y": size(4, 4)}
  assert sorted(os.path.basename(p) for p in suite.artifacts) == sorted(f"{k}.png" for k in expected)
  for name, (h, w) in expected.items():   # labelled figures, enlarged without smoothing
    assert figure_grid(tmp_path / "grid" / f"{name}.png", RES).shape == (h, w, 3), name
  pixels = figure_grid(tmp_path / "grid" / "analogy_x.png", RES)
  p = grids.PAD
  assert (pixels[:p] == 255).all()                                     # white padding
  assert (pixels[p:p + RES, p:p + RES] == 0).all()                     # black empty corner
  # Left column, second row: the first content source x_0, mapped from [-1, 1] to bytes.
  top = p + (RES + p)
  np.testing.assert_array_equal(pixels[top:top + RES, p:p + RES], grids.to_uint8(data.x[0]))
  # Every cell is the image its description names: the same panels, sources and references.
  x, y = data.x[:3], data.y[:3]
  panels = grids.make_panels(model, variables, x, y, num_samples=2, seed=0)

  def cell(name, row, col):
    pixels = figure_grid(tmp_path / "grid" / f"{name}.png", RES)
    top, left = p + row * (RES + p), p + col * (RES + p)
    return pixels[top:top + RES, left:left + RES]

  for i in range(3):
    for name, source, target, samples in (("translation_x_to_y", x, y, panels["x_to_y"]),
                                          ("translation_y_to_x", y, x, panels["y_to_x"])):
      np.testing.assert_array_equal(cell(name, i, 0), grids.to_uint8(source[i]), err_msg=f"{name} source {i}")
      np.testing.assert_array_equal(cell(name, i, 1), grids.to_uint8(target[i]), err_msg=f"{name} pair {i}")
      for k in range(2):
        np.testing.assert_array_equal(cell(name, i, 2 + k), grids.to_uint8(samples[k, i]),
                                      err_msg=f"{name} draw {k} of {i}")
    for name, content, style, cells in (("style_transfer_x_to_y", x, y, panels["style_x_to_y"]),
                                        ("style_transfer_y_to_x", y, x, panels["style_y_to_x"])):
      np.testing.assert_array_equal(cell(name, 1 + i, 0), grids.to_uint8(content[i]),
                                    err_msg=f"{name} row header {i}")
      np.testing.assert_array_equal(cell(name, 0, 1 + i), grids.to_uint8(style[i]),
                                    err_msg=f"{name} column header {i}")
      for j in range(3):
        np.testing.assert_array_equal(cell(name, 1 + i, 1 + j), grids.to_uint8(cells[i, j]),
                                      err_msg=f"{name} cell {i}, {j}")
  # Errors: reconstructions against their inputs; the paired translations (the style grids'
  # diagonals) against the true pair in the target domain.
  diagonal = lambda a: np.stack([a[i, i] for i in range(3)])
  mae = lambda a, b: float(np.mean(np.abs(a - b)))
  assert out["test/grid/recon_mae_x"] == pytest.approx(mae(panels["recon_x"], x), rel=1e-6)
  assert out["test/grid/recon_mae_y"] == pytest.approx(mae(panels["recon_y"], y), rel=1e-6)
  assert out["test/grid/translation_mae_x_to_y"] == pytest.approx(
      mae(diagonal(panels["style_x_to_y"]), y), rel=1e-6)
  assert out["test/grid/translation_mae_y_to_x"] == pytest.approx(
      mae(diagonal(panels["style_y_to_x"]), x), rel=1e-6)
  # Without an output directory nothing is written.
  out = suite(model, variables, step=1)
  assert out["test/grid/images_written"] == 0 and suite.artifacts == []


def test_translation_grid_refuses_a_feature_model(features):
  model, variables = features
  config = _config("features", {"grid": dict(type="translation_grid")})
  with pytest.raises(ValueError, match="feature-vector model"):
    _suite(config, _Loader(test=_paired(shape=(12,))))(model, variables, step=0)


# ---------------------------------------------------------------------------
# Checkpoints


def _save_checkpoint(config, workdir, step=3, variables=None):
  model = models.build_model(config.model)
  template = train_state.abstract_train_state(config.seed, model, train_state.make_optimizer(config.optimizer))
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  if variables is not None:
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
  ckpts = checkpointing.Checkpoints(os.path.join(workdir, "checkpoints"))
  ckpts.save(step, state, {"config": run_config.flatten_config(config)}, force=True)
  ckpts.close()


def _listing(root):
  return sorted((os.path.relpath(os.path.join(d, f), root), os.path.getmtime(os.path.join(d, f)))
                for d, _, files in os.walk(root) for f in files)


def test_a_missing_checkpoint_error_names_the_path_and_the_config(tmp_path):
  config = _config("features")
  for checkpoint in ("latest", "best"):
    with pytest.raises(checkpointing.CheckpointError) as e:
      evaluate.evaluate_checkpoint(config, str(tmp_path), checkpoint, config_name="configs/mine.py",
                                     echo=None)
    assert str(tmp_path / "checkpoints") in str(e.value) and "configs/mine.py" in str(e.value)
  assert os.listdir(tmp_path) == []   # nothing created in the user's folder
  _save_checkpoint(config, str(tmp_path), step=3)
  with pytest.raises(checkpointing.CheckpointError) as e:
    evaluate.evaluate_checkpoint(config, str(tmp_path), "7", config_name="configs/mine.py", echo=None)
  assert str(tmp_path / "checkpoints" / "7") in str(e.value) and "configs/mine.py" in str(e.value)
  assert "[3]" in str(e.value)


@pytest.mark.parametrize("field,value", [("exclusive_width", 4), ("shared_posterior", "poe")])
def test_a_checkpoint_of_another_config_error_names_the_path_and_the_config(tmp_path, field, value):
  saved = _config("features")
  _save_checkpoint(saved, str(tmp_path), step=3)
  before = _listing(tmp_path)
  other = _config("features")
  other.model[field] = value
  with pytest.raises(checkpointing.CheckpointError) as e:
    evaluate.evaluate_checkpoint(other, str(tmp_path), "latest", config_name="configs/other.py", echo=None)
  message = str(e.value)
  assert str(tmp_path / "checkpoints" / "3") in message and "configs/other.py" in message
  assert f"model.{field}" in message
  assert _listing(tmp_path) == before   # the checkpoint is untouched


def test_evaluate_checkpoint_falls_back_to_latest_and_writes_results(features, tmp_path):
  model, variables = features
  config = _config("features", {"pr": dict(type="paired_retrieval")})
  workdir = tmp_path / "run"
  _save_checkpoint(config, str(workdir), step=5, variables=variables)
  os.makedirs(workdir / "best")   # made by the trainer, empty: no paired metrics qualified
  lines = []
  datasets = evaluation.Datasets(config.data, _Loader(test=_paired(n=7, shape=(12,))))
  results = evaluate.evaluate_checkpoint(config, str(workdir), "best", config_name="configs/x.py",
                                           datasets=datasets, echo=lines.append)
  out = workdir / "eval_latest_5"
  assert any("no best checkpoint" in line for line in lines)
  assert any("test/pr/shared_x_to_y" in line for line in lines)            # the printed table
  on_disk = json.loads((out / "results.json").read_text())
  assert on_disk == results
  assert on_disk["checkpoint"] == {"requested": "best", "kind": "latest", "step": 5, "fell_back": True,
                                   "note": on_disk["checkpoint"]["note"],
                                   "path": str(workdir / "checkpoints" / "5")}
  assert on_disk["config"]["name"] == "configs/x.py"
  assert on_disk["datasets"] == {"test": {"kind": "paired", "num_pairs": 7}}
  assert set(on_disk["metrics"]) == {f"test/pr/{k}" for k in PAIRED_KEYS}
  assert {"date", "artifacts", "workdir", "schema_version"} <= set(on_disk)
  assert "test/pr/exclusive_y_to_x_hits" in (out / "index.html").read_text()
  # The metrics are those of the variables that were saved, and the page shows each value.
  expected = _suite(config, _Loader(test=_paired(n=7, shape=(12,))))(model, variables, step=5)
  assert results["metrics"] == expected
  page = (out / "index.html").read_text()
  for key, value in expected.items():
    shown = f"{value:.4f}" if isinstance(value, float) else str(value)
    assert f"<tr><td>{key}</td><td>{shown}</td></tr>" in page, (key, shown)
  with pytest.raises(ValueError, match="own folder"):
    evaluate.evaluate_checkpoint(config, str(workdir), "latest", out_dir=str(workdir / "checkpoints"),
                                   datasets=datasets, echo=None)


def test_evaluate_checkpoint_metrics_are_those_of_the_saved_variables(spatial, tmp_path):
  """Restored parameters and running statistics both reach the evaluators: the pixel errors
  equal those of the suite run on the variables in memory, and index.html shows each one."""
  model, variables = spatial
  variables = _with_batch_stats(variables, seed=3)
  config = _config(evals={"grid": dict(type="translation_grid", num_examples=3, num_samples=2)})
  data = _paired(n=4, seed=6)
  workdir = tmp_path / "run"
  _save_checkpoint(config, str(workdir), step=4, variables=variables)
  results = evaluate.evaluate_checkpoint(config, str(workdir), "latest", config_name="configs/x.py",
                                           datasets=evaluation.Datasets(config.data, _Loader(test=data)), echo=None)
  expected = _suite(config, _Loader(test=data))(model, variables, step=4, out_dir=str(tmp_path / "memory"))
  assert set(expected) == {f"test/grid/{k}" for k in ("recon_mae_x", "recon_mae_y", "translation_mae_x_to_y",
                                                 "translation_mae_y_to_x", "images_written", "num_examples")}
  assert results["metrics"] == expected
  assert results["metrics"]["test/grid/images_written"] == 7 and results["metrics"]["test/grid/num_examples"] == 3
  page = (workdir / "eval_latest_4" / "index.html").read_text()
  for key, value in expected.items():
    shown = f"{value:.4f}" if isinstance(value, float) else str(value)
    assert f"<tr><td>{key}</td><td>{shown}</td></tr>" in page, (key, shown)


def test_results_of_another_evaluation_are_never_replaced(features, tmp_path):
  """A rerun of the same evaluation may rewrite its folder; another checkpoint or other
  evaluators into that folder are refused, and the earlier results stay as they were."""
  model, variables = features
  config = _config("features", {"pr": dict(type="paired_retrieval")})
  workdir, out = tmp_path / "run", tmp_path / "report"
  for step in (5, 9):
    _save_checkpoint(config, str(workdir), step=step, variables=variables)
  datasets = evaluation.Datasets(config.data, _Loader(test=_paired(n=7, shape=(12,))))
  run = lambda checkpoint, cfg=config: evaluate.evaluate_checkpoint(
      cfg, str(workdir), checkpoint, out_dir=str(out), config_name="configs/x.py", datasets=datasets,
      echo=None)
  run("5")
  run("5")                                                              # the same evaluation again
  before = _listing(out)
  with pytest.raises(UsageError, match=r"results of another evaluation .*step 5"):
    run("9")
  other = _config("features", {"pr": dict(type="paired_retrieval", max_examples=3)})
  with pytest.raises(UsageError, match="results of another evaluation"):
    run("5", other)
  assert _listing(out) == before
  assert json.loads((out / "results.json").read_text())["checkpoint"]["step"] == 5
  (out / "results.json").write_text("{not json")
  with pytest.raises(UsageError, match="cannot be read as results"):
    run("5")
  assert (out / "results.json").read_text() == "{not json"
  for other_tool in ('{"checkpoint": "x"}', '{"config": [1]}', '[1, 2]'):  # JSON, not our results
    (out / "results.json").write_text(other_tool)
    with pytest.raises(UsageError, match="results of another evaluation"):
      run("5")
    assert (out / "results.json").read_text() == other_tool
  (out / "results.json").unlink()
  for inside_a_file in ("index.html", "index.html/sub"):
    with pytest.raises(UsageError, match="index.html is a file, not a folder"):
      evaluate.evaluate_checkpoint(config, str(workdir), "5", out_dir=str(out / inside_a_file),
                                     datasets=datasets, echo=None)


def test_a_folder_without_results_is_written_only_when_empty(features, tmp_path, monkeypatch):
  """Another page in --out is never overwritten; an interrupted evaluation's folder is its own."""
  model, variables = features
  config = _config("features", {"pr": dict(type="paired_retrieval")})
  workdir, out = tmp_path / "run", tmp_path / "report"
  _save_checkpoint(config, str(workdir), step=5, variables=variables)
  datasets = evaluation.Datasets(config.data, _Loader(test=_paired(n=7, shape=(12,))))
  run = lambda: evaluate.evaluate_checkpoint(config, str(workdir), "5", out_dir=str(out),
                                               config_name="configs/x.py", datasets=datasets, echo=None)
  os.makedirs(out / "pr")
  (out / "index.html").write_text("my own page")
  with pytest.raises(UsageError, match=r"already holds index.html, pr .*no results.json"):
    run()
  assert (out / "index.html").read_text() == "my own page" and sorted(os.listdir(out)) == ["index.html", "pr"]
  (out / "index.html").unlink()
  os.rmdir(out / "pr")

  class Interrupted(Exception):
    """Stands in for a kill or Ctrl-C during the evaluation."""

  def interrupted(*args, **kwargs):
    raise Interrupted
  with monkeypatch.context() as m:
    m.setattr(evaluation.EvaluationSuite, "__call__", interrupted)
    with pytest.raises(Interrupted):
      run()
  assert json.loads((out / "results.json").read_text())["status"] == "running"
  assert run()["status"] == "complete"                                  # the rerun may finish it
  assert json.loads((out / "results.json").read_text())["status"] == "complete"


def test_a_damaged_latest_checkpoint_is_reported_as_a_fall_back(features, tmp_path):
  model, variables = features
  config = _config("features", {"pr": dict(type="paired_retrieval")})
  workdir = tmp_path / "run"
  for step in (3, 5):
    _save_checkpoint(config, str(workdir), step=step, variables=variables)
  (workdir / "checkpoints" / "5" / "meta" / "metadata").write_text("{")   # a damaged record
  lines = []
  with pytest.warns(UserWarning, match="checkpoint 5 .* could not be restored"):
    results = evaluate.evaluate_checkpoint(
        config, str(workdir), "latest", out_dir=str(tmp_path / "report"), config_name="configs/x.py",
        datasets=evaluation.Datasets(config.data, _Loader(test=_paired(n=7, shape=(12,)))), echo=lines.append)
  assert results["checkpoint"]["step"] == 3 and results["checkpoint"]["fell_back"]
  assert str(workdir / "checkpoints" / "5") in results["checkpoint"]["note"]
  assert any("evaluated step 3" in line for line in lines)


def test_a_damaged_checkpoint_is_reported_as_damaged_not_as_another_config(tmp_path):
  config = _config("features")
  _save_checkpoint(config, str(tmp_path), step=3)
  (tmp_path / "checkpoints" / "3" / "meta" / "metadata").write_text("{")
  with pytest.warns(UserWarning), pytest.raises(checkpointing.CheckpointError) as e:
    evaluate.evaluate_checkpoint(config, str(tmp_path), "3", config_name="configs/x.py", echo=None)
  message = str(e.value)
  assert "damaged or incomplete" in message and str(tmp_path / "checkpoints" / "3") in message
  assert "another config" not in message and "start afresh" not in message


def test_a_lazily_decoded_split_is_decoded_once_across_evaluations():
  """A validation split is read at every evaluation (thousands in a Maps run): when its pairs
  fit the budget they are decoded once, not again each time (the reader's cache holds 64)."""
  from iiae_jax.data import pix2pix
  decoded = []

  def decode(i):
    decoded.append(i)
    return np.full((4, 4, 3), i, np.uint8), np.full((4, 4, 3), 255 - i, np.uint8)

  def lazy(n):
    reader = pix2pix.PairReader(n, (4, 4, 3), decode, cache_size=8)
    return PairedData("lazy", "valid", reader.x, reader.y)
  datasets = evaluation.Datasets(None, loader=_Loader(valid=lazy(100), test=lazy(200)))
  datasets.KEEP_DECODED_BYTES = 2 * 150 * 4 * 4 * 3      # the 100 pairs fit, the 200 do not
  for _ in range(3):
    for split in ("valid", "test"):
      data = datasets(split)
      for start in range(0, len(data), 32):             # evaluation batches
        idx = np.arange(start, min(start + 32, len(data)))
        data.x[idx], data.y[idx]
  assert len(decoded) == 100 + 3 * 200


def test_the_retrieval_strip_colours_each_rank_by_relevance_in_cosine_order():
  query = np.array([[1.0, 0.0], [0.0, 1.0]])
  gallery = np.array([[0.0, 2.0], [3.0, 0.1], [1.0, 1.0], [5.0, 0.0]])   # cosine order for q0: 3, 1, 2, 0
  strip = grids.retrieval_strip(query, np.array([0, 1]), gallery, np.array([1, 0, 1, 0]), ["a", "b"], 3,
                                cell=(40, 20))
  assert strip.shape == (3 * 20, 4 * 40, 3)
  colour = lambda row, rank: tuple(strip[20 * (row + 1) + 15, 40 * (rank + 1) + 35])
  green, red = (170, 225, 170), (240, 170, 170)
  assert [colour(0, r) for r in range(3)] == [green, green, red]       # gallery 3, 1 (class a), then 2
  assert [colour(1, r) for r in range(3)] == [green, green, red]       # gallery 0, 2 (class b), then 1
