"""Prefetcher: batches in order, read ahead in a thread, while its saved state stays the consumed position."""
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from text2text import data, prefetch
from text2text.errors import UserError


def _iterator() -> data.DataIterator:
    return data.DataIterator(lambda: tf.data.Dataset.range(40).batch(2), fingerprint={'name': 'range'})


def test_state_is_after_the_last_returned_batch_and_resumes_exactly():
    with prefetch.Prefetcher(_iterator(), prepare=lambda batch: batch * 10, size=2) as batches:
        taken = [next(batches) for _ in range(5)]
        time.sleep(0.2)  # let the thread read ahead
        state = batches.state()
        following = next(batches)
    np.testing.assert_array_equal(np.concatenate(taken), np.arange(10) * 10)
    assert state['batches_consumed'] == 5
    resumed = _iterator()
    resumed.restore(state)
    np.testing.assert_array_equal(next(resumed) * 10, following)


def test_state_before_any_batch_is_the_iterator_start():
    iterator = _iterator()
    iterator.restore({'batches_consumed': 3, 'fingerprint': {'name': 'range'}})
    with prefetch.Prefetcher(iterator) as batches:
        assert batches.state()['batches_consumed'] == 3
        np.testing.assert_array_equal(next(batches), [6, 7])


def test_an_error_in_the_thread_is_raised_by_next_after_the_good_batches():
    def prepare(batch):
        if batch[0] >= 4:
            raise UserError('bad row')
        return batch

    with prefetch.Prefetcher(_iterator(), prepare) as batches:
        assert [list(next(batches)) for _ in range(2)] == [[0, 1], [2, 3]]
        with pytest.raises(UserError, match='bad row'):
            next(batches)
        assert batches.state()['batches_consumed'] == 2


def test_end_of_data_stops_iteration_and_close_stops_the_thread():
    finite = data.DataIterator(lambda: tf.data.Dataset.range(4).batch(2))
    batches = prefetch.Prefetcher(finite)
    assert len(list(batches)) == 2
    endless = prefetch.Prefetcher(_iterator(), size=1)
    endless.close()
    assert not endless._thread.is_alive()  # pylint: disable=protected-access


def _busy(limit: int) -> int:
    """CPU work in the reading thread (a Python loop holds the GIL: its time goes to the thread that runs it)."""
    total = 0
    for value in range(limit):
        total += value % 7
    return total


def test_reading_thread_is_named_and_its_cpu_time_is_told_apart():
    from text2text import reporting
    start = reporting.thread_cpu_seconds()
    assert start, 'no /proc/self/task on this Linux machine'
    iterator = data.DataIterator(lambda: tf.data.Dataset.range(4))
    with prefetch.Prefetcher(iterator, prepare=lambda batch: _busy(3_000_000), size=1) as batches:
        results = [next(batches) for _ in range(2)]
        spent = reporting.cpu_seconds_by_thread_name(start, reporting.thread_cpu_seconds())
    assert results == [_busy(3_000_000)] * 2
    assert spent['prefetch'] > 0.1  # ~0.15 s of Python work per batch, two batches done


def test_host_timer_summary_has_cpu_seconds_by_thread_name():
    from text2text import reporting
    timer = reporting.HostTimer()
    main_name = reporting.thread_cpu_seconds()[threading.get_native_id()][0]
    with timer.phase('data'):
        _busy(3_000_000)
    summary = timer.summary(1, ('data',))
    assert summary['thread_cpu_seconds'][main_name] > 0.05
    assert summary['seconds']['data'] > 0.05
    assert 0 < summary['overhead_fraction'] <= 1
