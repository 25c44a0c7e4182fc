"""What a run prints: our progress and warnings by default, library chatter only with `--verbose`/`--debug`.

Three kinds of chatter are hidden by default. Python log records from libraries that need no action from the
user (gin's include lookups, seqio's notes on uncached datasets and mixing rates, its evaluator's missing
logger) are
dropped by a filter on the console handler. TensorFlow's C++ start-up lines (absl's "All log messages
before absl::InitializeLog()", oneDNN and "Could not find cuda drivers" notes, `failed call to cuInit` on a
CPU-only machine) are printed from native code while TensorFlow is imported and its devices listed, before
Python logging exists; `quiet_native_stderr` captures file descriptor 2 around that step and replays every
line that is not in `NATIVE_CHATTER`, so an unexpected native error still shows. Known unraisable exceptions
from libraries' own threads (`UNRAISABLE_CHATTER`) are dropped by a filter on `sys.unraisablehook`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

# (logger name prefix, message regex) of Python log records shown only with --verbose / --debug.
LIBRARY_CHATTER = (
    ("", r"^system_path_file_exists:|^Path not found: |^gin-config opened resource file"),  # gin include lookups
    ("absl", r"^Using an uncached FunctionDataset"),  # seqio: a FunctionDataSource cannot be cached
    ("absl", r"^Task '[^']*' not cached so using number of input examples"),  # seqio's mixing-rate note
    ("absl", r"^'logger_cls' is empty so seqio\.Evaluator will not log its results"),  # we write metrics.jsonl
    ("absl", r"^Given sequence lengths are longer than necessary for some evaluation inputs"),  # seqio's eval hint
    ("absl", r"^CheckpointManagerOptions\.read_only=True, setting save_interval_steps=0|"
             r"^Given directory is read only="),  # orbax, when eval/infer/export open MODEL_DIR read-only
)
# Native (C++) stderr lines printed while TensorFlow starts, dropped unless --verbose / --debug.
NATIVE_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\] "  # INFO/WARNING lines of absl/tsl C++ logging
    r"|E\d{4} [\d:.]+ +\d+ cuda_\w+\.cc:\d+\] failed call to cuInit"  # no GPU driver on this machine
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)")
# (exception type, message regex) of unraisable exceptions (raised where Python can only report them: finalizers,
# callbacks on native threads) from libraries, hidden unless --verbose / --debug.
UNRAISABLE_CHATTER = (
    # orbax: after a restore fails (a corrupt checkpoint, which the manager sets aside), callbacks of reads still
    # in flight post to the asyncio loop that orbax has already closed (seen in test_checkpoint_recovery.py).
    (RuntimeError, r"^Event loop is closed$"),
)
# Libraries whose INFO records bury the progress lines; they log at WARNING and above unless --verbose.
_CHATTY_LOGGERS = ("absl", "orbax", "jax", "tensorflow", "gin")
_OUR_LOGGERS = ("text2text", "tasks")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (tests and tools swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        del value


def _from(record: logging.LogRecord, logger: str) -> bool:
    if not logger:  # module-level logging.info(...) calls
        return record.name == "root"
    return record.name == logger or record.name.startswith(logger + ".")


class _ChatterFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(_from(record, logger) and re.search(pattern, message) for logger, pattern in LIBRARY_CHATTER)


class _UnraisableFilter:
    """sys.unraisablehook that drops UNRAISABLE_CHATTER and passes everything else to the hook it replaced."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        error = unraisable.exc_value
        if not any(isinstance(error, kind) and re.search(pattern, str(error)) for kind, pattern in UNRAISABLE_CHATTER):
            self.previous(unraisable)


def set_native_log_level(verbose: bool) -> None:
    """TensorFlow/XLA C++ log threshold (TF_CPP_MIN_LOG_LEVEL: 1 hides INFO); must run before they import.

    An explicit TF_CPP_MIN_LOG_LEVEL in the environment wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "1")


def configure_logging(verbose: bool) -> None:
    """Console logging: our INFO records and everyone's warnings, minus LIBRARY_CHATTER unless `verbose`; the
    unraisable exceptions in UNRAISABLE_CHATTER are hidden unless `verbose` too (sys.unraisablehook)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_text2text", False)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._text2text = True  # pylint: disable=protected-access
        root.addHandler(handler)
    handler.filters = [] if verbose else [_ChatterFilter()]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    filtered = isinstance(sys.unraisablehook, _UnraisableFilter)
    if verbose and filtered:
        sys.unraisablehook = sys.unraisablehook.previous
    elif not verbose and not filtered:
        sys.unraisablehook = _UnraisableFilter(sys.unraisablehook)


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[None]:
    """Captures file descriptor 2 (native and Python writes alike) inside the block and replays its lines,
    minus NATIVE_CHATTER, when the block ends (also on an exception). A no-op when not `enabled`."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not NATIVE_CHATTER.match(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
