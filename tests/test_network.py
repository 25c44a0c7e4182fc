"""Tiny-config checks of the T5 network: parameter tree and logical axes, masking, packing,
cached decoding, dtypes, remat and dropout."""
import dataclasses
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from text2text.config import get_config
from text2text.errors import UserError
from text2text.network import Transformer

LOGICAL_AXES = {'vocab', 'embed', 'joined_kv', 'mlp', 'heads', 'relpos_buckets'}
TINY = get_config('tiny')
TINY_V1 = get_config('tiny', mlp_activations=('relu',), logits_via_embedding=True)  # T5 1.0 style
LITE = get_config('tiny', num_encoder_layers=1, num_decoder_layers=1)  # fastest to compile
LITE_V1 = dataclasses.replace(TINY_V1, num_encoder_layers=1, num_decoder_layers=1)
DECODE = get_config('tiny', num_encoder_layers=1)  # two decoder layers: each keeps its own cache


def init(config, abstract=False):
    """Boxed variables of `config` (shapes only when abstract: no compilation, nothing materialised)."""
    tokens = jnp.ones((2, 8), jnp.int32), jnp.ones((2, 6), jnp.int32)
    fn = lambda *t: Transformer(config).init(jax.random.PRNGKey(0), *t, enable_dropout=False)  # noqa: E731
    return jax.eval_shape(fn, *tokens) if abstract else jax.jit(fn)(*tokens)


@functools.lru_cache(maxsize=None)
def params_for(config):
    """Random fp32 params of the right shapes (cheaper than compiling init; numerics tests need no T5 init)."""
    rng = np.random.RandomState(0)
    shapes = flax.core.meta.unbox(init(config, abstract=True))['params']
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0] if s.ndim == 2 else 1), jnp.float32),
        shapes)


@functools.partial(jax.jit, static_argnames=('config',))
def logits_fn(params, config, enc, dec_in, dec_tgt, enc_seg=None, dec_seg=None):
    return Transformer(config).apply({'params': params}, enc, dec_in, dec_tgt, enc_seg, dec_seg,
                                     enable_dropout=False)


@functools.partial(jax.jit, static_argnames=('config',))
def encode_fn(params, config, enc, enc_seg=None):
    model = Transformer(config)
    return model.apply({'params': params}, enc, enc_seg, enable_dropout=False, method=model.encode)


def random_batch(seed, batch=2, enc_len=8, dec_len=6):
    rng = np.random.RandomState(seed)
    enc = jnp.asarray(rng.randint(2, TINY.vocab_size, (batch, enc_len)), jnp.int32)
    tgt = jnp.asarray(rng.randint(2, TINY.vocab_size, (batch, dec_len)), jnp.int32)
    return enc, jnp.pad(tgt[:, :-1], ((0, 0), (1, 0))), tgt


@pytest.mark.parametrize('config', [TINY, TINY_V1])
def test_every_param_has_logical_axes_of_its_rank(config):
    variables = init(config, abstract=True)
    specs = nn.get_partition_spec(variables)['params']
    shapes = flax.core.meta.unbox(variables)['params']
    flat_specs = flax.traverse_util.flatten_dict(specs)
    flat_shapes = flax.traverse_util.flatten_dict(shapes)
    assert flat_specs.keys() == flat_shapes.keys() and len(flat_specs) > 40
    for path, spec in flat_specs.items():
        assert len(spec) == flat_shapes[path].ndim, path
        assert set(spec) <= LOGICAL_AXES, (path, spec)
    assert tuple(flat_specs[('decoder', 'layers_0', 'self_attention', 'out', 'kernel')]) == ('joined_kv', 'embed')
    assert tuple(flat_specs[('token_embedder', 'embedding')]) == ('vocab', 'embed')
    assert tuple(flat_specs[('encoder', 'relpos_bias', 'rel_embedding')]) == ('heads', 'relpos_buckets')


def test_param_names_and_shapes():
    params = flax.core.meta.unbox(init(TINY, abstract=True))['params']
    flat = {'/'.join(k): v.shape for k, v in flax.traverse_util.flatten_dict(params).items()}
    e, h, m, v = TINY.emb_dim, TINY.num_heads * TINY.head_dim, TINY.mlp_dim, TINY.vocab_size
    attention = {f'{p}/kernel': (e, h) for p in ('query', 'key', 'value')} | {'out/kernel': (h, e)}
    mlp = {'mlp/wi_0/kernel': (e, m), 'mlp/wi_1/kernel': (e, m), 'mlp/wo/kernel': (m, e)}
    encoder_layer = ({f'attention/{k}': s for k, s in attention.items()} | mlp
                     | {'pre_attention_layer_norm/scale': (e,), 'pre_mlp_layer_norm/scale': (e,)})
    decoder_layer = ({f'self_attention/{k}': s for k, s in attention.items()}
                     | {f'encoder_decoder_attention/{k}': s for k, s in attention.items()} | mlp
                     | {f'{n}/scale': (e,) for n in ('pre_self_attention_layer_norm',
                                                      'pre_cross_attention_layer_norm', 'pre_mlp_layer_norm')})
    prefix = 'encoder/layers_0/'
    assert {k[len(prefix):]: s for k, s in flat.items() if k.startswith(prefix)} == encoder_layer
    prefix = 'decoder/layers_1/'
    assert {k[len(prefix):]: s for k, s in flat.items() if k.startswith(prefix)} == decoder_layer
    assert flat['token_embedder/embedding'] == (v, e)
    assert flat['encoder/relpos_bias/rel_embedding'] == (TINY.num_heads, 32)
    assert flat['decoder/relpos_bias/rel_embedding'] == (TINY.num_heads, 32)
    assert flat['encoder/encoder_norm/scale'] == flat['decoder/decoder_norm/scale'] == (e,)
    assert flat['decoder/logits_dense/kernel'] == (e, v)
    assert len(flat) == 1 + 2 * len(encoder_layer) + 2 * len(decoder_layer) + 2 + 2 + 1

    flat_v1 = flax.traverse_util.flatten_dict(flax.core.meta.unbox(init(TINY_V1, abstract=True))['params'])
    assert ('decoder', 'logits_dense', 'kernel') not in flat_v1
    assert flat_v1[('encoder', 'layers_1', 'mlp', 'wi', 'kernel')].shape == (e, m)


def test_query_init_is_scaled_by_head_dim():
    params = flax.core.meta.unbox(init(LITE))['params']['encoder']['layers_0']['attention']
    ratio = np.std(params['query']['kernel']) / np.std(params['key']['kernel'])
    assert 0.1 < ratio < 0.5  # expected 1/sqrt(16) = 0.25


@pytest.mark.parametrize('config', [LITE, LITE_V1])
def test_padding_does_not_change_real_positions(config):
    enc, dec_in, tgt = random_batch(1, enc_len=5, dec_len=4)
    params = params_for(config)
    logits = logits_fn(params, config, enc, dec_in, tgt)
    pad = lambda x, n, fill: jnp.pad(x, ((0, 0), (0, n)), constant_values=fill)  # noqa: E731
    padded = logits_fn(params, config, pad(enc, 3, 0), pad(dec_in, 2, 7), pad(tgt, 2, 0))
    np.testing.assert_allclose(padded[:, :4], logits, atol=1e-5)
    assert not np.allclose(logits_fn(params, config, pad(enc, 3, 9), dec_in, tgt), logits, atol=1e-3)


def test_packed_segments_match_separate_runs():
    params = params_for(LITE)
    (a, b), (da, db), (ta, tb) = random_batch(2, batch=2, enc_len=5, dec_len=4)
    a, b, da, ta = a[None, :3], b[None], da[None, :3], ta[None, :3]
    packed_enc = jnp.concatenate([a, b], axis=1)
    enc_seg = jnp.asarray([[1] * 3 + [2] * 5], jnp.int32)
    np.testing.assert_allclose(encode_fn(params, LITE, packed_enc, enc_seg),
                               jnp.concatenate([encode_fn(params, LITE, a), encode_fn(params, LITE, b)], 1),
                               atol=1e-5)
    dec_seg = jnp.asarray([[1] * 3 + [2] * 4], jnp.int32)
    packed = logits_fn(params, LITE, packed_enc, jnp.concatenate([da, db[None]], 1),
                       jnp.concatenate([ta, tb[None]], 1), enc_seg, dec_seg)
    separate = [logits_fn(params, LITE, a, da, ta), logits_fn(params, LITE, b, db[None], tb[None])]
    np.testing.assert_allclose(packed, jnp.concatenate(separate, 1), atol=1e-5)


@pytest.mark.parametrize('config', [DECODE, LITE_V1])
def test_cached_decoding_matches_teacher_forcing(config):
    model, params = Transformer(config), params_for(config)
    enc, dec_in, tgt = random_batch(3, enc_len=7, dec_len=6)
    enc = enc.at[1, 4:].set(0)
    expected = logits_fn(params, config, enc, dec_in, tgt)
    encoded = encode_fn(params, config, enc)

    @jax.jit
    def step(cache, token):
        return model.apply({'params': params, 'cache': cache}, encoded, enc, token, enable_dropout=False,
                           decode=True, mutable=['cache'], method=model.decode)

    _, variables = model.apply({'params': params}, encoded, enc, jnp.zeros_like(dec_in), enable_dropout=False,
                               decode=True, mutable=['cache'], method=model.decode)
    cache, steps = variables['cache'], []
    # the self-attention cache is [b, heads, head_dim, max length] too, filled one column per step
    assert cache['decoder']['layers_0']['self_attention']['cached_key'].shape == (2, 2, 16, 6)
    # the creation call fills the encoder-decoder K/V, as [b, heads, head_dim, encoder length], and no index
    cross = cache['decoder']['layers_0']['encoder_decoder_attention']
    assert set(cross) == {'cached_key', 'cached_value'}
    kernel = params['decoder']['layers_0']['encoder_decoder_attention']['key']['kernel']
    np.testing.assert_allclose(cross['cached_key'], (encoded @ kernel).reshape(2, 7, 2, 16).transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-6)
    for i in range(dec_in.shape[1]):
        logits, variables = step(cache, dec_in[:, i:i + 1])
        cache = variables['cache']
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), expected, atol=1e-5)
    for name in cross:  # the steps only read them
        np.testing.assert_array_equal(cache['decoder']['layers_0']['encoder_decoder_attention'][name], cross[name])
    last = f'layers_{config.num_decoder_layers - 1}'
    assert int(cache['decoder'][last]['self_attention']['cache_index']) == 6


def test_bfloat16_activations_return_fp32_logits():
    config = dataclasses.replace(LITE, dtype='bfloat16')
    enc, dec_in, tgt = random_batch(4)
    logits = logits_fn(params_for(LITE), config, enc, dec_in, tgt)
    assert logits.dtype == jnp.float32
    assert encode_fn(params_for(LITE), config, enc).dtype == jnp.bfloat16
    reference = logits_fn(params_for(LITE), LITE, enc, dec_in, tgt)
    assert np.abs(logits - reference).max() < 0.05 * np.abs(reference).max()


def test_one_hot_embedding_matches_gather():
    config = dataclasses.replace(LITE, one_hot_embedding=True)
    enc, dec_in, tgt = random_batch(5)
    np.testing.assert_allclose(logits_fn(params_for(LITE), config, enc, dec_in, tgt),
                               logits_fn(params_for(LITE), LITE, enc, dec_in, tgt), atol=1e-5)


def test_remat_keeps_outputs_and_gradients():
    enc, dec_in, tgt = random_batch(6)
    params = params_for(LITE)

    def loss(p, config):
        return Transformer(config).apply({'params': p}, enc, dec_in, tgt, enable_dropout=False).sum()

    remat = dataclasses.replace(LITE, remat_policy='minimal')
    grads = jax.jit(jax.grad(loss), static_argnums=1)
    for a, b in zip(jax.tree_util.tree_leaves(grads(params, LITE)), jax.tree_util.tree_leaves(grads(params, remat))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('override', [{'remat_policy': 'everything'}])
def test_unsupported_options_are_user_errors(override):
    with pytest.raises(UserError, match=next(iter(override))):
        init(dataclasses.replace(TINY, **override), abstract=True)


def test_dropout_only_when_enabled():
    config = dataclasses.replace(LITE, dropout_rate=0.3)
    model, params = Transformer(config), params_for(LITE)
    enc, dec_in, tgt = random_batch(7)
    run = jax.jit(lambda seed, enable: model.apply({'params': params}, enc, dec_in, tgt, enable_dropout=enable,
                                                   rngs={'dropout': jax.random.PRNGKey(seed)}),
                  static_argnums=1)
    np.testing.assert_allclose(run(0, False), logits_fn(params, LITE, enc, dec_in, tgt), atol=1e-5)
    assert not np.allclose(run(0, True), run(1, True))
