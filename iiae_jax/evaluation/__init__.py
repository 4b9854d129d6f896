"""Evaluation of trained IIAEs (SPEC §5): embeddings, evaluators, image grids, reports.

    from iiae_jax import evaluation
    evaluate = evaluation.training_evaluator(config, workdir)     # for trainer.train_and_evaluate
    results = evaluation.evaluate_checkpoint(config, workdir, "best")  # what eval.py runs

Evaluators are chosen by name from `config.evals` (entries `name: {type, ...}`;
types: zs_retrieval, paired_retrieval, disentanglement, translation_grid) and
return flat dicts of metrics keyed "<name>/<metric>".
"""
from iiae_jax.evaluation.embed import (PAIRED_EMBEDDINGS, ZERO_SHOT_EMBEDDINGS, check_finite, embed_paired,
                                       embed_zero_shot, paired_means)
from iiae_jax.evaluation.evaluators import (COMMON_FIELDS, EVALUATORS, Datasets, Disentanglement, Embedder,
                                            EvaluationSuite, Evaluator, PairedRetrieval, TranslationGrid,
                                            ZeroShotRetrieval, make_evaluator, register, training_evaluator)
from iiae_jax.evaluation.grids import (GRID_DESCRIPTIONS, grid_layouts, make_panels, tile, to_uint8,
                                       translation_panels, write_png)
from iiae_jax.evaluation.report import (evaluate_checkpoint, format_table, parse_checkpoint,
                                        render_html, restore_for_evaluation, UsageError)

__all__ = [
    "COMMON_FIELDS", "Datasets", "Disentanglement", "EVALUATORS", "Embedder", "EvaluationSuite",
    "Evaluator", "GRID_DESCRIPTIONS", "PAIRED_EMBEDDINGS", "PairedRetrieval", "TranslationGrid",
    "UsageError", "ZERO_SHOT_EMBEDDINGS", "ZeroShotRetrieval", "check_finite", "embed_paired", "embed_zero_shot",
    "evaluate_checkpoint", "format_table", "grid_layouts", "make_evaluator", "make_panels",
    "paired_means", "parse_checkpoint", "register", "render_html", "restore_for_evaluation",
    "tile", "to_uint8", "training_evaluator", "translation_panels", "write_png",
]
