"""Mixing rates (examples-proportional with limit and temperature, equal, fixed) and the `t5` library's mixtures.

Rates are callables that seqio evaluates only when a mixture is read, so registering a mixture never
touches dataset metadata. Examples-proportional mixing follows Raffel et al. (2019): task n gets
rate min(scale * e_n, K) ** (1 / T) with e_n its number of training examples.

The mixtures named like t5 0.9.4's (`t5/data/mixtures.py`) have its members and rates: GLUE and
SuperGLUE members get T5's fixed weights (their training examples after preprocessing, e.g. one ReCoRD
example per answer, only the correct-referent WSC rows), the other supervised tasks their number of
training examples without a limit, and C4 in `en_mix`/`all_mix` the fixed rate 1e6. One deliberate
difference: a task without a train split gets rate 0 where t5's examples-proportional rate raises.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

from absl import logging
import seqio

from tasks import c4, cnn_dailymail, squad, super_glue, trivia_qa, wmt

# Artificial data set size limit K of examples-proportional mixing used by T5 for multi-task training.
EXAMPLES_LIMIT = 2**19
# t5's `rate_unsupervised` default: the rate of C4 next to examples-proportional supervised tasks.
UNSUPERVISED_RATE = 1e6
UNSUPERVISED_TASK = "c4_v020_unsupervised"

Rate = Union[float, Callable[[seqio.Task], float]]

# T5's mixing weights for GLUE and SuperGLUE: training examples after preprocessing (t5 glue_utils).
GLUE_WEIGHTS: Dict[str, float] = {
    "glue_cola_v002": 8_551.0, "glue_sst2_v002": 67_349.0, "glue_mrpc_v002": 3_668.0,
    "glue_qqp_v002": 363_849.0, "glue_stsb_v002": 5_749.0, "glue_mnli_v002": 392_702.0,
    "glue_qnli_v002": 104_743.0, "glue_rte_v002": 2_490.0, "glue_mnli_mismatched_v002": 0.0,
    "glue_mnli_matched_v002": 0.0, "glue_ax_v002": 0.0,
}
SUPER_GLUE_WEIGHTS: Dict[str, float] = {
    super_glue.DPR_TASK: 1_322.0, super_glue.WSC_TRAIN_TASK: 259.0, super_glue.WSC_EVAL_TASK: 0.0,
    "super_glue_boolq_v102": 9_427.0, "super_glue_cb_v102": 250.0, "super_glue_copa_v102": 400.0,
    "super_glue_multirc_v102": 27_243.0, "super_glue_record_v102": 138_854.0, "super_glue_rte_v102": 2_490.0,
    "super_glue_wic_v102": 5_428.0, "super_glue_axb_v102": 0.0, "super_glue_axg_v102": 0.0,
}


def sentinel_task_name(name: str, num_sentinels: int = 1) -> str:
    """Name seqio.experimental.add_task_with_sentinels gives: '_1_sentinel' before a '_train'/'_eval' suffix."""
    for suffix in ("_train", "_eval"):
        if name.endswith(suffix):
            return f"{name[:-len(suffix)]}_{num_sentinels}_sentinel{suffix}"
    return f"{name}_{num_sentinels}_sentinel"


SUPER_GLUE_SENTINEL_WEIGHTS = {sentinel_task_name(name): w for name, w in SUPER_GLUE_WEIGHTS.items()}
GLUE_TASKS = tuple(GLUE_WEIGHTS)  # every GLUE task but WNLI: T5 trains on the WSC/DPR "simple" tasks instead
SUPER_GLUE_TASKS = tuple(SUPER_GLUE_WEIGHTS)
WSC_DPR_TASKS = (super_glue.DPR_TASK, super_glue.WSC_TRAIN_TASK, super_glue.WSC_EVAL_TASK)
LARGE_TRANSLATION_TASKS = ("wmt_t2t_ende_v003", "wmt15_enfr_v003")
# t5's supervised tasks: its WMT choice is en-de from wmt_t2t, en-fr from WMT15, en-ro from WMT16.
SUPERVISED_TASKS = GLUE_TASKS + SUPER_GLUE_TASKS + (cnn_dailymail.TASK_NAME, squad.TASK_NAME) + \
    LARGE_TRANSLATION_TASKS + ("wmt16_enro_v003",)
# What t5's leave-one-out mixtures leave out in turn (two of them are whole mixtures).
FINETUNE_TASKS = ("glue_v002_proportional", "super_glue_v102_proportional", cnn_dailymail.TASK_NAME,
                  squad.TASK_NAME) + LARGE_TRANSLATION_TASKS + ("wmt16_enro_v003",)
# This project's own mixtures: WMT14 en-de/en-fr and C4 span corruption at the limit K.
PROJECT_SUPERVISED_TASKS = GLUE_TASKS + SUPER_GLUE_TASKS + (cnn_dailymail.TASK_NAME, squad.TASK_NAME) + tuple(
    name for name in wmt.TASK_NAMES if name.startswith(("wmt14_", "wmt16_")))
PRETRAINING_TASK = c4.c4_span_corruption.name


def rate_num_examples(task: seqio.Task, maximum: Optional[float] = None, temperature: float = 1.0,
                      scale: float = 1.0, split: str = "train") -> float:
    """min(scale * examples, maximum) ** (1/temperature) via seqio.mixing_rate_num_examples; 0 without `split`.

    examples: the cached statistics' count when the task is cached, else its input examples (as seqio).
    """
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


def t5_weight(name: str, deduplicate: bool = False) -> Rate:
    """T5's rate for a supervised task: its GLUE/SuperGLUE weight (halved for both RTEs with `deduplicate`,

    which t5 applies where GLUE and SuperGLUE share a mixture), else its number of training examples.
    """
    weight = GLUE_WEIGHTS.get(name, SUPER_GLUE_WEIGHTS.get(name))
    if weight is None:
        return proportional()
    return weight * 0.5 if deduplicate and "glue" in name and "rte" in name else weight


def _weighted(names: Iterable[str], deduplicate: bool = False) -> list:
    return [(name, t5_weight(name, deduplicate)) for name in names]


def _leave_one_out(left_out: str) -> list:
    """Members of t5's `leave_one_out_{left_out}`: all supervised tasks and C4 but that task (or mixture)."""
    groups = {"glue_v002_proportional": GLUE_TASKS, "super_glue_v102_proportional": SUPER_GLUE_TASKS}
    members = SUPERVISED_TASKS + (UNSUPERVISED_TASK,)
    if left_out in groups:
        return _weighted([name for name in members if name not in groups[left_out]])
    return _weighted([name for name in members if name != left_out], deduplicate=True)


def t5_mixtures() -> Dict[str, Tuple[list, Optional[Rate]]]:
    """t5 0.9.4's mixtures: name -> (members as names or (name, rate), default rate)."""
    unsupervised = [(UNSUPERVISED_TASK, fixed_rate(UNSUPERVISED_RATE))]
    large_supervised = LARGE_TRANSLATION_TASKS + (cnn_dailymail.TASK_NAME,)
    mixtures = {
        "glue_v002_proportional": (_weighted(GLUE_TASKS), None),
        "super_glue_v102_proportional": (_weighted(SUPER_GLUE_TASKS), None),
        "super_glue_v102_proportional_sentinel": (list(SUPER_GLUE_SENTINEL_WEIGHTS.items()), None),
        "glue_mnli_and_dev_v002": ([name for name in GLUE_TASKS if "mnli" in name], 1.0),
        "en_mix": (unsupervised + list(GLUE_TASKS + SUPER_GLUE_TASKS + (squad.TASK_NAME,)), proportional()),
        "all_equal": (list(SUPERVISED_TASKS + (UNSUPERVISED_TASK,)), 1.0),
        "all_proportional": (_weighted(SUPERVISED_TASKS + (UNSUPERVISED_TASK,), deduplicate=True), None),
        "all_mix": (unsupervised + _weighted(SUPERVISED_TASKS, deduplicate=True), None),
        "large_supervised_equal": (list(large_supervised), 1.0),
        "large_supervised_proportional": (list(large_supervised), proportional()),
        "large_translation_equal": (list(LARGE_TRANSLATION_TASKS), 1.0),
        "squad_trivia_qa_equal": ([squad.TASK_NAME, trivia_qa.TASK_NAME], 1.0),
        "wsc_dpr_simple_proportional": (_weighted(WSC_DPR_TASKS), None),
    }
    mixtures.update({f"leave_one_out_{name}": (_leave_one_out(name), None) for name in FINETUNE_TASKS})
    return mixtures


def project_mixtures() -> Dict[str, Tuple[list, Optional[Rate]]]:
    """This project's own mixtures (not in t5): GLUE + SQuAD, and every supervised task with C4 span corruption

    at T5's limit K (the paper's multi-task training) or equally.
    """
    limited = proportional(maximum=EXAMPLES_LIMIT)
    # C4 has far more than K examples, so under examples-proportional mixing its rate is exactly K.
    pretraining = [(PRETRAINING_TASK, fixed_rate(EXAMPLES_LIMIT))]
    return {
        "glue_squad_v002_proportional": (_weighted(GLUE_TASKS + (squad.TASK_NAME,)), None),
        "all_tasks_proportional": (pretraining + list(PROJECT_SUPERVISED_TASKS), limited),
        "all_supervised_equal": (list(PROJECT_SUPERVISED_TASKS), equal_rate),
    }


def register() -> Tuple[str, ...]:
    """Registers t5's and this project's mixtures; returns their names."""
    mixtures = {**t5_mixtures(), **project_mixtures()}
    for name, (members, default_rate) in mixtures.items():
        register_mixture(name, members, default_rate=default_rate)
    return tuple(mixtures)


MIXTURE_NAMES = register()
