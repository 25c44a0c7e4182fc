"""Mixing rates (examples-proportional with limit and temperature, equal, fixed) and T5's task mixtures.

Rates are callables that seqio evaluates only when a mixture is read, so registering a mixture never
touches dataset metadata. Examples-proportional mixing follows Raffel et al. (2019): task n gets
rate min(scale * e_n, K) ** (1 / T) with e_n its number of training examples.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple, Union

from absl import logging
import seqio

from tasks import c4, cnn_dailymail, glue, squad, super_glue, wmt

# Artificial data set size limit K of examples-proportional mixing used by T5 for multi-task training.
EXAMPLES_LIMIT = 2**19

Rate = Union[float, Callable[[seqio.Task], float]]


def rate_num_examples(task: seqio.Task, maximum: Optional[float] = None, temperature: float = 1.0,
                      scale: float = 1.0, split: str = "train") -> float:
    """min(scale * examples, maximum) ** (1/temperature) via seqio.mixing_rate_num_examples; 0 without `split`."""
    if split not in task.splits:
        return 0.0
    return float(seqio.mixing_rate_num_examples(task, maximum=maximum, scale=scale, temperature=temperature,
                                                split=split))


def proportional(maximum: Optional[float] = None, temperature: float = 1.0, scale: float = 1.0) -> Rate:
    """A lazy examples-proportional rate function with the given limit K, temperature T and scale."""
    return functools.partial(rate_num_examples, maximum=maximum, temperature=temperature, scale=scale)


def _constant(task: seqio.Task, value: float) -> float:
    del task
    return value


def fixed_rate(value: float) -> Rate:
    """A rate function giving every task the same constant `value` (e.g. an unsupervised task's share)."""
    return functools.partial(_constant, value=float(value))


def equal_rate(task: seqio.Task) -> float:
    """Equal mixing: every task gets rate 1."""
    return _constant(task, 1.0)


def register_mixture(name: str, tasks: Sequence[Union[str, Tuple[str, Rate]]],
                     default_rate: Optional[Rate] = None) -> seqio.Mixture:
    """Registers a seqio Mixture, replacing (with a warning) one already registered under `name`."""
    if name in seqio.MixtureRegistry.names():
        logging.warning("Replacing the already registered mixture %r.", name)
        seqio.MixtureRegistry.remove(name)
    return seqio.MixtureRegistry.add(name, list(tasks), default_rate=default_rate)


# T5 leaves WNLI out of its GLUE mixture (it trains on the WSC/DPR "simple" tasks instead). Tasks
# without a train split (MNLI matched/mismatched, the AX diagnostics, WSC eval) get rate 0 but stay
# in the mixtures so that evaluating a mixture covers their validation/test sets.
GLUE_TASKS = tuple(name for name in glue.TASK_NAMES if name != glue.task_name("wnli"))
SUPER_GLUE_TASKS = tuple(super_glue.TASK_NAMES)
WMT_TASKS = tuple(name for name in wmt.TASK_NAMES if name.startswith(("wmt14_", "wmt16_")))
SUPERVISED_TASKS = GLUE_TASKS + SUPER_GLUE_TASKS + (cnn_dailymail.TASK_NAME, squad.TASK_NAME) + WMT_TASKS
PRETRAINING_TASK = c4.c4_span_corruption.name


def register() -> Tuple[str, ...]:
    """Registers the T5 mixtures; returns their names."""
    limited = proportional(maximum=EXAMPLES_LIMIT)
    # C4 has far more than K examples, so under examples-proportional mixing its rate is exactly K.
    pretraining = [(PRETRAINING_TASK, fixed_rate(EXAMPLES_LIMIT))]
    mixtures = {
        "glue_v002_proportional": (GLUE_TASKS, proportional()),
        "super_glue_v102_proportional": (SUPER_GLUE_TASKS, proportional()),
        "glue_squad_v002_proportional": (GLUE_TASKS + (squad.TASK_NAME,), proportional()),
        "en_mix": (pretraining + list(GLUE_TASKS + SUPER_GLUE_TASKS + (squad.TASK_NAME,)), limited),
        "all_tasks_proportional": (pretraining + list(SUPERVISED_TASKS), limited),
        "all_supervised_equal": (SUPERVISED_TASKS, equal_rate),
    }
    for name, (tasks, default_rate) in mixtures.items():
        register_mixture(name, tasks, default_rate=default_rate)
    return tuple(mixtures)


MIXTURE_NAMES = register()
