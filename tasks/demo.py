"""Offline demo tasks: small learnable text-to-text problems, a stdlib-docstring corpus, their mixture.

Everything is generated on this machine, deterministically: `demo_add` ("add: 12 + 7" -> "19"),
`demo_sort` ("sort: d b a c" -> "a b c d"), `demo_reverse` ("reverse: 3 9 1" -> "1 9 3") and
`demo_parity` ("parity: 1 0 1 1" -> "odd"), scored by accuracy and mixed equally in `demo_mixture`;
`demo_stdlib_span_corruption` pretrains on the standard library's docstrings. The vocabulary is the
shared lazy one of tasks.vocab, so point it at a model from `train_demo_vocabulary` (gin
`sentencepiece_model_path.path` or $T2T_VOCAB_PATH) before reading these tasks.
"""
from __future__ import annotations

import ast
import functools
import os
import random
import string
import sys
import sysconfig
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from tasks import c4, custom, metrics, vocab
from tasks.mixtures import register_mixture

Example = Tuple[str, str]
SPLIT_SIZES = {"train": 5000, "validation": 200}
VALIDATION_EVERY = 20  # every 20th docstring is held out for the pretraining task's validation split
_SKIPPED_PACKAGES = frozenset({"test", "idlelib", "turtledemo", "lib2to3", "ensurepip"})
_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test"})


def add_example(rng: random.Random) -> Example:
    """'add: a + b' -> 'a+b' for a, b in [0, 99]."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"add: {a} + {b}", str(a + b)


def sort_example(rng: random.Random) -> Example:
    """'sort: ' + 3-8 distinct shuffled letters -> the letters in alphabetical order."""
    letters = rng.sample(string.ascii_lowercase, rng.randint(3, 8))
    return "sort: " + " ".join(letters), " ".join(sorted(letters))


def reverse_example(rng: random.Random) -> Example:
    """'reverse: ' + 3-8 digits -> the digits in reverse order."""
    digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 8))]
    return "reverse: " + " ".join(digits), " ".join(reversed(digits))


def parity_example(rng: random.Random) -> Example:
    """'parity: ' + 6-12 bits -> 'odd' or 'even' number of ones."""
    bits = [rng.randint(0, 1) for _ in range(rng.randint(6, 12))]
    return "parity: " + " ".join(map(str, bits)), "odd" if sum(bits) % 2 else "even"


GENERATORS: Dict[str, Callable[[random.Random], Example]] = {
    "add": add_example,
    "sort": sort_example,
    "reverse": reverse_example,
    "parity": parity_example,
}
TASK_NAMES = tuple(f"demo_{kind}" for kind in GENERATORS)
MIXTURE_NAME = "demo_mixture"
PRETRAINING_TASK_NAME = "demo_stdlib_span_corruption"


@functools.lru_cache(maxsize=None)
def generate(kind: str, split: str) -> Tuple[Example, ...]:
    """The fixed examples of one demo task split; train never repeats a validation input."""
    if kind not in GENERATORS or split not in SPLIT_SIZES:
        raise KeyError(f"no demo data for kind={kind!r} split={split!r}")
    held_out = {inputs for inputs, _ in generate(kind, "validation")} if split == "train" else set()
    rng = random.Random(f"{kind}/{split}")
    examples: List[Example] = []
    while len(examples) < SPLIT_SIZES[split]:
        example = GENERATORS[kind](rng)
        if example[0] not in held_out:
            examples.append(example)
    return tuple(examples)


def _demo_dataset(kind: str, split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    del shuffle_files, seed  # fixed in-memory examples; seqio shuffles downstream
    inputs, targets = zip(*generate(kind, split))
    return tf.data.Dataset.from_tensor_slices({"inputs": list(inputs), "targets": list(targets)})


def _stdlib_files(modules: Optional[Iterable[str]]) -> List[str]:
    root = sysconfig.get_paths()["stdlib"]
    names = sorted(set(modules) if modules is not None else set(sys.stdlib_module_names) - _SKIPPED_PACKAGES)
    files = []
    for name in names:
        module_file, package = os.path.join(root, name + ".py"), os.path.join(root, name)
        if os.path.isfile(module_file):
            files.append(module_file)
        elif os.path.isfile(os.path.join(package, "__init__.py")):
            for directory, subdirs, filenames in os.walk(package):
                subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS)
                files += [os.path.join(directory, f) for f in sorted(filenames) if f.endswith(".py")]
    return files


def stdlib_docstrings(modules: Optional[Sequence[str]] = None, min_chars: int = 40) -> List[str]:
    """Standard-library docstrings read from source with `ast` (nothing imported), whitespace collapsed, short

    and repeated ones dropped, in a fixed order (modules by name, files by path, nodes in tree order).
    """
    docs: Dict[str, None] = {}
    for path in _stdlib_files(modules):
        try:
            with open(path, "rb") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = " ".join((ast.get_docstring(node) or "").split())
                if len(doc) >= min_chars:
                    docs.setdefault(doc)
    return list(docs)


@functools.lru_cache(maxsize=1)
def _cached_docstrings() -> Tuple[str, ...]:
    return tuple(stdlib_docstrings())


def _docstring_dataset(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
    del shuffle_files, seed
    docs = _cached_docstrings()
    held_out = split == "validation"
    texts = [d for i, d in enumerate(docs) if (i % VALIDATION_EVERY == VALIDATION_EVERY - 1) == held_out]
    return tf.data.Dataset.from_tensor_slices({"text": texts})


def vocabulary_corpus() -> List[str]:
    """Texts for the demo SentencePiece model: stdlib docstrings plus every demo task's strings."""
    texts = list(_cached_docstrings())
    for kind in GENERATORS:
        for split in SPLIT_SIZES:
            texts += [f"{inputs} {targets}" for inputs, targets in generate(kind, split)]
    return texts


def train_demo_vocabulary(output_prefix: str, vocab_size: int = 2000) -> str:
    """Trains the demo's SentencePiece model on `vocabulary_corpus()`; returns the .model path."""
    return vocab.train_sentencepiece(vocabulary_corpus(), output_prefix, vocab_size=vocab_size)


def register() -> None:
    """Registers the four demo tasks, the docstring pretraining task and the demo mixture."""
    for kind, name in zip(GENERATORS, TASK_NAMES):
        custom.add_task(
            name,
            source=seqio.FunctionDataSource(
                functools.partial(_demo_dataset, kind), splits=tuple(SPLIT_SIZES),
                num_input_examples=dict(SPLIT_SIZES)),
            preprocessors=[
                seqio.preprocessors.tokenize,
                seqio.CacheDatasetPlaceholder(),
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=vocab.output_features(),
            metric_fns=[metrics.accuracy],
        )
    c4.register_span_corruption_task(
        PRETRAINING_TASK_NAME, seqio.FunctionDataSource(_docstring_dataset, splits=("train", "validation")))
    register_mixture(MIXTURE_NAME, TASK_NAMES, default_rate=1.0)


register()
