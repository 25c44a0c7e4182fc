"""Dense first-fit-decreasing packing: nothing lost or changed, denser than seqio's packer, valid model features."""
import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

from text2text import data, packing

LENGTHS = {'inputs': 32, 'targets': 8}


def _examples(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random token examples of mixed lengths (some longer than LENGTHS, to exercise trimming)."""
    rng = np.random.default_rng(seed)
    return [{'inputs': rng.integers(2, 100, rng.integers(1, 40)).astype(np.int32),
             'targets': rng.integers(2, 100, rng.integers(1, 10)).astype(np.int32)} for _ in range(count)]


def _dataset(examples) -> tf.data.Dataset:
    spec = {key: tf.TensorSpec([None], tf.int32) for key in LENGTHS}
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)


def _segments(row: dict[str, np.ndarray], key: str) -> dict[int, np.ndarray]:
    """Tokens of each segment of one packed row, checking positions count 0, 1, ... inside every segment."""
    out = {}
    for segment in np.unique(row[f'{key}_segment_ids']):
        where = row[f'{key}_segment_ids'] == segment
        if segment == 0:
            assert (row[key][where] == 0).all() and (row[f'{key}_positions'][where] == 0).all()
            continue
        np.testing.assert_array_equal(row[f'{key}_positions'][where], np.arange(where.sum()))
        out[int(segment)] = row[key][where]
    return out


def _unpack(rows) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    examples = []
    for row in rows:
        inputs, targets = _segments(row, 'inputs'), _segments(row, 'targets')
        assert sorted(inputs) == sorted(targets) == list(range(1, len(inputs) + 1))
        examples += [(tuple(inputs[s]), tuple(targets[s])) for s in inputs]
    return examples


def test_every_example_lands_once_trimmed_and_rows_are_well_formed():
    examples = _examples(300)
    rows = list(packing.pack_dataset(_dataset(examples), LENGTHS, window=64).as_numpy_iterator())
    assert all(row[key].shape == (length,) for row in rows for key, length in LENGTHS.items())
    expected = [(tuple(e['inputs'][:32]), tuple(e['targets'][:8])) for e in examples]
    assert sorted(_unpack(rows)) == sorted(expected)
    assert expected[0] in _unpack(rows[:1])  # rows follow the data order, not longest first


def test_denser_than_seqio_packing_and_deterministic():
    examples = _examples(400, seed=1)
    ours = list(packing.pack_dataset(_dataset(examples), LENGTHS).as_numpy_iterator())
    again = list(packing.pack_dataset(_dataset(examples), LENGTHS).as_numpy_iterator())
    seqio_rows = list(seqio.utils.trim_and_pack_dataset(_dataset(examples), LENGTHS).as_numpy_iterator())
    assert len(ours) < 0.9 * len(seqio_rows), (len(ours), len(seqio_rows))
    lower_bound = max(sum(min(len(e[key]), length) for e in examples) / length for key, length in LENGTHS.items())
    assert len(ours) <= 1.2 * lower_bound, (len(ours), lower_bound)
    for row, row_again in zip(ours, again, strict=True):
        for key in row:
            np.testing.assert_array_equal(row[key], row_again[key])


def test_empty_dataset_gives_no_rows():
    assert list(packing.pack_dataset(_dataset([]), LENGTHS).as_numpy_iterator()) == []


@pytest.mark.parametrize('pack', [True, False])
def test_converter_gives_segment_aware_decoder_inputs(pack):
    examples = [{key: e[key][:length] for key, length in LENGTHS.items()} for e in _examples(50, seed=2)]
    converter = packing.DensePackingEncDecFeatureConverter(pack=pack)
    rows = list(converter(_dataset(examples), LENGTHS).as_numpy_iterator())
    if not pack:
        assert len(rows) == len(examples) and 'encoder_segment_ids' not in rows[0]
        return
    for row in rows:
        segments = row['decoder_segment_ids']
        for segment in set(segments[segments > 0]):
            where = segments == segment
            targets = row['decoder_target_tokens'][where]
            np.testing.assert_array_equal(row['decoder_input_tokens'][where], np.concatenate([[0], targets[:-1]]))
        np.testing.assert_array_equal(row['decoder_loss_weights'], (row['decoder_target_tokens'] > 0).astype(int))


@pytest.mark.parametrize('batch_size, window, drop_remainder, bos_id', [(4, 64, True, 0), (7, 16, False, 5),
                                                                       (5, 1024, False, 0)])
def test_batched_conversion_equals_converting_rows_then_batching(batch_size, window, drop_remainder, bos_id):
    """The window-at-a-time path (encoder_decoder_features + rebatch) gives seqio's per-row conversion's batches,
    also with a partial last batch, examples without targets (rows whose targets start with padding) and a BOS id."""
    examples = [{key: e[key][:length] for key, length in LENGTHS.items()} for e in _examples(230, seed=3)]
    for example in examples[::9]:
        example['targets'] = example['targets'][:0]
    converter = packing.DensePackingEncDecFeatureConverter(pack=True, window=window, bos_id=bos_id)
    expected_ds = converter(_dataset(examples), LENGTHS).batch(batch_size, drop_remainder=drop_remainder)
    batched_ds = converter.batched(_dataset(examples), LENGTHS, batch_size, drop_remainder)
    assert batched_ds.element_spec == expected_ds.element_spec
    expected, batches = list(expected_ds.as_numpy_iterator()), list(batched_ds.as_numpy_iterator())
    assert len(batches) == len(expected) > 3
    assert len(batches[-1]['decoder_target_tokens']) < batch_size or drop_remainder
    for batch, reference in zip(batches, expected):
        assert batch.keys() == reference.keys()
        for key in batch:
            np.testing.assert_array_equal(batch[key], reference[key], err_msg=key)
    segments = np.concatenate([batch['decoder_segment_ids'] for batch in batches])
    inputs = np.concatenate([batch['decoder_input_tokens'] for batch in batches])
    first = segments != np.pad(segments[:, :-1], [(0, 0), (1, 0)])
    assert (inputs[first] == bos_id).all() and first.sum() > len(segments)
    assert (segments[:, 0] == 0).any() and (inputs[:, 0] == bos_id).all()


def test_batched_conversion_checks_examples_as_seqio_does():
    converter = packing.DensePackingEncDecFeatureConverter(pack=True)
    too_long = [{'inputs': np.arange(2, 40, dtype=np.int32), 'targets': np.array([3, 1], np.int32)}]
    with pytest.raises(tf.errors.InvalidArgumentError, match='inputs'):
        list(converter.batched(_dataset(too_long), LENGTHS, 2, False).as_numpy_iterator())
    missing = tf.data.Dataset.from_tensors({'inputs': tf.constant([3, 1])})
    with pytest.raises(ValueError, match="missing an expected feature.*'targets'"):
        converter.batched(missing, LENGTHS, 2, False)
    int64 = tf.data.Dataset.from_tensors({'inputs': tf.constant([3, 1], tf.int64), 'targets': tf.constant([4, 1])})
    with pytest.raises(ValueError, match="incorrect type for feature 'inputs'.*int64"):
        converter.batched(int64, LENGTHS, 2, False)
    with pytest.raises(ValueError, match="exactly the keys.*'extra'"):
        converter.batched(_dataset(too_long), {**LENGTHS, 'extra': 4}, 2, False)
    unpacked = packing.DensePackingEncDecFeatureConverter(pack=False)
    one = [{'inputs': np.array([5, 1], np.int32), 'targets': np.array([4, 1], np.int32)}]
    rows = list(unpacked.batched(_dataset(one), LENGTHS, 2, False).as_numpy_iterator())
    assert rows[0]['encoder_input_tokens'].shape == (1, LENGTHS['inputs']) and 'encoder_segment_ids' not in rows[0]


def _segment_multiset(rows) -> collections.Counter:
    """Packed rows -> Counter of segments, each the (inputs tokens, targets tokens) of one packed example."""
    counts = collections.Counter()
    for row in rows:
        per_segment = collections.defaultdict(dict)
        for key in LENGTHS:
            for segment, tokens in _segments(row, key).items():
                per_segment[segment][key] = tuple(tokens.tolist())
        counts.update(tuple(parts.get(key, ()) for key in LENGTHS) for parts in per_segment.values())
    return counts


def _random_dataset(kind: str, rng: np.random.Generator) -> tf.data.Dataset:
    """A dataset of one kind: static-shaped (2-D arrays), ragged, empty, one example, or all over-long."""
    count = {'empty': 0, 'single': 1}.get(kind, int(rng.integers(2, 60)))
    if kind == 'static':
        arrays = {key: rng.integers(2, 100, (count, int(rng.integers(1, 2 * length)))).astype(np.int32)
                  for key, length in LENGTHS.items()}
        return tf.data.Dataset.from_tensor_slices(arrays)
    low = {key: length + 1 if kind == 'overlong' else 1 for key, length in LENGTHS.items()}
    examples = [{key: rng.integers(2, 100, rng.integers(low[key], 2 * length + 2)).astype(np.int32)
                 for key, length in LENGTHS.items()} for _ in range(count)]
    return _dataset(examples)


@pytest.mark.parametrize('kind', ['static', 'ragged', 'empty', 'single', 'overlong'])
def test_dense_packer_packs_the_same_segments_as_seqio(kind):
    """Property: on random datasets of each kind (every feature non-empty, as after EOS), the multiset of packed
    segments equals seqio's packer's; windows smaller and larger than the dataset."""
    rng = np.random.default_rng(['static', 'ragged', 'empty', 'single', 'overlong'].index(kind))
    for window in (int(rng.integers(1, 8)), packing.DEFAULT_WINDOW):
        dataset = _random_dataset(kind, rng)
        expected = _segment_multiset(seqio.utils.trim_and_pack_dataset(dataset, LENGTHS).as_numpy_iterator())
        rows = list(packing.pack_dataset(dataset, LENGTHS, window=window).as_numpy_iterator())
        assert all(row[key].shape == (length,) for row in rows for key, length in LENGTHS.items())
        assert _segment_multiset(rows) == expected, (kind, window)


def test_dense_packer_keeps_examples_with_an_empty_feature_apart():
    """seqio's packer merges such an example into its neighbour's segment; ours keeps each example whole."""
    examples = [{'inputs': np.array([], np.int32), 'targets': np.array([5, 6], np.int32)},
                {'inputs': np.array([3], np.int32), 'targets': np.array([], np.int32)}]
    rows = list(packing.pack_dataset(_dataset(examples), LENGTHS).as_numpy_iterator())
    assert _segment_multiset(rows) == collections.Counter({((), (5, 6)): 1, ((3,), ()): 1})


@pytest.mark.parametrize('width, lengths', [(6, {'inputs': 16, 'targets': 8}),  # the case: all fit
                                            (12, {'inputs': 8, 'targets': 4})])  # all trimmed to one length
def test_get_dataset_packs_a_task_of_fixed_length_examples(width, lengths):
    """A FunctionDataSource of a 2-D int array (every example one static length) + append_eos_after_trim."""
    vocabulary = seqio.PassThroughVocabulary(size=100, eos_id=1)
    array = (np.arange(10 * width).reshape(10, width) % 90 + 2).astype(np.int32)
    name = f'fixed_length_{width}'
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
                {'inputs': array, 'targets': array[:, :3]}), splits=['train']),
        preprocessors=[seqio.preprocessors.append_eos_after_trim],
        output_features={key: seqio.Feature(vocabulary) for key in ('inputs', 'targets')})
    batches = list(data.get_dataset(name, lengths, 'train', 2, shuffle=False, seed=0, pack=True,
                                    num_epochs=1).as_numpy_iterator())
    tokens = np.concatenate([b['encoder_input_tokens'].ravel() for b in batches])
    expected = np.concatenate([np.append(row[:lengths['inputs'] - 1], 1) for row in array])
    np.testing.assert_array_equal(tokens[tokens > 0], expected)
    per_row = lengths['inputs'] // min(width + 1, lengths['inputs'])  # 2 examples of 7 tokens in 16; 1 of 8 in 8
    assert sum(int((b['encoder_segment_ids'] > 0).any(axis=1).sum()) for b in batches) == 10 // per_row


def test_first_fit_places_each_example_in_the_lowest_row_with_room_in_every_feature():
    """Hand-worked placement: capacity (4, 2); in order, examples 0 and 1 open rows 0 and 1, example 2 fits row 0's
    inputs but not its targets (2 + 1 > 2), so it goes to row 1; example 3 opens row 2."""
    lengths = np.array([[3, 2], [2, 1], [1, 1], [4, 1]], np.int32)
    rows, offsets, segment_ids, num_rows = packing._first_fit(lengths, np.arange(4), np.array([4, 2], np.int32))
    np.testing.assert_array_equal(rows, [0, 1, 1, 2])
    np.testing.assert_array_equal(offsets, [[0, 0], [0, 0], [2, 1], [0, 0]])
    np.testing.assert_array_equal(segment_ids, [1, 1, 2, 1])
    assert num_rows == 3
