"""`train()`: the main job. Sharded state, packed seqio batches, periodic log / eval / checkpoint."""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import gin
import jax
import numpy as np
import optax

from text2text import checkpoints, data, evaluation, optim, partitioning, pretrained, reporting
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel
from text2text.train_state import TrainState, make_train_step


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes (-1 = all remaining devices) and the partitioning mode of the rules table."""

    data: int = -1
    model: int = 1
    mode: str = "dp"


@dataclasses.dataclass
class Run:
    """What a run builds once and its loop uses: mesh, rules, state, step function, data, outputs."""

    mesh: Any
    rules: Any
    state: TrainState
    step_fn: Any
    iterator: data.DataIterator
    manager: checkpoints.CheckpointManager
    metrics_log: reporting.MetricsLog


def _validate(train_steps: int, batch_size: int, num_microbatches: int, model_dir: str) -> None:
    if not isinstance(train_steps, int) or train_steps <= 0:
        raise UserError(f"TRAIN_STEPS must be a positive integer, got {train_steps!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UserError(f"BATCH_SIZE must be a positive integer, got {batch_size!r}")
    if num_microbatches < 1 or batch_size % num_microbatches:
        raise UserError(f"num_microbatches={num_microbatches} must divide BATCH_SIZE={batch_size}")
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"MODEL_DIR {model_dir!r} cannot be created: {exc.strerror}") from exc
    if not os.access(model_dir, os.W_OK):
        raise UserError(f"MODEL_DIR {model_dir!r} is not writable")


def write_gin_config(model_dir: str) -> None:
    """Writes the resolved gin config to MODEL_DIR/config.gin (first host only)."""
    if jax.process_index() == 0:
        with open(os.path.join(model_dir, "config.gin"), "w", encoding="utf-8") as f:
            f.write(gin.config_str())


def params_init_fn(model: EncoderDecoderModel, task_feature_lengths: Mapping[str, int]):
    """`rng -> boxed params` of the model for a one-example batch of the task feature lengths."""
    shapes = {"inputs": (1, task_feature_lengths["inputs"]), "targets": (1, task_feature_lengths["targets"])}
    return lambda rng: model.init_variables(rng, shapes)["params"]


def init_train_state(model: EncoderDecoderModel, tx: optax.GradientTransformation, mesh, rules,
                     task_feature_lengths: Mapping[str, int], seed: int) -> TrainState:
    """Creates the train state directly in its shardings (shape first, never unsharded on one device)."""
    init_params = params_init_fn(model, task_feature_lengths)
    params, _ = partitioning.init_sharded(init_params, mesh, rules, jax.random.PRNGKey(seed))
    with partitioning.mesh_context(mesh, rules):
        return jax.jit(lambda p: TrainState.create(p, tx))(params)


def _start(model, tx, model_dir, mixture_or_task_name, task_feature_lengths, batch_size, seed, pack, split,
           use_cached, mesh_config, num_microbatches, checkpoint_period, keep_checkpoints, init_checkpoint,
           loss_normalizing_factor) -> Run:
    mesh = partitioning.create_mesh(mesh_config.data, mesh_config.model)
    rules = partitioning.logical_axis_rules(mesh_config.mode)
    data_parallel = mesh.shape[partitioning.DATA_AXIS]
    if batch_size % data_parallel:
        raise UserError(f"BATCH_SIZE={batch_size} is not divisible by the data-parallel mesh size {data_parallel}")
    data_settings = dict(mixture_or_task_name=mixture_or_task_name, task_feature_lengths=dict(task_feature_lengths),
                         split=split, batch_size=batch_size, shuffle=True, seed=seed, pack=pack,
                         use_cached=use_cached)
    iterator = data.DataIterator(lambda: data.get_dataset(**data_settings, num_epochs=None), fingerprint=data_settings)
    state = init_train_state(model, tx, mesh, rules, task_feature_lengths, seed)
    manager = checkpoints.CheckpointManager(model_dir, save_interval_steps=checkpoint_period,
                                            max_to_keep=keep_checkpoints)
    latest = manager.latest_step()
    if latest is not None:
        state, data_state = manager.restore(latest, checkpoints.abstract_like(state))
        iterator.restore(data_state)
        logging.info("resumed from %s at step %d", model_dir, latest)
    elif init_checkpoint:
        params = pretrained.load_params(init_checkpoint, model.config, state.params)
        state = state.replace(params=params)
        logging.info("initialised params from %s", init_checkpoint)
    step = make_train_step(model.loss_fn, tx, num_microbatches, loss_normalizing_factor)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    with partitioning.mesh_context(mesh, rules):
        step_fn = jax.jit(step, in_shardings=(state_shardings, partitioning.batch_sharding(mesh), None),
                          out_shardings=(state_shardings, None), donate_argnums=0)
    return Run(mesh, rules, state, step_fn, iterator, manager, reporting.MetricsLog(model_dir))


def _tokens(batch: Mapping[str, np.ndarray]) -> int:
    return int((batch["encoder_input_tokens"] > 0).sum() + (batch["decoder_target_tokens"] > 0).sum())


def _per_token_loss(metrics: Mapping[str, Any]) -> float:
    weight = float(metrics.get("weight_sum", 0.0)) or 1.0
    loss = float(metrics.get("loss_sum", metrics["loss"] * weight))
    return loss / weight


def train(
    model_dir: str,
    model: EncoderDecoderModel,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    train_steps: int,
    batch_size: int = 32,
    optimizer: optax.GradientTransformation | None = None,
    seed: int = 0,
    pack: bool = True,
    split: str = "train",
    use_cached: bool = False,
    mesh_config: MeshConfig = MeshConfig(),
    num_microbatches: int = 1,
    checkpoint_period: int = 1000,
    keep_checkpoints: int | None = 3,
    log_period: int = 10,
    eval_period: int = 0,
    eval_mixture_or_task_name: str | None = None,
    eval_split: str = "validation",
    eval_batch_size: int | None = None,
    decode_kwargs: Mapping[str, Any] | None = None,
    init_checkpoint: str | None = None,
) -> dict[str, Any]:
    """Trains `model` on a seqio task or mixture; resumes from MODEL_DIR's latest checkpoint if any.

    Returns the final step, the last train metrics and the last eval results.
    """
    partitioning.maybe_initialize_distributed()
    _validate(train_steps, batch_size, num_microbatches, model_dir)
    write_gin_config(model_dir)
    tx = optimizer or optim.adafactor(learning_rate=optim.constant_schedule(1e-3))
    run = _start(model, tx, model_dir, mixture_or_task_name, task_feature_lengths, batch_size, seed, pack, split,
                 use_cached, mesh_config, num_microbatches, checkpoint_period, keep_checkpoints, init_checkpoint,
                 model.loss_normalizing_factor)
    start_step = int(run.state.step)
    progress = reporting.Progress(train_steps, start_step)
    rng = jax.random.PRNGKey(seed + 1)
    tokens_since_log, last_metrics, eval_results = 0, {}, {}

    evaluator = None
    if eval_period:
        evaluator = evaluation.TaskEvaluator(
            model, eval_mixture_or_task_name or mixture_or_task_name, task_feature_lengths, split=eval_split,
            batch_size=eval_batch_size or batch_size, model_dir=model_dir, decode_kwargs=decode_kwargs, seed=seed,
            use_cached=use_cached)

    for step in range(start_step + 1, train_steps + 1):
        batch = next(run.iterator)
        tokens_since_log += _tokens(batch)
        with partitioning.mesh_context(run.mesh, run.rules):
            run.state, metrics = run.step_fn(run.state, partitioning.shard_batch(batch, run.mesh), rng)
        if step % log_period == 0 or step == train_steps:
            last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            last_metrics["loss_per_token"] = _per_token_loss(last_metrics)
            progress.update(step, last_metrics["loss_per_token"], tokens_since_log)
            run.metrics_log.write(step, {"loss": last_metrics["loss_per_token"], **last_metrics})
            tokens_since_log = 0
        if step % checkpoint_period == 0 or step == train_steps:
            run.manager.save(step, run.state, run.iterator.state(), force=True)
        if eval_period and (step % eval_period == 0 or step == train_steps):
            with partitioning.mesh_context(run.mesh, run.rules):
                eval_results = evaluator.evaluate(run.state.params, step=step)
            progress.message(f"eval at step {step}:\n{evaluation.format_metrics_table(eval_results)}")
    run.manager.wait_until_finished()
    run.manager.close()
    run.metrics_log.close()
    reporting.plot_loss(model_dir)
    return {"step": int(run.state.step), "metrics": last_metrics, "eval": eval_results, "state": run.state}
