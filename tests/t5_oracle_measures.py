"""Test-only oracle, part two: mixture rates for a given example count and span-corruption statistics, for
comparing this project with the `t5` library (tests/t5_oracle.py holds the registries and example comparison).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np


# ------------------------------------------------------------------------------------------ mixtures


@contextlib.contextmanager
def example_counts(count: int, splits_by_source: Mapping[str, Sequence[str]]):
    """Every TFDS source claims `count` examples in each of its splits (explicit ones, else those in

    `splits_by_source` by TFDS name without version, else train/validation/test); other splits raise KeyError.
    """
    import seqio

    def splits(self):
        name = self.tfds_dataset.name.split(":")[0]
        return tuple(self._splits or splits_by_source.get(name, ("train", "validation", "test")))

    def num_input_examples(self, split):
        if split not in splits(self):
            raise KeyError(split)
        return count

    originals = seqio.TfdsDataSource.splits, seqio.TfdsDataSource.num_input_examples, seqio.Task.cache_dir
    seqio.TfdsDataSource.splits = property(splits)
    seqio.TfdsDataSource.num_input_examples = num_input_examples
    # No task counts as cached here: a cache another test left behind would give its stats instead of `count`.
    seqio.Task.cache_dir = property(lambda self: None)
    try:
        yield
    finally:
        seqio.TfdsDataSource.splits, seqio.TfdsDataSource.num_input_examples, seqio.Task.cache_dir = originals


def mixture_rates(mixture) -> Dict[str, Any]:
    """Each member task's rate (or the exception its rate function raised)."""
    rates = {}
    for task in mixture.tasks:
        try:
            rates[task.name] = float(mixture.get_rate(task))
        except Exception as e:  # noqa: BLE001  compared with the other side's outcome
            rates[task.name] = e
    return rates


# ---------------------------------------------------------------------------------- objective statistics


def documents(count: int, words: int = 60, seed: int = 0) -> List[str]:
    """`count` pseudo-random documents of about `words` words each (for objective statistics)."""
    rng = np.random.default_rng(seed)
    vocabulary = "the a cat dog sat on mat house big small red blue Tom Bob asked if he she could lend money".split()
    return [" ".join(rng.choice(vocabulary, size=int(rng.integers(words // 2, 2 * words)))) for _ in range(count)]


def objective_statistics(examples: Sequence[dict], vocab_size: int, extra_ids: int = 100) -> Dict[str, float]:
    """Span corruption / denoising statistics of examples (inputs/targets token ids ending in EOS=1):

    noise_density (noise tokens / original tokens), mean_span_length (noise tokens / spans), sentinels_in_order
    (fraction of examples whose inputs and targets both hold vocab_size-1, vocab_size-2, ... in order and the
    same number), mean inputs/targets lengths.
    """
    first_sentinel = vocab_size - extra_ids
    noise = original = spans = ordered = 0
    for ex in examples:
        inputs, targets = (np.asarray(ex[key])[:-1] for key in ("inputs", "targets"))
        in_sentinels, out_sentinels = inputs[inputs >= first_sentinel], targets[targets >= first_sentinel]
        expected = np.arange(vocab_size - 1, vocab_size - 1 - len(in_sentinels), -1)
        ordered += int(np.array_equal(in_sentinels, expected) and np.array_equal(out_sentinels, expected))
        noise += int(np.sum(targets < first_sentinel))
        original += int(np.sum(inputs < first_sentinel) + np.sum(targets < first_sentinel))
        spans += len(out_sentinels)
    return {
        "noise_density": noise / original,
        "mean_span_length": noise / max(spans, 1),
        "sentinels_in_order": ordered / len(examples),
        "inputs_length": float(np.mean([len(ex["inputs"]) for ex in examples])),
        "targets_length": float(np.mean([len(ex["targets"]) for ex in examples])),
    }
