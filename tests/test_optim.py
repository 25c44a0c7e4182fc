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
