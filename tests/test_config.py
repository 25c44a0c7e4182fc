"""Presets: published parameter counts (via jax.eval_shape, nothing materialised) and config errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from text2text.config import PRESETS, T5Config, get_config
from text2text.errors import UserError
from text2text.network import Transformer


def count_params(config: T5Config) -> int:
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda t: Transformer(config).init(jax.random.PRNGKey(0), t, t, t), tokens)
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes['params']))


@pytest.mark.parametrize('name, expected', [
    ('t5_1_0_small', 60_506_624),   # HF t5-small
    ('t5_1_0_base', 222_903_552),   # HF t5-base
    ('t5_1_1_small', 76_961_152),   # HF google/t5-v1_1-small
    ('t5_1_1_base', 247_577_856),   # HF google/t5-v1_1-base
    ('mt5_small', 300_176_768),     # HF google/mt5-small
])
def test_preset_parameter_counts(name, expected):
    assert count_params(PRESETS[name]) == expected


def test_preset_families():
    assert set(PRESETS) == {'tiny'} | {f'{family}_{size}' for family in ('t5_1_0', 't5_1_1', 'mt5', 'flan_t5')
                                       for size in ('small', 'base', 'large', 'xl', 'xxl')}
    assert PRESETS['t5_1_0_large'].mlp_activations == ('relu',) and PRESETS['t5_1_0_large'].logits_via_embedding
    assert PRESETS['flan_t5_xl'] == PRESETS['t5_1_1_xl']
    assert PRESETS['mt5_xxl'].vocab_size == 250112 and PRESETS['mt5_xxl'].emb_dim == 4096


def test_get_config_overrides_and_frozen():
    config = get_config('t5_1_1_small', dropout_rate=0.1, dtype='bfloat16', mlp_activations=['gelu', 'linear'])
    assert (config.dropout_rate, config.dtype, config.mlp_activations) == (0.1, 'bfloat16', ('gelu', 'linear'))
    assert PRESETS['t5_1_1_small'].dropout_rate == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.emb_dim = 3


def test_unknown_preset_lists_close_names():
    with pytest.raises(UserError, match='t5_1_1_small'):
        get_config('t5_11_small')


def test_unknown_field_is_user_error():
    with pytest.raises(UserError, match='num_layers'):
        get_config('tiny', num_layers=3)
