"""`train()`: the main job. Sharded state, packed seqio batches, periodic log / eval / checkpoint."""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import seqio
from jax.experimental import multihost_utils

from text2text import checkpoints, data, evaluation, optim, partitioning, prefetch, pretrained, reporting, run_lock
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel
from text2text.train_state import TrainState, make_train_step


# Host work in the training loop that is not waiting for the device: reading and sharding the next batch,
# dispatching the jitted step, logging and checkpoint saves (the checkpoint phase also waits for the step).
HOST_OVERHEAD_PHASES = ("data", "dispatch", "log", "checkpoint")


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


def _validate(train_steps: int, batch_size: int, num_microbatches: int, model_dir: str,
              task_feature_lengths: Mapping[str, int], periods: Mapping[str, tuple[int, int]]) -> None:
    lengths = task_feature_lengths if isinstance(task_feature_lengths, Mapping) else {}
    if any(not isinstance(lengths.get(k), int) or lengths[k] <= 0 for k in ("inputs", "targets")):
        raise UserError("TASK_FEATURE_LENGTHS must map 'inputs' and 'targets' to positive integers, e.g. "
                        f"{{'inputs': 512, 'targets': 128}}; got {task_feature_lengths!r}")
    for name, (value, smallest) in periods.items():
        if not isinstance(value, int) or value < smallest:
            raise UserError(f"trainer.train.{name} must be an integer >= {smallest}, got {value!r}")
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
        path = os.path.join(model_dir, "config.gin")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(gin.config_str())
        os.replace(path + ".tmp", path)


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
           use_cached, shuffle, mesh_config, num_microbatches, checkpoint_period, keep_checkpoints,
           init_checkpoint, loss_normalizing_factor, initial_step) -> Run:
    mesh = partitioning.create_mesh(mesh_config.data, mesh_config.model)
    rules = partitioning.logical_axis_rules(mesh_config.mode)
    data_parallel = mesh.shape[partitioning.DATA_AXIS]
    if batch_size % data_parallel:
        raise UserError(f"BATCH_SIZE={batch_size} is not divisible by the data-parallel mesh size {data_parallel}")
    data_settings = dict(mixture_or_task_name=mixture_or_task_name, task_feature_lengths=dict(task_feature_lengths),
                         split=split, batch_size=batch_size, shuffle=shuffle, seed=seed, pack=pack,
                         use_cached=use_cached)
    iterator = data.DataIterator(lambda: data.get_dataset(**data_settings, num_epochs=None), fingerprint=data_settings)
    state = init_train_state(model, tx, mesh, rules, task_feature_lengths, seed)
    manager = checkpoints.CheckpointManager(model_dir, save_interval_steps=checkpoint_period,
                                            max_to_keep=keep_checkpoints)
    restored = manager.restore_latest(checkpoints.abstract_like(state))
    if restored is not None:
        latest, state, data_state = restored
        iterator.restore(data_state)
        logging.getLogger(__name__).info("resumed from %s at step %d", model_dir, latest)
    else:
        if init_checkpoint:
            params = pretrained.load_params(init_checkpoint, model.config, state.params)
            state = state.replace(params=params)
            logging.getLogger(__name__).info("initialised params from %s", init_checkpoint)
        if initial_step:  # continue a pre-trained step count (T5X fine-tuning)
            state = state.replace(step=jax.device_put(jnp.asarray(initial_step, state.step.dtype), state.step.sharding),
                                  opt_state=optim.with_update_count(state.opt_state, initial_step))
    step = _skip_nonfinite(make_train_step(model.loss_fn, tx, num_microbatches, loss_normalizing_factor))
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    with partitioning.mesh_context(mesh, rules):
        step_fn = jax.jit(step, in_shardings=(state_shardings, partitioning.batch_sharding(mesh), None),
                          out_shardings=(state_shardings, None), donate_argnums=0)
    return Run(mesh, rules, state, step_fn, iterator, manager, reporting.MetricsLog(model_dir))


def _check_task(model: EncoderDecoderModel, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                split: str, use_cached: bool) -> None:
    """Fails before any compilation when the 'inputs' length keeps only a prefix shared by every example (a long
    task prefix, a tiny length); warns when a task's vocabulary has more ids than the model's embedding."""
    source = data.get_mixture_or_task(mixture_or_task_name)
    for task in source.tasks if isinstance(source, seqio.Mixture) else [source]:
        for name, feature in task.output_features.items():
            if feature.vocabulary.vocab_size > model.config.vocab_size:
                logging.warning("task %r: the %r vocabulary has %d ids but the model's vocab_size is %d; larger ids "
                                "have no embedding", task.name, name, feature.vocabulary.vocab_size,
                                model.config.vocab_size)
        if "inputs" not in task.output_features:
            continue
        length = task_feature_lengths["inputs"]
        examples = list(task.get_dataset(dict(task_feature_lengths), split=split, use_cached=use_cached,
                                         shuffle=False, num_epochs=1, try_in_mem_cache=False)
                        .take(8).as_numpy_iterator())
        if (len(examples) > 1 and len({tuple(e["inputs"]) for e in examples}) == 1
                and len(examples[0]["inputs"]) >= length and len({tuple(e["targets"]) for e in examples}) > 1):
            kept = task.output_features["inputs"].vocabulary.decode(examples[0]["inputs"].tolist())
            raise UserError(f"task {task.name!r}: TASK_FEATURE_LENGTHS['inputs']={length} keeps only {kept!r} of "
                            "every example's inputs (their shared prefix); use a larger inputs length")


def _check_init_checkpoint(path: str | None) -> None:
    """Before any compilation: UserError if INITIAL_CHECKPOINT_PATH is missing, or (naming what to download)
    if it is on Cloud Storage and this machine is offline."""
    if not path:
        return
    if not str(path).startswith("gs://"):
        pretrained.checkpoint_kind(path)
        return
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
    except OSError:
        raise UserError(f"INITIAL_CHECKPOINT_PATH {path} is on Cloud Storage, which this machine cannot reach; "
                        f"download it elsewhere with `gsutil -m cp -r {path} LOCAL_DIR`, copy LOCAL_DIR here and "
                        "set INITIAL_CHECKPOINT_PATH to it") from None


def _skip_nonfinite(step_fn):
    """Wraps a train step so that a non-finite loss, gradient or new parameter leaves params and optimizer
    state unchanged (the step counter still advances); metrics['finite'] tells the host loop."""

    def step(state: TrainState, batch, rng):
        new_state, metrics = step_fn(state, batch, rng)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        for leaf in jax.tree.leaves(new_state.params):
            finite &= jnp.isfinite(leaf).all()
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        return kept.replace(step=new_state.step), {**metrics, "finite": finite}

    return step


class _PreemptionFlag:
    """Set by SIGTERM (single process) or by JAX's preemption sync point (multi-host), checked once a step."""

    def __init__(self):
        self.signalled = False
        self._installed = False
        self._previous = None
        if jax.process_count() == 1:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
                self._installed = True
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        del signum, frame
        self.signalled = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # preemption service not running
                return False
        return self.signalled

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
            self._installed = False


_FIRST_STEP_CAUSES = ("the learning rate (its schedule's value at this step), adafactor.decay_offset, "
                      "adafactor.epsilon1 or clipping_threshold, the loss settings (z_loss, label_smoothing) or the "
                      "params of INITIAL_CHECKPOINT_PATH")


class _NonfiniteGuard:
    """What a non-finite step does: stops the run with a UserError (after pending saves), or with `skip` is
    skipped with a warning, up to `limit` steps in a row (one more stops the run). While no step of this run has
    been finite the error names the settings that break a first step; later ones point at the learning rate and
    the data."""

    def __init__(self, skip: bool, limit: int, run: Run, model_dir: str):
        self.skip, self.limit, self.run, self.model_dir = skip, limit, run, model_dir
        self.skipped, self.in_a_row, self.any_finite = 0, 0, False

    def check(self, step: int, finite: Any) -> None:
        if bool(finite):
            self.in_a_row, self.any_finite = 0, True
            return
        self.in_a_row += 1
        if self.skip and self.in_a_row <= self.limit:
            self.skipped += 1
            logging.warning("step %d: non-finite loss, gradient or update; skipped it (params unchanged)", step)
            return
        self.run.manager.wait_until_finished()
        last = self.run.manager.latest_step()
        kept = ("no checkpoint was saved" if last is None
                else f"the last checkpoint (step {last}) in {self.model_dir} is intact")
        what = (f"{self.in_a_row} steps in a row (the last: step {step}) had a non-finite loss, gradient or update"
                if self.skip else f"non-finite loss, gradient or update at step {step}")
        if not self.any_finite:
            hint = f"no step of this run was finite, so a setting is the likely cause: {_FIRST_STEP_CAUSES}"
        else:
            hint = "Lower the learning rate or check the data"
        fix = ("" if self.skip else ", or set trainer.train.skip_nonfinite_steps = True to skip such steps")
        raise UserError(f"{what}; stopped without saving it and {kept}. {hint}{fix}")


def _tokens(batch: Mapping[str, np.ndarray]) -> int:
    return int((batch["encoder_input_tokens"] > 0).sum() + (batch["decoder_target_tokens"] > 0).sum())


def _all_hosts(count: int) -> int:
    """Sum of a host-local count over all processes (every process must call it at the same point)."""
    if jax.process_count() == 1:
        return count
    return int(np.sum(multihost_utils.process_allgather(np.asarray(count, np.int32))))


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
    shuffle: bool = True,
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
    initial_step: int = 0,
    skip_nonfinite_steps: bool = False,
    max_skipped_in_a_row: int = 20,
) -> dict[str, Any]:
    """Trains `model` on a seqio task or mixture; resumes from MODEL_DIR's latest intact checkpoint if any.

    A step with a non-finite loss, gradient or update is never applied: training stops with a UserError
    naming it, or skips it with a warning when `skip_nonfinite_steps` (at most `max_skipped_in_a_row` in a
    row; one more stops the run). `initial_step` starts a fresh run's step counter and optimizer update counts
    there, e.g. at the step of the pre-trained INITIAL_CHECKPOINT_PATH as T5X fine-tuning does (TRAIN_STEPS
    then counts on from it; pair with `adafactor.decay_offset = initial_step`). SIGTERM (preemption) saves a
    checkpoint at the current step and returns normally. A second run on the same MODEL_DIR stops at the start
    with a UserError naming the first (`run_lock`). `shuffle=False` reads the examples in order (each
    host its `jax.process_index()`-th shard of them), e.g. to compare runs exactly. Returns the final step, the
    last train metrics, the last eval results, the number of skipped steps, whether the run was preempted, the
    final state, host seconds per loop phase (`reporting.HostTimer.summary`) and the jitted
    `step_fn(state, batch, rng) -> (state, metrics)` (state donated; call it inside `partitioning.mesh_context`).
    """
    partitioning.maybe_initialize_distributed()
    _validate(train_steps, batch_size, num_microbatches, model_dir, task_feature_lengths,
              {"checkpoint_period": (checkpoint_period, 1), "log_period": (log_period, 1),
               "eval_period": (eval_period, 0), "initial_step": (initial_step, 0),
               "max_skipped_in_a_row": (max_skipped_in_a_row, 0)})
    if initial_step >= train_steps:
        raise UserError(f"TRAIN_STEPS={train_steps} must exceed trainer.train.initial_step={initial_step}: it counts "
                        f"from the initial step, e.g. {initial_step} + the number of fine-tuning steps")
    data.get_mixture_or_task(mixture_or_task_name)  # an unknown name fails before any compilation
    with run_lock.claim(model_dir):  # one training run per MODEL_DIR
        if not any(name.isdigit() for name in os.listdir(model_dir)):  # a fresh run (a resumed one passed these)
            _check_task(model, mixture_or_task_name, task_feature_lengths, split, use_cached)
            _check_init_checkpoint(init_checkpoint)
        tx = optimizer or optim.adafactor(learning_rate=optim.constant_schedule(1e-3))
        run = _start(model, tx, model_dir, mixture_or_task_name, task_feature_lengths, batch_size, seed, pack, split,
                     use_cached, shuffle, mesh_config, num_microbatches, checkpoint_period, keep_checkpoints,
                     init_checkpoint, model.loss_normalizing_factor, initial_step)
        write_gin_config(model_dir)  # only once the checkpoint checks passed: a failed resume keeps the run's config
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

        preemption = _PreemptionFlag()
        guard = _NonfiniteGuard(skip_nonfinite_steps, max_skipped_in_a_row, run, model_dir)
        timer = reporting.HostTimer()
        pending, preempted = None, False  # (step, finite flag), read one step late to keep the device busy
        # batches are read and put on the devices up to 2 steps ahead in a thread; batches.state() stays exact
        batches = prefetch.Prefetcher(run.iterator, lambda batch: (partitioning.shard_batch(batch, run.mesh),
                                                                   _tokens(batch)))
        try:
            with partitioning.mesh_context(run.mesh, run.rules):  # once: entered per step, it slows every dispatch
                for step in range(start_step + 1, train_steps + 1):
                    if step == start_step + 2:
                        timer.reset()  # the first step's dispatch compiles
                    with timer.phase("data"):
                        sharded, tokens = next(batches)
                        tokens_since_log += tokens
                    with timer.phase("dispatch"):
                        run.state, metrics = run.step_fn(run.state, sharded, rng)
                    finite = metrics.pop("finite")
                    if pending is not None:
                        with timer.phase("wait for the previous step"):
                            guard.check(*pending)
                    pending = (step, finite)
                    if step % log_period == 0 or step == train_steps:
                        with timer.phase("wait for the step (log)"):
                            last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                        with timer.phase("log"):
                            last_metrics["loss_per_token"] = _per_token_loss(last_metrics)
                            progress.update(step, last_metrics["loss_per_token"], _all_hosts(tokens_since_log))
                            run.metrics_log.write(step, {**last_metrics, "loss": last_metrics["loss_per_token"]})
                            tokens_since_log = 0
                    preempted = preemption.reached(step)
                    if step % checkpoint_period == 0 or step == train_steps or preempted:
                        with timer.phase("checkpoint"):
                            guard.check(*pending)
                            pending = None
                            run.manager.save(step, run.state, batches.state(), force=True)
                    if preempted:
                        progress.message(f"preempted: saved a checkpoint at step {step} in {model_dir}; "
                                         "rerun the same command to resume")
                        break
                    if eval_period and (step % eval_period == 0 or step == train_steps):
                        with timer.phase("eval"):
                            eval_results = evaluator.evaluate(run.state.params, step=step)
                        progress.message(f"eval at step {step}:\n{evaluation.format_metrics_table(eval_results)}")
            # before close(): the CPU time of the prefetch thread is read while it is alive
            host = timer.summary(max(int(run.state.step) - start_step - 1, 0), HOST_OVERHEAD_PHASES)
        finally:
            batches.close()
            preemption.uninstall()
        logging.getLogger(__name__).debug("host time per phase (s): %s; host overhead %.1f%% of the loop",
                                          host["seconds"], 100 * host["overhead_fraction"])
        run.manager.wait_until_finished()
        run.manager.close()
        run.metrics_log.close()
        reporting.plot_loss(model_dir)
        return {"step": int(run.state.step), "metrics": last_metrics, "eval": eval_results, "state": run.state,
                "skipped_steps": guard.skipped, "preempted": preempted, "host_time": host, "step_fn": run.step_fn}
