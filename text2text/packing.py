"""Dense packing: several short examples per fixed-length row, placed first-fit-decreasing over a window.

seqio's packer keeps one open row and closes it as soon as the next example does not fit. Here a window of
examples is sorted longest first and each goes into the first row with room in every feature (inputs and
targets at once), so short mixed-length data (GLUE-like) wastes far fewer slots; see bench/packing.py.
Rows come out in the order of their earliest example, so long and short examples stay mixed across batches.
TensorFlow ops inside tf.data, except the sequential placement of each window (numpy, `tf.numpy_function`);
deterministic. For training batches, `DensePackingEncDecFeatureConverter.batched` also computes the model features
a window at a time and cuts windows into batches, so no tf.data stage runs once per packed row.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

DEFAULT_WINDOW = 1024


def _first_fit(lengths: np.ndarray, order: np.ndarray, capacity: np.ndarray) -> tuple[np.ndarray, ...]:
    """Places examples ([n, K] int32 lengths, each <= capacity [K]) in `order`, each into the lowest-numbered row
    with room in every feature; returns int32 row [n], offset [n, K], 1-based segment id [n] and the row count.
    Rows fill from 0 without gaps, so only the rows opened so far and one empty row are searched."""
    n, features = lengths.shape
    room = np.repeat(capacity[:, None], n, axis=1)  # [K, n]: free slots of each row in each feature
    segments = np.zeros(n, np.int32)
    rows, offsets, segment_ids = np.zeros(n, np.int32), np.zeros_like(lengths), np.zeros(n, np.int32)
    opened = 0
    for example in order.tolist():
        need = lengths[example].tolist()
        fits = room[0, :opened + 1] >= need[0]
        for feature in range(1, features):
            fits &= room[feature, :opened + 1] >= need[feature]
        row = int(fits.argmax())
        rows[example] = row
        for feature in range(features):
            offsets[example, feature] = capacity[feature] - room[feature, row]
            room[feature, row] -= need[feature]
        segments[row] += 1
        segment_ids[example] = segments[row]
        opened = max(opened, row + 1)
    return rows, offsets, segment_ids, np.int32(opened)


def _place(lengths: tf.Tensor, capacity: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Row, per-feature offset and 1-based segment id of each example ([n, K] lengths), and the row count."""
    load = tf.cast(lengths, tf.float32) / tf.cast(capacity, tf.float32)
    order = tf.argsort(tf.reduce_max(load, axis=1) + tf.reduce_sum(load, axis=1) * 1e-3, direction='DESCENDING',
                       stable=True)
    # sequential: ~8 us an example in numpy; a tf.while_loop of scatters took ~70 us (bench/train_loop.py)
    rows, offsets, segment_ids, num_rows = tf.numpy_function(
        _first_fit, [lengths, order, capacity], [tf.int32] * 4, stateful=False)
    rows.set_shape(order.shape)
    offsets.set_shape(lengths.shape)
    segment_ids.set_shape(order.shape)
    num_rows.set_shape([])
    return rows, offsets, segment_ids, num_rows


def _pack_window(window: Mapping[str, tf.RaggedTensor], feature_lengths: Mapping[str, int]) -> dict[str, tf.Tensor]:
    """Packs a window of ragged examples into rows of `feature_lengths` with segment ids and positions."""
    keys = list(feature_lengths)
    # ragged_batch gives a dense tensor for a feature whose examples all have one static length
    window = {key: value if isinstance(value, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(value)
              for key, value in window.items() if key in feature_lengths}
    lengths = tf.stack([tf.cast(window[key].row_lengths(), tf.int32) for key in keys], axis=1)
    rows, offsets, segment_ids, num_rows = _place(lengths, tf.constant([feature_lengths[k] for k in keys]))
    packed = {}
    for column, key in enumerate(keys):
        tokens = window[key]
        example = tf.cast(tokens.value_rowids(), tf.int32)
        position = tf.range(tf.size(tokens.values, out_type=tf.int32)) - tf.gather(
            tf.cast(tokens.row_starts(), tf.int32), example)
        where = tf.stack([tf.gather(rows, example), tf.gather(offsets[:, column], example) + position], axis=1)
        shape = tf.stack([num_rows, feature_lengths[key]])
        packed[key] = tf.scatter_nd(where, tf.cast(tokens.values, tf.int32), shape)
        packed[f'{key}_segment_ids'] = tf.scatter_nd(where, tf.gather(segment_ids, example), shape)
        packed[f'{key}_positions'] = tf.scatter_nd(where, position, shape)
    first_example = tf.math.unsorted_segment_min(tf.range(tf.shape(lengths)[0]), rows, num_rows)
    row_order = tf.argsort(first_example, stable=True)  # rows in data order, not longest first
    return {key: tf.gather(value, row_order) for key, value in packed.items()}


def _packed_windows(ds: tf.data.Dataset, feature_lengths: Mapping[str, int], window: int) -> tf.data.Dataset:
    """Trims each example's features to `feature_lengths` and packs every `window` examples: one element per window,
    each feature [rows, length]."""
    keys = list(feature_lengths)
    ds = ds.map(lambda ex: {k: ex[k][:feature_lengths[k]] for k in keys}, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ragged_batch(window)
    return ds.map(lambda batch: _pack_window(batch, feature_lengths), num_parallel_calls=tf.data.AUTOTUNE)


def pack_dataset(ds: tf.data.Dataset, feature_lengths: Mapping[str, int],
                 window: int = DEFAULT_WINDOW) -> tf.data.Dataset:
    """Trims each example's features to `feature_lengths` and packs every `window` examples densely.

    Output rows hold `key`, `key_segment_ids` (1, 2, ... per example; 0 = padding) and `key_positions` for
    each key, zero-padded to its length — the layout of seqio.utils.trim_and_pack_dataset.
    """
    return _packed_windows(ds, feature_lengths, window).unbatch()


def encoder_decoder_features(rows: Mapping[str, tf.Tensor], bos_id: int = 0) -> dict[str, tf.Tensor]:
    """Model features of packed rows, all at once: what seqio.EncDecFeatureConverter (pack=True) computes row by row.

    `rows`: int32 `inputs`, `inputs_segment_ids`, `inputs_positions` [rows, inputs length] and the same for
    `targets` [rows, targets length] (a packed window, `pack_dataset`'s layout); a missing key raises KeyError.
    Returns int32 `encoder_input_tokens`, `encoder_segment_ids`, `encoder_positions` [rows, inputs length] and
    `decoder_target_tokens`, `decoder_loss_weights` (1 where the target is not padding), `decoder_segment_ids`,
    `decoder_positions`, `decoder_input_tokens` [rows, targets length]. The decoder inputs are the targets shifted
    right by one inside each segment, with `bos_id` at each segment's first position and at position 0
    (seqio.utils.make_autoregressive_inputs with `sequence_id`).
    """
    def shift_right(x: tf.Tensor, fill: int) -> tf.Tensor:
        return tf.pad(x[:, :-1], [[0, 0], [1, 0]], constant_values=fill)

    targets, segment_ids = rows['targets'], rows['targets_segment_ids']
    first = tf.not_equal(segment_ids, shift_right(segment_ids, 0))
    return {
        'encoder_input_tokens': rows['inputs'],
        'decoder_target_tokens': targets,
        'decoder_input_tokens': tf.where(first, tf.fill(tf.shape(targets), bos_id), shift_right(targets, bos_id)),
        'decoder_loss_weights': seqio.non_padding_position(targets),
        'encoder_segment_ids': rows['inputs_segment_ids'],
        'decoder_segment_ids': segment_ids,
        'encoder_positions': rows['inputs_positions'],
        'decoder_positions': rows['targets_positions'],
    }


class DensePackingEncDecFeatureConverter(seqio.EncDecFeatureConverter):
    """seqio's EncDecFeatureConverter with first-fit-decreasing packing (`pack_dataset`) when pack=True."""

    def __init__(self, pack: bool = True, window: int = DEFAULT_WINDOW, **kwargs):
        super().__init__(pack=pack, **kwargs)
        self._window = window

    def _pack_or_pad(self, ds: tf.data.Dataset, packed_lengths: Mapping[str, int]) -> tf.data.Dataset:
        if self.pack:
            return pack_dataset(ds, packed_lengths, self._window)
        return super()._pack_or_pad(ds, packed_lengths)

    def batched(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int], batch_size: int,
                drop_remainder: bool) -> tf.data.Dataset:
        """The batches of `self(ds, task_feature_lengths).batch(batch_size, drop_remainder)`, equal row for row.

        With pack=True the model features are computed a packed window at a time (`encoder_decoder_features`) and
        the windows are cut into batches (`tf.data.Dataset.rebatch`), so no tf.data stage runs once per packed
        row (less input-pipeline CPU per batch: bench/README.md, "Seventh session"). The examples are checked as
        seqio's converter checks them: ValueError for `task_feature_lengths` keys other than 'inputs' and
        'targets', or a feature missing from `ds`, of another dtype than int32 or rank than 1;
        tf.errors.InvalidArgumentError (when read) for an example longer than its length.
        """
        if not self.pack:
            return self(ds, task_feature_lengths).batch(batch_size, drop_remainder=drop_remainder)
        if set(task_feature_lengths) != set(self.TASK_FEATURES):
            raise ValueError(f'task_feature_lengths must have exactly the keys {sorted(self.TASK_FEATURES)}, got '
                             f'{sorted(task_feature_lengths)}')
        ds = self._validate_dataset(ds, expected_features=self.TASK_FEATURES, expected_lengths=task_feature_lengths,
                                    strict=False, error_label='input_validation')
        ds = _packed_windows(ds, task_feature_lengths, self._window)
        ds = ds.map(lambda rows: encoder_decoder_features(rows, self.bos_id), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.rebatch(batch_size, drop_remainder=drop_remainder)
