"""Tests for text2text.decoding with a toy second-order Markov model held in lookup tables."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from text2text import decoding


def make_model(batch, length, vocab, seed=0, scale=2.0):
    """Returns (tokens_to_logits, initial cache, numpy log-prob function) for random per-row tables.

    logits(row, pos, prev, prev2) = A[row, pos, prev] + B[row, pos, prev2]; `prev2` lives in the cache, so a wrong
    beam gather of the cache changes the results.
    """
    rng = np.random.default_rng(seed)
    a = (scale * rng.normal(size=(batch, length, vocab, vocab))).astype(np.float32)
    b = (scale * rng.normal(size=(batch, length, vocab, vocab))).astype(np.float32)

    def tokens_to_logits(ids, cache):
        prev = ids[:, 0]
        row, pos = cache['row'], cache['pos']
        logits = jnp.asarray(a)[row, pos, prev] + jnp.asarray(b)[row, pos, cache['prev']]
        new_cache = {'row': cache['row'], 'pos': cache['pos'] + 1, 'prev': prev, 'calls': cache['calls'] + 1}
        return logits, new_cache

    cache = {'row': jnp.arange(batch), 'pos': jnp.zeros(batch, jnp.int32), 'prev': jnp.zeros(batch, jnp.int32),
             'calls': jnp.int32(0)}

    def step_log_probs(row, pos, prev, prev2):
        logits = a[row, pos, prev] + b[row, pos, prev2]
        logits = logits.astype(np.float64)
        return logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()

    return tokens_to_logits, cache, step_log_probs


def sequence_log_prob(step_log_probs, row, seq):
    """Log-prob of seq (up to and including the first EOS) under the toy model."""
    total, prev, prev2 = 0.0, 0, 0
    for pos, token in enumerate(seq):
        total += step_log_probs(row, pos, prev, prev2)[token]
        if token == decoding.EOS_ID:
            break
        prev2, prev = prev, token
    return total


def numpy_greedy(step_log_probs, row, length):
    seq, prev, prev2 = [], 0, 0
    for pos in range(length):
        token = int(np.argmax(step_log_probs(row, pos, prev, prev2)))
        seq.append(token)
        if token == decoding.EOS_ID:
            break
        prev2, prev = prev, token
    return seq + [0] * (length - len(seq))


def all_hypotheses(vocab, length):
    """Every distinct output: truncated after the first EOS and padded with 0."""
    seen = set()
    for seq in itertools.product(range(vocab), repeat=length):
        seq = list(seq)
        if decoding.EOS_ID in seq:
            end = seq.index(decoding.EOS_ID) + 1
            seq = seq[:end] + [0] * (length - end)
        seen.add(tuple(seq))
    return sorted(seen)


def hypothesis_length(seq):
    return seq.index(decoding.EOS_ID) + 1 if decoding.EOS_ID in seq else len(seq)


def test_greedy_matches_argmax_loop_and_pads_after_eos():
    batch, length, vocab = 4, 7, 5
    fn, cache, step = make_model(batch, length, vocab, seed=3)
    greedy = jax.jit(functools.partial(decoding.greedy_decode, fn, batch_size=batch, max_decode_length=length))
    tokens, scores = greedy(cache)
    assert tokens.shape == (batch, length) and tokens.dtype == jnp.int32
    saw_eos_before_end = False
    for row in range(batch):
        expected = numpy_greedy(step, row, length)
        np.testing.assert_array_equal(tokens[row], expected)
        np.testing.assert_allclose(scores[row], sequence_log_prob(step, row, expected), rtol=1e-5)
        if decoding.EOS_ID in expected[:-1]:
            saw_eos_before_end = True
            end = expected.index(decoding.EOS_ID)
            assert np.all(np.asarray(tokens[row, end + 1:]) == 0)
    assert saw_eos_before_end


def test_top_k_one_and_tiny_top_p_equal_greedy():
    batch, length, vocab = 3, 6, 7
    fn, cache, _ = make_model(batch, length, vocab, seed=1)
    greedy_tokens, greedy_scores = decoding.greedy_decode(fn, cache, batch, length)
    rng = jax.random.PRNGKey(42)
    for kwargs in ({'top_k': 1}, {'top_p': 1e-6}, {'temperature': 0.0}):
        tokens, scores = decoding.temperature_sample(fn, cache, batch, length, rng=rng, **kwargs)
        np.testing.assert_array_equal(tokens, greedy_tokens)
        np.testing.assert_allclose(scores, greedy_scores, rtol=1e-6)


def test_sampling_respects_top_k_and_top_p_and_scores():
    batch, length, vocab = 256, 2, 6
    logits = jnp.log(jnp.array([0.05, 0.4, 0.1, 0.3, 0.15, 0.0]) + 1e-9)

    def fn(ids, cache):
        return jnp.broadcast_to(logits, (ids.shape[0], vocab)), cache

    rng = jax.random.PRNGKey(0)
    top2, scores = decoding.temperature_sample(fn, {}, batch, length, rng=rng, top_k=2)
    first = np.asarray(top2[:, 0])
    assert set(first.tolist()) == {1, 3}
    ended = first == decoding.EOS_ID
    assert np.all(np.asarray(top2[ended, 1]) == 0)
    np.testing.assert_allclose(np.asarray(scores)[ended], np.log(0.4), rtol=1e-5)
    nucleus, _ = decoding.temperature_sample(fn, {}, batch, length, rng=rng, top_p=0.75)
    assert set(np.asarray(nucleus[:, 0]).tolist()) == {1, 3, 4}
    free, _ = decoding.temperature_sample(fn, {}, batch, length, rng=rng, temperature=1.0)
    assert len(set(np.asarray(free[:, 0]).tolist())) >= 4


@pytest.mark.parametrize('vocab,length,num_beams,alpha', [(3, 3, 4, 0.6), (4, 3, 9, 0.0), (4, 3, 9, 2.0),
                                                          (3, 4, 8, 0.6)])
def test_exhaustive_beam_search_finds_brute_force_best(vocab, length, num_beams, alpha):
    batch = 3
    fn, cache, step = make_model(batch, length, vocab, seed=vocab * 10 + length)
    search = jax.jit(functools.partial(decoding.beam_search, fn, batch_size=batch, max_decode_length=length,
                                       num_beams=num_beams, alpha=alpha))
    tokens, scores = search(cache)
    assert tokens.shape == (batch, num_beams, length)
    hypotheses = all_hypotheses(vocab, length)
    for row in range(batch):
        brute = sorted(((sequence_log_prob(step, row, h) / ((5.0 + hypothesis_length(h)) / 6.0) ** alpha, h)
                        for h in hypotheses), reverse=True)[:num_beams]
        np.testing.assert_allclose(scores[row], [s for s, _ in brute], rtol=1e-5)
        np.testing.assert_array_equal(tokens[row], [h for _, h in brute])


def test_beam_scores_sorted_and_padded_after_eos():
    batch, length, vocab = 2, 8, 10
    fn, cache, step = make_model(batch, length, vocab, seed=7)
    tokens, scores = decoding.beam_search(fn, cache, batch, length, num_beams=4, alpha=0.6)
    scores = np.asarray(scores)
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(scores, axis=1) <= 0)
    for row in range(batch):
        for beam in range(4):
            seq = np.asarray(tokens[row, beam]).tolist()
            expected = sequence_log_prob(step, row, seq) / ((5.0 + hypothesis_length(seq)) / 6.0) ** 0.6
            np.testing.assert_allclose(scores[row, beam], expected, rtol=1e-5)
            if decoding.EOS_ID in seq:
                assert all(t == 0 for t in seq[seq.index(decoding.EOS_ID) + 1:])


def test_beam_equals_greedy_when_greedy_is_optimal():
    batch, length, vocab = 2, 5, 6
    fn, cache, _ = make_model(batch, length, vocab, seed=5, scale=0.1)
    path = np.array([[3, 4, 1, 0, 0], [2, 5, 3, 4, 1]])

    def peaked(ids, cache):
        logits, new_cache = fn(ids, cache)
        preferred = jnp.asarray(path)[cache['row'], jnp.minimum(cache['pos'], length - 1)]
        return logits + 12.0 * jax.nn.one_hot(preferred, vocab), new_cache

    greedy_tokens, greedy_scores = decoding.greedy_decode(peaked, cache, batch, length)
    np.testing.assert_array_equal(greedy_tokens, path)
    for num_beams in (1, 4):
        tokens, scores = decoding.beam_search(peaked, cache, batch, length, num_beams=num_beams, alpha=0.0)
        np.testing.assert_array_equal(tokens[:, 0], greedy_tokens)
        np.testing.assert_allclose(scores[:, 0], greedy_scores, rtol=1e-5)


def test_length_penalty_value():
    np.testing.assert_allclose(decoding.length_penalty(7, 0.6), (12 / 6) ** 0.6, rtol=1e-6)
    assert float(decoding.length_penalty(3, 0.0)) == 1.0


def test_beam_search_keeps_going_while_longer_hypothesis_can_still_win():
    log_first = jnp.log(jnp.array([1e-6, 0.6, 0.4]))
    log_later = jnp.log(jnp.array([1e-6, 1e-6, 1.0]))

    def fn(ids, cache):
        logits = jnp.where(cache['pos'][:, None] == 0, log_first, log_later)
        return logits, {'pos': cache['pos'] + 1}

    tokens, scores = decoding.beam_search(fn, {'pos': jnp.zeros(1, jnp.int32)}, 1, 4, num_beams=1, alpha=2.0)
    np.testing.assert_array_equal(tokens[0, 0], [2, 2, 2, 2])
    assert float(scores[0, 0]) > float(jnp.log(0.6))
