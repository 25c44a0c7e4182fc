"""Recovery from bad checkpoints and bad steps: corrupt files, wrong shapes, disk full, non-finite losses."""

import errno
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf
from jax.experimental.compilation_cache import compilation_cache
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from checkpoint_helpers import read_saved_state
from text2text import checkpoints, config, data, models, optim, trainer
from text2text.errors import UserError

POISON = "!"
POISON_ID = ord(POISON) + 3  # seqio.ByteVocabulary: byte value + 3
LENGTHS = {"inputs": 16, "targets": 8}


def _state(seed=0, width=4):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"params": {"dense": {"kernel": jax.random.normal(k1, (8, width))}, "bias": jax.random.normal(k2, (width,))},
            "step": jnp.asarray(seed, jnp.int32)}


def _manager(path, **kwargs):
    return checkpoints.CheckpointManager(path, save_interval_steps=1, async_save=False, **kwargs)


def _saved(path, steps=(1, 2)):
    manager = _manager(path)
    for step in steps:
        manager.save(step, _state(step), {"batches_consumed": step})
    manager.close()


def _largest_array_file(step_dir):
    files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(step_dir, "state")) for f in names
             if os.sep + "d" + os.sep in os.path.join(root, f) + os.sep]
    return max(files, key=os.path.getsize)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "corrupt" in r.getMessage()]


def test_manifest_is_written_inside_the_atomic_save_and_lists_every_item_file(tmp_path):
    _saved(tmp_path, steps=(1,))
    manifest = json.loads((tmp_path / "1" / checkpoints.MANIFEST_FILE).read_text())
    assert "data/metadata" in manifest and any(name.startswith("state/") for name in manifest)
    assert manifest == checkpoints.file_checksums(tmp_path / "1")
    assert checkpoints.verify_manifest(tmp_path / "1") is True


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete"])
def test_corrupt_latest_falls_back_to_previous_and_is_moved_aside(tmp_path, caplog, damage):
    _saved(tmp_path)
    victim = _largest_array_file(tmp_path / "2")
    original = open(victim, "rb").read()
    if damage == "truncate":
        os.truncate(victim, len(original) // 2)
    elif damage == "flip_byte":
        with open(victim, "r+b") as f:
            f.seek(len(original) // 2)
            f.write(bytes([original[len(original) // 2] ^ 0xFF]))
    else:
        os.remove(victim)
    manager = _manager(tmp_path)
    with caplog.at_level(logging.WARNING):
        step, state, data_state = manager.restore_latest(checkpoints.abstract_like(_state()))
    assert step == 1 and int(state["step"]) == 1 and data_state == {"batches_consumed": 1}
    np.testing.assert_array_equal(state["params"]["bias"], _state(1)["params"]["bias"])
    lines = _warnings(caplog)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "checkpoint" in lines[0] and "falling back to step 1" in lines[0]
    assert os.path.relpath(victim, tmp_path / "2") in lines[0]
    moved = [p for p in os.listdir(tmp_path) if p.startswith("2" + checkpoints.CORRUPT_MARK)]
    assert len(moved) == 1 and moved[0] in lines[0]
    assert manager.all_steps() == [1]
    kept = os.path.join(tmp_path, moved[0], os.path.relpath(victim, tmp_path / "2"))
    assert os.path.exists(kept) or damage == "delete"  # moved, never deleted
    manager.save(2, _state(2), {"batches_consumed": 2})  # the step number is free again
    manager.close()
    assert sorted(p for p in os.listdir(tmp_path) if p[0].isdigit()) == ["1", "2", moved[0]]


def test_checkpoint_without_manifest_is_checked_by_restoring_it(tmp_path, caplog):
    _saved(tmp_path)
    os.remove(tmp_path / "2" / checkpoints.MANIFEST_FILE)
    for root, _, names in os.walk(tmp_path / "2" / "state"):
        for name in names:
            if os.path.basename(root) == "d":
                os.truncate(os.path.join(root, name), 10)
    with caplog.at_level(logging.WARNING):
        step, _, _ = _manager(tmp_path).restore_latest(checkpoints.abstract_like(_state()))
    assert step == 1
    assert len(_warnings(caplog)) == 1 and "is corrupt (unreadable metadata" in _warnings(caplog)[0]


def test_all_checkpoints_corrupt_starts_afresh_and_keeps_them(tmp_path, caplog):
    _saved(tmp_path)
    for step in ("1", "2"):
        os.remove(_largest_array_file(tmp_path / step))
    with caplog.at_level(logging.WARNING):
        assert _manager(tmp_path).restore_latest(checkpoints.abstract_like(_state())) is None
    assert len(_warnings(caplog)) == 2 and "starting afresh" in _warnings(caplog)[-1]
    assert len([p for p in os.listdir(tmp_path) if checkpoints.CORRUPT_MARK in p]) == 2


def test_other_model_shape_is_a_user_error_naming_parameter_and_shapes_not_corruption(tmp_path):
    _saved(tmp_path)
    with pytest.raises(UserError, match=r"params/bias has shape \(4,\) in the checkpoint but \(6,\) in the model"):
        _manager(tmp_path).restore_latest(checkpoints.abstract_like(_state(width=6)))
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]  # nothing moved aside


def test_disk_full_during_save_is_a_clear_error_and_keeps_previous_checkpoint(tmp_path, monkeypatch):
    manager = checkpoints.CheckpointManager(tmp_path, save_interval_steps=1, async_save=True)
    manager.save(1, _state(1), {"batches_consumed": 1})
    manager.wait_until_finished()

    async def no_space(self, x, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", no_space)
    with pytest.raises(UserError) as info:
        manager.save(2, _state(2), {"batches_consumed": 2})
        manager.wait_until_finished()
    message = str(info.value)
    assert "disk full while saving checkpoint step 2" in message and "step 1) is intact" in message
    assert "\n" not in message
    assert os.listdir(tmp_path) == ["1"]  # the partial save is removed, step 1 untouched
    monkeypatch.undo()
    rerun = _manager(tmp_path)
    step, state, _ = rerun.restore_latest(checkpoints.abstract_like(_state()))
    assert step == 1 and int(state["step"]) == 1
    rerun.save(2, _state(2), {"batches_consumed": 2})
    rerun.close()
    assert sorted(p for p in os.listdir(tmp_path) if not p.startswith(".")) == ["1", "2"]


def test_retired_checkpoints_leave_no_partial_step_directories(tmp_path):
    manager = checkpoints.CheckpointManager(tmp_path, save_interval_steps=1, max_to_keep=2, async_save=False)
    for step in range(1, 5):
        manager.save(step, _state(step))
    manager.close()
    assert sorted(p for p in os.listdir(tmp_path) if not p.startswith(".")) == ["3", "4"]
    assert not os.listdir(tmp_path / ".deleted")


# End to end through trainer.train: the tiny model and task of tests/test_faults.py (sharing its compilation
# cache), except that examples 11, 30, 49 of the 64 carry a '!' in their target, which PoisonedModel turns
# into a NaN loss.

def _source(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    targets = [f"{i} {i % 7}{POISON if i % 19 == 11 else ''}" for i in range(64)]
    return tf.data.Dataset.from_tensor_slices({"inputs": [f"copy {i} {i % 7}" for i in range(64)], "targets": targets})


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The task's name, with a persistent JAX compilation cache (shared with test_faults) for this module."""
    vocab = seqio.ByteVocabulary()
    features = {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}
    name = "recovery_copy"
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(name, seqio.FunctionDataSource(_source, splits=["train"]),
                               preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
                               output_features=features)
    settings = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                "jax_persistent_cache_min_entry_size_bytes")
    previous = {key: getattr(jax.config, key) for key in settings}
    cache = tmp_path_factory.getbasetemp() / "reliability_jax_cache"
    for key, value in zip(settings, (str(cache), 0, 0)):
        jax.config.update(key, value)
    compilation_cache.reset_cache()
    yield name
    for key, value in previous.items():
        jax.config.update(key, value)
    compilation_cache.reset_cache()


class PoisonedModel(models.EncoderDecoderModel):
    """Its loss (and so its gradients) is NaN for any batch whose targets hold the poison character."""

    def loss_fn(self, params, batch, dropout_rng):
        loss, metrics = super().loss_fn(params, batch, dropout_rng)
        poisoned = jnp.any(batch["decoder_target_tokens"] == POISON_ID)
        return loss * jnp.where(poisoned, jnp.nan, 1.0), metrics


def _model(cls=models.EncoderDecoderModel):
    return cls(config.get_config("tiny", vocab_size=260, num_encoder_layers=1, num_decoder_layers=1))


def _train(model_dir, task, steps, model=None, **kwargs):
    settings = dict(batch_size=4, pack=True, log_period=100, checkpoint_period=3,
                    optimizer=optim.adafactor(learning_rate=optim.constant_schedule(1e-2)))
    settings.update(kwargs)
    return trainer.train(str(model_dir), model or _model(), task, LENGTHS, train_steps=steps, **settings)


def _poisoned_steps(task, steps):
    """Steps (1-based) whose batch the trainer's data pipeline fills with a poisoned example."""
    dataset = data.get_dataset(task, LENGTHS, "train", 4, shuffle=True, seed=0, pack=True, num_epochs=None)
    return [i + 1 for i, batch in enumerate(dataset.take(steps).as_numpy_iterator())
            if (batch["decoder_target_tokens"] == POISON_ID).any()]


def _params(model_dir, step):
    """The whole train state saved at `step` (step, params, opt_state)."""
    return read_saved_state(os.path.join(model_dir, str(step)))


def test_trainer_resumes_from_previous_checkpoint_when_newest_is_corrupt(tmp_path, task, caplog):
    _train(tmp_path, task, 6)
    os.truncate(_largest_array_file(tmp_path / "6"), 10)
    with caplog.at_level(logging.INFO):
        result = _train(tmp_path, task, 9)
    assert result["step"] == 9
    assert len(_warnings(caplog)) == 1 and "falling back to step 3" in _warnings(caplog)[0]
    assert any("resumed from" in r.getMessage() and "step 3" in r.getMessage() for r in caplog.records)
    assert any(p.startswith("6" + checkpoints.CORRUPT_MARK) for p in os.listdir(tmp_path))
    assert sorted(int(p) for p in os.listdir(tmp_path) if p.isdigit()) == [3, 6, 9]  # 6 written anew


def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, task):
    first = _poisoned_steps(task, 12)[0]
    assert 4 <= first <= 12  # a checkpoint exists before the first bad step
    with pytest.raises(UserError, match=rf"non-finite loss, gradient or update at step {first};") as info:
        _train(tmp_path, task, 12, model=_model(PoisonedModel))
    last_good = (first - 1) // 3 * 3
    assert f"the last checkpoint (step {last_good})" in str(info.value)
    steps = sorted(int(p) for p in os.listdir(tmp_path) if p.isdigit())
    assert steps[-1] == last_good
    state = _params(tmp_path, last_good)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state))


def test_skip_nonfinite_steps_leaves_params_unchanged_and_training_completes(tmp_path, task, caplog):
    total = 12
    poisoned = [s for s in _poisoned_steps(task, total) if s > 1]
    assert poisoned, "the data should poison at least one step"
    with caplog.at_level(logging.WARNING):
        result = _train(tmp_path, task, total, model=_model(PoisonedModel), skip_nonfinite_steps=True,
                        checkpoint_period=1, keep_checkpoints=None)
    assert result["step"] == total and result["skipped_steps"] == len(_poisoned_steps(task, total))
    skipped = [r.getMessage() for r in caplog.records if "skipped it" in r.getMessage()]
    assert [int(m.split()[1].rstrip(":")) for m in skipped] == _poisoned_steps(task, total)
    before, after = _params(tmp_path, poisoned[0] - 1), _params(tmp_path, poisoned[0])
    for a, b in zip(jax.tree.leaves([before["params"], before["opt_state"]]),
                    jax.tree.leaves([after["params"], after["opt_state"]])):
        np.testing.assert_array_equal(a, b)  # the skipped step changed neither params nor optimizer state
    assert int(after["step"]) == poisoned[0]
    changed = _params(tmp_path, poisoned[0] + 1)["params"]  # and the next (clean) step trains again
    assert any((a != b).any() for a, b in zip(jax.tree.leaves(after["params"]), jax.tree.leaves(changed)))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(_params(tmp_path, total)))


def test_disk_full_in_training_is_one_clear_error_and_previous_checkpoint_survives(tmp_path, task, monkeypatch):
    _train(tmp_path, task, 3)

    async def no_space(self, x, directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", no_space)
    with pytest.raises(UserError, match=r"disk full while saving checkpoint step 6 .*\(step 3\) is intact"):
        _train(tmp_path, task, 9)
    monkeypatch.undo()
    assert [p for p in os.listdir(tmp_path) if p[0].isdigit()] == ["3"]  # no partial step 6 left behind
    step, _, data_state = checkpoints.CheckpointManager(tmp_path, read_only=True).restore_latest(
        checkpoints.abstract_like(jax.tree.map(jnp.asarray, _params(tmp_path, 3))))
    assert step == 3 and data_state["batches_consumed"] == 3
