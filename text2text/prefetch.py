"""Reads a resumable data iterator ahead in a background thread, keeping its saved position exact."""
from __future__ import annotations

import ctypes
import queue
import sys
import threading
from typing import Any, Callable


_PR_SET_NAME = 15  # prctl(2)


def _name_os_thread(name: bytes) -> None:
    """Sets the calling thread's OS name (Linux `comm`, at most 15 bytes) with prctl(2), best effort: nothing
    happens off Linux or where the C library has no prctl; raises nothing."""
    if not sys.platform.startswith('linux'):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Prefetcher:
    """Iterator over `prepare(batch)` of `iterator`'s batches, read up to `size` batches ahead in a thread.

    `iterator` must have `state()` (e.g. data.DataIterator); each batch is queued with `iterator.state()` taken
    right after reading it, so `state()` here is the position right after the last batch *returned*, not the
    last one read ahead: a checkpoint of it resumes exactly. `prepare` (e.g. device_put) runs in the thread too.
    An exception in the thread (e.g. a UserError for a bad data row) is raised by the `next()` that reaches it.
    `close()` stops the thread; use as a context manager.
    """

    def __init__(self, iterator: Any, prepare: Callable[[Any], Any] = lambda batch: batch, size: int = 2):
        if size < 1:
            raise ValueError(f'prefetch size must be >= 1, got {size}')
        self._iterator, self._prepare = iterator, prepare
        self._state = iterator.state()
        self._queue: queue.Queue = queue.Queue(size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name='prefetch', daemon=True)
        self._thread.start()

    def _put(self, item: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        _name_os_thread(b'prefetch')  # the threads it starts (tf.data's) inherit it: their CPU can be told apart
        try:
            while not self._stop.is_set():
                batch = next(self._iterator)
                if not self._put((self._prepare(batch), self._iterator.state(), None)):
                    return
        except BaseException as exc:  # pylint: disable=broad-except  # re-raised in the consumer's thread
            self._put((None, None, exc))

    def __iter__(self) -> 'Prefetcher':
        return self

    def __next__(self) -> Any:
        if self._stop.is_set():
            raise StopIteration
        item, state, error = self._queue.get()
        if error is not None:
            self.close()
            raise error
        self._state = state
        return item

    def state(self) -> dict[str, Any]:
        """The iterator's state right after the last batch returned by `next()`."""
        return self._state

    def close(self) -> None:
        """Stops the reading thread (batches read ahead are dropped; `state()` stays exact)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> 'Prefetcher':
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
