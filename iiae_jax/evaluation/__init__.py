"""Evaluation of trained IIAEs (docs/method.md §5): embeddings, evaluators, image grids, reports.

    from iiae_jax import evaluation
    suite = evaluation.EvaluationSuite.for_training(run, workdir)   # for trainer.train_and_evaluate
    results = suite(model, variables, step)                          # {"<name>/<metric>": value}

Evaluators are chosen by name from `config.evals` (entries `name: {type, ...}`;
types: zs_retrieval, paired_retrieval, disentanglement, translation_grid) and
return flat dicts of metrics keyed "<name>/<metric>". `iiae_jax.evaluate` is
what eval.py runs: restore a checkpoint, run the suite, write the report.
"""
from iiae_jax.evaluation.embed import (PAIRED_EMBEDDINGS, ZERO_SHOT_EMBEDDINGS, check_finite, embed_paired,
                                       embed_zero_shot, paired_means)
from iiae_jax.evaluation.evaluators import (COMMON_FIELDS, EVALUATORS, Datasets, Disentanglement, Embedder,
                                            EvaluationSuite, Evaluator, PairedRetrieval, TranslationGrid,
                                            ZeroShotRetrieval, make_evaluator, register)
from iiae_jax.evaluation.grids import (GRID_DESCRIPTIONS, grid_layouts, make_panels, tile, to_uint8,
                                       translation_panels, write_png)
from iiae_jax.evaluation.report import format_table, render_html

__all__ = [
    "COMMON_FIELDS", "Datasets", "Disentanglement", "EVALUATORS", "Embedder", "EvaluationSuite",
    "Evaluator", "GRID_DESCRIPTIONS", "PAIRED_EMBEDDINGS", "PairedRetrieval", "TranslationGrid",
    "ZERO_SHOT_EMBEDDINGS", "ZeroShotRetrieval", "check_finite", "embed_paired", "embed_zero_shot",
    "format_table", "grid_layouts", "make_evaluator", "make_panels", "paired_means", "register",
    "render_html", "tile", "to_uint8", "translation_panels", "write_png",
]
