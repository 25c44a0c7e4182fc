"""Tests for text2text.optim: schedules, Adafactor state shapes, frozen parameters, gin configuration."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from text2text import optim
from text2text.errors import UserError


def _params():
    return {'encoder': {'big': jnp.ones((256, 256)), 'small': jnp.ones((256, 64)), 'scale': jnp.ones((256,))},
            'frozen': {'kernel': jnp.ones((256, 256))}}


def test_rsqrt_schedule_values():
    schedule = optim.rsqrt_schedule(base_learning_rate=1.0, warmup_steps=10_000)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 5_000, 10_000, 40_000, 1_000_000)],
                               [0.01, 0.01, 0.01, 0.005, 0.001], rtol=1e-6)
    assert float(optim.rsqrt_schedule(base_learning_rate=2.0, warmup_steps=100)(400)) == pytest.approx(0.1)


def test_constant_schedule_and_linear_warmup():
    assert float(optim.constant_schedule(1e-3)(12345)) == pytest.approx(1e-3)
    warm = optim.constant_schedule(1e-3, warmup_steps=4)
    np.testing.assert_allclose([float(warm(s)) for s in range(6)], [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_adafactor_factors_only_dims_of_at_least_128():
    factored = optim.adafactor().init(_params())[0]
    assert factored.v_row['encoder']['big'].shape == (256,)
    assert factored.v_col['encoder']['big'].shape == (256,)
    assert factored.v['encoder']['big'].shape == (1,)
    assert factored.v['encoder']['small'].shape == (256, 64)  # 64 < 128: full second moment
    assert factored.v['encoder']['scale'].shape == (256,)
    assert optim.adafactor(min_dim_size_to_factor=32).init(_params())[0].v['encoder']['small'].shape == (1,)


def test_adafactor_has_no_momentum_and_clips_updates():
    params = {'w': jnp.full((256, 256), 2.0)}
    tx = optim.adafactor(learning_rate=0.1)
    state = tx.init(params)
    assert sum(x.size for x in jax.tree.leaves(state)) == 1 + 256 + 256 + 1  # count, v_row, v_col, v
    updates, _ = tx.update({'w': jnp.full((256, 256), 1e6)}, state, params)
    # first step: normalised update of rms 1 (clipped at 1.0) x lr 0.1 x param rms 2.0
    np.testing.assert_allclose(np.asarray(updates['w']), -0.2, rtol=1e-4)


def test_frozen_params_get_no_state_and_no_update():
    params = _params()
    mask = optim.trainable_mask(params, '^encoder/')
    assert mask == {'encoder': {'big': True, 'small': True, 'scale': True}, 'frozen': {'kernel': False}}
    tx = optim.masked_optimizer(optim.adafactor(), mask)
    state = tx.init(params)
    full = sum(x.size for x in jax.tree.leaves(optim.adafactor().init(params)))
    masked = sum(x.size for x in jax.tree.leaves(state))
    assert full - masked == 256 + 256 + 1  # the frozen kernel's v_row, v_col and (1,) v placeholder
    assert all(x.shape != (256, 256) for x in jax.tree.leaves(state))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert float(jnp.abs(updates['frozen']['kernel']).max()) == 0.0
    assert float(jnp.abs(updates['encoder']['big']).max()) > 0.0
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new['frozen']['kernel'], params['frozen']['kernel'])


def test_frozen_adamw_moments_are_dropped():
    params = _params()
    mask = optim.trainable_mask(params, lambda path, leaf: leaf.ndim == 1)
    state = optim.masked_optimizer(optim.adamw(), mask).init(params)
    assert sorted(x.shape for x in jax.tree.leaves(state) if x.ndim) == [(256,), (256,)]


def test_trainable_mask_errors():
    with pytest.raises(UserError, match='matches no parameter'):
        optim.trainable_mask(_params(), '^decoder/')
    with pytest.raises(UserError, match='invalid'):
        optim.trainable_mask(_params(), '(')
    assert all(jax.tree.leaves(optim.trainable_mask(_params())))


def test_gin_configures_optimizer_and_schedule():
    gin.clear_config()
    try:
        gin.parse_config(['rsqrt_schedule.warmup_steps = 100', 'adafactor.min_dim_size_to_factor = 32'])
        assert float(optim.rsqrt_schedule()(0)) == pytest.approx(0.1)
        assert optim.adafactor().init(_params())[0].v['encoder']['small'].shape == (1,)
    finally:
        gin.clear_config()


def _adafactor_updates(tx, params, grads, steps, state=None):
    state = tx.init(params) if state is None else state
    out = []
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out


def test_adafactor_decay_offset_is_finite_from_a_fresh_state():
    """The issue's case: decay_offset=1, params ones(3), grads ones(3), fresh state (optax alone gives NaN)."""
    params, grads = jnp.ones(3), jnp.ones(3)
    first = _adafactor_updates(optim.adafactor(decay_offset=1), params, grads, 1)[0]
    assert np.isfinite(first).all()
    np.testing.assert_allclose(first, _adafactor_updates(optim.adafactor(), params, grads, 1)[0])
    # a factored matrix and an offset larger than the run so far: every update is finite
    big = {'w': jnp.full((256, 130), 0.5)}
    tx = optim.adafactor(learning_rate=0.01, decay_offset=50)
    steps = _adafactor_updates(tx, big, {'w': jnp.ones((256, 130))}, 5)
    assert all(np.isfinite(p['w']).all() for p in steps)


@pytest.mark.parametrize('params', [jnp.ones(3), {'w': jnp.linspace(0.1, 1.0, 256 * 130).reshape(256, 130)}])
def test_adafactor_decay_offset_restarts_the_decay_of_a_continued_count(params):
    """T5X fine-tuning: the pre-trained count continues (1000) and decay_offset=1000 makes the second-moment decay
    start over, so the updates equal a fresh optimizer's."""
    grads = jax.tree.map(lambda p: jnp.cos(p * 7.0), params)
    tx = optim.adafactor(learning_rate=optim.constant_schedule(0.01), decay_offset=1000)
    continued = _adafactor_updates(tx, params, grads, 3, optim.with_update_count(tx.init(params), 1000))
    fresh = _adafactor_updates(optim.adafactor(learning_rate=optim.constant_schedule(0.01)), params, grads, 3)
    for a, b in zip(jax.tree.leaves(continued), jax.tree.leaves(fresh)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    leaves = jax.tree_util.tree_flatten_with_path(optim.with_update_count(tx.init(params), 7))[0]
    counts = [leaf for path, leaf in leaves if getattr(path[-1], 'name', None) == 'count']
    assert [int(c) for c in counts] == [7, 7]  # Adafactor's own count and the learning-rate schedule's


def test_adafactor_is_optax_adafactor_with_the_same_state_tree():
    params = _params()
    ours = optim.adafactor(learning_rate=0.1, momentum=0.9)
    reference = optax.adafactor(learning_rate=0.1, momentum=0.9, min_dim_size_to_factor=128, decay_rate=0.8, eps=1e-30)
    assert jax.tree.structure(ours.init(params)) == jax.tree.structure(reference.init(params))
    grads = jax.tree.map(lambda p: p * 0.3, params)
    for a, b in zip(jax.tree.leaves(_adafactor_updates(ours, params, grads, 2)),
                    jax.tree.leaves(_adafactor_updates(reference, params, grads, 2))):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(UserError, match='decay_offset must be >= 0'):
        optim.adafactor(decay_offset=-1)
