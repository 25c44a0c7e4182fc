"""Register your own text-to-text task: a TSV/JSONL file, a TFDS dataset or any seqio source, plus name lookup.

    register_text_task("sentiment", prefix="sentiment", source={"train": "train.tsv", "validation": "dev.tsv"},
                       inputs="sentence", targets="label")

Input text rule: with one input column the inputs are "{prefix} {value}"; with several they are
"{prefix} {col1}: {value1} {col2}: {value2} ..." (columns in the given order, single spaces, values
unchanged); an empty prefix drops the leading "{prefix} ". The targets are the target column's value.

Sources: a TSV path (the header row names the columns; fields split on every tab, no quoting), a JSONL
path (one object per line; string, number or boolean values), a list of such paths or glob patterns (read
in that order; a pattern's matches sorted), {split: path(s)}, 'tfds:name/config:version' or a
seqio.DataSource. Paths given without a split serve `splits` (default ('train',)). Files are streamed
(tasks/text_files.py: line by line, sharded by file or by line across hosts); registration checks each
file's format, header and that it has a data line. A row with a missing column, a wrong number of fields,
an empty target, invalid JSON or invalid UTF-8 stops reading with an error naming file and line (a
UserError once it leaves tf.data, see `text2text.errors.embedded_user_error`), or with skip_bad_rows=True
is left out (counted in the log and in `task.source.skipped`). Empty lines are ignored.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import os
import re
from typing import Callable, List, Mapping, Optional, Sequence, Union

from absl import logging
import gin
import seqio
import tensorflow as tf

from tasks import metrics as metrics_lib
from tasks import postprocessors as postprocessors_lib
from tasks import text_files
from tasks import vocab as vocab_lib
from text2text.errors import UserError

BadRow = text_files.BadRow
TextFileSource = text_files.TextFileSource
DEFAULT_SPLITS = ("train",)
_NAME_RE = re.compile(r"^[\w:/\.-]+$")
_GLOB_RE = re.compile(r"[*?[]")


def add_task(name: str, **task_kwargs) -> seqio.Task:
    """Registers a seqio Task, replacing (with a warning) a task already registered under `name`."""
    if not _NAME_RE.match(name or ""):
        raise UserError(f"task name {name!r} may only contain letters, digits and _ : / . -")
    if name in seqio.TaskRegistry.names():
        logging.warning("Replacing the already registered task %r.", name)
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, **task_kwargs)


def _as_text(value: tf.Tensor) -> tf.Tensor:
    if value.dtype == tf.string:
        return value
    if value.dtype == tf.bool:
        return tf.where(value, "True", "False")
    return tf.strings.as_string(value)


@seqio.map_over_dataset
def format_text_example(x, prefix: str, inputs: Sequence[str], targets: str):
    """Builds {'inputs', 'targets'} text by the module's input rule; non-string fields are written as text."""
    missing = [k for k in (*inputs, targets) if k not in x]
    if missing:
        raise UserError(f"source examples have no field(s) {missing}; fields are {sorted(x)}")
    parts = [prefix] if prefix else []
    if len(inputs) == 1:
        parts.append(_as_text(x[inputs[0]]))
    else:
        for key in inputs:
            parts += [f"{key}:", _as_text(x[key])]
    return {"inputs": tf.strings.join(parts, separator=" "), "targets": _as_text(x[targets])}


def _lookup(value: Union[str, Callable], module, kind: str) -> Callable:
    """A callable as is, or the public function of that name in `module` (UserError with close names)."""
    if callable(value):
        return value
    available = sorted(n for n, obj in vars(module).items() if not n.startswith("_")
                       and inspect.isfunction(obj) and obj.__module__ == module.__name__)
    if isinstance(value, str) and value in available:
        return getattr(module, value)
    raise UserError(f"unknown {kind} {value!r}; {_suggestion(str(value), available)}")


def _suggestion(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=5, cutoff=0.5)
    if close:
        return "did you mean " + ", ".join(repr(c) for c in close) + "?"
    shown = sorted(candidates)[:20]
    return f"known names include {shown}" + (" ..." if len(candidates) > len(shown) else "")


def _paths(paths) -> List[str]:
    """A path, or a list of paths and glob patterns, as the list of files they name (a pattern's matches sorted)."""
    listed = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: List[str] = []
    for path in map(os.fspath, listed):
        if _GLOB_RE.search(path):
            matches = sorted(tf.io.gfile.glob(path))
            if not matches:
                raise UserError(f"no data file matches {path!r}")
            files += matches
        else:
            files.append(path)
    if not files:
        raise UserError("a split of source lists no files")
    return files


def _data_source(source, splits, columns: Sequence[str], target_column: str, skip_bad_rows: bool):
    if isinstance(source, seqio.DataSource):
        if splits is not None:
            raise UserError("splits= applies to file and 'tfds:' sources; a seqio.DataSource brings its own splits")
        return source
    if isinstance(source, str) and source.startswith("tfds:"):
        return seqio.TfdsDataSource(tfds_name=source[len("tfds:"):], splits=splits)
    if isinstance(source, Mapping):
        if splits is not None:
            raise UserError("give either source={split: path} or splits=, not both")
        files = {str(split): _paths(paths) for split, paths in source.items()}
    elif isinstance(source, (str, os.PathLike, list, tuple)):
        files = {split: _paths(source) for split in (splits or DEFAULT_SPLITS)}
    else:
        raise UserError(f"source must be a TSV/JSONL path, a {{split: path}} dict, 'tfds:name/config' or a "
                        f"seqio.DataSource; got {type(source).__name__}")
    if not files:
        raise UserError("source lists no splits")
    return TextFileSource(files, columns, target_column, skip_bad_rows)


def register_text_task(
    name: str,
    prefix: str,
    source,
    inputs: Union[str, Sequence[str]],
    targets: str,
    metrics: Sequence[Union[str, Callable]] = ("accuracy",),
    postprocess: Union[None, str, Callable] = None,
    skip_bad_rows: bool = False,
    splits: Union[None, Sequence[str], Mapping[str, str]] = None,
    vocabulary: Optional[seqio.Vocabulary] = None,
) -> seqio.Task:
    """Registers (or replaces) a Task with inputs "{prefix} {value}" (one column) or "{prefix} {col}: {value} ..."

    (several columns); sources, splits and bad rows as in the module docstring; metrics/postprocess by name or callable.
    """
    input_columns = [inputs] if isinstance(inputs, str) else list(inputs)
    if not input_columns or not all(isinstance(c, str) and c for c in input_columns):
        raise UserError(f"task {name!r}: inputs must be a column name or a non-empty list of names, got {inputs!r}")
    if not isinstance(targets, str) or not targets:
        raise UserError(f"task {name!r}: targets must be one column name, got {targets!r}")
    metric_fns = [_lookup(m, metrics_lib, "metric") for m in ([metrics] if isinstance(metrics, str) else metrics)]
    postprocess_fn = None if postprocess is None else _lookup(postprocess, postprocessors_lib, "postprocessor")
    columns = list(dict.fromkeys(input_columns + [targets]))
    data_source = _data_source(source, splits, columns, targets, skip_bad_rows)
    return add_task(
        name,
        source=data_source,
        preprocessors=[
            functools.partial(format_text_example, prefix=prefix or "", inputs=tuple(input_columns), targets=targets),
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=vocab_lib.output_features(vocabulary),
        postprocess_fn=postprocess_fn,
        metric_fns=metric_fns,
    )


@gin.configurable
def register_text_task_from_file(
    name: str = gin.REQUIRED,
    path: Union[str, Sequence[str], Mapping[str, Union[str, Sequence[str]]]] = gin.REQUIRED,
    inputs: Union[str, Sequence[str]] = gin.REQUIRED,
    targets: str = gin.REQUIRED,
    prefix: str = "",
    metrics: Sequence[str] = ("accuracy",),
    postprocess: Optional[str] = None,
    skip_bad_rows: bool = False,
    splits: Optional[Sequence[str]] = None,
) -> str:
    """Gin entry point for `register_text_task` on TSV/JSONL file(s); returns the task name, so a gin file can say

    `MIXTURE_OR_TASK_NAME = @register_text_task_from_file()` with `register_text_task_from_file.path = {...}` etc.
    """
    if isinstance(path, str) and path.startswith("tfds:"):
        raise UserError(f"register_text_task_from_file.path must be a TSV/JSONL file, got {path!r}")
    register_text_task(name, prefix, path, inputs, targets, metrics=metrics, postprocess=postprocess,
                       skip_bad_rows=skip_bad_rows, splits=splits)
    return name


def ensure_registered(name: str) -> Union[seqio.Task, seqio.Mixture]:
    """Returns the Task or Mixture `name` (importing the built-in task modules first);

    an unknown name raises UserError suggesting the closest registered names.
    """
    import tasks  # noqa: F401  (registers every built-in task and mixture)

    if name in seqio.MixtureRegistry.names():
        return seqio.MixtureRegistry.get(name)
    if name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)
    candidates = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    raise UserError(f"unknown task or mixture {name!r}; {_suggestion(str(name), sorted(candidates))}")
