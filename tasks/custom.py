"""Register your own text-to-text task: a TSV/JSONL file, a TFDS dataset or any seqio source, plus name lookup.

    register_text_task("sentiment", prefix="sentiment", source={"train": "train.tsv", "validation": "dev.tsv"},
                       inputs="sentence", targets="label")

Input text rule: with one input column the inputs are "{prefix} {value}"; with several they are
"{prefix} {col1}: {value1} {col2}: {value2} ..." (columns in the given order, single spaces, values
unchanged); an empty prefix drops the leading "{prefix} ". The targets are the target column's value.

Sources: a TSV path (the header row names the columns; fields split on every tab, no quoting), a JSONL
path (one object per line; string, number or boolean values), {split: path}, 'tfds:name/config:version'
or a seqio.DataSource. A single path serves `splits` (default ('train',)). Files are read and checked at
registration: a row with a missing column, a wrong number of fields, an empty target, invalid JSON or
invalid UTF-8 raises UserError naming file and line, or with skip_bad_rows=True is left out (counted in
the log and in `task.source.skipped`). Empty lines are ignored.
"""
from __future__ import annotations

import codecs
import dataclasses
import difflib
import functools
import inspect
import json
import os
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

from absl import logging
import gin
import seqio
import tensorflow as tf

from tasks import metrics as metrics_lib
from tasks import postprocessors as postprocessors_lib
from tasks import vocab as vocab_lib
from text2text.errors import UserError

TSV_SUFFIXES = (".tsv", ".tab")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
DEFAULT_SPLITS = ("train",)
_NAME_RE = re.compile(r"^[\w:/\.-]+$")


def add_task(name: str, **task_kwargs) -> seqio.Task:
    """Registers a seqio Task, replacing (with a warning) a task already registered under `name`."""
    if not _NAME_RE.match(name or ""):
        raise UserError(f"task name {name!r} may only contain letters, digits and _ : / . -")
    if name in seqio.TaskRegistry.names():
        logging.warning("Replacing the already registered task %r.", name)
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, **task_kwargs)


@dataclasses.dataclass(frozen=True)
class BadRow:
    """A file row that cannot become an example: where it is and what is wrong with it."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def _file_lines(path: str):
    """Yields (line number, text or None, problem) for each line; undecodable lines get text None."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror}") from e
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as e:
            yield number, None, f"invalid UTF-8 (byte {e.start} of the line)"


def _tsv_rows(path: str, columns: Sequence[str]):
    """Yields (line, {column: value} or None, problem) for the data rows of a TSV with a header row."""
    lines = _file_lines(path)
    _, header_text, problem = next(lines, (1, "", None))
    if problem or not header_text:
        raise UserError(f"{path}:1: expected a header row of tab-separated column names, "
                        f"got {problem or 'an empty line'}")
    header = [name.strip() for name in header_text.split("\t")]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise UserError(f"{path}:1: header row repeats column(s) {duplicates}")
    missing = [c for c in columns if c not in header]
    if missing:
        raise UserError(f"{path}:1: header row has no column(s) {missing}; columns are {header}")
    for number, text, problem in lines:
        if problem:
            yield number, None, problem
        elif text:
            fields = text.split("\t")
            if len(fields) != len(header):
                hint = " (a value contains a tab?)" if len(fields) > len(header) else ""
                yield number, None, f"expected {len(header)} tab-separated fields {header}, found {len(fields)}{hint}"
            else:
                row = dict(zip(header, fields))
                yield number, {c: row[c] for c in columns}, None


def _json_text(value) -> Optional[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    return None


def _jsonl_rows(path: str, columns: Sequence[str]):
    """Yields (line, {column: value} or None, problem) for each JSON-object line."""
    for number, text, problem in _file_lines(path):
        if problem:
            yield number, None, problem
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield number, None, f"invalid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(obj, dict):
            yield number, None, f"expected a JSON object, got {type(obj).__name__}"
            continue
        absent = [c for c in columns if obj.get(c) is None]
        if absent:
            yield number, None, f"missing key(s) {absent}; keys are {sorted(obj)}"
            continue
        values = {c: _json_text(obj[c]) for c in columns}
        wrong = [c for c, v in values.items() if v is None]
        if wrong:
            yield number, None, f"key(s) {wrong} hold a list or object; expected a string or number"
            continue
        yield number, values, None


def _row_reader(path: str):
    lower = path.lower()
    if lower.endswith(TSV_SUFFIXES):
        return _tsv_rows
    if lower.endswith(JSONL_SUFFIXES):
        return _jsonl_rows
    raise UserError(f"cannot tell the format of {path}: expected a name ending in "
                    f"{' or '.join(TSV_SUFFIXES + JSONL_SUFFIXES)} "
                    "(TSV with a header row, or one JSON object per line)")


class TextFileSource(seqio.FunctionDataSource):
    """TSV/JSONL rows read and validated once at registration and served from memory, one file per split.

    `skipped` lists the bad rows left out when skip_bad_rows=True (otherwise the first one raises UserError).
    """

    def __init__(self, files: Mapping[str, str], columns: Sequence[str], target_column: str,
                 skip_bad_rows: bool = False):
        self.files = dict(files)
        self.columns = tuple(columns)
        self.skipped: List[BadRow] = []
        by_path: Dict[str, Dict[str, List[str]]] = {}
        for path in dict.fromkeys(self.files.values()):
            by_path[path] = self._read(path, target_column, skip_bad_rows)
        self.rows = {split: by_path[path] for split, path in self.files.items()}
        super().__init__(dataset_fn=self._dataset_fn, splits=tuple(self.files),
                         num_input_examples={split: len(rows[target_column]) for split, rows in self.rows.items()})

    def _read(self, path: str, target_column: str, skip_bad_rows: bool) -> Dict[str, List[str]]:
        rows: Dict[str, List[str]] = {c: [] for c in self.columns}
        bad: List[BadRow] = []
        for number, row, problem in _row_reader(path)(path, self.columns):
            if row is not None and not row[target_column].strip():
                problem = f"empty target '{target_column}'"
            if problem:
                bad.append(BadRow(path, number, problem))
                if not skip_bad_rows:
                    raise UserError(f"{bad[-1]}. Fix the row, or pass skip_bad_rows=True to leave bad rows out.")
                continue
            for c in self.columns:
                rows[c].append(row[c])
        if bad:
            logging.warning("%s: skipped %d bad row(s); first: %s", path, len(bad), bad[0])
            self.skipped.extend(bad)
        if not rows[target_column]:
            raise UserError(f"{path}: no usable rows" + (f" ({len(bad)} bad row(s) skipped)" if bad else ""))
        return rows

    def _dataset_fn(self, split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory file per split; seqio shuffles examples downstream
        return tf.data.Dataset.from_tensor_slices(
            {c: tf.constant(values, dtype=tf.string) for c, values in self.rows[split].items()})


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
        files = {str(split): os.fspath(path) for split, path in source.items()}
    elif isinstance(source, (str, os.PathLike)):
        files = {split: os.fspath(source) for split in (splits or DEFAULT_SPLITS)}
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
    path: Union[str, Mapping[str, str]] = gin.REQUIRED,
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
