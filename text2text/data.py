"""The one dataset builder for training and evaluation, and a resumable iterator over its batches.

Pipeline: seqio Task/Mixture (per-host shard, deterministic for a given seed) -> feature converter
(model features, optional dense packing: text2text.packing) -> batches of this host's share of the global batch.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import seqio
import tensorflow as tf

from text2text import packing
from text2text.errors import UserError, embedded_user_error

BATCHES_CONSUMED = 'batches_consumed'
FINGERPRINT = 'fingerprint'


def hide_gpus_from_tensorflow() -> None:
    """Keep TensorFlow (input pipeline only) off accelerators so JAX owns their memory."""
    try:
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # TF's devices are already initialised; nothing left to change.
        pass


def registered_names() -> list[str]:
    """Names of all registered seqio Tasks and Mixtures, sorted."""
    return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def get_mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
    """Look up a registered Task or Mixture; an unknown name raises UserError listing the closest names."""
    names = registered_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f'; closest registered names: {", ".join(close)}' if close else f' ({len(names)} names registered)'
        raise UserError(f'unknown seqio task or mixture {name!r}{hint}')
    return seqio.get_mixture_or_task(name)


def require_cached(mixture_or_task_name: str, split: str) -> None:
    """Raise UserError unless every task of the Task/Mixture has a completed seqio cache of `split`.

    A mixture's tasks without that split are skipped, as seqio's `Mixture.get_dataset` skips them. Caches are
    looked up in seqio's global cache dirs (`seqio.add_global_cache_dirs([DIR])`, or the launcher's
    `launch.run.cache_dirs`); seqio would otherwise fall back to on-the-fly preprocessing silently.
    """
    source = get_mixture_or_task(mixture_or_task_name)
    tasks = [t for t in source.tasks if split in t.splits] if isinstance(source, seqio.Mixture) else [source]
    for task in tasks:
        if not task.supports_caching:
            raise UserError(f'task {task.name!r} cannot be read from a cache: its preprocessors have no '
                            'seqio.CacheDatasetPlaceholder; set use_cached=False')
        cache_dir = task.cache_dir
        if cache_dir is None or not tf.io.gfile.exists(seqio.get_cached_info_path(cache_dir, split)):
            searched = ', '.join(seqio.utils.get_global_cache_dirs()) or 'none registered'
            raise UserError(f'use_cached=True but task {task.name!r} has no cached {split!r} split (cache dirs '
                            f'searched: {searched}); build it with `python -m tasks.cache --tasks={task.name} '
                            '--output_cache_dir=DIR` and register DIR with --gin.launch.run.cache_dirs="[\'DIR\']" '
                            "or seqio.add_global_cache_dirs(['DIR'])")


def get_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str, batch_size: int,
                shuffle: bool, seed: int | None, pack: bool, shard_info: seqio.ShardInfo | None = None,
                num_epochs: int | None = None, use_cached: bool = False,
                feature_converter_cls: type[seqio.FeatureConverter] = packing.DensePackingEncDecFeatureConverter,
                drop_remainder: bool | None = None) -> tf.data.Dataset:
    """Batched model features of a seqio Task/Mixture for this host; used for training and evaluation alike.

    `batch_size` is the global batch size; each of the `shard_info.num_shards` hosts (default: one shard per
    JAX process) gets `batch_size // num_shards` examples per batch. The order is deterministic for a fixed
    `seed` (also when shuffling). `num_epochs=None` repeats forever (training); use 1 for evaluation.
    `drop_remainder=None` drops a final partial batch when shuffling (training) and keeps it otherwise
    (see `pad_batch`). Elements are dicts of int32 tensors; `tfds.as_numpy`/`DataIterator` yield numpy.
    """
    hide_gpus_from_tensorflow()
    source = get_mixture_or_task(mixture_or_task_name)
    if use_cached:
        require_cached(mixture_or_task_name, split)
    if shard_info is None:
        shard_info = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
    if batch_size < 1 or batch_size % shard_info.num_shards:
        raise UserError(f'batch_size {batch_size} must be a positive multiple of the number of data shards '
                        f'(hosts) {shard_info.num_shards}')
    if drop_remainder is None:
        drop_remainder = shuffle
    ds = source.get_dataset(sequence_length=dict(task_feature_lengths), split=split, use_cached=use_cached,
                            shuffle=shuffle, seed=seed, shard_info=shard_info, num_epochs=num_epochs,
                            try_in_mem_cache=False)
    converter = feature_converter_cls(pack=pack)
    rows = batch_size // shard_info.num_shards
    if type(converter) is packing.DensePackingEncDecFeatureConverter:  # a subclass may convert rows differently
        ds = converter.batched(ds, dict(task_feature_lengths), rows, drop_remainder)
    else:
        ds = converter(ds, dict(task_feature_lengths)).batch(rows, drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_fusion = True  # seqio's and the converter's per-example maps: ~25% less CPU
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def pad_batch(batch: Mapping[str, np.ndarray], batch_size: int) -> tuple[dict[str, np.ndarray], int]:
    """Zero-pad a (final, partial) batch to `batch_size` rows; returns (padded batch, number of real rows).

    Zero rows are all padding (token 0, loss weight 0), so they add nothing to losses and metrics;
    drop their predictions using the returned count.
    """
    rows = len(next(iter(batch.values())))
    if rows > batch_size:
        raise UserError(f'batch has {rows} rows, more than the batch size {batch_size}')
    padded = {k: np.concatenate([v, np.zeros((batch_size - rows,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    return padded, rows


def _normalise(fingerprint: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """JSON round trip, so fingerprints compare equal before and after a checkpoint (tuples become lists)."""
    return None if fingerprint is None else json.loads(json.dumps(dict(fingerprint), sort_keys=True))


class DataIterator:
    """Iterator over a dataset's batches (dicts of numpy arrays) whose position can be saved and restored.

    `make_dataset()` must build a fresh dataset, e.g. `lambda: get_dataset(...)`: re-iterating one
    tf.data.Dataset object reshuffles it, so only a newly built pipeline replays the same order.
    `state()` is {'batches_consumed': n[, 'fingerprint': ...]}; `restore(state)` rebuilds the pipeline and
    skips n batches inside tf.data, which is exact because `get_dataset` is deterministic for a seed.
    Skipping still computes the skipped batches; tf.data iterator checkpointing (tf.train.Checkpoint)
    would avoid that at the cost of saving shuffle buffers. `fingerprint` (e.g. task name, seed, batch
    size, lengths) is stored in the state and must match on restore, so a resumed run reads the same stream.
    """

    def __init__(self, make_dataset: Callable[[], tf.data.Dataset], fingerprint: Mapping[str, Any] | None = None):
        self._make_dataset = make_dataset
        self._fingerprint = _normalise(fingerprint)
        self._batches_consumed = 0
        self._iterator: Iterator[dict[str, np.ndarray]] | None = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._iterator = self._make_dataset().skip(self._batches_consumed).as_numpy_iterator()
        try:
            batch = next(self._iterator)
        except tf.errors.OpError as exc:  # e.g. a bad data row found while streaming a file task
            user_error = embedded_user_error(exc)
            if user_error is None:
                raise
            raise user_error from exc
        self._batches_consumed += 1
        return batch

    def state(self) -> dict[str, Any]:
        """JSON-serialisable position of the iterator."""
        state: dict[str, Any] = {BATCHES_CONSUMED: self._batches_consumed}
        if self._fingerprint is not None:
            state[FINGERPRINT] = self._fingerprint
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue right after the batch at which `state` was taken."""
        if BATCHES_CONSUMED not in state:
            raise UserError(f'data iterator state {dict(state)} lacks {BATCHES_CONSUMED!r}')
        saved = state.get(FINGERPRINT)
        if saved != self._fingerprint:
            raise UserError(f'data iterator state was saved for {saved} but this run reads {self._fingerprint}; '
                            'use the same data settings to resume, or start without restoring the data state')
        self._batches_consumed = int(state[BATCHES_CONSUMED])
        self._iterator = None
