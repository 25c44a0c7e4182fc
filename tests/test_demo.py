"""The demo end to end, shortened: the same table in two fresh directories, and reprinted (not retrained) on rerun."""
import os
import subprocess
import sys

import pytest

from text2text import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["--gin.demo.run_demo.train_steps=30", "--gin.demo.run_demo.log_period=10"]


def _demo(out_dir):
    command = [sys.executable, os.path.join(REPO, "run.py"), "--gin_file=gin_configs/demo.gin", *SHORT,
               f"--gin.MODEL_DIR='{out_dir}'", f"--gin.VOCAB_PATH='{out_dir}/vocab/spm.model'"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _table(stdout):
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("family "))
    return "\n".join(lines[start:start + 10])


@pytest.mark.slow
def test_demo_is_deterministic_and_a_rerun_reprints_the_saved_table(tmp_path):
    first, second = _demo(str(tmp_path / "a")), _demo(str(tmp_path / "b"))
    table = _table(first)
    assert "review_sentiment" in table and "sentence_topic" in table and "zero-shot" in table
    assert table == _table(second)
    for path in ("vocab/spm.model", "base/30", "base/config.gin", "base/metrics.jsonl", "base/loss.png"):
        assert os.path.exists(tmp_path / "a" / path) and str(tmp_path / "a" / path) in first
    rerun = _demo(str(tmp_path / "a"))
    assert "already holds the finished run" in rerun and "step 1/" not in rerun
    assert _table(rerun) == table


def test_family_table_takes_the_median_over_templates_and_names_chance():
    results = {"demo_review_sentiment_t0": {"accuracy": 70.0}, "demo_review_sentiment_t1": {"accuracy": 90.0},
               "demo_review_sentiment_t2": {"accuracy": 80.0}, "demo_sort_t3": {"accuracy": 55.5}}
    rows = demo.family_rows(results)
    assert [r["family"] for r in rows] == ["sort", "review_sentiment"]
    assert rows[1]["median"] == 80.0 and rows[1]["chance"] == 50.0 and rows[0]["chance"] is None
    table = demo.format_family_table(rows)
    assert "70.0 90.0 80.0" in table and "zero-shot, rank classification" in table
    assert "held-out template, exact match" in table
