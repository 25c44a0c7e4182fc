"""Helpers for the tasks tests: a tiny deterministic SentencePiece vocabulary and hand-written TFDS mock data."""
import contextlib
import itertools
import os
import string
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

SEQUENCE_LENGTH = {"inputs": 64, "targets": 16}

_WORDS = (
    "the a an cat dog bird sat on mat house big small red blue Tom Bob Mitchell asked if he she it they could lend "
    "some money paris london obama barack is was were has not fun end true false yes no entailment neutral "
    "contradiction not_entailment acceptable unacceptable positive negative equivalent not_equivalent duplicate "
    "not_duplicate choice1 choice2 cause effect premise hypothesis question question1 question2 sentence sentence1 "
    "sentence2 passage paragraph answer query entities record word mnli cola sst2 mrpc qqp stsb qnli rte wnli boolq "
    "cb copa multirc wic wsc highlight placeholder"
).split()
_PUNCT = (":", ",", ".", "?", "!", "*", "<unk>", "@", "'", '"', "-", "(", ")", "_", "#", "<", ">", "/")


def tiny_corpus() -> List[str]:
    """Deterministic sentences covering the task templates' words, digits and punctuation."""
    lines = [" ".join(string.ascii_letters), " ".join(string.digits)]
    for i, (a, b, c) in enumerate(itertools.islice(itertools.product(_WORDS, repeat=3), 0, 6000, 7)):
        p = _PUNCT[i % len(_PUNCT)]
        lines.append(f"{a.capitalize()} {b}{p} {c} {i % 10}.{(i * 7) % 10} {a}: {c}{p}")
    return lines


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory):
    """Train the tiny SentencePiece model once and point $T2T_VOCAB_PATH at it for the whole session."""
    from tasks import vocab

    path = vocab.train_sentencepiece(tiny_corpus(), str(tmp_path_factory.mktemp("spm") / "tiny"), vocab_size=400)
    previous = os.environ.get(vocab.ENV_VAR)
    os.environ[vocab.ENV_VAR] = path
    yield path
    if previous is None:
        os.environ.pop(vocab.ENV_VAR, None)
    else:
        os.environ[vocab.ENV_VAR] = previous


@contextlib.contextmanager
def hand_written_tfds(rows_by_split: Dict[str, Sequence[dict]]):
    """tfds mock under which any builder's split yields the given rows (dicts shaped like the builder's features)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **unused):
        rows = list(rows_by_split[str(split)])
        spec = self.info.features.get_tensor_spec()
        return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=spec)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        yield


@contextlib.contextmanager
def skipping_invalid_examples(name: str):
    """Datasets built inside leave invalid examples out (gin `skip_invalid_examples.skip = True`, cleared on exit);
    yields a function giving how many `name` examples (e.g. 'dpr') were skipped since entry."""
    import gin

    from tasks import preprocessors

    before = preprocessors.SKIPPED_INVALID[name]
    gin.bind_parameter("skip_invalid_examples.skip", True)
    try:
        yield lambda: preprocessors.SKIPPED_INVALID[name] - before
    finally:
        gin.clear_config()


def run_task(task_name: str, rows: Sequence[dict], split: Optional[str] = None) -> Tuple[list, dict]:
    """A registered task on hand-written TFDS rows: (its examples as numpy dicts, one feature-converted batch)."""
    import seqio

    task = seqio.get_mixture_or_task(task_name)
    split = split or task.splits[0]
    with hand_written_tfds({split: rows}):
        ds = task.get_dataset(SEQUENCE_LENGTH, split=split, shuffle=False, try_in_mem_cache=False)
        examples = list(ds.as_numpy_iterator())
        converted = seqio.EncDecFeatureConverter(pack=False)(ds, SEQUENCE_LENGTH)
        batch = next(converted.batch(max(len(examples), 1)).as_numpy_iterator())
    return examples, batch


def task_examples(name: str, split: str, rows: Optional[Sequence[dict]] = None, num_examples: int = 3,
                  lengths: Optional[dict] = None) -> list:
    """A registered task's examples (numpy dicts) on hand-written TFDS rows, or on TFDS random mock data."""
    import seqio
    import tensorflow_datasets as tfds

    task = seqio.get_mixture_or_task(name)
    mock = tfds.testing.mock_data(num_examples=num_examples) if rows is None else hand_written_tfds({split: rows})
    with mock:
        ds = task.get_dataset(lengths or SEQUENCE_LENGTH, split=split, shuffle=False, seed=0, try_in_mem_cache=False)
        return list(ds.as_numpy_iterator())


def text(value) -> str:
    """bytes -> str for comparing pretokenized fields."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _write_prepared_tfds_metadata(tfds_name: str, splits: Sequence[str], num_examples: int, data_dir: str) -> None:
    """Write `dataset_info.json` (and features) for `tfds_name` under `data_dir`: one shard per split."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0,
                            filename_template=tfds.core.ShardedFileTemplate(
                                data_dir=builder.data_dir, dataset_name=builder.name, split=split,
                                filetype_suffix="tfrecord"))
        for split in splits]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


@contextlib.contextmanager
def prepared_tfds_mock(names: Sequence[str], num_examples: int = 3,
                       default_splits: Sequence[str] = ("train", "validation")):
    """tfds.testing.mock_data under which the TFDS datasets of the named tasks/mixtures look downloaded and prepared.

    The pip package of TFDS ships no metadata files, so mock_data's default policy (AUTO) falls back to USE_CODE:
    builders then have no splits, and seqio's `TfdsDataSource` can list neither a task's splits nor its input
    shards, which Beam caching (`tasks.cache`) needs. This writes each dataset's `dataset_info.json` with one shard
    of `num_examples` examples for each of the task's split names (`default_splits` when the task names none) to a
    temporary data_dir, and mocks with `MockPolicy.USE_FILES`; every split yields the same `num_examples` random
    rows. seqio's memoized TFDS builders and shard lists are reset on entry and exit, so no other mock leaks in or
    out. Yields the data_dir.
    """
    import tempfile

    import seqio
    import tensorflow_datasets as tfds

    memoized = seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS  # seqio keeps one builder per dataset across mocks
    previous = dict(memoized)
    with tempfile.TemporaryDirectory() as data_dir:
        try:
            for name in names:
                source = seqio.get_mixture_or_task(name)
                for task in source.tasks if isinstance(source, seqio.Mixture) else [source]:
                    _write_prepared_tfds_metadata(task.source.tfds_dataset.name,
                                                  tuple(task.source.splits) or default_splits, num_examples, data_dir)
            memoized.clear()
            seqio.TfdsDataSource.list_shards.cache_clear()
            with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_FILES,
                                        data_dir=data_dir):
                yield data_dir
        finally:
            memoized.clear()
            memoized.update(previous)
            seqio.TfdsDataSource.list_shards.cache_clear()
