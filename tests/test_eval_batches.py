"""Tests for text2text.eval_batches: the width rule, batches kept across evaluations, dispatch-ahead order."""
import gc

import numpy as np
import pytest
import tensorflow as tf

from text2text import eval_batches


def test_input_width_rounds_to_a_few_widths_per_octave():
    assert [eval_batches.input_width(n, 128) for n in (1, 8, 9, 16, 17, 25, 33, 57, 65, 81, 113, 126)] == \
        [8, 8, 16, 16, 24, 32, 40, 64, 80, 96, 128, 128]
    assert [eval_batches.input_width(n, 512) for n in (129, 161, 257, 449)] == [160, 192, 320, 512]
    assert eval_batches.input_width(100, 90) == 90  # never above the feature length
    assert eval_batches.input_width(3, 4) == 4
    # one width per octave is the power-of-two rule
    assert [eval_batches.input_width(n, 128, per_octave=1) for n in (9, 33, 65, 100)] == [16, 64, 128, 128]
    widths = {eval_batches.input_width(n, 512) for n in range(1, 513)}
    assert len(widths) <= 4 * 6 + 1
    for n in range(1, 513):
        width = eval_batches.input_width(n, 512)
        assert n <= width < n + max(8, n / 4)
    with pytest.raises(ValueError, match='per_octave'):
        eval_batches.input_width(10, 128, per_octave=0)


def _counting_dataset(lengths, reads):
    """Enumerated model-feature dataset; every element read from tf.data appends to `reads`."""

    def example(i):
        reads.append(int(i))
        row = np.zeros(16, np.int32)
        row[:lengths[int(i)]] = 7
        return row

    ds = tf.data.Dataset.range(len(lengths)).map(
        lambda i: {'encoder_input_tokens': tf.ensure_shape(tf.numpy_function(example, [i], tf.int32), [16])})
    return ds.enumerate()


def test_batch_cache_reads_each_dataset_once_and_forgets_dropped_ones():
    reads = []
    ds = _counting_dataset([3, 12, 5, 1, 9], reads)
    cache = eval_batches.BatchCache()
    first = cache.get(ds, 2, by_length=True)
    assert len(reads) == 5 and len(cache) == 1
    assert cache.get(ds, 2, by_length=True) is first and len(reads) == 5
    assert [list(indices) for indices, _, _ in first] == [[3, 0], [2, 4], [1]]
    assert [features['encoder_input_tokens'].shape[1] for _, features, _ in first] == [8, 16, 16]
    cache.get(ds, 2, by_length=False)  # other options: batched anew
    assert len(reads) == 10
    other = _counting_dataset([4], reads)
    assert cache.get(other, 2, by_length=True) is not first and len(reads) == 11
    del ds, other
    gc.collect()
    assert len(cache) == 0


def test_run_ahead_dispatches_the_next_batch_before_fetching_a_result():
    events = []
    batches = [(np.array([i]), {'x': np.full((1, 2), i)}, 1) for i in range(3)]

    def run(i, features):
        events.append(f'run {i}')
        return features['x'] * 10

    for indices, n_real, result in eval_batches.run_ahead(batches, run):
        events.append(f'got {int(indices[0])}')
        assert n_real == 1 and isinstance(result, np.ndarray) and result.tolist() == [[indices[0] * 10] * 2]
    assert events == ['run 0', 'run 1', 'got 0', 'run 2', 'got 1', 'got 2']
    assert list(eval_batches.run_ahead([], run)) == []
