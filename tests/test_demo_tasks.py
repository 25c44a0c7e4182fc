"""Demo tasks: deterministic, correct generators; stdlib docstring corpus; registered tasks, mixture, vocabulary."""
import re

import pytest
import seqio
import sentencepiece as spm

from tasks import demo
from tasks_fixtures import SEQUENCE_LENGTH, spm_model, text  # noqa: F401

SMALL_MODULES = ("json", "collections")


def _answer(kind, inputs):
    """Independent reference answer for a demo input."""
    body = inputs.split(": ", 1)[1]
    if kind == "add":
        a, b = re.fullmatch(r"(\d+) \+ (\d+)", body).groups()
        return str(int(a) + int(b))
    items = body.split(" ")
    if kind == "sort":
        return " ".join(sorted(items))
    if kind == "reverse":
        return " ".join(items[::-1])
    return "odd" if items.count("1") % 2 else "even"


@pytest.mark.parametrize("kind", list(demo.GENERATORS))
def test_generators_are_correct_deterministic_and_held_out(kind):
    train, validation = demo.generate(kind, "train"), demo.generate(kind, "validation")
    assert (len(train), len(validation)) == (demo.SPLIT_SIZES["train"], demo.SPLIT_SIZES["validation"])
    assert all(inputs.startswith(f"{kind}: ") and targets == _answer(kind, inputs) for inputs, targets in train)
    assert not {i for i, _ in train} & {i for i, _ in validation}
    demo.generate.cache_clear()
    assert demo.generate(kind, "train") == train
    assert len({i for i, _ in train}) > 200  # varied, not one repeated example


def test_parity_labels_are_balanced():
    labels = [t for _, t in demo.generate("parity", "train")]
    assert 0.4 < labels.count("odd") / len(labels) < 0.6


def test_stdlib_docstrings_are_harvested_deterministically():
    docs = demo.stdlib_docstrings(SMALL_MODULES)
    assert len(docs) > 20 and len(set(docs)) == len(docs)
    assert any(d.startswith("JSON (JavaScript Object Notation)") for d in docs)
    assert all(len(d) >= 40 and "\n" not in d for d in docs)
    assert demo.stdlib_docstrings(SMALL_MODULES) == docs


def test_demo_tasks_tokenize(spm_model):
    for name in demo.TASK_NAMES:
        task = seqio.get_mixture_or_task(name)
        ds = task.get_dataset(SEQUENCE_LENGTH, split="validation", shuffle=False, try_in_mem_cache=False)
        ex = next(ds.as_numpy_iterator())
        assert text(ex["inputs_pretokenized"]).startswith(name[len("demo_"):] + ": ")
        assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
        assert task.num_input_examples("train") == demo.SPLIT_SIZES["train"]
    mixture = seqio.get_mixture_or_task(demo.MIXTURE_NAME)
    assert sorted(t.name for t in mixture.tasks) == sorted(demo.TASK_NAMES)
    assert {mixture.get_rate(t) for t in mixture.tasks} == {1.0}


@pytest.fixture
def small_corpus(monkeypatch):
    docs = tuple(demo.stdlib_docstrings(SMALL_MODULES))
    monkeypatch.setattr(demo, "_cached_docstrings", lambda: docs)
    return docs


def test_docstring_pretraining_task(spm_model, small_corpus):
    task = seqio.get_mixture_or_task(demo.PRETRAINING_TASK_NAME)
    lengths = {"inputs": 64, "targets": 32}
    examples = list(task.get_dataset(lengths, split="train", shuffle=False, seed=1,
                                     try_in_mem_cache=False).as_numpy_iterator())
    vocab = task.output_features["targets"].vocabulary
    assert len(examples) > 10
    assert all(ex["targets"][0] == vocab.vocab_size - 1 and len(ex["inputs"]) <= 64 for ex in examples)
    validation = task.source.get_dataset("validation", shuffle=False)
    assert len(list(validation)) == len(small_corpus) // demo.VALIDATION_EVERY


def test_train_demo_vocabulary_covers_the_tasks(small_corpus, tmp_path):
    path = demo.train_demo_vocabulary(str(tmp_path / "demo"), vocab_size=300)
    sp = spm.SentencePieceProcessor(model_file=path)
    for kind in demo.GENERATORS:
        inputs, targets = demo.generate(kind, "validation")[0]
        assert sp.decode(sp.encode(inputs)) == inputs and sp.unk_id() not in sp.encode(inputs + " " + targets)
