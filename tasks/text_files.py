"""A seqio DataSource that streams TSV/JSONL files line by line, for tasks of any size.

Each file is read with `tf.data.TextLineDataset`, numbered from line 1, and parsed in batches of lines by a
Python function (`tf.numpy_function`), so memory stays flat however large the files are. Format rules (TSV
header row, JSONL objects, empty lines, bad rows) are those listed in tasks/custom.py's docstring.

Registration reads only each file's first lines (is it readable, is the header right, is there a data line);
the rows themselves are checked as they are read. A bad row stops the pipeline with an error whose message
carries the tagged line "path:line: reason" (see `text2text.errors.embedded_user_error`, which turns it back
into a UserError), or with skip_bad_rows=True is left out, listed in `skipped` and counted in the log once a
file has been read; a file (or its share of lines in this shard) whose rows are all bad is an error.

Sharding (seqio.ShardInfo, one shard per host): with at least as many files as shards, shard i reads files
i, i + n, ...; otherwise every shard reads every file and keeps data lines i, i + n, ... of each. Files are
read one after another in the given order, or, when shuffling, in an order drawn from `seed`, so the stream
is deterministic for a seed.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from text2text.errors import UserError, user_error_tags

TSV_SUFFIXES = (".tsv", ".tab")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
BATCH_LINES = 1024  # lines parsed per Python call
_BOM = b"\xef\xbb\xbf"
_COUNT_CHUNK_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class BadRow:
    """A file row that cannot become an example: where it is and what is wrong with it."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How to read one file: its format and, for a TSV, the header and the positions of the wanted columns."""

    path: str
    tsv: bool
    header: Tuple[str, ...] = ()
    positions: Tuple[int, ...] = ()


def _file_format_is_tsv(path: str) -> bool:
    lower = path.lower()
    if lower.endswith(TSV_SUFFIXES):
        return True
    if lower.endswith(JSONL_SUFFIXES):
        return False
    raise UserError(f"cannot tell the format of {path}: expected a name ending in "
                    f"{' or '.join(TSV_SUFFIXES + JSONL_SUFFIXES)} "
                    "(TSV with a header row, or one JSON object per line)")


def _decode(raw: bytes, number: int) -> Tuple[Optional[str], Optional[str]]:
    """(text, None) or (None, problem) for one line's bytes (BOM dropped from line 1, '\\r' from the end)."""
    if number == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    try:
        return raw.rstrip(b"\r").decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 (byte {e.start} of the line)"


def _head(path: str, tsv: bool) -> Tuple[Optional[bytes], bool]:
    """(first line or None for an empty file, whether a non-empty line follows the header (TSV) / exists (JSONL))."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            first = f.readline()
            if not first:
                return None, False
            if not tsv and first.strip():
                return first, True
            for line in f:
                if line.strip(b"\r\n"):
                    return first, True
            return first, False
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        raise UserError(f"cannot read data file {path}: {reason}") from e


def _layout(path: str, columns: Sequence[str]) -> _Layout:
    """Checks a file's format, header (TSV) and that it has a data line; raises UserError naming file:line."""
    tsv = _file_format_is_tsv(path)
    first, has_data = _head(path, tsv)
    layout = _Layout(path, tsv)
    if tsv:
        text, problem = _decode(first or b"", 1)
        if problem or not text:
            raise UserError(f"{path}:1: expected a header row of tab-separated column names, "
                            f"got {problem or 'an empty line'}")
        header = tuple(name.strip() for name in text.split("\t"))
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise UserError(f"{path}:1: header row repeats column(s) {duplicates}")
        missing = [c for c in columns if c not in header]
        if missing:
            raise UserError(f"{path}:1: header row has no column(s) {missing}; columns are {list(header)}")
        layout = _Layout(path, True, header, tuple(header.index(c) for c in columns))
    if not has_data:
        raise UserError(f"{path}: no usable rows (the file has no data lines)")
    return layout


def _json_text(value) -> Optional[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    return None


def _tsv_values(text: str, layout: _Layout) -> Tuple[Optional[List[str]], Optional[str]]:
    fields = text.split("\t")
    if len(fields) != len(layout.header):
        hint = " (a value contains a tab?)" if len(fields) > len(layout.header) else ""
        return None, (f"expected {len(layout.header)} tab-separated fields {list(layout.header)}, "
                      f"found {len(fields)}{hint}")
    return [fields[i] for i in layout.positions], None


def _jsonl_values(text: str, columns: Sequence[str]) -> Tuple[Optional[List[str]], Optional[str]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    absent = [c for c in columns if obj.get(c) is None]
    if absent:
        return None, f"missing key(s) {absent}; keys are {sorted(obj)}"
    values = [_json_text(obj[c]) for c in columns]
    wrong = [c for c, v in zip(columns, values) if v is None]
    if wrong:
        return None, f"key(s) {wrong} hold a list or object; expected a string or number"
    return values, None


def count_data_lines(path: str, tsv: bool) -> int:
    """Number of non-empty lines of a file, less the header row of a TSV; read in 16 MiB chunks, nothing parsed."""
    count, carry = 0, b""
    with tf.io.gfile.GFile(path, "rb") as f:
        while True:
            chunk = f.read(_COUNT_CHUNK_BYTES)
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop() if chunk else b""
            count += len(lines) - lines.count(b"") - lines.count(b"\r")
            if not chunk:
                break
    return count - 1 if tsv else count


class TextFileSource(seqio.DataSource):
    """Streams TSV/JSONL rows as {column: tf.string} examples; several files per split, sharded by file or line.

    `files` maps split -> path or sequence of paths; `columns` are the columns every example gets (strings),
    `target_column` one of them, which must not be empty. `skipped` lists the bad rows left out so far
    (skip_bad_rows=True; otherwise the first one stops the pipeline). `num_input_examples(split)` counts the
    split's non-empty data lines on first use (bad rows included).
    """

    def __init__(self, files: Mapping[str, Sequence[str]], columns: Sequence[str], target_column: str,
                 skip_bad_rows: bool = False):
        self.files = {split: tuple(paths) for split, paths in files.items()}
        self.columns = tuple(columns)
        self.target_column = target_column
        self.skip_bad_rows = skip_bad_rows
        paths = list(dict.fromkeys(p for split_paths in self.files.values() for p in split_paths))
        self._layouts = [_layout(path, self.columns) for path in paths]
        self._index = {path: i for i, path in enumerate(paths)}
        self._lock = threading.Lock()
        self._skipped: Dict[Tuple[int, int], BadRow] = {}
        self._first_bad: Dict[int, BadRow] = {}
        self._reported: set = set()
        self._counts: Dict[str, int] = {}
        super().__init__(splits=tuple(self.files))

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return list(self.files[split])

    @property
    def skipped(self) -> List[BadRow]:
        with self._lock:
            return [self._skipped[key] for key in sorted(self._skipped)]

    def num_input_examples(self, split: str) -> int:
        if split not in self._counts:  # counted once, on first use: seqio asks for mixture rates and caching
            layouts = [self._layouts[self._index[p]] for p in self.files[split]]
            self._counts[split] = sum(count_data_lines(layout.path, layout.tsv) for layout in layouts)
        return self._counts[split]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        """One pass over this shard's rows of `split`: {column: scalar tf.string} in file, then line, order."""
        del sequence_length, use_cached, num_epochs  # seqio's Task repeats, caches and trims downstream
        indices = [self._index[p] for p in self.files[split]]
        shards, shard = (shard_info.num_shards, shard_info.index) if shard_info else (1, 0)
        line_shards = None
        if len(indices) >= shards:
            indices = indices[shard::shards]
        else:
            line_shards = (shards, shard)
        if shuffle:
            indices = list(np.random.RandomState(seed).permutation(indices))
        files = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64))
        return files.flat_map(functools.partial(self._file_rows, line_shards=line_shards)).unbatch()

    def _file_rows(self, index: tf.Tensor, line_shards: Optional[Tuple[int, int]]) -> tf.data.Dataset:
        """Batches of rows of file `index`, checked at the file's end (all rows bad, skipped-count log)."""
        path = tf.gather(tf.constant([layout.path for layout in self._layouts]), index)
        header_lines = tf.gather(tf.constant([int(layout.tsv) for layout in self._layouts], tf.int64), index)
        lines = tf.data.TextLineDataset(path, buffer_size=1 << 20).enumerate(start=1).skip(header_lines)
        if line_shards:
            lines = lines.shard(*line_shards)
        parsed = lines.batch(BATCH_LINES).map(functools.partial(self._parse_batch, index),
                                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        empty = {c: tf.constant([], tf.string) for c in self.columns}
        end = tf.data.Dataset.from_tensors((empty, tf.constant(0, tf.int64), tf.constant(True)))
        totals = parsed.map(lambda rows, bad: (rows, bad, tf.constant(False))).concatenate(end).scan(
            (tf.constant(0, tf.int64), tf.constant(0, tf.int64)), self._add_counts)
        finish = functools.partial(self._finish_file, index, line_shards)
        return totals.map(finish).filter(lambda rows, end: tf.logical_not(end)).map(lambda rows, end: rows)

    def _add_counts(self, state, element):
        rows, bad, end = element
        good = state[0] + tf.size(rows[self.target_column], out_type=tf.int64)
        total_bad = state[1] + bad
        return (good, total_bad), (rows, good, total_bad, end)

    def _parse_batch(self, index: tf.Tensor, numbers: tf.Tensor, lines: tf.Tensor):
        outputs = tf.numpy_function(self._parse_lines, [index, numbers, lines],
                                    [tf.string] * len(self.columns) + [tf.int64, tf.string])
        rows = {c: tf.ensure_shape(t, [None]) for c, t in zip(self.columns, outputs)}
        return self._stop_on_error(outputs[-1], rows), tf.ensure_shape(outputs[-2], [])

    @staticmethod
    def _stop_on_error(message: tf.Tensor, value):
        """`value`, after an assertion that fails with the tagged user error `message` unless it is empty."""
        start, stop = user_error_tags()
        check = tf.debugging.Assert(tf.equal(message, ""), [start, message, stop])
        with tf.control_dependencies([check]):
            return tf.nest.map_structure(tf.identity, value)

    def _parse_lines(self, index, numbers, lines):
        """(values per column, number of bad rows skipped, error message or b'') for one batch of lines."""
        layout = self._layouts[int(index)]
        values: List[List[bytes]] = [[] for _ in self.columns]
        target = self.columns.index(self.target_column)
        bad = 0
        for number, raw in zip(numbers.tolist(), lines.tolist()):
            text, problem = _decode(raw, number)
            row = None
            if text is not None:
                if not (text if layout.tsv else text.strip()):
                    continue
                row, problem = _tsv_values(text, layout) if layout.tsv else _jsonl_values(text, self.columns)
            if row is not None and not row[target].strip():
                row, problem = None, f"empty target '{self.target_column}'"
            if row is None:
                bad_row = BadRow(layout.path, number, problem)
                if not self.skip_bad_rows:
                    message = f"{bad_row}. Fix the row, or pass skip_bad_rows=True to leave bad rows out."
                    return (*[np.array([], object) for _ in self.columns], np.int64(bad), message.encode())
                with self._lock:
                    self._skipped[(int(index), number)] = bad_row
                    first = self._first_bad.setdefault(int(index), bad_row)
                    if number < first.line:
                        self._first_bad[int(index)] = bad_row
                bad += 1
                continue
            for column, value in zip(values, row):
                column.append(value.encode("utf-8"))
        return (*[np.array(column, object) for column in values], np.int64(bad), b"")

    def _finish_file(self, index, line_shards, rows, good, bad, end):
        message = tf.cond(end, lambda: tf.numpy_function(
            functools.partial(self._file_report, line_shards=line_shards), [index, good, bad], tf.string,
            stateful=True), lambda: tf.constant(""))
        return self._stop_on_error(message, (rows, end))

    def _file_report(self, index, good, bad, line_shards) -> bytes:
        """At the end of a file: logs the skipped count (once per file and shard); an all-bad file is an error."""
        layout = self._layouts[int(index)]
        where = f" (lines of shard {line_shards[1]} of {line_shards[0]})" if line_shards else ""
        if bad and not good:
            return f"{layout.path}: no usable rows{where} ({bad} bad row(s) skipped)".encode()
        with self._lock:
            first = self._first_bad.get(int(index))
            report = bad and (int(index), line_shards) not in self._reported
            self._reported.add((int(index), line_shards))
        if report:
            logging.warning("%s%s: skipped %d bad row(s); first: %s", layout.path, where, bad, first)
        return b""
