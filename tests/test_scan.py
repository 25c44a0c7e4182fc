"""Tests for text2text.scan: scanned layers (+ remat) match the unscanned model; param tree conversions."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from text2text import pretrained, scan
from text2text.config import get_config
from text2text.convert import hf
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel

TINY = get_config('tiny', num_encoder_layers=3, num_decoder_layers=2)
SHAPES = {'inputs': (2, 12), 'targets': (2, 6)}


def _batch():
    rng = np.random.default_rng(0)
    targets = rng.integers(2, TINY.vocab_size, (2, 6)).astype(np.int32)
    targets[1, 4:] = 0
    inputs = rng.integers(2, TINY.vocab_size, (2, 12)).astype(np.int32)
    inputs[0, 9:] = 0
    return {'encoder_input_tokens': inputs, 'decoder_target_tokens': targets,
            'decoder_input_tokens': np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)}


@pytest.fixture(scope='module')
def unscanned():
    model = EncoderDecoderModel(TINY)
    params = meta.unbox(jax.jit(lambda rng: model.init_variables(rng, SHAPES)['params'])(jax.random.key(0)))
    loss, grads = _loss_and_grads(model, params)
    return params, loss, grads


def _loss_and_grads(model, params):
    grad_fn = jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, _batch(), None)[0]))
    return grad_fn(params)


@pytest.mark.parametrize('remat_policy', ['full', 'dots_saveable'])
def test_scanned_loss_and_gradients_match_unscanned(unscanned, remat_policy):
    params, loss, grads = unscanned
    config = dataclasses.replace(TINY, scan_layers=True, remat_policy=remat_policy)
    scanned_loss, scanned_grads = _loss_and_grads(EncoderDecoderModel(config), scan.scan_params(params, config))
    np.testing.assert_allclose(scanned_loss, loss, rtol=1e-6)
    back = scan.unscan_params(scanned_grads, config)
    assert jax.tree.structure(back) == jax.tree.structure(grads)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_scanned_init_tree_has_leading_layers_axis(unscanned):
    params = unscanned[0]
    config = dataclasses.replace(TINY, scan_layers=True)
    boxed = jax.eval_shape(lambda: EncoderDecoderModel(config).init_variables(jax.random.key(1), SHAPES)['params'])
    converted = scan.scan_params(params, config)
    assert jax.tree.structure(meta.unbox(boxed)) == jax.tree.structure(converted)
    assert jax.tree.map(jnp.shape, meta.unbox(boxed)) == jax.tree.map(jnp.shape, converted)
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs['encoder']['layers']['attention']['query']['kernel']) == ('layers', 'embed', 'joined_kv')
    assert tuple(specs['decoder']['layers']['mlp']['wo']['kernel']) == ('layers', 'mlp', 'embed')
    assert converted['encoder']['layers']['mlp']['wi_0']['kernel'].shape == (3, TINY.emb_dim, TINY.mlp_dim)
    assert tuple(specs['decoder']['relpos_bias']['rel_embedding']) == ('heads', 'relpos_buckets')  # shared, not scanned


def test_conversion_round_trip_is_exact(unscanned):
    params = unscanned[0]
    scanned = scan.scan_params(params, TINY)
    np.testing.assert_array_equal(scanned['decoder']['layers']['self_attention']['key']['kernel'][1],
                                  params['decoder']['layers_1']['self_attention']['key']['kernel'])
    back = scan.unscan_params(scanned, TINY)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert scan.match_layout(scanned, TINY)['encoder'].keys() == params['encoder'].keys()
    numpy_scanned = scan.scan_params(jax.tree.map(np.asarray, params), TINY)
    assert isinstance(numpy_scanned['encoder']['layers']['mlp']['wo']['kernel'], np.ndarray)


def test_conversion_errors_are_user_errors(unscanned):
    params = unscanned[0]
    with pytest.raises(UserError, match='already scanned'):
        scan.scan_params(scan.scan_params(params, TINY), TINY)
    with pytest.raises(UserError, match='not scanned'):
        scan.unscan_params(params, TINY)
    with pytest.raises(UserError, match='layers_3 missing'):
        scan.scan_params(params, dataclasses.replace(TINY, num_encoder_layers=4))
    with pytest.raises(UserError, match='has 3 layers but T5Config.num_encoder_layers=2'):
        scan.unscan_params(scan.scan_params(params, TINY), dataclasses.replace(TINY, num_encoder_layers=2))


def test_scanned_greedy_decoding_matches(unscanned):
    params = unscanned[0]
    config = dataclasses.replace(TINY, scan_layers=True, remat_policy='full')
    batch = _batch()
    decode = jax.jit(lambda model, p: model.predict_batch(p, batch), static_argnums=0)
    expected = decode(EncoderDecoderModel(TINY), params)
    got = decode(EncoderDecoderModel(config), scan.scan_params(params, config))
    np.testing.assert_array_equal(got, expected)


def test_hf_checkpoint_loads_into_scanned_model(unscanned, tmp_path):
    params = unscanned[0]
    hf.save_hf_checkpoint(TINY, params, str(tmp_path / 'hf'))
    config = dataclasses.replace(TINY, scan_layers=True)
    current = scan.scan_params(jax.tree.map(jnp.zeros_like, params), config)
    loaded = pretrained.load_params(str(tmp_path / 'hf'), config, current)
    expected = scan.scan_params(params, config)
    assert jax.tree.structure(loaded) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
