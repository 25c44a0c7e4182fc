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
