"""Evaluation, inference and scoring of an encoder-decoder model on seqio tasks and mixtures.

Metrics come from seqio.Evaluator (task metric_fns, postprocessors); predictions and scores come
from the model's `predict_batch` / `score_batch`, run jitted on fixed-size padded batches.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

from text2text import data, eval_batches
from text2text.errors import UserError

MIXTURE_AVERAGE = "mixture average"
METRICS_FILE = "metrics.jsonl"

PredictJit = Callable[[Any, Mapping[str, np.ndarray], jax.Array], Any]
ScoreJit = Callable[[Any, Mapping[str, np.ndarray]], Any]
SeqioModelFn = Callable[..., list]


def jit_predict_fn(model: Any, decode_kwargs: Mapping[str, Any] | None = None) -> PredictJit:
    """Jits `model.predict_batch` with fixed decoding options; call as f(params, batch, rng)."""
    kwargs = dict(decode_kwargs or {})

    def predict(params, batch, rng):
        return model.predict_batch(params, batch, rng=rng, **kwargs)

    return jax.jit(predict)


def jit_score_fn(model: Any) -> ScoreJit:
    """Jits `model.score_batch`; call as f(params, batch) -> [batch] summed target log-likelihoods."""

    def score(params, batch):
        return model.score_batch(params, batch)

    return jax.jit(score)


def make_predict_fn(
    model: Any,
    params: Any,
    batch_size: int,
    decode_kwargs: Mapping[str, Any] | None = None,
    jit_predict: PredictJit | None = None,
    seed: int = 0,
    by_length: bool = True,
    batch_cache: eval_batches.BatchCache | None = None,
) -> SeqioModelFn:
    """Builds a seqio predict_fn: enumerated dataset -> [(index, token list)] with padding rows dropped.

    `jit_predict(params, batch, rng)` defaults to `jit_predict_fn(model, decode_kwargs)`; pass a
    prebuilt (e.g. partitioned) one to avoid recompiling. Batch i gets rng fold_in(PRNGKey(seed), i)
    (with `by_length`, batches of length-sorted examples: see `eval_batches.padded_batches`); `batch_cache` keeps
    each dataset's batches for later calls.
    """
    _check_batch_size(batch_size)
    predict = jit_predict or jit_predict_fn(model, decode_kwargs)
    base_rng = jax.random.PRNGKey(seed)

    def predict_fn(dataset: tf.data.Dataset, model_feature_shapes: Any = None) -> list:
        del model_feature_shapes
        out = []
        batches = _batches(batch_cache, dataset, batch_size, by_length)

        def run(i, batch):
            return predict(params, batch, jax.random.fold_in(base_rng, i))

        for indices, n_real, tokens in eval_batches.run_ahead(batches, run):
            out.extend((int(idx), row.tolist()) for idx, row in zip(indices[:n_real], tokens[:n_real]))
        return out

    return predict_fn


def make_score_fn(
    model: Any, params: Any, batch_size: int, jit_score: ScoreJit | None = None, by_length: bool = True,
    batch_cache: eval_batches.BatchCache | None = None,
) -> SeqioModelFn:
    """Builds a seqio score_fn: enumerated dataset -> [(index, summed target log-likelihood)].

    `jit_score(params, batch)` defaults to `jit_score_fn(model)`; `by_length` and `batch_cache` as in
    `make_predict_fn`.
    """
    _check_batch_size(batch_size)
    score = jit_score or jit_score_fn(model)

    def score_fn(dataset: tf.data.Dataset, model_feature_shapes: Any = None) -> list:
        del model_feature_shapes
        out = []
        batches = _batches(batch_cache, dataset, batch_size, by_length)
        for indices, n_real, scores in eval_batches.run_ahead(batches, lambda _, batch: score(params, batch)):
            scores = scores.astype(np.float64)
            out.extend((int(idx), float(s)) for idx, s in zip(indices[:n_real], scores[:n_real]))
        return out

    return score_fn


def _batches(cache: eval_batches.BatchCache | None, dataset: tf.data.Dataset, batch_size: int,
             by_length: bool) -> list[eval_batches.Batch]:
    if cache is None:
        return eval_batches.padded_batches(dataset, batch_size, by_length)
    return cache.get(dataset, batch_size, by_length)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"evaluation batch_size must be a positive integer, got {batch_size!r}")


def _get_tasks(mixture_or_task_name: str) -> Sequence[seqio.Task]:
    """Returns the tasks of a registered task or mixture; unknown names raise UserError with suggestions."""
    names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if mixture_or_task_name not in names:
        close = difflib.get_close_matches(mixture_or_task_name, sorted(names), n=5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise UserError(
            f"mixture_or_task_name {mixture_or_task_name!r} is not a registered seqio task or mixture{hint}"
        )
    return seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))


def _check_lengths(task_feature_lengths: Mapping[str, int]) -> None:
    missing = [k for k in ("inputs", "targets") if k not in (task_feature_lengths or {})]
    if missing:
        raise UserError(
            f"task_feature_lengths must give lengths for 'inputs' and 'targets'; missing {missing} "
            f"in {dict(task_feature_lengths or {})}"
        )


@contextlib.contextmanager
def _tolerate_unknown_sizes(tasks: Sequence[seqio.Task], split: str):
    """Makes sources whose example count cannot be read report None for the duration.

    seqio's Task.get_dataset asks `source.num_input_examples(split)` to decide on in-memory
    caching; TFDS sources under `tfds.testing.mock_data` (or without generated metadata) raise
    there. None only disables that optional cache.
    """
    patched = []
    for task in tasks:
        source = task.source
        try:
            source.num_input_examples(split)
        except Exception:  # noqa: BLE001 - any failure only means "size unknown"
            source.num_input_examples = lambda _split: None
            patched.append(source)
    try:
        yield
    finally:
        for source in patched:
            del source.num_input_examples


def _task_has_split(task: seqio.Task, split: str) -> bool:
    try:
        return split in task.splits
    except ValueError:
        return False


def _to_json_value(value: Any) -> Any:
    """Converts a metric value (number, numpy scalar, seqio MetricValue) to a JSON-friendly value."""
    if isinstance(value, seqio.metrics.Scalar):
        value = value.value
    elif isinstance(value, seqio.metrics.Text):
        return value.textdata
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) or (
        isinstance(value, np.ndarray) and value.size == 1
    ):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, list, dict)):
        return value
    return repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _add_mixture_average(results: dict[str, dict[str, Any]]) -> None:
    """Adds results[MIXTURE_AVERAGE]['average'] = mean of each task's first numeric metric (>= 2 tasks)."""
    primaries = []
    for metrics in results.values():
        first = next((v for v in metrics.values() if _is_number(v)), None)
        if first is not None:
            primaries.append(first)
    if len(primaries) >= 2:
        results[MIXTURE_AVERAGE] = {"average": float(np.mean(primaries))}


def _append_metrics_jsonl(model_dir: str, step: int | None, results: Mapping[str, Mapping[str, Any]]) -> str:
    """Appends one {"step","kind":"eval","task","metric","value"} line per metric to model_dir/metrics.jsonl
    (the file text2text.reporting writes train records to, with kind "train")."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, METRICS_FILE)
    with open(path, "a", encoding="utf-8") as f:
        for task, metrics in results.items():
            for metric, value in metrics.items():
                line = {"step": step, "kind": "eval", "task": task, "metric": metric, "value": value}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


class TaskEvaluator:
    """Caches a seqio.Evaluator and the jitted model functions, so repeated evals (e.g. every N training
    steps) neither rebuild the eval data and its batches nor recompile. `by_length` (default) sorts examples by
    input length and cuts each batch's encoder padding to a few widths (see `eval_batches.input_width`)."""

    def __init__(
        self,
        model: Any,
        mixture_or_task_name: str,
        task_feature_lengths: Mapping[str, int],
        split: str = "validation",
        batch_size: int = 32,
        model_dir: str | None = None,
        decode_kwargs: Mapping[str, Any] | None = None,
        seed: int = 0,
        use_cached: bool = False,
        jit_predict: PredictJit | None = None,
        jit_score: ScoreJit | None = None,
        by_length: bool = True,
    ):
        _check_batch_size(batch_size)
        _check_lengths(task_feature_lengths)
        tasks = _get_tasks(mixture_or_task_name)
        if use_cached:
            data.require_cached(mixture_or_task_name, split)
        valid = [t for t in tasks if _task_has_split(t, split) and (t.metric_fns or t.metric_objs)]
        if not valid:
            raise UserError(
                f"no task in {mixture_or_task_name!r} has split {split!r} and metric_fns; "
                f"tasks: {[t.name for t in tasks]}"
            )
        with _tolerate_unknown_sizes(valid, split):
            self.evaluator = seqio.Evaluator(
                mixture_or_task_name=mixture_or_task_name,
                feature_converter=seqio.EncDecFeatureConverter(pack=False),
                eval_split=split,
                use_cached=use_cached,
                seed=seed,
                sequence_length=dict(task_feature_lengths),
                shuffle=False,
                async_compute_metrics=False,
            )
        self.model = model
        self.batch_size = batch_size
        self.model_dir = model_dir
        self.seed = seed
        self._jit_predict = jit_predict or jit_predict_fn(model, decode_kwargs)
        self._jit_score = jit_score or jit_score_fn(model)
        self.by_length = by_length
        self._batch_cache = eval_batches.BatchCache()

    def evaluate(self, params: Any, step: int | None = None) -> dict[str, dict[str, Any]]:
        """Runs all eval tasks with `params`; returns {task: {metric: value}} (+ mixture average)
        and appends the metrics to model_dir/metrics.jsonl when model_dir was given."""
        predict_fn = make_predict_fn(
            self.model, params, self.batch_size, jit_predict=self._jit_predict, seed=self.seed,
            by_length=self.by_length, batch_cache=self._batch_cache,
        )
        score_fn = make_score_fn(self.model, params, self.batch_size, jit_score=self._jit_score,
                                 by_length=self.by_length, batch_cache=self._batch_cache)
        future, _ = self.evaluator.evaluate(
            compute_metrics=True, step=step, predict_fn=predict_fn, score_fn=score_fn
        )
        raw = future.result() or {}
        results = {
            task: {metric: _to_json_value(v) for metric, v in metrics.items()} for task, metrics in raw.items()
        }
        _add_mixture_average(results)
        if self.model_dir and jax.process_index() == 0:
            _append_metrics_jsonl(self.model_dir, step, results)
        return results


def evaluate(
    model: Any,
    params: Any,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    split: str = "validation",
    batch_size: int = 32,
    step: int | None = None,
    model_dir: str | None = None,
    decode_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    use_cached: bool = False,
) -> dict[str, dict[str, Any]]:
    """One-shot evaluation of `params` on a task or mixture; see TaskEvaluator.evaluate for the result.

    With two or more tasks, results['mixture average'] = {'average': mean of each task's first
    numeric metric}. Metrics are appended to model_dir/metrics.jsonl (one line per task and metric,
    kind "eval"). For periodic evaluation prefer TaskEvaluator, which builds the data and jit once.
    """
    evaluator = TaskEvaluator(
        model, mixture_or_task_name, task_feature_lengths, split=split, batch_size=batch_size,
        model_dir=model_dir, decode_kwargs=decode_kwargs, seed=seed, use_cached=use_cached,
    )
    return evaluator.evaluate(params, step=step)


def _task_examples(task: seqio.Task, task_feature_lengths: Mapping[str, int], split: str):
    """Returns (task-feature examples as numpy dicts, enumerated model-feature dataset) in the same order."""
    with _tolerate_unknown_sizes([task], split):
        ds = task.get_dataset(
            sequence_length=dict(task_feature_lengths), split=split, shuffle=False, num_epochs=1, seed=0
        ).cache()
    examples = list(ds.as_numpy_iterator())
    model_ds = seqio.EncDecFeatureConverter(pack=False)(ds, dict(task_feature_lengths)).enumerate()
    return examples, model_ds


def _decode(task: seqio.Task, feature: str, tokens: Sequence[int]) -> str:
    text = task.output_features[feature].vocabulary.decode([int(t) for t in tokens])
    return text.decode("utf-8") if isinstance(text, bytes) else text


def _tasks_with_split(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str):
    _check_lengths(task_feature_lengths)
    tasks = _get_tasks(mixture_or_task_name)
    with_split = [t for t in tasks if _task_has_split(t, split)]
    if not with_split:
        raise UserError(f"no task in {mixture_or_task_name!r} has split {split!r}; tasks: {[t.name for t in tasks]}")
    return with_split


def _write_jsonl(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_outputs(model_fn: Callable, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                   split: str, field: str, to_value: Callable, path_of: Callable[[str], str]) -> list[str]:
    """Runs `model_fn` (a seqio predict/score fn) over each task's split and writes one JSON line per
    example, {"input", "target", field: to_value(task, output)}, to `path_of(task name)`."""
    paths = []
    for task in _tasks_with_split(mixture_or_task_name, task_feature_lengths, split):
        examples, model_ds = _task_examples(task, task_feature_lengths, split)
        outputs = dict(model_fn(model_ds))
        rows = [
            {
                "input": _decode(task, "inputs", ex["inputs"]),
                "target": _decode(task, "targets", ex["targets"]),
                field: to_value(task, outputs[i]),
            }
            for i, ex in enumerate(examples)
        ]
        path = path_of(task.name)
        _write_jsonl(path, rows)
        paths.append(path)
    return paths


def infer(
    model: Any,
    params: Any,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    split: str,
    batch_size: int,
    output_dir: str,
    decode_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> list[str]:
    """Decodes every example of each task's split and writes output_dir/infer/<task>.jsonl with
    {"input", "target", "prediction"} text per line (inputs/targets as the model saw them, truncated)."""
    predict_fn = make_predict_fn(model, params, batch_size, decode_kwargs=decode_kwargs, seed=seed)
    return _write_outputs(predict_fn, mixture_or_task_name, task_feature_lengths, split, "prediction",
                          lambda task, tokens: _decode(task, "targets", tokens),
                          lambda name: os.path.join(output_dir, "infer", f"{name}.jsonl"))


def score(
    model: Any,
    params: Any,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    split: str,
    batch_size: int,
    output_dir: str,
) -> list[str]:
    """Scores each example's given target and writes output_dir/<task>.scores.jsonl with
    {"input", "target", "score"} per line; score = summed target log-likelihood (nats)."""
    score_fn = make_score_fn(model, params, batch_size)
    return _write_outputs(score_fn, mixture_or_task_name, task_feature_lengths, split, "score",
                          lambda task, value: value,
                          lambda name: os.path.join(output_dir, f"{name}.scores.jsonl"))


def format_metrics_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Renders {task: {metric: value}} as an aligned plain-text table with columns task | metric | value."""
    rows = [("task", "metric", "value")]
    for task, metrics in results.items():
        for metric, value in metrics.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            rows.append((str(task), str(metric), shown))
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    lines = [f"{r[0]:<{widths[0]}} | {r[1]:<{widths[1]}} | {r[2]:>{widths[2]}}" for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
