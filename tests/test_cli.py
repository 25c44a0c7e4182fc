"""run.py's basic user errors: one "error:" line on stderr, exit code 2, no traceback (unless --debug)."""
import gc
import os
import re
import subprocess
import sys

import gin
import pytest

from text2text import launch
from text2text.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow's C++ start-up messages, printed at import before Python can configure logging.
TF_IMPORT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} [\d:.]+ +\d+ \w+\.cc:\d+\] )")


def run_py(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(REPO, "run.py"), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300, check=False)


def stderr_lines(text):
    return [line for line in text.splitlines() if line.strip() and not TF_IMPORT_NOISE.match(line)]


def test_missing_gin_file_is_one_error_line_and_exit_2():
    proc = run_py("--gin_file=runs/finetuen.gin")
    assert proc.returncode == 2
    lines = stderr_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: gin file 'runs/finetuen.gin' not found")
    assert "closest: runs/finetune.gin" in lines[0]
    assert "Traceback" not in proc.stderr


def test_debug_flag_shows_the_traceback():
    proc = run_py("--gin_file=runs/finetuen.gin", "--debug")
    assert proc.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in proc.stderr
    assert "UserError: gin file 'runs/finetuen.gin' not found" in proc.stderr


REQUIRED_FLAGS = [
    "--gin_file=models/tiny.gin",
    "--gin_file=runs/finetune.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
    "--gin.TRAIN_STEPS=2",
    "--gin.BATCH_SIZE=2",
]


@pytest.fixture
def main(capsys, tmp_path):
    """launch.main in this process with a fresh gin config; returns (exit code, stderr lines)."""
    def call(*args, model_dir=True):
        gin.clear_config()
        try:
            extra = [f"--gin.MODEL_DIR='{tmp_path / 'model'}'"] if model_dir else []
            code = launch.main([*args, *extra])
        finally:
            gin.clear_config()
        return code, capsys.readouterr().err.strip().splitlines()

    return call


def assert_one_error_line(code, lines, *fragments):
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_gin_binding_names_the_closest_parameter(main):
    code, lines = main(*REQUIRED_FLAGS, "--gin.MIXTURE_OR_TASK_NAME='glue_sst2_v002'",
                       "--gin.trainer.train.batch_sise=4")
    assert_one_error_line(code, lines, "'batch_sise'", "closest: text2text.trainer.train.batch_size")


@pytest.mark.parametrize("name,closest", [("glue_sst_v002", "glue_sst2_v002"),
                                          ("glue_v002_proportionl", "glue_v002_proportional")])
def test_unknown_task_or_mixture_names_the_closest_ones(main, tmp_path, name, closest):
    code, lines = main(*REQUIRED_FLAGS, f"--gin.MIXTURE_OR_TASK_NAME='{name}'")
    assert_one_error_line(code, lines, f"unknown seqio task or mixture '{name}'", closest)
    assert not (tmp_path / "model" / "config.gin").exists()  # failed before the run started


def test_missing_required_macro(main):
    flags = [f for f in REQUIRED_FLAGS if "TASK_FEATURE_LENGTHS" not in f]
    code, lines = main(*flags, "--gin.MIXTURE_OR_TASK_NAME='glue_sst2_v002'")
    assert_one_error_line(code, lines, "TASK_FEATURE_LENGTHS is %gin.REQUIRED", "--gin.TASK_FEATURE_LENGTHS=")


def test_debug_raises_instead_of_exiting(main):
    with pytest.raises(UserError, match="glue_sst2_v002"):
        main(*REQUIRED_FLAGS, "--gin.MIXTURE_OR_TASK_NAME='glue_sst_v002'", "--debug")


class _FinalizerThatHoldsItsPartner:
    """Garbage whose finalizer lends its partner to `held` for the rest of the collection pass, as a thread that
    runs while an iterator's finalizer has released the GIL can; CPython then keeps both for a later pass."""
    held: list = []

    def __init__(self):
        self.partner = _Partner()
        self.partner.owner = self

    def __del__(self):
        self.held.append(self.partner)


class _Partner:
    owner = None


def test_cli_collects_again_what_a_finalizer_kept_for_a_later_pass(capsys):
    def drop_the_loan(phase, info):
        if phase == "stop":
            _FinalizerThatHoldsItsPartner.held.clear()

    _FinalizerThatHoldsItsPartner()  # garbage at once: a reference cycle
    gc.callbacks.append(drop_the_loan)  # the collector reads this very list
    gc.disable()  # only cli's own passes run
    try:
        code = launch.cli(["--gin_file=runs/finetuen.gin"])
    finally:
        gc.enable()
        gc.callbacks.remove(drop_the_loan)
    assert code == 2
    assert "error: gin file 'runs/finetuen.gin' not found" in capsys.readouterr().err
    assert not [o for o in gc.get_objects() if isinstance(o, _Partner)]  # weak references are cleared earlier
