"""Optimizer offsets through trainer.train: Adafactor's decay_offset from a fresh state, a fine-tuning run that
continues a pre-trained step count (trainer.train.initial_step), and the error for a first step that is already
non-finite (also when skipping non-finite steps, which must not go on forever)."""
import jax
import numpy as np
import pytest

from test_checkpoint_recovery import _params, _train, task  # noqa: F401  (pytest fixture)
from text2text import optim
from text2text.errors import UserError


def _adafactor(learning_rate=1e-2, **kwargs):
    return optim.adafactor(learning_rate=optim.constant_schedule(learning_rate), **kwargs)


def _opt_counts(state):
    return sorted({int(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]
                   if getattr(path[-1], "key", getattr(path[-1], "name", None)) == "count"})


def test_decay_offset_from_a_fresh_state_and_a_continued_pretrained_count(tmp_path, task):  # noqa: F811
    pretrain = _train(tmp_path / "pre", task, 2, optimizer=_adafactor(decay_offset=1))  # the offset
    assert pretrain["step"] == 2 and pretrain["skipped_steps"] == 0
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(_params(tmp_path / "pre", 2)["params"]))

    # T5X fine-tuning: the count goes on from the pre-trained step and decay_offset restarts the decay there
    settings = dict(init_checkpoint=str(tmp_path / "pre"), initial_step=100, optimizer=_adafactor(decay_offset=100))
    with pytest.raises(UserError, match=r"TRAIN_STEPS=100 must exceed trainer.train.initial_step=100"):
        _train(tmp_path / "ft", task, 100, **settings)
    assert _train(tmp_path / "ft", task, 103, **settings)["step"] == 103
    saved = _params(tmp_path / "ft", 103)
    assert int(saved["step"]) == 103 and _opt_counts(saved) == [103]
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(saved["params"]))
    assert _train(tmp_path / "ft", task, 104, **settings)["step"] == 104  # resumes its own checkpoint


def test_a_non_finite_first_step_names_the_settings_and_skipping_stops(tmp_path, task):  # noqa: F811
    with pytest.raises(UserError, match=r"at step 1; .*no step of this run was finite.*learning rate.*decay_offset"):
        _train(tmp_path / "strict", task, 3, optimizer=_adafactor(float("nan")))
    with pytest.raises(UserError, match=r"^3 steps in a row \(the last: step 3\) had a non-finite .*learning rate"):
        _train(tmp_path / "skip", task, 50, optimizer=_adafactor(float("nan")), skip_nonfinite_steps=True,
               max_skipped_in_a_row=2)
