"""Fixed-size evaluation batches from an enumerated seqio model-feature dataset, and running a jitted function
over them with the next batch dispatched before the previous result is fetched.

Used by text2text.evaluation's predict and score functions. With `by_length`, examples are sorted by input
length and each batch's encoder padding is cut to one of a few widths (`input_width`): the padding cut off is
masked anyway, so results do not change, and a whole evaluation compiles a handful of shapes.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
import tensorflow as tf

MIN_INPUT_WIDTH = 8
WIDTHS_PER_OCTAVE = 4

Batch = tuple[np.ndarray, dict, int]  # (example indices [n_real], features {name: [batch_size, ...]}, n_real)


def input_width(length: int, full: int, per_octave: int = WIDTHS_PER_OCTAVE) -> int:
    """Encoder width of a batch whose longest input has `length` tokens, at most the feature length `full`.

    `length` is rounded up to a multiple of max(MIN_INPUT_WIDTH, p // per_octave), p the largest power of two
    below `length` (at least MIN_INPUT_WIDTH): with the default 4 that gives 8, 16, 24, ..., 64, 80, 96, 112, 128,
    160, ..., so a batch carries fewer than max(8, length / per_octave) padding columns beyond its longest input
    (power-of-two widths carry up to `length`), and a whole evaluation compiles at most
    per_octave * log2(full / 8) + 1 shapes.
    Raises ValueError for per_octave < 1.
    """
    if per_octave < 1:
        raise ValueError(f'input_width: per_octave must be >= 1, got {per_octave}')
    if length <= MIN_INPUT_WIDTH:
        return min(full, MIN_INPUT_WIDTH)
    below = 1 << ((length - 1).bit_length() - 1)
    step = max(MIN_INPUT_WIDTH, below // per_octave)
    return min(full, -(-length // step) * step)


def _input_length(tokens: np.ndarray) -> int:
    """Position after the last non-padding token of a [length] int row (0 for an all-padding row)."""
    nonzero = np.flatnonzero(tokens)
    return int(nonzero[-1]) + 1 if nonzero.size else 0


def padded_batches(dataset: tf.data.Dataset, batch_size: int, by_length: bool) -> list[Batch]:
    """All batches (indices, features, n_real) of an enumerated dataset; the last is padded to batch_size.

    Padding repeats the batch's first example so the model never sees a degenerate all-padding row. With
    `by_length`, examples are sorted by input length (stable) and each batch's `encoder_input_tokens` are cut to
    `input_width` of its longest input. Otherwise batches keep the dataset order and the full feature length.
    """
    rows = list(dataset.as_numpy_iterator())
    if by_length:
        rows.sort(key=lambda row: _input_length(row[1]['encoder_input_tokens']))
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        n_real = len(chunk)
        chunk += [chunk[0]] * (batch_size - n_real)
        indices = np.array([index for index, _ in chunk[:n_real]])
        features = {key: np.stack([row[key] for _, row in chunk]) for key in chunk[0][1]}
        if by_length:
            inputs = features['encoder_input_tokens']
            width = input_width(max(_input_length(row) for row in inputs), inputs.shape[1])
            features['encoder_input_tokens'] = inputs[:, :width]
        batches.append((indices, features, n_real))
    return batches


class BatchCache:
    """`padded_batches` of each dataset object seen, kept while that object lives (e.g. the datasets a
    seqio.Evaluator caches and passes to every evaluation), so repeated evaluations skip tf.data and batching."""

    def __init__(self):
        self._batches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __len__(self) -> int:
        """Number of (live) datasets whose batches are kept."""
        return len(self._batches)

    def get(self, dataset: tf.data.Dataset, batch_size: int, by_length: bool) -> list[Batch]:
        """The batches of `dataset` (built on first use for these options)."""
        per_dataset = self._batches.setdefault(dataset, {})
        key = (batch_size, by_length)
        if key not in per_dataset:
            per_dataset[key] = padded_batches(dataset, batch_size, by_length)
        return per_dataset[key]


def run_ahead(batches: Iterable[Batch],
              run: Callable[[int, dict], Any]) -> Iterator[tuple[np.ndarray, int, np.ndarray]]:
    """Yields (indices, n_real, numpy result) of run(i, features) for each batch i, in order.

    Batch i + 1 is dispatched before batch i's result is fetched: JAX runs jitted calls asynchronously, so the host
    work of fetching and converting one result overlaps the device work of the next batch.
    """
    pending = None
    for i, (indices, features, n_real) in enumerate(batches):
        result = run(i, features)
        if pending is not None:
            yield pending[0], pending[1], np.asarray(jax.device_get(pending[2]))
        pending = (indices, n_real, result)
    if pending is not None:
        yield pending[0], pending[1], np.asarray(jax.device_get(pending[2]))
