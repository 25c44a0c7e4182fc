"""Tests for tasks.cache: Beam (DirectRunner) caching of an in-memory task and reading it with use_cached=True;
the README's caching commands on TFDS mock data.

Beam's global shuffle (kept on purpose, as in seqio's cache script) fixes a different example order when the
cache is written, so cached and on-the-fly batches are compared as the same rows in canonical order
(shuffle=False, one epoch); the cached stream itself is deterministic for a seed.
"""

import os
import shlex
import sys
import types

import numpy as np
import pytest
import seqio
import tensorflow as tf

from tasks import cache  # importing tasks registers the t5 tasks and mixtures
from tasks_fixtures import prepared_tfds_mock, spm_model  # noqa: F401  (pytest fixture)
from text2text import data, evaluation, launch
from text2text.errors import UserError

TASK = 'text2text_test_cache_task'
UNCACHEABLE = 'text2text_test_uncacheable_task'
MIXTURE = 'text2text_test_cache_mixture'
LENGTHS = {'inputs': 16, 'targets': 8}
README = os.path.join(os.path.dirname(__file__), os.pardir, 'README.md')
# README "Cache preprocessed data (Apache Beam)": the local command, and the first line of the Dataflow command
# (its other lines are Beam options for Dataflow; here Beam's default DirectRunner runs it in this process).
README_LOCAL_COMMAND = 'python -m tasks.cache --tasks=glue_v002_proportional --output_cache_dir=/data/t2t_cache'
README_DATAFLOW_COMMAND = ('python -m tasks.cache --tasks=c4_v220_span_corruption '
                           '--output_cache_dir=gs://BUCKET/t2t_cache')


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
    previous = list(seqio.utils.get_global_cache_dirs())  # seqio appends to (and returns) its own list
    assert cache.main([f'--tasks={MIXTURE}', f'--output_cache_dir={directory}', '--min_shards=3',
                       '--runner=DirectRunner']) == 0
    seqio.add_global_cache_dirs([directory])
    yield directory
    seqio.set_global_cache_dirs(previous)
    seqio.TaskRegistry.remove(TASK)
    seqio.TaskRegistry.remove(UNCACHEABLE)
    seqio.MixtureRegistry.remove(MIXTURE)


def _rows(use_cached, split='train', name=TASK):
    ds = data.get_dataset(name, LENGTHS, split, batch_size=4, shuffle=False, seed=0, pack=False, num_epochs=1,
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


def test_mixture_needs_caches_only_of_its_tasks_with_the_split(cache_dir):
    name, mixture = 'text2text_test_validation_only_task', 'text2text_test_partly_cached_mixture'
    vocab = seqio.ByteVocabulary()
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(_dataset_fn, splits=['validation']),
        preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder()],
        output_features={'inputs': seqio.Feature(vocab), 'targets': seqio.Feature(vocab)})
    seqio.MixtureRegistry.add(mixture, [(TASK, 1.0), (name, 1.0)])
    try:
        data.require_cached(mixture, 'train')  # the uncached task has no train split: seqio skips it
        with pytest.raises(UserError, match=f"task {name!r} has no cached 'validation' split"):
            data.require_cached(mixture, 'validation')
    finally:
        seqio.MixtureRegistry.remove(mixture)
        seqio.TaskRegistry.remove(name)


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


def _readme_flags(command, output_cache_dir):
    """The flags of a README command (which must be in README.md as written), writing to `output_cache_dir`."""
    with open(README, encoding='utf-8') as f:
        assert command in f.read()
    words = shlex.split(command)
    assert words[:3] == ['python', '-m', 'tasks.cache']
    return [f'--output_cache_dir={output_cache_dir}' if word.startswith('--output_cache_dir=') else word
            for word in words[3:]]


def _precache_counts(task, split):
    """(examples, tokens per output feature) of `task`'s on-the-fly preprocessing up to its cache placeholder."""
    examples = list(task.preprocess_precache(task.source.get_dataset(split=split, shuffle=False), seed=0)
                    .as_numpy_iterator())
    return len(examples), {key: sum(len(ex[key]) for ex in examples if key in ex) for key in task.output_features}


def _run_readme_command(command, output_cache_dir, cached_tasks):
    """Run `command`'s flags (output under `output_cache_dir`, --min_shards=1) under TFDS mock data; check the
    info/stats of every cached task and split against on-the-fly preprocessing, register the cache with seqio.

    Appends the cached tasks to `cached_tasks`; the caller must be inside `prepared_tfds_mock` for them.
    """
    flags = _readme_flags(command, output_cache_dir)
    assert cache.main([*flags, '--min_shards=1']) == 0
    names = [flag.split('=', 1)[1] for flag in flags if flag.startswith('--tasks=')]
    cached_tasks.extend(cache.resolve_tasks(names))
    seqio.add_global_cache_dirs([output_cache_dir])
    for task in cached_tasks:
        task._cache_dir = None  # seqio memoizes where it found a task's cache: search the dirs again
        assert os.path.exists(os.path.join(cache.task_cache_dir(output_cache_dir, task), cache.COMPLETED))
        for split in task.splits:
            examples, tokens = _precache_counts(task, split)
            stats = task.get_cached_stats(split)
            assert examples > 0 and stats['examples'] == examples, (task.name, split)
            assert {key: stats[f'{key}_tokens'] for key in tokens} == tokens, (task.name, split)


@pytest.fixture
def cached_tasks():
    """A list for the tasks a test caches; afterwards seqio forgets their caches and the cache dirs they added."""
    previous = list(seqio.utils.get_global_cache_dirs())  # seqio appends to (and returns) its own list
    tasks = []
    yield tasks
    seqio.set_global_cache_dirs(previous)
    for task in tasks:  # forget where each cache was found and the stats read from it (mixture rates use them)
        task._cache_dir = None
        task._stats = {}


def test_readme_dataflow_task_caches_on_mock_data(spm_model, tmp_path, cached_tasks):
    with prepared_tfds_mock(['c4_v220_span_corruption'], num_examples=4):
        _run_readme_command(README_DATAFLOW_COMMAND, str(tmp_path / 'cache'), cached_tasks)
        [task] = cached_tasks
        ds = data.get_dataset(task.name, {'inputs': 32, 'targets': 16}, 'train', batch_size=1, shuffle=False,
                              seed=0, pack=False, num_epochs=1, use_cached=True)
        rows = [batch for batch in ds.as_numpy_iterator()]
    sentinel = task.output_features['inputs'].vocabulary.vocab_size - 1
    assert rows
    for row in rows:  # every example was span-corrupted: its first noise span became the first sentinel
        assert sentinel in row['encoder_input_tokens'][0] and row['decoder_target_tokens'][0, 0] == sentinel


@pytest.mark.slow
def test_readme_local_command_caches_glue_mixture_on_mock_data(spm_model, tmp_path, cached_tasks):
    with prepared_tfds_mock(['glue_v002_proportional'], num_examples=4):
        _run_readme_command(README_LOCAL_COMMAND, str(tmp_path / 'cache'), cached_tasks)
        assert [t.name for t in cached_tasks] == [t.name for t in seqio.get_mixture_or_task(
            'glue_v002_proportional').tasks]
        cached, fresh = _canonical(_rows(True, 'validation', 'glue_stsb_v002')), _canonical(
            _rows(False, 'validation', 'glue_stsb_v002'))
        mixture = data.get_dataset('glue_v002_proportional', LENGTHS, 'train', batch_size=4, shuffle=True, seed=0,
                                   pack=False, use_cached=True)
        batch = next(mixture.as_numpy_iterator())
    for key in fresh:
        np.testing.assert_array_equal(cached[key], fresh[key], err_msg=key)
    assert batch['encoder_input_tokens'].shape == (4, LENGTHS['inputs']) and batch['encoder_input_tokens'].any()


def test_unprepared_tfds_dataset_is_one_user_error(tmp_path, capsys):
    import tensorflow_datasets as tfds

    seqio.TfdsDataSource.list_shards.cache_clear()
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE):  # builders without metadata: no splits
        assert cache.main(['--tasks=c4_v220_span_corruption', f'--output_cache_dir={tmp_path}']) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: task 'c4_v220_span_corruption': TFDS dataset 'c4/en:2.2.0' is not prepared")
    assert '`tfds build c4/en:2.2.0`' in error and not os.listdir(tmp_path)
