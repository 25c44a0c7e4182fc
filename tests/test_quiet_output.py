"""A normal run looks correct: a tiny training run through run.py (fresh process, environment as a user has it:
no TF_CPP_MIN_LOG_LEVEL, no CUDA_VISIBLE_DEVICES) prints its progress and metrics and none of the library chatter
below; `--verbose` brings the Python-side chatter back."""
import logging
import os
import re
import subprocess
import sys

import pytest

from tasks_fixtures import spm_model  # noqa: F401
from text2text import console


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = [
    r"system_path_file_exists:",
    r"Path not found: ",
    r"failed call to cuInit",
    r"All log messages before absl::InitializeLog\(\)",
    r"Could not find cuda drivers",
    r"Using an uncached FunctionDataset",
    r"not cached so using number of input examples",
    r"'logger_cls' is empty so seqio\.Evaluator will not log its results",
    r"^[IWE]\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\]",  # any native INFO/WARNING/ERROR line
    r"Traceback",
]


def _run(model_dir, *extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = REPO
    args = ["--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin", "--gin.MIXTURE_OR_TASK_NAME='demo_reverse'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4",
            "--gin.EVAL_PERIOD=2", "--gin.config.get_config.vocab_size=512", f"--gin.MODEL_DIR='{model_dir}'", *extra]
    return subprocess.run([sys.executable, os.path.join(REPO, "run.py"), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600, check=False)


@pytest.mark.slow  # one training run with an evaluation in a fresh process: ~1 min on 2 cores
def test_training_run_prints_progress_and_metrics_and_no_chatter(spm_model, tmp_path):  # noqa: F811
    proc = _run(tmp_path / "model")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for pattern in NOISE:
        assert not re.search(pattern, output, re.M), f"{pattern!r} in:\n{output}"
    assert re.search(r"^step 2/2 loss \d+\.\d+ ", output, re.M), output
    assert re.search(r"^demo_reverse \| accuracy \| \d", output, re.M), output


@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_shows_the_library_chatter(verbose, capsys):
    """In process: the console filter drops known chatter only without --verbose; warnings always show."""
    console.configure_logging(verbose)
    try:
        logging.getLogger("absl").warning("Using an uncached FunctionDataset for training is not recommended")
        logging.getLogger("absl").warning("Task 'demo_sort' not cached so using number of input examples instead of "
                                          "preprocessed examples to compute rate.")
        logging.getLogger().info("system_path_file_exists:models/tiny.gin")
        logging.getLogger("absl").warning("task 'x': skipped 3 bad row(s)")
        logging.getLogger("text2text.trainer").info("resumed from /tmp/m at step 2")
    finally:
        console.configure_logging(False)
    err = capsys.readouterr().err
    assert ("Using an uncached FunctionDataset" in err) == verbose
    assert ("Task 'demo_sort' not cached" in err) == verbose
    assert ("system_path_file_exists" in err) == verbose
    assert "skipped 3 bad row(s)" in err and "resumed from /tmp/m at step 2" in err


class _RaisesInFinalizer:
    def __init__(self, error: Exception):
        self.error = error

    def __del__(self):
        raise self.error


@pytest.mark.parametrize("verbose", [False, True])
def test_orbax_closed_event_loop_unraisable_shows_only_with_verbose(verbose, capsys, monkeypatch):
    """Reads still in flight after a failed restore report 'Event loop is closed' from their own threads; without
    --verbose only that one is dropped, other unraisable exceptions still show."""
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own: it writes to sys.stderr
    console.configure_logging(verbose)
    try:
        _RaisesInFinalizer(RuntimeError("Event loop is closed"))
        _RaisesInFinalizer(ValueError("a finalizer's own bug"))
    finally:
        console.configure_logging(False)
    err = capsys.readouterr().err
    assert ("RuntimeError: Event loop is closed" in err) == verbose
    assert "ValueError: a finalizer's own bug" in err
