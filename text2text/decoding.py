"""Autoregressive decoding with a KV cache: greedy, temperature/top-k/top-p sampling and beam search.

Every decoder is written against a callback `tokens_to_logits(token_ids [n, 1], cache) -> (logits [n, vocab],
new_cache)` and runs in a fixed-size `jax.lax.while_loop`, so it can be jitted. Cache arrays with ndim > 0 have the
batch (or flattened batch*beam) as leading dimension; scalars (e.g. a shared cache index) are left untouched.
Generated sequences stop per row at EOS and are padded with 0 after it.
"""

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp

EOS_ID = 1
PAD_ID = 0
NEG_INF = -jnp.inf

TokensToLogits = Callable[[jax.Array, Any], Tuple[jax.Array, Any]]


def length_penalty(length, alpha: float):
    """T5X / GNMT brevity penalty ((5 + length) / 6) ** alpha; beam scores are log_prob / penalty."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _map_batched(fn, cache):
    """Applies fn to every cache array that has a leading (batch) dimension."""
    return jax.tree.map(lambda x: fn(x) if jnp.ndim(x) > 0 else x, cache)


def argmax(logits: jax.Array) -> jax.Array:
    """int32 index of the first maximum over the last axis, exactly like jnp.argmax (NaN counts as the maximum).

    XLA:CPU's variadic argmax reduction is 7-20x slower than this max + float-iota min, which vectorises.
    """
    size = logits.shape[-1]
    if size >= 2 ** 24:  # float32 holds every index exactly only below 2^24
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    is_max = (logits == jnp.max(logits, axis=-1, keepdims=True)) | jnp.isnan(logits)
    index = jax.lax.broadcasted_iota(jnp.float32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(is_max, index, float(size)), axis=-1).astype(jnp.int32)


def _pick_next(logits, rng, temperature: float, top_k: int, top_p: float):
    """Chooses one id per row: argmax when temperature == 0, else a sample from the filtered, tempered logits."""
    if temperature == 0.0:
        return argmax(logits)
    if top_k > 0:
        values, ids = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))
    elif top_p < 1.0:
        ids = jnp.argsort(-logits, axis=-1)
        values = jnp.take_along_axis(logits, ids, axis=-1)
    else:
        return jax.random.categorical(rng, logits / temperature, axis=-1).astype(jnp.int32)
    values = values / temperature
    if top_p < 1.0:
        probs = jax.nn.softmax(values, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        values = jnp.where(mass_before < top_p, values, NEG_INF)
    choice = jax.random.categorical(rng, values, axis=-1)
    return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def temperature_sample(tokens_to_logits: TokensToLogits, cache, batch_size: int, max_decode_length: int,
                       rng=None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       eos_id: int = EOS_ID, initial_token: int = PAD_ID):
    """Samples [batch_size, max_decode_length] int32 tokens and their [batch_size] log-prob scores.

    temperature == 0 gives greedy decoding (rng unused); top_k > 0 keeps the k most likely ids; top_p < 1 keeps the
    smallest set of most likely ids whose (tempered) probability reaches top_p (nucleus; with top_k, taken within
    the top k). temperature/top_k/top_p are static Python numbers. Scores are sums of the model's unfiltered, untempered log-probs of the chosen tokens up to and
    including EOS.
    """
    if rng is None:
        if temperature != 0.0:
            raise ValueError('temperature_sample: rng is required when temperature > 0')
        rng = jax.random.PRNGKey(0)
    tokens = jnp.full((batch_size, max_decode_length + 1), PAD_ID, jnp.int32).at[:, 0].set(initial_token)
    state = (jnp.int32(0), tokens, cache, jnp.zeros((batch_size,), bool), jnp.zeros((batch_size,), jnp.float32), rng)

    def cond(state):
        i, _, _, ended, _, _ = state
        return (i < max_decode_length) & ~jnp.all(ended)

    def body(state):
        i, tokens, cache, ended, scores, rng = state
        rng, step_rng = jax.random.split(rng)
        current = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
        logits, cache = tokens_to_logits(current, cache)
        logits = jnp.asarray(logits, jnp.float32)
        next_ids = _pick_next(logits, step_rng, temperature, top_k, top_p)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        next_log_prob = jnp.take_along_axis(log_probs, next_ids[:, None], axis=-1)[:, 0]
        next_ids = jnp.where(ended, PAD_ID, next_ids)
        scores = scores + jnp.where(ended, 0.0, next_log_prob)
        ended = ended | (next_ids == eos_id)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, next_ids[:, None], i + 1, axis=1)
        return i + 1, tokens, cache, ended, scores, rng

    _, tokens, _, _, scores, _ = jax.lax.while_loop(cond, body, state)
    return tokens[:, 1:], scores


def greedy_decode(tokens_to_logits: TokensToLogits, cache, batch_size: int, max_decode_length: int,
                  eos_id: int = EOS_ID, initial_token: int = PAD_ID):
    """Greedy (argmax) decoding: returns [batch_size, max_decode_length] tokens and [batch_size] log-prob scores."""
    return temperature_sample(tokens_to_logits, cache, batch_size, max_decode_length, temperature=0.0,
                              eos_id=eos_id, initial_token=initial_token)


def _gather_beams(x, beam_ids):
    """Selects x[b, beam_ids[b, j]] along the beam axis of x [batch, beams, ...]."""
    return jax.vmap(lambda row, ids: row[ids])(x, beam_ids)


def _gather_flat_beams(x, beam_ids):
    """Like `_gather_beams` for an array whose leading dimension is the flattened batch*beams."""
    batch, beams = beam_ids.shape
    x = x.reshape((batch, x.shape[0] // batch) + x.shape[1:])
    out = _gather_beams(x, beam_ids)
    return out.reshape((batch * beams,) + out.shape[2:])


def beam_search(tokens_to_logits: TokensToLogits, cache, batch_size: int, max_decode_length: int,
                num_beams: int = 4, alpha: float = 0.6, eos_id: int = EOS_ID, initial_token: int = PAD_ID):
    """Beam search: returns tokens [b, num_beams, L] and scores [b, num_beams], sorted best-first.

    `cache` is for `batch_size` rows; it is repeated to batch_size*num_beams rows (row = b * num_beams + beam), and
    the callback sees that flattened layout. A hypothesis is finished when it emits EOS or reaches
    max_decode_length tokens; its score is log_prob / length_penalty(length, alpha) with length counting EOS.
    Search stops early once no live beam can beat the worst kept finished hypothesis. Slots with no valid
    hypothesis (tiny vocabularies) get score -inf.
    """
    b, n, length = batch_size, num_beams, max_decode_length
    cache = _map_batched(lambda x: jnp.repeat(x, n, axis=0), cache)
    live_seqs = jnp.full((b, n, length + 1), PAD_ID, jnp.int32).at[:, :, 0].set(initial_token)
    live_logprobs = jnp.tile(jnp.array([0.0] + [NEG_INF] * (n - 1), jnp.float32), (b, 1))
    finished_seqs = jnp.zeros_like(live_seqs)
    finished_scores = jnp.full((b, n), NEG_INF, jnp.float32)
    max_future_penalty_at_end = length_penalty(length, alpha)

    def cond(state):
        i, _, live_logprobs, _, finished_scores, _ = state
        best_penalty = jnp.maximum(length_penalty(i + 1, alpha), max_future_penalty_at_end)
        best_live = live_logprobs[:, 0] / best_penalty
        worst_finished = finished_scores[:, -1]
        return (i < length) & ~jnp.all(worst_finished >= best_live)

    def body(state):
        i, live_seqs, live_logprobs, finished_seqs, finished_scores, cache = state
        current = jax.lax.dynamic_slice_in_dim(live_seqs, i, 1, axis=2).reshape(b * n, 1)
        logits, cache = tokens_to_logits(current, cache)
        log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
        vocab = log_probs.shape[-1]
        candidates = (live_logprobs[:, :, None] + log_probs.reshape(b, n, vocab)).reshape(b, n * vocab)
        top_logprobs, top_flat = jax.lax.top_k(candidates, 2 * n)
        top_beams = top_flat // vocab
        top_tokens = (top_flat % vocab).astype(jnp.int32)
        top_seqs = _gather_beams(live_seqs, top_beams)
        top_seqs = jax.lax.dynamic_update_slice_in_dim(top_seqs, top_tokens[:, :, None], i + 1, axis=2)
        new_length = i + 1
        is_eos = top_tokens == eos_id
        is_finished = is_eos | (new_length == length)

        finished_candidate_scores = jnp.where(is_finished, top_logprobs / length_penalty(new_length, alpha), NEG_INF)
        all_scores = jnp.concatenate([finished_scores, finished_candidate_scores], axis=1)
        all_seqs = jnp.concatenate([finished_seqs, top_seqs], axis=1)
        finished_scores, keep = jax.lax.top_k(all_scores, n)
        finished_seqs = _gather_beams(all_seqs, keep)

        live_candidate_logprobs = jnp.where(is_eos, NEG_INF, top_logprobs)
        live_logprobs, keep = jax.lax.top_k(live_candidate_logprobs, n)
        live_seqs = _gather_beams(top_seqs, keep)
        source_beams = jnp.take_along_axis(top_beams, keep, axis=1)
        cache = _map_batched(lambda x: _gather_flat_beams(x, source_beams), cache)
        return new_length, live_seqs, live_logprobs, finished_seqs, finished_scores, cache

    state = (jnp.int32(0), live_seqs, live_logprobs, finished_seqs, finished_scores, cache)
    _, _, _, finished_seqs, finished_scores, _ = jax.lax.while_loop(cond, body, state)
    return finished_seqs[:, :, 1:], finished_scores
