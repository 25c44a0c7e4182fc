"""Cache tasks' preprocessed data with seqio's Apache Beam transforms, so training and eval read it with
`use_cached=True` instead of preprocessing on the fly.

    python -m tasks.cache --tasks=NAME[,NAME] --output_cache_dir=DIR [--min_shards=64] [--overwrite]
                          [--module_import=MODULE] [BEAM PIPELINE OPTIONS, e.g. --runner=DataflowRunner ...]

Each task's preprocessors up to its `seqio.CacheDatasetPlaceholder` run once per split (in parallel over the
source's shards); the examples are globally shuffled and written to DIR/<task dir>/<split>.tfrecord-*-of-N
with the info/stats JSON files seqio reads, then DIR/<task dir>/COMPLETED marks the task as usable.
Mixture names cache all their tasks. Flags this module does not know go to Beam's PipelineOptions
(default runner: DirectRunner, in this process); apache-beam is needed: `pip install -e .[beam]`.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence

import seqio
import tensorflow as tf

from text2text.data import get_mixture_or_task
from text2text.errors import UserError

COMPLETED = 'COMPLETED'
DEFAULT_MODULES = ('tasks',)


def _beam():
    """Import apache_beam and seqio.beam_utils, or say how to install them."""
    try:
        return importlib.import_module('apache_beam'), importlib.import_module('seqio.beam_utils')
    except ImportError as exc:
        raise UserError(f'caching tasks needs apache-beam ({exc}); install it with: pip install -e .[beam]') from exc


def resolve_tasks(names: Sequence[str]) -> list[seqio.Task]:
    """Registered tasks for task and mixture names (mixtures expand to their tasks), each once, in order.

    Raises UserError for an unknown name, a task without a `seqio.CacheDatasetPlaceholder`, or a TFDS dataset
    that is not prepared.
    """
    tasks: dict[str, seqio.Task] = {}
    for name in names:
        source = get_mixture_or_task(name)
        for task in source.tasks if isinstance(source, seqio.Mixture) else [source]:
            if not task.supports_caching:
                raise UserError(f'task {task.name!r} (from --tasks={name}) cannot be cached: its preprocessors '
                                'have no seqio.CacheDatasetPlaceholder')
            if task.name not in tasks:
                _check_shards(task)
                tasks[task.name] = task
    if not tasks:
        raise UserError('--tasks names no task; pass --tasks=NAME[,NAME]')
    return list(tasks.values())


def _check_shards(task: seqio.Task) -> None:
    """Raise UserError unless each split of a TFDS-backed `task` lists its input shards (what Beam reads in parallel).

    seqio's `TfdsDataSource` lists splits and shards from the prepared dataset's metadata; for a dataset that is
    not downloaded and prepared it raises ValueError (no splits) or KeyError (unknown split).
    """
    loader = getattr(task.source, 'tfds_dataset', None)
    if loader is None:
        return
    try:
        for split in task.splits:
            task.source.list_shards(split)
    except (KeyError, ValueError) as exc:
        raise UserError(f'task {task.name!r}: TFDS dataset {loader.name!r} is not prepared ({exc}); prepare it with '
                        f'`tfds build {loader.name}` or set TFDS_DATA_DIR to a directory holding it') from exc


def task_cache_dir(output_cache_dir: str, task: seqio.Task) -> str:
    """Directory of `task`'s cache under `output_cache_dir` (where seqio looks for it)."""
    return os.path.join(output_cache_dir, seqio.get_task_dir_from_name(task.name))


def _preprocessors_seed(task: seqio.Task, base_seed: int | None) -> int | None:
    """A per-task seed for stochastic pre-cache preprocessors derived from `base_seed` (None: seqio's default)."""
    if base_seed is None:
        return None
    return (int.from_bytes(hashlib.md5(task.name.encode()).digest()[:7], 'little') + base_seed) % (2 ** 63 - 1)


def add_task_to_pipeline(pipeline, task: seqio.Task, output_dir: str, min_shards: int = 64,
                         modules_to_import: Sequence[str] = DEFAULT_MODULES, base_seed: int | None = None) -> None:
    """Add the steps that write all splits of `task` (examples, info and stats JSON) under `output_dir`."""
    beam, beam_utils = _beam()
    for split in task.splits:
        label = f'{task.name}/{split}'
        preprocess = beam_utils.PreprocessTask(task, split, modules_to_import=list(modules_to_import),
                                               preprocessors_seed=_preprocessors_seed(task, base_seed))
        num_shards = max(len(preprocess.shards), min_shards)
        examples = (pipeline
                    | f'{label}/preprocess' >> preprocess
                    | f'{label}/shuffle' >> beam.Reshuffle())
        _ = examples | f'{label}/write' >> beam_utils.WriteExampleTfRecord(
            seqio.get_cached_tfrecord_prefix(output_dir, split), num_shards=num_shards)
        _ = (examples
             | f'{label}/info' >> beam_utils.GetInfo(num_shards)
             | f'{label}/write_info' >> beam_utils.WriteJson(seqio.get_cached_info_path(output_dir, split)))
        _ = (examples
             | f'{label}/stats' >> beam_utils.GetStats(task.output_features)
             | f'{label}/write_stats' >> beam_utils.WriteJson(seqio.get_cached_stats_path(output_dir, split)))


def cache_tasks(names: Sequence[str], output_cache_dir: str, pipeline_args: Sequence[str] = (),
                min_shards: int = 64, overwrite: bool = False, modules_to_import: Sequence[str] = DEFAULT_MODULES,
                base_seed: int | None = None) -> list[str]:
    """Run one Beam pipeline caching the named tasks/mixtures into `output_cache_dir`; returns the task dirs written.

    Tasks already complete there are skipped unless `overwrite`. COMPLETED files are written only after the
    pipeline has finished, so a failed run never leaves a cache that `use_cached=True` would read.
    """
    beam, _ = _beam()
    if min_shards < 1:
        raise UserError(f'--min_shards must be >= 1, got {min_shards}')
    tasks = resolve_tasks(names)
    todo = []
    for task in tasks:
        task_dir = task_cache_dir(output_cache_dir, task)
        if tf.io.gfile.exists(os.path.join(task_dir, COMPLETED)) and not overwrite:
            logging.info('%s is already cached in %s (pass --overwrite to rebuild it)', task.name, task_dir)
            continue
        if tf.io.gfile.exists(task_dir):
            tf.io.gfile.rmtree(task_dir)
        todo.append((task, task_dir))
    if not todo:
        return []
    args = list(pipeline_args)
    if not any(arg.startswith('--runner') for arg in args):
        args.append('--runner=DirectRunner')
    tf.io.gfile.makedirs(output_cache_dir)
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(args)) as pipeline:
        for task, task_dir in todo:
            add_task_to_pipeline(pipeline, task, task_dir, min_shards, modules_to_import, base_seed)
    for task, task_dir in todo:
        with tf.io.gfile.GFile(os.path.join(task_dir, COMPLETED), 'w') as f:
            f.write('')
        logging.info('cached %s in %s', task.name, task_dir)
    return [task_dir for _, task_dir in todo]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m tasks.cache', description=__doc__.split('\n\n')[0],
        epilog='Other flags are Beam pipeline options, e.g. --runner=DataflowRunner --project=P --region=R '
               '--temp_location=gs://B/tmp --extra_package=dist/text2text-0.1.0.tar.gz')
    parser.add_argument('--tasks', required=True, help='comma-separated task or mixture names')
    parser.add_argument('--output_cache_dir', required=True, help='directory (local or gs://) to write caches to')
    parser.add_argument('--min_shards', type=int, default=64,
                        help='minimum number of output files per split (more files = better file-level shuffling '
                             'and host sharding)')
    parser.add_argument('--overwrite', action='store_true', help='rebuild tasks that are already cached')
    parser.add_argument('--module_import', action='append', default=[],
                        help='extra module registering tasks (repeatable); `tasks` is always imported')
    parser.add_argument('--base_seed', type=int, default=None,
                        help='seed for stochastic pre-cache preprocessors (default: seqio per-shard seeds)')
    return parser


def main(argv: Sequence[str]) -> int:
    """Command line entry point; a user error is one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    flags, pipeline_args = _parser().parse_known_args(argv)
    try:
        modules = [*DEFAULT_MODULES, *flags.module_import]
        for module in modules:
            importlib.import_module(module)
        names = [name.strip() for name in flags.tasks.split(',') if name.strip()]
        written = cache_tasks(names, flags.output_cache_dir, pipeline_args, flags.min_shards, flags.overwrite,
                              modules, flags.base_seed)
    except UserError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print(f'cached {len(written)} task(s) in {flags.output_cache_dir}' + ''.join(f'\n  {d}' for d in written))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
