"""T5 unsupervised objectives on token ids: span corruption, i.i.d. denoising, prefix LM and full LM.

All are seqio token preprocessors (they run after `seqio.preprocessors.tokenize`
on a `targets` feature holding a whole document) and draw their randomness from
seqio's stateless per-map seeds, so a Task read with a fixed `seed` yields the
same examples every time. EOS is not added here (except by full LM, which marks
document ends); put `seqio.preprocessors.append_eos_after_trim` after the others.

Span corruption follows Raffel et al. (2019): documents are concatenated and cut
into pieces of `tokens_length` raw tokens (568 for 512 input tokens), then about
15% of the tokens, grouped in spans of mean length 3, are replaced in the inputs
by sentinels <extra_id_0>, <extra_id_1>, ... (ids vocab_size-1, vocab_size-2, ...)
and the targets list each sentinel followed by the span it hides.
"""
from __future__ import annotations

from typing import Mapping, Optional

import seqio
import tensorflow as tf

from text2text.errors import UserError

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
MAX_CHUNK_LENGTH = 65536
CONCAT_BATCH_SIZE = 128


def random_spans_helper(
    inputs_length: int = 512,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """(raw tokens per example, targets length incl. EOS): the most raw tokens whose corrupted inputs

    (kept tokens + one sentinel per span + EOS) fit in `inputs_length`; 512 -> (568, 114).
    """

    def corrupted_lengths(num_tokens):
        num_noise = int(round(num_tokens * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        inputs = num_tokens - num_noise + num_spans * extra_tokens_per_span_inputs + 1
        targets = num_noise + num_spans * extra_tokens_per_span_targets + 1
        return inputs, targets

    tokens_length = inputs_length - 1
    while corrupted_lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = corrupted_lengths(tokens_length)
    # With density 0.5 the targets come out one longer than the inputs; T5 drops one
    # raw token so both match the (usually round) configured inputs length.
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def _segment_lengths(num_items, num_segments, seed):
    """Splits `num_items` into `num_segments` random positive parts, all splits equally likely."""
    is_cut = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
    is_cut = seqio.stateless_shuffle(is_cut, seed)
    segment_ids = tf.cumsum(tf.concat([[0], is_cut], axis=0))
    return tf.math.bincount(segment_ids, minlength=num_segments, maxlength=num_segments, dtype=tf.int32)


def random_spans_noise_mask(length, noise_density, seeds, mean_noise_span_length=MEAN_NOISE_SPAN_LENGTH):
    """Boolean [length] mask: round(length*density) noise tokens in round(noise/mean) spans.

    Kept and noise runs alternate, starting with kept tokens; `seeds` is int32 [2, 2].
    """
    orig_length = length
    length = tf.maximum(length, 2)
    num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, length - 1)
    num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
    num_spans = tf.maximum(num_spans, 1)
    noise_lengths = _segment_lengths(num_noise, num_spans, seeds[0])
    kept_lengths = _segment_lengths(length - num_noise, num_spans, seeds[1])
    run_lengths = tf.reshape(tf.stack([kept_lengths, noise_lengths], axis=1), [-1])
    run_is_noise = tf.tile([False, True], [num_spans])
    return tf.repeat(run_is_noise, run_lengths)[:orig_length]


def _spans_to_sentinels(tokens, mask, vocab_size):
    """Replaces each run of masked tokens by one sentinel: vocab_size-1, vocab_size-2, ..."""
    prev_masked = tf.concat([[False], mask[:-1]], axis=0)
    run_start = tf.logical_and(mask, tf.logical_not(prev_masked))
    sentinels = vocab_size - tf.cumsum(tf.cast(run_start, tokens.dtype))
    tokens = tf.where(run_start, sentinels, tokens)
    return tf.boolean_mask(tokens, tf.logical_not(tf.logical_and(mask, prev_masked)))


def corrupt_spans(tokens, noise_mask, vocab_size):
    """Returns (inputs, targets): inputs hide each noise span behind a sentinel, targets hold

    each sentinel followed by its span (plus a last sentinel when the text ends with kept tokens).
    """
    vocab_size = tf.cast(vocab_size, tokens.dtype)
    inputs = _spans_to_sentinels(tokens, noise_mask, vocab_size)
    targets = _spans_to_sentinels(tokens, tf.logical_not(noise_mask), vocab_size)
    return inputs, targets


def select_random_chunk(dataset, max_length=MAX_CHUNK_LENGTH, feature_key="targets"):
    """Keeps one random aligned chunk of at most `max_length` tokens per (non-empty) document."""

    @seqio.map_over_dataset(num_seeds=1)
    def chunk(x, seed):
        tokens = x[feature_key]
        n = tf.size(tokens)
        num_chunks = (n + max_length - 1) // max_length
        start = max_length * tf.random.stateless_uniform([], maxval=num_chunks, dtype=tf.int32, seed=seed)
        return {feature_key: tokens[start:tf.minimum(start + max_length, n)]}

    dataset = dataset.filter(lambda x: tf.size(x[feature_key]) > 0)
    return chunk(dataset)


def reduce_concat_tokens(dataset, feature_key="targets", batch_size=CONCAT_BATCH_SIZE):
    """Concatenates the token sequences of `batch_size` consecutive documents into one."""
    dataset = dataset.map(lambda x: {feature_key: x[feature_key]})
    dataset = dataset.padded_batch(batch_size, padded_shapes={feature_key: [-1]})

    def flatten(x):
        tokens = tf.reshape(x[feature_key], [-1])
        return {feature_key: tf.boolean_mask(tokens, tokens > 0)}

    return dataset.map(flatten, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(dataset, max_tokens_per_segment, feature_key="targets"):
    """Cuts each sequence into pieces of `max_tokens_per_segment` tokens (the last may be shorter)."""

    def pieces(x):
        tokens = x[feature_key]
        n = tf.size(tokens)
        starts = tf.range(0, n, max_tokens_per_segment)
        padded = tf.pad(tokens, [[0, tf.size(starts) * max_tokens_per_segment - n]])
        rows = tf.reshape(padded, [-1, max_tokens_per_segment])
        lengths = tf.minimum(n - starts, max_tokens_per_segment)
        return tf.data.Dataset.from_tensor_slices((rows, lengths))

    dataset = dataset.filter(lambda x: tf.size(x[feature_key]) > 0)
    dataset = dataset.flat_map(pieces)
    return dataset.map(lambda row, n: {feature_key: row[:n]})


def _required_length(sequence_length, key, objective):
    if not sequence_length or not sequence_length.get(key):
        raise UserError(
            f"{objective} needs sequence_length['{key}'] (got {sequence_length!r}); "
            "give task feature lengths for 'inputs' and 'targets'"
        )
    return int(sequence_length[key])


def _inputs_piece_length(sequence_length, output_features, objective):
    """sequence_length['inputs'], less one when the inputs get EOS (room for it)."""
    length = _required_length(sequence_length, "inputs", objective)
    if "inputs" in output_features and output_features["inputs"].add_eos:
        length -= 1
    return length


def _shared_vocabulary(output_features, input_feature_key):
    vocab = output_features["targets"].vocabulary
    if input_feature_key in output_features and output_features[input_feature_key].vocabulary != vocab:
        raise UserError(
            "span corruption builds inputs from the tokenized 'targets', so output features "
            f"'{input_feature_key}' and 'targets' must share one vocabulary"
        )
    return vocab


def span_corruption(
    dataset: tf.data.Dataset,
    sequence_length: Optional[Mapping[str, int]],
    output_features: Mapping[str, seqio.Feature],
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    input_feature_key: str = "inputs",
) -> tf.data.Dataset:
    """T5's final pretraining objective as a seqio token preprocessor (chunk, concat, split, corrupt).

    A sequence_length['targets'] shorter than `random_spans_helper` needs raises UserError.
    """
    inputs_length = _required_length(sequence_length, input_feature_key, "span corruption")
    targets_limit = _required_length(sequence_length, "targets", "span corruption")
    tokens_length, targets_length = random_spans_helper(inputs_length, noise_density, mean_noise_span_length)
    if targets_limit < targets_length:
        raise UserError(
            f"span corruption with inputs length {inputs_length} (noise_density={noise_density}, "
            f"mean_noise_span_length={mean_noise_span_length}) needs sequence_length['targets'] "
            f">= {targets_length}, got {targets_limit}"
        )
    vocab = _shared_vocabulary(output_features, input_feature_key)
    max_spans = max(1, round(round(tokens_length * noise_density) / mean_noise_span_length))
    extra_ids = getattr(vocab, "extra_ids", 0)
    if 0 < extra_ids < max_spans:  # vocabularies without extra ids reuse their top ids, as T5 did
        raise UserError(
            f"span corruption needs up to {max_spans} sentinels per example but the vocabulary "
            f"has {extra_ids} extra ids; lower sequence_length['{input_feature_key}']"
        )
    vocab_size = vocab.vocab_size

    @seqio.map_over_dataset(num_seeds=2)
    def corrupt(x, seeds):
        tokens = x["targets"]
        mask = random_spans_noise_mask(tf.size(tokens), noise_density, seeds, mean_noise_span_length)
        inputs, targets = corrupt_spans(tokens, mask, vocab_size)
        return {input_feature_key: inputs, "targets": targets}

    dataset = select_random_chunk(dataset)
    dataset = reduce_concat_tokens(dataset)
    dataset = split_tokens(dataset, tokens_length)
    return corrupt(dataset)


def random_prefix_split(tokens, seed):
    """Splits tokens at a uniform point in [1, n-1]; returns (prefix, remainder)."""
    n = tf.size(tokens)
    low = tf.minimum(n - 1, 1)
    cut = tf.random.stateless_uniform([], minval=low, maxval=tf.maximum(n, low + 1), dtype=tf.int32, seed=seed)
    return tokens[:cut], tokens[cut:]


def prefix_lm(
    dataset: tf.data.Dataset,
    sequence_length: Optional[Mapping[str, int]],
    output_features: Mapping[str, seqio.Feature],
) -> tf.data.Dataset:
    """T5's prefix-LM objective: inputs are a random prefix of a text piece, targets the rest.

    Pieces hold sequence_length['inputs'] tokens, one fewer when the inputs get EOS.
    """
    max_tokens = _inputs_piece_length(sequence_length, output_features, "prefix LM")

    @seqio.map_over_dataset(num_seeds=1)
    def split(x, seed):
        inputs, targets = random_prefix_split(x["targets"], seed)
        return {"inputs": inputs, "targets": targets}

    dataset = select_random_chunk(dataset)
    dataset = split_tokens(dataset, max_tokens)
    return split(dataset)


def iid_denoising(
    dataset: tf.data.Dataset,
    sequence_length: Optional[Mapping[str, int]],
    output_features: Mapping[str, seqio.Feature],
    noise_density: float = NOISE_DENSITY,
) -> tf.data.Dataset:
    """T5's baseline objective (Raffel et al. 2019, `iid_denoising`): like span corruption, but each token is noise

    independently with probability `noise_density`, and the concatenated documents are cut into pieces of
    sequence_length['inputs'] tokens (one fewer when the inputs get EOS).
    """
    max_tokens = _inputs_piece_length(sequence_length, output_features, "i.i.d. denoising")
    vocab_size = _shared_vocabulary(output_features, "inputs").vocab_size

    @seqio.map_over_dataset(num_seeds=1)
    def corrupt(x, seed):
        tokens = x["targets"]
        mask = tf.random.stateless_uniform(tf.shape(tokens), seed=seed) < noise_density
        inputs, targets = corrupt_spans(tokens, mask, vocab_size)
        return {"inputs": inputs, "targets": targets}

    dataset = select_random_chunk(dataset)
    dataset = reduce_concat_tokens(dataset)
    dataset = split_tokens(dataset, max_tokens)
    return corrupt(dataset)


def full_lm(
    dataset: tf.data.Dataset,
    sequence_length: Optional[Mapping[str, int]],
    output_features: Mapping[str, seqio.Feature],
) -> tf.data.Dataset:
    """T5's decoder-only LM objective (`full_lm`): a random chunk of each document gets EOS, documents are

    concatenated and cut into targets of exactly sequence_length['targets'] tokens (the last may be shorter),
    so EOS marks document ends only. Put no EOS preprocessor after it.
    """
    max_tokens = _required_length(sequence_length, "targets", "full LM")
    dataset = select_random_chunk(dataset)
    dataset = seqio.preprocessors.append_eos(dataset, output_features)
    dataset = reduce_concat_tokens(dataset)
    return split_tokens(dataset, max_tokens)
