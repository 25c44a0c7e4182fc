"""Crash safety of training: kill -9 at random moments, SIGTERM preemption; resumed runs match uninterrupted ones.

Run as a script (`python tests/test_faults.py MODEL_DIR CACHE_DIR`) it is the child process: a tiny model
trained for 30 steps on an in-memory copy task, a checkpoint every 3 steps, one progress line per step.
"""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_STEPS = 30
CHECKPOINT_PERIOD = 3


def _child(model_dir: str, cache_dir: str) -> None:
    """Trains the tiny model in `model_dir`, resuming from its checkpoints."""
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import seqio
    import tensorflow as tf

    from text2text import config, models, optim, trainer

    def source(split, shuffle_files=False, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": [f"copy {i} {i % 7}" for i in range(64)], "targets": [f"{i} {i % 7}" for i in range(64)]})

    vocab = seqio.ByteVocabulary()
    features = {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}
    seqio.TaskRegistry.add("fault_copy", seqio.FunctionDataSource(source, splits=["train"]),
                           preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
                           output_features=features)
    model = models.EncoderDecoderModel(config.get_config("tiny", vocab_size=260, num_encoder_layers=1,
                                                         num_decoder_layers=1))
    result = trainer.train(model_dir, model, "fault_copy", {"inputs": 16, "targets": 8}, train_steps=TRAIN_STEPS,
                           batch_size=4, checkpoint_period=CHECKPOINT_PERIOD, log_period=1,
                           optimizer=optim.adafactor(learning_rate=optim.constant_schedule(1e-2)))
    print(f"finished step={result['step']} preempted={result['preempted']}", flush=True)


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)
    return env


class Child:
    """A training subprocess whose stderr is read line by line in a thread (progress lines 'step N/30 ...'):
    this file as a script, or the given `command`."""

    def __init__(self, model_dir, cache_dir, command=None):
        command = command or [sys.executable, os.path.abspath(__file__), str(model_dir), str(cache_dir)]
        self.proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self.steps: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("step ") and "/" in line:
                self.steps.append(int(line.split()[1].split("/")[0]))

    def wait_for_step(self, step: int, timeout: float = 120.0) -> bool:
        """True once the child reported `step`; False if it exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(s >= step for s in self.steps):
                return True
            if self.proc.poll() is not None:
                self._reader.join(5)
                return any(s >= step for s in self.steps)
            time.sleep(0.005)
        raise AssertionError(f"child did not reach step {step}:\n{''.join(self.lines[-20:])}")

    def finish(self, timeout: float = 180.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def output(self) -> str:
        return "".join(self.lines)


def _step_dirs(model_dir) -> list[int]:
    return sorted(int(p) for p in os.listdir(model_dir) if p.isdigit()) if os.path.isdir(model_dir) else []


def _load(step_dir):
    """Every array of a step's train state (numpy) and its data-iterator JSON; raises if anything is unreadable."""
    import json

    from checkpoint_helpers import read_saved_state
    from text2text import checkpoints

    checkpoints.verify_manifest(step_dir)
    state = read_saved_state(step_dir)
    with open(os.path.join(step_dir, checkpoints.DATA_ITEM, "metadata"), encoding="utf-8") as f:
        return state, json.load(f)


def _assert_all_checkpoints_load(model_dir):
    for step in _step_dirs(model_dir):
        state, data_state = _load(os.path.join(model_dir, str(step)))
        assert int(state["step"]) == step and data_state["batches_consumed"] == step


def _assert_same_params(dir_a, dir_b, step):
    import jax

    state_a, data_a = _load(os.path.join(dir_a, str(step)))
    state_b, data_b = _load(os.path.join(dir_b, str(step)))
    assert data_a == data_b
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b) > 10
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A compilation cache for all children, and an uninterrupted reference run started in the background."""
    root = tmp_path_factory.mktemp("faults")
    cache = tmp_path_factory.getbasetemp() / "reliability_jax_cache"  # shared with test_checkpoint_recovery
    return cache, Child(root / "reference", cache), root / "reference"


def _reference(shared) -> str:
    _, reference, reference_dir = shared
    assert reference.finish() == 0, reference.output()
    return reference_dir


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_matches_uninterrupted_run(tmp_path, shared):
    cache = shared[0]
    rng = random.Random(1234)
    model_dir = tmp_path / "killed"
    mid_save, resume_points = 0, set()
    for attempt in range(10):
        done = max(_step_dirs(model_dir), default=0)
        resume_points.add(done)
        child = Child(model_dir, cache)
        if attempt == 0:
            time.sleep(rng.uniform(0.5, 3.0))  # during start-up: imports, init, first compile
        else:
            # Right after a progress line, then a short random delay: mid-step, or mid-save (a save starts
            # after every third step and commits about as many steps later). Step 26 at the latest, so the
            # child is still running when the signal comes.
            child.wait_for_step(min(26, done + rng.randint(1, 8)))
            time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.03), rng.uniform(0.03, 0.12)]))
        assert child.proc.poll() is None, child.output()
        child.proc.send_signal(signal.SIGKILL)
        child.finish()
        leftovers = os.listdir(model_dir) if model_dir.exists() else []
        mid_save += any(name.endswith(".orbax-checkpoint-tmp") for name in leftovers)
        _assert_all_checkpoints_load(model_dir)
    assert len(resume_points) >= 3 and mid_save >= 1, (resume_points, mid_save)  # progress; some kills mid-save
    final = Child(model_dir, cache)
    assert final.finish() == 0, final.output()
    assert f"finished step={TRAIN_STEPS}" in final.output()
    assert _step_dirs(model_dir)[-1] == TRAIN_STEPS
    _assert_all_checkpoints_load(model_dir)
    assert not [p for p in os.listdir(model_dir) if "tmp" in p or "corrupt" in p]
    _assert_same_params(model_dir, _reference(shared), TRAIN_STEPS)


def test_sigterm_saves_at_current_step_exits_0_and_resume_matches(tmp_path, shared):
    cache = shared[0]
    model_dir = tmp_path / "preempted"
    child = Child(model_dir, cache)
    child.wait_for_step(7)
    child.proc.send_signal(signal.SIGTERM)
    assert child.finish() == 0, child.output()
    assert "preempted: saved a checkpoint at step" in child.output()
    assert "preempted=True" in child.output()
    stopped = max(child.steps)
    assert 7 <= stopped < TRAIN_STEPS
    assert _step_dirs(model_dir)[-1] == stopped  # saved at the current step, not the last periodic one
    state, data_state = _load(os.path.join(model_dir, str(stopped)))
    assert int(state["step"]) == stopped and data_state["batches_consumed"] == stopped
    resumed = Child(model_dir, cache)
    assert resumed.finish() == 0, resumed.output()
    assert min(resumed.steps) == stopped + 1
    assert "preempted=False" in resumed.output()
    _assert_same_params(model_dir, _reference(shared), TRAIN_STEPS)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
