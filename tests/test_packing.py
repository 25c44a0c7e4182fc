"""Dense first-fit-decreasing packing: nothing lost or changed, denser than seqio's packer, valid model features."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from text2text import packing

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
