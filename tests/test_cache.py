"""Tests for tasks.cache: Beam (DirectRunner) caching of an in-memory task and reading it with use_cached=True.

Beam's global shuffle (kept on purpose, as in seqio's cache script) fixes a different example order when the
cache is written, so cached and on-the-fly batches are compared as the same rows in canonical order
(shuffle=False, one epoch); the cached stream itself is deterministic for a seed.
"""

import os
import sys
import types

import numpy as np
import pytest
import seqio
import tensorflow as tf

from tasks import cache
from text2text import data, evaluation, launch
from text2text.errors import UserError

TASK = 'text2text_test_cache_task'
UNCACHEABLE = 'text2text_test_uncacheable_task'
MIXTURE = 'text2text_test_cache_mixture'
LENGTHS = {'inputs': 16, 'targets': 8}


def _dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    count = 40 if split == 'train' else 12
    return tf.data.Dataset.from_tensor_slices({'inputs': [f'{split} in {i} ' + 'y' * (i % 5) for i in range(count)],
                                               'targets': [f'{split} t{i}' for i in range(count)]})


def _register(name, cacheable):
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    vocab = seqio.ByteVocabulary()
    placeholder = [seqio.CacheDatasetPlaceholder()] if cacheable else []
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(_dataset_fn, splits=['train', 'validation']),
        preprocessors=[seqio.preprocessors.tokenize, *placeholder, seqio.preprocessors.append_eos_after_trim],
        output_features={'inputs': seqio.Feature(vocab), 'targets': seqio.Feature(vocab)})


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    _register(TASK, cacheable=True)
    _register(UNCACHEABLE, cacheable=False)
    if MIXTURE in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(MIXTURE)
    seqio.MixtureRegistry.add(MIXTURE, [(TASK, 1.0)])
    directory = str(tmp_path_factory.mktemp('cache'))
    previous = seqio.utils.get_global_cache_dirs()
    assert cache.main([f'--tasks={MIXTURE}', f'--output_cache_dir={directory}', '--min_shards=3',
                       '--runner=DirectRunner']) == 0
    seqio.add_global_cache_dirs([directory])
    yield directory
    seqio.set_global_cache_dirs(previous)
    seqio.TaskRegistry.remove(TASK)
    seqio.TaskRegistry.remove(UNCACHEABLE)
    seqio.MixtureRegistry.remove(MIXTURE)


def _rows(use_cached, split='train'):
    ds = data.get_dataset(TASK, LENGTHS, split, batch_size=4, shuffle=False, seed=0, pack=False, num_epochs=1,
                          use_cached=use_cached)
    batches = list(ds.as_numpy_iterator())
    assert batches and all(len(b['encoder_input_tokens']) == 4 for b in batches)
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def _canonical(rows):
    order = np.lexsort(np.concatenate([rows['encoder_input_tokens'], rows['decoder_target_tokens']], 1).T[::-1])
    return {key: value[order] for key, value in rows.items()}


def test_cache_layout(cache_dir):
    task_dir = os.path.join(cache_dir, seqio.get_task_dir_from_name(TASK))
    files = sorted(os.listdir(task_dir))
    assert cache.COMPLETED in files
    assert len([f for f in files if f.startswith('train.tfrecord')]) == 3
    assert 'validation.tfrecord-00002-of-00003' in files
    assert seqio.get_mixture_or_task(TASK).get_cached_stats('train')['examples'] == 40


@pytest.mark.parametrize('split', ['train', 'validation'])
def test_cached_batches_equal_uncached_batches(cache_dir, split):
    cached, fresh = _canonical(_rows(True, split)), _canonical(_rows(False, split))
    assert set(cached) == set(fresh)
    assert len(fresh['encoder_input_tokens']) == (40 if split == 'train' else 12)
    for key in fresh:
        np.testing.assert_array_equal(cached[key], fresh[key], err_msg=key)


def test_cached_stream_is_deterministic_for_a_seed(cache_dir):
    def first_batches(seed):
        ds = data.get_dataset(TASK, LENGTHS, 'train', batch_size=4, shuffle=True, seed=seed, pack=True,
                              use_cached=True)
        iterator = ds.as_numpy_iterator()
        return [next(iterator)['encoder_input_tokens'] for _ in range(3)]

    for a, b in zip(first_batches(5), first_batches(5)):
        np.testing.assert_array_equal(a, b)


def test_rerun_skips_completed_tasks(cache_dir):
    assert cache.cache_tasks([TASK], cache_dir) == []


def test_missing_cache_is_one_user_error_naming_the_command(cache_dir, tmp_path):
    seqio.TaskRegistry.get(TASK)._cache_dir = None  # forget the found cache; search an empty dir list instead
    seqio.set_global_cache_dirs([str(tmp_path)])
    try:
        with pytest.raises(UserError) as info:
            data.get_dataset(TASK, LENGTHS, 'train', batch_size=4, shuffle=False, seed=0, pack=False, use_cached=True)
        message = str(info.value)
        assert '\n' not in message
        assert repr(TASK) in message and f'python -m tasks.cache --tasks={TASK} --output_cache_dir=DIR' in message
        with pytest.raises(UserError, match='no cached'):
            evaluation.TaskEvaluator(object(), TASK, LENGTHS, split='validation', use_cached=True)
    finally:
        seqio.set_global_cache_dirs([cache_dir])
    with pytest.raises(UserError, match="no cached 'test' split"):
        data.require_cached(TASK, 'test')


def test_uncacheable_and_unknown_tasks_are_user_errors(cache_dir, capsys):
    with pytest.raises(UserError, match='no seqio.CacheDatasetPlaceholder'):
        data.get_dataset(UNCACHEABLE, LENGTHS, 'train', batch_size=4, shuffle=False, seed=0, pack=False,
                         use_cached=True)
    assert cache.main([f'--tasks={UNCACHEABLE}', f'--output_cache_dir={cache_dir}']) == 2
    assert cache.main(['--tasks=text2text_no_such_task', f'--output_cache_dir={cache_dir}']) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert 'cannot be cached' in errors[-2] and "unknown seqio task or mixture 'text2text_no_such_task'" in errors[-1]


def test_launcher_cache_dirs_reach_seqio(cache_dir, monkeypatch, tmp_path):
    probe = types.ModuleType('text2text_cache_probe')
    probe.probe = lambda: list(seqio.utils.get_global_cache_dirs())
    monkeypatch.setitem(sys.modules, probe.__name__, probe)
    monkeypatch.setitem(launch.MODES, 'probe', (probe.__name__, 'probe'))
    monkeypatch.setattr(launch.gin, 'get_configurable', lambda function: function)
    try:
        assert launch.run('probe', cache_dirs=[str(tmp_path)])[-1] == str(tmp_path)
    finally:
        seqio.set_global_cache_dirs([cache_dir])
