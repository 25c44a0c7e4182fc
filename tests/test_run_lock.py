"""One training run per MODEL_DIR (text2text.run_lock): the claim rule on hand-made claims, then real run.py
processes: a second run refuses with one line naming the owner, checkpoints stay readable (eval/infer) while the
first runs, and after kill -9 the same command resumes.

Run as a script (`python tests/test_run_lock.py FLAGS...`) it is run.py with a small in-memory copy task registered.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "run_lock_copy"


def _owner(**changes):
    from text2text import run_lock

    return {**run_lock._me(), **changes}


def _write_claim(model_dir, owner, age_s=0.0):
    from text2text import run_lock

    path = os.path.join(model_dir, run_lock.LOCK_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(owner, f)
    os.utime(path, (time.time() - age_s,) * 2)
    return path


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_live_claim_refuses_naming_directory_and_owner_and_release_frees_it(tmp_path):
    from text2text import run_lock
    from text2text.errors import UserError

    first = run_lock.claim(str(tmp_path))
    with pytest.raises(UserError, match=rf"^MODEL_DIR {tmp_path} is being trained by another run \(host "
                                        rf"{socket.gethostname()}, pid {os.getpid()}, since "):
        run_lock.claim(str(tmp_path))
    first.release()
    assert not os.path.exists(tmp_path / run_lock.LOCK_FILE)
    with run_lock.claim(str(tmp_path)):
        assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not os.path.exists(tmp_path / run_lock.LOCK_FILE)


@pytest.mark.parametrize("owner, age_s, live", [
    (dict(pid="dead"), 0, False),                               # same host, the process is gone (kill -9)
    (dict(start_time="1"), 0, False),                           # same host, our pid reused by another process
    (dict(boot_id="rebooted"), 0, True),                        # the host rebooted: the lease decides
    (dict(boot_id="rebooted"), 601, False),
    (dict(host="elsewhere", pid=1), 0, True),                   # another host: live while heartbeats come
    (dict(host="elsewhere", pid=1), 599, True),
    (dict(host="elsewhere", pid=1), 601, False),
])
def test_claim_rule(tmp_path, owner, age_s, live):
    from text2text import run_lock
    from text2text.errors import UserError

    if owner.get("pid") == "dead":
        owner["pid"] = _dead_pid()
    path = _write_claim(tmp_path, _owner(**owner, claimed_at=1.0), age_s)
    if live:
        with pytest.raises(UserError, match="is being trained by another run"):
            run_lock.claim(str(tmp_path))
        return
    lock = run_lock.claim(str(tmp_path))
    assert json.loads(open(path).read())["pid"] == os.getpid() and not os.path.exists(path + ".takeover")
    lock.release()


def test_an_empty_claim_blocks_only_while_it_may_still_be_written(tmp_path):
    from text2text import run_lock
    from text2text.errors import UserError

    path = tmp_path / run_lock.LOCK_FILE
    path.write_text("")
    with pytest.raises(UserError, match="another run is claiming it at the same time"):
        run_lock.claim(str(tmp_path))
    os.utime(path, (time.time() - 61,) * 2)  # left empty by a run killed between creating and writing it
    with run_lock.claim(str(tmp_path)):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_heartbeat_touches_the_claim(tmp_path, monkeypatch):
    from text2text import run_lock

    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    with run_lock.claim(str(tmp_path)):
        path = tmp_path / run_lock.LOCK_FILE
        os.utime(path, (1.0, 1.0))
        time.sleep(0.5)
        assert time.time() - path.stat().st_mtime < 5


def _command(model_dir):
    return [sys.executable, os.path.abspath(__file__), "--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
            f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", f"--gin.MODEL_DIR='{model_dir}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}", "--gin.TRAIN_STEPS=100000",
            "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=0", "--gin.CHECKPOINT_PERIOD=3", "--gin.LEARNING_RATE=0.01",
            "--gin.trainer.train.log_period=1", "--gin.config.get_config.vocab_size=260",
            "--gin.config.get_config.num_encoder_layers=1", "--gin.config.get_config.num_decoder_layers=1"]


@pytest.mark.slow
def test_second_run_refuses_eval_reads_and_kill_9_then_resume(tmp_path):
    from test_faults import Child, _env
    from text2text import checkpoints, run_lock

    model_dir = tmp_path / "model"
    first = Child(model_dir, None, _command(model_dir))
    assert first.wait_for_step(4, timeout=300), first.output()

    second = subprocess.run(_command(model_dir), cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                            env=_env())
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in second.stderr.splitlines() if "MODEL_DIR" in line]
    assert len(errors) == 1 and "Traceback" not in second.stderr
    assert f"MODEL_DIR {model_dir} is being trained by another run (host {socket.gethostname()}, pid " \
           f"{first.proc.pid}, since" in errors[0]
    assert first.proc.poll() is None  # the first run goes on

    # readers (eval, infer) open the directory read-only, claim or not
    steps = checkpoints.CheckpointManager(str(model_dir), read_only=True).all_steps()
    assert steps and all(step % 3 == 0 for step in steps)

    first.proc.send_signal(signal.SIGKILL)
    first.finish()
    assert os.path.exists(model_dir / run_lock.LOCK_FILE)  # the dead run's claim is left behind
    killed_at = max(first.steps)
    resumed = Child(model_dir, None, _command(model_dir))
    assert resumed.wait_for_step(killed_at + 2, timeout=300), resumed.output()
    assert min(resumed.steps) > 1 and not any(line.startswith("error:") for line in resumed.lines)
    resumed.proc.send_signal(signal.SIGTERM)  # preemption: saves and exits 0, releasing the claim
    assert resumed.finish() == 0, resumed.output()
    assert not os.path.exists(model_dir / run_lock.LOCK_FILE)


if __name__ == "__main__":
    sys.path[:0] = [REPO]
    import seqio
    import tensorflow as tf

    from text2text import launch

    def _source(split, shuffle_files=False, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": [f"copy {i} {i % 7}" for i in range(64)], "targets": [f"{i} {i % 7}" for i in range(64)]})

    vocab = seqio.ByteVocabulary()
    seqio.TaskRegistry.add(TASK, seqio.FunctionDataSource(_source, splits=["train"]),
                           preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
                           output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)})
    sys.exit(launch.cli(sys.argv[1:]))
