"""Entry points of the eval, infer and score modes: restore params from checkpoints, then run evaluation."""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
from flax.core import meta

from text2text import checkpoints, evaluation, partitioning, pretrained, trainer
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel


def abstract_params(model: EncoderDecoderModel, mesh, rules, task_feature_lengths: Mapping[str, int]) -> Any:
    """Shapes, dtypes and shardings of the model's params, computed without materialising them."""
    init_params = trainer.params_init_fn(model, task_feature_lengths)
    with partitioning.mesh_context(mesh, rules):
        boxed = jax.eval_shape(init_params, jax.random.PRNGKey(0))
        shardings = partitioning.params_shardings(boxed, mesh, rules)
    return checkpoints.abstract_with_shardings(meta.unbox(boxed), shardings)


def _checkpoint_paths(model_dir: str | None, checkpoint_path: str | None) -> list[tuple[int | None, str]]:
    """(step, path) of the checkpoint to use, or of every checkpoint in model_dir when no path is given."""
    if checkpoint_path:
        return [(None, checkpoint_path)]
    if not model_dir or not os.path.isdir(model_dir):
        raise UserError(f"no CHECKPOINT_PATH given and MODEL_DIR {model_dir!r} is not a directory")
    steps = checkpoints.CheckpointManager(model_dir, read_only=True).all_steps()
    if not steps:
        raise UserError(f"MODEL_DIR {model_dir!r} holds no checkpoints")
    return [(step, os.path.join(model_dir, str(step))) for step in steps]


def _setup(model, mesh_config, task_feature_lengths):
    partitioning.maybe_initialize_distributed()
    mesh = partitioning.create_mesh(mesh_config.data, mesh_config.model)
    rules = partitioning.logical_axis_rules(mesh_config.mode)
    return mesh, rules, abstract_params(model, mesh, rules, task_feature_lengths)


def evaluate_checkpoints(model: EncoderDecoderModel, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                         model_dir: str | None = None, checkpoint_path: str | None = None, split: str = "validation",
                         batch_size: int = 32, decode_kwargs: Mapping[str, Any] | None = None,
                         mesh_config: trainer.MeshConfig = trainer.MeshConfig(),
                         use_cached: bool = False) -> dict[int | None, dict]:
    """Evaluates one checkpoint (CHECKPOINT_PATH) or every checkpoint in MODEL_DIR; prints each checkpoint's
    metrics table and appends the metrics to MODEL_DIR/metrics.jsonl (printing its path)."""
    mesh, rules, abstract = _setup(model, mesh_config, task_feature_lengths)
    evaluator = evaluation.TaskEvaluator(model, mixture_or_task_name, task_feature_lengths, split=split,
                                         batch_size=batch_size, model_dir=model_dir, decode_kwargs=decode_kwargs,
                                         use_cached=use_cached)
    results = {}
    for step, path in _checkpoint_paths(model_dir, checkpoint_path):
        params = pretrained.load_params(path, model.config, abstract)
        with partitioning.mesh_context(mesh, rules):
            results[step] = evaluator.evaluate(params, step=step)
        print(f"{path}:\n{evaluation.format_metrics_table(results[step])}")
    if model_dir and jax.process_index() == 0:
        print(f"appended the metrics to {os.path.join(model_dir, evaluation.METRICS_FILE)}")
    return results


def _latest(model_dir: str | None, checkpoint_path: str | None) -> str:
    return _checkpoint_paths(model_dir, checkpoint_path)[-1][1]


def infer_checkpoint(model: EncoderDecoderModel, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                     output_dir: str, model_dir: str | None = None, checkpoint_path: str | None = None,
                     split: str = "validation", batch_size: int = 32, decode_kwargs: Mapping[str, Any] | None = None,
                     mesh_config: trainer.MeshConfig = trainer.MeshConfig()) -> list[str]:
    """Writes predictions of the latest (or given) checkpoint to OUTPUT_DIR/infer/<task>.jsonl; prints the paths."""
    mesh, rules, abstract = _setup(model, mesh_config, task_feature_lengths)
    params = pretrained.load_params(_latest(model_dir, checkpoint_path), model.config, abstract)
    with partitioning.mesh_context(mesh, rules):
        paths = evaluation.infer(model, params, mixture_or_task_name, task_feature_lengths, split, batch_size,
                                 output_dir, decode_kwargs=decode_kwargs)
    print("\n".join(f"wrote predictions to {p}" for p in paths))
    return paths


def score_checkpoint(model: EncoderDecoderModel, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                     output_dir: str, model_dir: str | None = None, checkpoint_path: str | None = None,
                     split: str = "validation", batch_size: int = 32,
                     mesh_config: trainer.MeshConfig = trainer.MeshConfig()) -> list[str]:
    """Writes the log-likelihood of each example's target under the latest (or given) checkpoint to
    OUTPUT_DIR/<task>.scores.jsonl; prints the paths."""
    mesh, rules, abstract = _setup(model, mesh_config, task_feature_lengths)
    params = pretrained.load_params(_latest(model_dir, checkpoint_path), model.config, abstract)
    with partitioning.mesh_context(mesh, rules):
        paths = evaluation.score(model, params, mixture_or_task_name, task_feature_lengths, split, batch_size,
                                 output_dir)
    print("\n".join(f"wrote scores to {p}" for p in paths))
    return paths
