"""iPET (Schick & Schütze 2021, sec. 3.3): generations of pattern models, each retrained from the base on its
labelled data plus unlabelled examples pseudo-labelled by the ensemble of the other patterns' models of the
previous generation, the pseudo-labelled set growing by a scale factor per generation; the last generation is
ensembled and distilled as in PET (`tasks.prompting.pet`).
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from tasks.prompting.pet import (check_data, ensemble_and_distill, pattern_distributions, pattern_setup,
                                 pattern_weights, soft_labels, train_pattern_models)
from tasks.prompting.problem import FewShotData, MethodResult, Problem, Setting
from text2text import peft as peft_lib
from text2text.errors import UserError


def pseudo_labels(distribution: np.ndarray, per_class: int) -> Tuple[np.ndarray, np.ndarray]:
    """(rows int [m], hard labels int [m]) of a class-balanced pseudo-labelled set from an ensemble's class
    distribution [n, C]: for each class its `per_class` most confident examples by the probability of that class,
    taken in turns (class 0, 1, ..., 0, 1, ...) so no example is used twice; per_class is capped at n // C, so
    m = C x min(per_class, n // C)."""
    n, num_classes = distribution.shape
    per_class = min(per_class, n // num_classes)
    orders = [iter(np.argsort(-distribution[:, c], kind="stable")) for c in range(num_classes)]
    used = np.zeros(n, bool)
    rows, labels = [], []
    for _ in range(per_class):
        for cls in range(num_classes):
            row = next(r for r in orders[cls] if not used[r])
            used[row] = True
            rows.append(row)
            labels.append(cls)
    return np.asarray(rows, np.int64), np.asarray(labels, np.int64)


def other_weights(weights: np.ndarray, pattern: int) -> np.ndarray:
    """The ensemble weights [patterns] without `pattern` (its weight 0), renormalised (uniform over the others if
    they are all 0)."""
    others = np.asarray(weights, np.float64).copy()
    others[pattern] = 0.0
    if others.sum() <= 0.0:
        others = np.ones_like(others)
        others[pattern] = 0.0
    return others / others.sum()


def ipet(setting: Setting, problem: Problem, data: FewShotData, seed: int, *, generations: int = 3,
         scale_factor: int = 5, alpha: float = 1e-4, weighting: str = "accuracy", temperature: float = 2.0,
         peft: Optional[peft_lib.PeftConfig] = None, peft_learning_rate: Optional[float] = None,
         distill_steps: Optional[int] = None, distill_peft: Optional[peft_lib.PeftConfig] = None) -> MethodResult:
    """iPET: generation 0 is PET's pattern models (see `pet.pet` for alpha, weighting, temperature, peft and the
    distillation options); in generation g = 1..generations pattern i is retrained from the base on data.train
    plus len(data.train) x scale_factor**g examples of data.unlabelled (capped at the set's size), class-balanced
    and hard-labelled by the other patterns' generation g-1 ensemble (weights of `weighting`, renormalised). The
    last generation is ensembled and distilled. details["pseudo_labelled_class_counts"][g-1][i] counts pattern
    i's pseudo labels per class. UserError as in PET, and for fewer than 2 patterns, generations < 1 or
    scale_factor < 1."""
    check_data(problem, data, "iPET")
    if len(problem.templates) < 2 or generations < 1 or scale_factor < 1:
        raise UserError(f"iPET on {problem.name!r} needs >= 2 patterns (has {len(problem.templates)}), "
                        f"generations >= 1 (got {generations}) and scale_factor >= 1 (got {scale_factor})")
    setup = pattern_setup(setting, peft, seed, peft_learning_rate if peft is not None else None)
    num_patterns, classes = len(problem.templates), problem.verbalizer.classes
    models = train_pattern_models(setting, problem, setup, [data.train] * num_patterns, seed, alpha=alpha,
                                  unlabelled=data.unlabelled)
    zero_shot = [m.zero_shot_accuracy for m in models]
    weights = pattern_weights(models, weighting)
    counts: List[List[List[int]]] = []
    for generation in range(1, generations + 1):
        distributions = pattern_distributions(setup, problem, models, data.unlabelled, temperature)
        per_class = len(data.train) * scale_factor ** generation // len(classes)
        training_sets, generation_counts = [], []
        for pattern in range(num_patterns):
            rows, labels = pseudo_labels(soft_labels(distributions, other_weights(weights, pattern)), per_class)
            pseudo = [{**data.unlabelled[r], problem.label_key: classes[c]} for r, c in zip(rows, labels)]
            training_sets.append(list(data.train) + pseudo)
            generation_counts.append(np.bincount(labels, minlength=len(classes)).tolist())
        counts.append(generation_counts)
        generation_seed = int(np.random.SeedSequence((seed, generation)).generate_state(1)[0])
        models = train_pattern_models(setting, problem, setup, training_sets, generation_seed, alpha=alpha,
                                      unlabelled=data.unlabelled, zero_shot=zero_shot)
    extra: Any = {"generations": generations, "scale_factor": scale_factor, "pseudo_labelled_class_counts": counts}
    return ensemble_and_distill(setting, problem, data, seed, setup, models, weighting=weighting,
                                temperature=temperature, distill_steps=distill_steps, distill_peft=distill_peft,
                                **extra)


__all__ = ["ipet", "other_weights", "pseudo_labels"]
