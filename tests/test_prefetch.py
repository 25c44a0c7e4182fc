"""Prefetcher: batches in order, read ahead in a thread, while its saved state stays the consumed position."""
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from text2text import data, prefetch, reporting
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


def _busy(seconds: float) -> int:
    """Spins until the calling thread has used `seconds` of CPU; returns the iterations (Python holds the GIL,
    so the time goes to the thread that runs it, on any CPU)."""
    start, count = time.thread_time(), 0
    while time.thread_time() - start < seconds:
        count += 1
    return count


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='thread names and CPU times come from Linux /proc')
def test_host_timer_tells_the_reading_threads_cpu_time_apart():
    timer = reporting.HostTimer()
    iterator = data.DataIterator(lambda: tf.data.Dataset.range(4))
    with prefetch.Prefetcher(iterator, prepare=lambda batch: _busy(0.2), size=1) as batches:
        taken = [next(batches) for _ in range(2)]
        with timer.phase('data'):
            _busy(0.2)
        summary = timer.summary(2, ('data',))  # before close(), as trainer.train takes it
    main_name = reporting.thread_cpu_seconds()[threading.get_native_id()][0]
    assert all(count > 0 for count in taken)
    assert summary['thread_cpu_seconds']['prefetch'] >= 0.35  # two batches of 0.2 s read in the named thread
    assert summary['thread_cpu_seconds'][main_name] >= 0.15
    assert summary['seconds']['data'] >= 0.15 and 0 < summary['overhead_fraction'] <= 1
