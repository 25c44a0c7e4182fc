"""The `t5` library's prefix-LM objective tasks (not in the T5 paper), which emit model features directly:
`c4_prefix_lm_objective_encoder_decoder_architecture` and `c4_prefix_lm_objective_decoder_architecture`.

Both read C4 as full-length token pieces (documents with EOS, concatenated, cut into
sequence_length['targets'] tokens, zero-padded) and split each piece at a uniform random point in
[1, L) into a prefix (the input) and the rest (the target). Every feature has the same even length L;
read them without a feature converter (T5X's PassThroughFeatureConverter).
"""
from typing import Mapping

import seqio
import tensorflow as tf

from tasks import c4, span_corruption, vocab as vocab_lib
from text2text.errors import UserError

ENCODER_DECODER_TASK = "c4_prefix_lm_objective_encoder_decoder_architecture"
DECODER_TASK = "c4_prefix_lm_objective_decoder_architecture"
ENCODER_DECODER_FEATURES = ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                            "encoder_segment_ids", "encoder_positions", "decoder_segment_ids", "decoder_positions",
                            "decoder_loss_weights")
DECODER_FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                    "decoder_causal_attention")


def full_length_pieces(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                       output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """Token preprocessor: documents with EOS, concatenated, cut and zero-padded to sequence_length['targets']."""
    dataset = span_corruption.full_lm(dataset, sequence_length, output_features)
    return seqio.utils.trim_and_pad_dataset(dataset, feature_lengths=sequence_length)


def _packed_length(sequence_length: Mapping[str, int]) -> int:
    lengths = set(sequence_length.values()) if sequence_length else set()
    if len(lengths) != 1 or next(iter(lengths)) % 2:
        raise UserError(f"the prefix-LM objective tasks need one even length for every feature, got {sequence_length}")
    return int(next(iter(lengths)))


def _split_point(length: int, seed: tf.Tensor) -> tf.Tensor:
    return tf.random.stateless_uniform([], minval=1, maxval=length, dtype=tf.int32, seed=seed)


def pack_encoder_decoder(dataset: tf.data.Dataset, sequence_length: Mapping[str, int]) -> tf.data.Dataset:
    """Two consecutive pieces A, B -> one packed encoder-decoder example (t5's `pack_prefix_lm_encoder_decoder`).

    With split point s: encoder = A[:s] + B[:L-s] (segments 1, 2), decoder targets = A[s:] + B[L-s:]
    (segments 1, 2), positions restart at each segment, loss on non-padding targets. A last unpaired piece
    is dropped (t5 fails on it).
    """
    length = _packed_length(sequence_length)
    positions = tf.range(length)

    @seqio.map_over_dataset(num_seeds=1)
    def pack(pair, seed):
        first, second = pair["targets"][0], pair["targets"][1]
        split = _split_point(length, seed)
        targets = tf.reshape(tf.concat([first[split:], second[length - split:]], axis=0), [length])
        decoder_segments = tf.cast(positions >= length - split, tf.int32) + 1
        return {
            "encoder_input_tokens": tf.reshape(tf.concat([first[:split], second[:length - split]], axis=0), [length]),
            "decoder_target_tokens": targets,
            "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(targets, sequence_id=decoder_segments),
            "encoder_segment_ids": tf.cast(positions >= split, tf.int32) + 1,
            "encoder_positions": tf.reshape(tf.concat([tf.range(split), tf.range(length - split)], axis=0), [length]),
            "decoder_segment_ids": decoder_segments,
            "decoder_positions": tf.reshape(tf.concat([tf.range(length - split), tf.range(split)], axis=0), [length]),
            "decoder_loss_weights": tf.cast(targets != 0, tf.int32),
        }

    return pack(dataset.batch(2, drop_remainder=True))


def pack_decoder_only(dataset: tf.data.Dataset, sequence_length: Mapping[str, int]) -> tf.data.Dataset:
    """One piece -> a decoder-only prefix-LM example (t5's `pack_prefix_lm_decoder_only`): attention is

    bidirectional over positions <= s (decoder_causal_attention 1), the loss covers non-padding positions >= s.
    """
    length = _packed_length(sequence_length)
    positions = tf.range(length)

    @seqio.map_over_dataset(num_seeds=1)
    def pack(x, seed):
        targets = x["targets"]
        split = _split_point(length, seed)
        return {
            "decoder_target_tokens": targets,
            "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(targets),
            "decoder_loss_weights": tf.cast(positions >= split, tf.int32) * tf.cast(targets != 0, tf.int32),
            "decoder_causal_attention": tf.cast(positions <= split, tf.int32),
        }

    return pack(dataset)


def output_features(names, vocabulary=None) -> dict:
    """Model features without EOS plus the optional 'targets' the earlier steps use (t5's layout)."""
    vocabulary = vocabulary or vocab_lib.get_default_vocabulary()
    features = {name: seqio.Feature(vocabulary=vocabulary, add_eos=False) for name in names}
    features["targets"] = seqio.Feature(vocabulary=vocabulary, required=False)
    return features


def register():
    """Registers both tasks; returns their names."""
    for name, pack, names in ((ENCODER_DECODER_TASK, pack_encoder_decoder, ENCODER_DECODER_FEATURES),
                              (DECODER_TASK, pack_decoder_only, DECODER_FEATURES)):
        seqio.TaskRegistry.add(
            name,
            source=seqio.TfdsDataSource(tfds_name=c4.C4_V220_TFDS_NAME),
            preprocessors=[
                c4.text_as_targets,
                seqio.preprocessors.tokenize,
                seqio.CacheDatasetPlaceholder(),
                full_length_pieces,
                pack,
            ],
            output_features=output_features(names),
            metric_fns=[],
        )
    return ENCODER_DECODER_TASK, DECODER_TASK


TASK_NAMES = register()
