"""End-to-end training through run.py in a subprocess: a mock-TFDS GLUE mixture and a TSV task registered from gin.

Both runs use the tiny model and a tiny SentencePiece vocabulary; the loss must go down and the run must
leave config.gin, metrics.jsonl, loss.png, TensorBoard events and checkpoints in MODEL_DIR.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from tasks_fixtures import spm_model  # noqa: F401  (pytest fixture)
from text2text import reporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIXTURE = "runtime_test_glue_mix"
TRAIN_STEPS = 20
LOG_PERIOD = 2
COMMON_FLAGS = [
    "--gin_file=models/tiny.gin",
    "--gin_file=runs/finetune.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
    f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
    "--gin.BATCH_SIZE=8",
    "--gin.EVAL_PERIOD=0",
    "--gin.CHECKPOINT_PERIOD=10",
    "--gin.LEARNING_RATE=0.01",
    f"--gin.trainer.train.log_period={LOG_PERIOD}",
    "--gin.config.get_config.vocab_size=512",  # 400 SentencePiece pieces + 100 sentinels
]

# Enters tfds mock data (GLUE SST-2 and CoLA rows whose label is given by one word) and runs the command line.
MOCK_WRAPPER = textwrap.dedent(f"""
    import sys
    sys.path[:0] = [{REPO!r}, {os.path.join(REPO, "tests")!r}]
    import seqio
    from tasks import mixtures
    from tasks_fixtures import hand_written_tfds
    from text2text import launch

    pairs = [(w, a) for w in "cat dog bird house".split() for a in "big small red blue".split()]
    rows = [{{"sentence": f"the {{w}} {{a}} was {{'good' if i % 2 else 'bad'}}", "label": i % 2, "idx": i}}
            for i, (w, a) in enumerate(pairs)]
    # Mock builders have no files to list; seqio then shards examples instead of files (one shard: a no-op).
    seqio.TfdsDataSource.list_shards = lambda self, split: []
    mixtures.register_mixture({MIXTURE!r}, ["glue_sst2_v002", "glue_cola_v002"], default_rate=mixtures.equal_rate)
    with hand_written_tfds({{"train": rows, "validation": rows[:8]}}):
        sys.exit(launch.cli(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A JAX compilation cache shared by this module's runs, which compile the same train step."""
    return str(tmp_path_factory.mktemp("jax_cache"))


def run_cli(args, vocab_path, cwd, cache_dir, script=None, **extra_env):
    """Runs run.py (or a wrapper script) with the tiny vocabulary; returns the CompletedProcess."""
    env = dict(os.environ, T2T_VOCAB_PATH=vocab_path, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2", JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra_env)
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, script or os.path.join(REPO, "run.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600, check=False)


def assert_loss_decreases(model_dir):
    records = reporting.read_metrics(str(model_dir))
    assert [r["step"] for r in records] == list(range(LOG_PERIOD, TRAIN_STEPS + 1, LOG_PERIOD))
    for r in records:  # "loss" is the per-target-token loss
        assert r["loss"] == pytest.approx(r["loss_sum"] / r["weight_sum"], rel=1e-5)
    first = sum(r["loss"] for r in records[:2]) / 2
    last = sum(r["loss"] for r in records[-2:]) / 2
    assert last < 0.75 * first, [round(r["loss"], 3) for r in records]
    return records


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory, spm_model, compilation_cache):  # noqa: F811
    """One 20-step training run on the mock GLUE mixture, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("mixture_run")
    wrapper = tmp / "train_on_mock_tfds.py"
    wrapper.write_text(MOCK_WRAPPER)
    model_dir = tmp / "model"
    proc = run_cli([*COMMON_FLAGS, f"--gin.MIXTURE_OR_TASK_NAME='{MIXTURE}'", f"--gin.MODEL_DIR='{model_dir}'"],
                   spm_model, cwd=tmp, cache_dir=compilation_cache, script=str(wrapper))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir, proc


def test_mixture_run_loss_decreases(mixture_run):
    model_dir, proc = mixture_run
    assert_loss_decreases(model_dir)
    assert f"step {TRAIN_STEPS}/{TRAIN_STEPS} loss" in proc.stderr  # progress line (plain, not a TTY)


def test_mixture_run_writes_config_plot_and_checkpoints(mixture_run):
    model_dir, _ = mixture_run
    config = (model_dir / "config.gin").read_text()
    assert f"MIXTURE_OR_TASK_NAME = '{MIXTURE}'" in config and f"TRAIN_STEPS = {TRAIN_STEPS}" in config
    assert (model_dir / "loss.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert {"10", "20"} <= set(os.listdir(model_dir))


def test_mixture_run_writes_tensorboard_events(mixture_run):
    model_dir, _ = mixture_run
    event_files = list(model_dir.glob("events.out.tfevents.*"))
    assert event_files
    steps = {}
    for path in event_files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    assert sorted(steps["train/loss"]) == list(range(LOG_PERIOD, TRAIN_STEPS + 1, LOG_PERIOD))
    assert "train/accuracy" in steps and "train/grad_norm" in steps


def test_tsv_task_from_gin_trains(tmp_path, spm_model, compilation_cache):  # noqa: F811
    """A prefixed TSV task registered in a gin file (no Python) trains through run.py.

    MODEL_DIR is runs/model (like the demo's runs/demo) on PYTHONPATH: gin must not take that folder for a
    Python package holding the include "runs/finetune.gin".
    """
    (tmp_path / "runs").mkdir()
    rows = ["sentence\tlabel"] + [f"the {w} is {'good' if i % 2 else 'bad'}\t{'positive' if i % 2 else 'negative'}"
                                  for i, w in enumerate("cat dog bird house tree car book lamp".split() * 2)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:5]) + "\n")
    (tmp_path / "sentiment.gin").write_text(textwrap.dedent(f"""
        from __gin__ import dynamic_registration
        from tasks import custom
        include "models/tiny.gin"
        include "runs/finetune.gin"

        MIXTURE_OR_TASK_NAME = @custom.register_text_task_from_file()
        custom.register_text_task_from_file.name = "runtime_test_sentiment"
        custom.register_text_task_from_file.prefix = "sentiment"
        custom.register_text_task_from_file.path = {{"train": "{tmp_path / 'train.tsv'}",
                                                     "validation": "{tmp_path / 'dev.tsv'}"}}
        custom.register_text_task_from_file.inputs = "sentence"
        custom.register_text_task_from_file.targets = "label"
        MODEL_DIR = "{tmp_path / 'runs' / 'model'}"
    """))
    proc = run_cli([f"--gin_file={tmp_path / 'sentiment.gin'}", *COMMON_FLAGS[2:]], spm_model, cwd=tmp_path,
                   cache_dir=compilation_cache, PYTHONPATH=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = tmp_path / "runs" / "model"
    assert_loss_decreases(model_dir)
    assert "custom.register_text_task_from_file.prefix = 'sentiment'" in (model_dir / "config.gin").read_text()
    assert json.loads((model_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == TRAIN_STEPS
