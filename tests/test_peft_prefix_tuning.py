"""Prefix tuning: prefixes in every self-attention of both stacks, cached decoding, folding the MLP."""
import dataclasses

import jax
import numpy as np

from peft_fixtures import BASE, config, flat, model, peft_params, randomized, toy_batch, uncached_greedy
from text2text import peft
from text2text.peft import PrefixTuningConfig


def _logits_fn(mdl):
    return jax.jit(lambda p, b: mdl.module.apply({'params': p}, b['encoder_input_tokens'], b['decoder_input_tokens'],
                                                 enable_dropout=False))


def test_prefixes_sit_in_every_self_attention_and_change_the_encoder():
    mdl = model(config('prefix_tuning'))
    params = peft_params(mdl)
    names = {k.rsplit('/prefix_tuning/', 1)[0] for k in flat(params) if '/prefix_tuning/' in k}
    want = {f'encoder/layers_{i}/attention' for i in range(BASE.num_encoder_layers)}
    want |= {f'decoder/layers_{i}/self_attention' for i in range(BASE.num_decoder_layers)}
    assert names == want
    tokens = toy_batch()['encoder_input_tokens']
    encode = lambda m, p: m.module.apply({'params': p}, tokens, enable_dropout=False, method=m.module.encode)  # noqa
    with_prefix = np.asarray(encode(mdl, params))
    plain = model(config(None))
    without = np.asarray(encode(plain, peft.base_params(params, BASE)))
    assert with_prefix.shape == without.shape
    valid = tokens > 0
    assert np.abs(with_prefix - without)[valid].mean() > 1e-2


def test_cached_greedy_decoding_keeps_the_prefixes():
    mdl = model(config('prefix_tuning'))
    params = peft_params(mdl)
    tokens = toy_batch()['encoder_input_tokens']
    cached = np.asarray(mdl.predict_batch(params, {'encoder_input_tokens': tokens}, max_decode_length=6))
    np.testing.assert_array_equal(cached, uncached_greedy(mdl, params, tokens, 6))
    base_tokens = model(config(None)).predict_batch(peft.base_params(params, BASE), {'encoder_input_tokens': tokens},
                                                    max_decode_length=6)
    assert not np.array_equal(cached, np.asarray(base_tokens))  # the prefixes do change what is decoded


def test_reparameterisation_folds_into_plain_prefixes():
    reparam = peft.PeftConfig(prefix_tuning=PrefixTuningConfig(length=3, reparameterize=True, reparam_input_dim=8,
                                                               reparam_hidden_dim=16))
    mdl = model(config('prefix_tuning', peft=reparam))
    params = peft_params(mdl)
    params = randomized(params, peft.trainable_mask(params, reparam), scale=0.3)
    folded, folded_config = peft.fold_reparameterization(params, reparam)
    assert not folded_config.prefix_tuning.reparameterize
    prefix_leaves = {k.rsplit('/', 1)[1] for k in flat(folded) if '/prefix_tuning/' in k}
    assert prefix_leaves == {'key', 'value'}
    batch = toy_batch()
    want = _logits_fn(mdl)(params, batch)
    got = _logits_fn(model(dataclasses.replace(mdl.config, peft=folded_config)))(folded, batch)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(want).max() > 0.1
