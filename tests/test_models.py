"""Tiny-model checks of EncoderDecoderModel: loss/gradients, scoring, and cached decoding vs. full re-runs."""
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from text2text import decoding, losses
from text2text.config import get_config
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel

CONFIG = get_config('tiny')
MODEL = EncoderDecoderModel(CONFIG)
ENC_LEN, DEC_LEN = 8, 6


@functools.lru_cache(maxsize=None)
def params():
    init = jax.jit(lambda rng: MODEL.init_variables(rng, {'inputs': (1, ENC_LEN), 'targets': (1, DEC_LEN)}))
    return flax.core.meta.unbox(init(jax.random.PRNGKey(0)))['params']


def padded_batch(seed=0):
    """Three rows with encoder lengths 8, 5 and 3 (0-padded) and targets ending in EOS."""
    rng = np.random.RandomState(seed)
    enc = rng.randint(2, CONFIG.vocab_size, (3, ENC_LEN))
    for row, length in enumerate((8, 5, 3)):
        enc[row, length:] = 0
    tgt = rng.randint(2, CONFIG.vocab_size, (3, DEC_LEN))
    tgt[0, 3:] = [1, 0, 0]
    tgt[1, -1] = 1
    tgt[2, 1:] = [1, 0, 0, 0, 0]
    dec_in = np.pad(tgt[:, :-1], ((0, 0), (1, 0)))
    batch = {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in, 'decoder_target_tokens': tgt,
             'decoder_loss_weights': (tgt > 0).astype(np.float32)}
    return {k: jnp.asarray(v) for k, v in batch.items()}


@jax.jit
def full_logits(p, encoder_tokens, decoder_inputs):
    """Teacher-forced logits with only the causal mask (no cache)."""
    return MODEL.module.apply({'params': p}, encoder_tokens, decoder_inputs, enable_dropout=False)


def no_cache_greedy(p, encoder_tokens, length):
    """Greedy decoding by re-running the whole decoder each step and taking the last position's argmax."""
    batch = encoder_tokens.shape[0]
    inputs = np.zeros((batch, length), np.int32)
    out = np.zeros((batch, length), np.int32)
    ended = np.zeros(batch, bool)
    for step in range(length):
        logits = np.asarray(full_logits(p, encoder_tokens, jnp.asarray(inputs)))
        token = np.where(ended, 0, logits[:, step].argmax(-1))
        out[:, step] = token
        ended |= token == decoding.EOS_ID
        if step + 1 < length:
            inputs[:, step + 1] = token
    return out


def sequence_scores(p, encoder_tokens, sequences, alpha):
    """Length-penalised log-prob of each [b, L] sequence (up to and including EOS) from full re-runs."""
    seqs = np.asarray(sequences)
    is_eos = seqs == decoding.EOS_ID
    lengths = np.where(is_eos.any(-1), is_eos.argmax(-1) + 1, seqs.shape[1])
    weights = (np.arange(seqs.shape[1])[None] < lengths[:, None]).astype(np.float32)
    inputs = np.pad(seqs[:, :-1], ((0, 0), (1, 0)))
    logits = full_logits(p, encoder_tokens, jnp.asarray(inputs))
    ll = np.asarray(losses.sequence_log_likelihood(logits, jnp.asarray(seqs), jnp.asarray(weights)))
    return ll / ((5.0 + lengths) / 6.0) ** alpha


def with_eos_swapped_in(p, encoder_tokens):
    """(params, row): EOS and the 3rd greedy token of `row` swap logits, so greedy stops at step 2 there."""
    greedy = no_cache_greedy(p, encoder_tokens, 3)
    row = next(r for r in range(len(greedy))
               if decoding.EOS_ID not in greedy[r] and greedy[r, 2] not in greedy[r, :2])
    token = int(greedy[row, 2])
    kernel = p['decoder']['logits_dense']['kernel']
    swapped = kernel.at[:, [token, decoding.EOS_ID]].set(kernel[:, [decoding.EOS_ID, token]])
    return {**p, 'decoder': {**p['decoder'], 'logits_dense': {'kernel': swapped}}}, row


@functools.lru_cache(maxsize=None)
def _jit_predict(items):
    return jax.jit(lambda p, batch, rng: MODEL.predict_batch_with_scores(p, batch, rng=rng, **dict(items)))


def jit_predict(**kwargs):
    """Jitted predict_batch_with_scores(p, batch, rng) for fixed options (one compile per option set)."""
    return _jit_predict(tuple(sorted(kwargs.items())))


def test_init_variables_is_boxed_and_accepts_feature_names():
    shapes = {'encoder_input_tokens': (2, 4), 'decoder_input_tokens': (2, 3)}
    variables = jax.eval_shape(lambda rng: MODEL.init_variables(rng, shapes), jax.random.PRNGKey(1))
    specs = nn.get_partition_spec(variables)['params']
    assert specs['token_embedder']['embedding'] == jax.sharding.PartitionSpec('vocab', 'embed')
    unboxed = flax.core.meta.unbox(variables)['params']
    assert unboxed['decoder']['logits_dense']['kernel'].shape == (CONFIG.emb_dim, CONFIG.vocab_size)
    with pytest.raises(UserError, match='batch_shapes'):
        MODEL.init_variables(jax.random.PRNGKey(1), {'inputs': (2, 4)})


def test_loss_matches_losses_module_and_gradients_flow():
    batch = padded_batch()
    (loss, metrics), grads = jax.jit(jax.value_and_grad(MODEL.loss_fn, has_aux=True))(params(), batch, None)
    logits = full_logits(params(), batch['encoder_input_tokens'], batch['decoder_input_tokens'])
    expected, expected_z, _ = losses.cross_entropy_with_z_loss(logits, batch['decoder_target_tokens'],
                                                               batch['decoder_loss_weights'])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics['z_loss'], expected_z, rtol=1e-5)
    assert float(metrics['weight_sum']) == float(batch['decoder_loss_weights'].sum())
    assert 0.0 <= float(metrics['accuracy']) <= 1.0
    np.testing.assert_allclose(metrics['loss_sum'], loss, rtol=1e-6)
    for path, grad in flax.traverse_util.flatten_dict(grads).items():
        assert np.all(np.isfinite(grad)), path
        assert float(jnp.abs(grad).sum()) > 0.0, path


def test_dropout_rng_and_normalized_loss():
    batch = padded_batch()
    dropout_model = EncoderDecoderModel(get_config('tiny', dropout_rate=0.3),
                                        loss_normalizing_factor='num_real_target_tokens')
    loss_fn = jax.jit(dropout_model.loss_fn)
    loss_a, metrics_a = loss_fn(params(), batch, jax.random.PRNGKey(3))
    loss_b, _ = loss_fn(params(), batch, jax.random.PRNGKey(4))
    assert float(loss_a) != float(loss_b)
    np.testing.assert_allclose(loss_a * metrics_a['weight_sum'], metrics_a['loss_sum'], rtol=1e-5)


def test_score_batch_is_teacher_forced_log_likelihood():
    batch = padded_batch(1)
    scores = jax.jit(MODEL.score_batch)(params(), batch)
    logits = full_logits(params(), batch['encoder_input_tokens'], batch['decoder_input_tokens'])
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    targets, weights = np.asarray(batch['decoder_target_tokens']), np.asarray(batch['decoder_loss_weights'])
    expected = [sum(log_probs[b, t, targets[b, t]] * weights[b, t] for t in range(DEC_LEN)) for b in range(3)]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_cached_greedy_equals_full_rerun_on_padded_batch():
    batch = padded_batch(2)
    p, row = with_eos_swapped_in(params(), batch['encoder_input_tokens'])
    predict = jit_predict(method='greedy')
    tokens, scores = predict(p, batch, jax.random.PRNGKey(0))
    expected = no_cache_greedy(p, batch['encoder_input_tokens'], DEC_LEN)
    np.testing.assert_array_equal(tokens, expected)
    assert expected[row, 2] == decoding.EOS_ID and np.all(expected[row, 3:] == 0)
    np.testing.assert_allclose(scores, sequence_scores(p, batch['encoder_input_tokens'], expected, 0.0), rtol=1e-4)
    alone = {k: v[2:, :3] if k == 'encoder_input_tokens' else v[2:] for k, v in batch.items()}
    alone_tokens, _ = predict(p, alone, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(alone_tokens[0], expected[2])


def test_top_k_one_sampling_equals_greedy():
    batch = padded_batch(3)
    greedy, _ = jit_predict(method='greedy')(params(), batch, jax.random.PRNGKey(0))
    sampled, _ = jit_predict(method='sample', top_k=1)(params(), batch, jax.random.PRNGKey(5))
    np.testing.assert_array_equal(sampled, greedy)


def test_beam_search_scores_match_full_rerun_and_are_sorted():
    batch = padded_batch(4)
    p = params()
    tokens, scores = jit_predict(method='beam', num_beams=4, alpha=0.6, return_all_beams=True)(
        p, batch, jax.random.PRNGKey(0))
    assert tokens.shape == (3, 4, DEC_LEN)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)
    for beam in range(4):
        expected = sequence_scores(p, batch['encoder_input_tokens'], tokens[:, beam], 0.6)
        np.testing.assert_allclose(scores[:, beam], expected, rtol=1e-4)


def test_beam_search_finds_greedy_when_greedy_is_optimal():
    batch = padded_batch(5)
    p, _ = with_eos_swapped_in(params(), batch['encoder_input_tokens'])
    kernel = p['decoder']['logits_dense']['kernel']
    peaked = {**p, 'decoder': {**p['decoder'], 'logits_dense': {'kernel': kernel * 30.0}}}
    greedy_tokens, greedy_scores = jit_predict(method='greedy')(peaked, batch, jax.random.PRNGKey(0))
    for num_beams in (1, 4):
        tokens, scores = jit_predict(method='beam', num_beams=num_beams, alpha=0.0)(
            peaked, batch, jax.random.PRNGKey(0))
        np.testing.assert_array_equal(tokens, greedy_tokens)
        np.testing.assert_allclose(scores, greedy_scores, rtol=1e-4, atol=1e-5)


def test_user_errors():
    batch = padded_batch()
    with pytest.raises(UserError, match='method'):
        MODEL.predict_batch(params(), batch, method='nucleus')
    with pytest.raises(UserError, match='max_decode_length'):
        MODEL.predict_batch(params(), {'encoder_input_tokens': batch['encoder_input_tokens']})
    with pytest.raises(UserError, match='rng'):
        MODEL.predict_batch(params(), batch, method='sample')
    with pytest.raises(UserError, match='loss_normalizing_factor'):
        EncoderDecoderModel(CONFIG, loss_normalizing_factor='PER_TOKEN')


def test_train_step_traced_for_a_gpu_has_no_loops_and_scatters_only_into_the_embedding(monkeypatch):
    """Off XLA:CPU the step keeps to single kernels: no while loop (the optimizer's CPU reductions) and no scatter
    into the relative-position tables (a gather's gradient); the token embedding's gather gradient remains."""
    from text2text import backend, optim
    from text2text.train_state import TrainState, make_train_step
    monkeypatch.setattr(backend, 'on_cpu', lambda: False)
    tx = optim.adafactor(learning_rate=optim.constant_schedule(1e-3))
    state = TrainState.create(params(), tx)
    text = jax.jit(make_train_step(MODEL.loss_fn, tx)).lower(state, padded_batch(), jax.random.PRNGKey(0)).as_text()
    scatters = [line for line in text.splitlines() if 'stablehlo.scatter' in line]
    assert 'stablehlo.while' not in text
    # rows of axis 0 ([vocab, embed] embedding rows); the bias tables' scatters insert along axis 1 (buckets)
    assert scatters and all('inserted_window_dims = [0]' in line for line in scatters)


def _loss_and_grads(config, batch, rngs=None):
    model = EncoderDecoderModel(config)
    return jax.jit(jax.value_and_grad(lambda p: model.loss_fn(p, batch, rngs)[0]))(params())


@pytest.mark.parametrize('dtype, tolerance', [('float32', 1e-5), ('bfloat16', 2e-2)])
def test_fused_attention_kernel_matches_einsum(dtype, tolerance):
    """attention_kernel='xla' (jax.nn.dot_product_attention) gives einsum's loss and gradients, padding and causal
    masks and relative position biases included."""
    batch = padded_batch()
    (loss, grads), (fused_loss, fused_grads) = (_loss_and_grads(get_config('tiny', dtype=dtype, attention_kernel=k),
                                                                batch) for k in ('einsum', 'xla'))
    np.testing.assert_allclose(fused_loss, loss, rtol=tolerance)
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(fused_grads), jax.tree.leaves(fused_grads),
                          jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * float(jnp.abs(b).max()),
                                   err_msg=jax.tree_util.keystr(path))


def test_fused_attention_kernel_leaves_dropout_and_decoding_to_einsum(monkeypatch):
    calls = []
    fused = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, 'dot_product_attention',
                        lambda *args, **kwargs: calls.append(1) or fused(*args, **kwargs))
    batch, rngs = padded_batch(), jax.random.PRNGKey(3)
    dropout = [_loss_and_grads(get_config('tiny', attention_kernel=kernel, dropout_rate=0.3), batch, rngs)[0]
               for kernel in ('einsum', 'xla')]
    assert float(dropout[0]) == float(dropout[1]) and not calls
    model = EncoderDecoderModel(get_config('tiny', attention_kernel='xla'))
    tokens = model.predict_batch(params(), {'encoder_input_tokens': batch['encoder_input_tokens']},
                                 method='greedy', max_decode_length=DEC_LEN)
    np.testing.assert_array_equal(tokens, MODEL.predict_batch(params(), {'encoder_input_tokens':
                                                                         batch['encoder_input_tokens']},
                                                              method='greedy', max_decode_length=DEC_LEN))
    assert calls  # the encoder used the fused kernel; the decoder, run with decode=True, did not


def test_a_dtype_that_is_not_floating_point_is_one_user_error():
    for dtype in ('float16x', 'int32'):
        with pytest.raises(UserError, match=f"T5Config.dtype='{dtype}' is not a floating-point dtype"):
            _loss_and_grads(get_config('tiny', dtype=dtype), padded_batch())


def test_cudnn_attention_kernel_takes_bf16_biases_and_needs_a_gpu(monkeypatch):
    with pytest.raises(UserError, match="attention_kernel='cudnn' needs an NVIDIA GPU"):
        _loss_and_grads(get_config('tiny', attention_kernel='cudnn'), padded_batch())
    with pytest.raises(UserError, match="attention_kernel='flash' is not supported"):
        _loss_and_grads(get_config('tiny', attention_kernel='flash'), padded_batch())
    seen = []
    fused = jax.nn.dot_product_attention

    def xla_in_place_of_cudnn(query, key, value, bias, *, scale, implementation):
        seen.append((implementation, bias.dtype, scale))
        return fused(query, key, value, bias, scale=scale, implementation='xla')

    monkeypatch.setattr(jax.nn, 'dot_product_attention', xla_in_place_of_cudnn)
    monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
    loss, _ = _loss_and_grads(get_config('tiny', dtype='bfloat16', attention_kernel='cudnn'), padded_batch())
    assert np.isfinite(float(loss))
    assert seen and all(entry == ('cudnn', jnp.bfloat16, 1.0) for entry in seen)
