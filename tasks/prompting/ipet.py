"""iPET (Schick & Schütze 2021, sec. 3.3): generations of pattern models, each retrained from the base on its
labelled data plus unlabelled examples pseudo-labelled by the ensemble of the other patterns' models of the
previous generation, the whole training set growing by a scale factor d per generation (d**g times the labelled
set in generation g, with its class ratio); the last generation is ensembled and distilled as in PET
(`tasks.prompting.pet`). With one model per pattern, every other pattern's model labels (PET's code samples a
fraction, 0.25 by default, of the previous generation's models, which hold several repetitions per pattern).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from tasks.prompting.pet import (check_data, check_weighting, ensemble_and_distill, pattern_scores, pattern_setup,
                                 pattern_weights, soft_labels, train_pattern_models)
from tasks.prompting.problem import FewShotData, MethodResult, Problem, Setting
from text2text import peft as peft_lib
from text2text.errors import UserError


def pseudo_labels(distribution: np.ndarray, per_class: Sequence[int],
                  rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(rows int [m], hard labels int [m]) of iPET's pseudo-labelled set (sec. 3.3, as PET's code draws it) from an
    ensemble's class distribution [n, C]: every example is labelled with its most likely class, and class c gets
    per_class[c] rows drawn without replacement from the examples labelled c, each with probability proportional
    to its probability of c. Where fewer examples are labelled c than per_class[c], they are repeated until there
    are enough (each copy is drawn at most once); a class no example is labelled with gets none, so
    m <= sum(per_class). ValueError for per_class of another length than C."""
    n, num_classes = distribution.shape
    if len(per_class) != num_classes:
        raise ValueError(f"per_class has {len(per_class)} counts for {num_classes} classes")
    predicted = np.argmax(distribution, axis=1)
    rows, labels = [], []
    for cls, count in enumerate(per_class):
        candidates = np.flatnonzero(predicted == cls)
        if count < 1 or not len(candidates):
            continue
        pool = np.tile(candidates, -(-count // len(candidates)))
        weights = distribution[pool, cls]
        rows.append(pool[rng.choice(len(pool), size=count, replace=False, p=weights / weights.sum())])
        labels.append(np.full(count, cls))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(labels).astype(np.int64)


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
    plus len(data.train) x (scale_factor**g - 1) examples of data.unlabelled drawn by `pseudo_labels` (per class,
    that class's labelled count x (scale_factor**g - 1)), hard-labelled by the other patterns' generation g-1
    ensemble (weights of `weighting`, renormalised; its softmax at temperature 1, as PET's code labels). The
    last generation is ensembled and distilled. details["pseudo_labelled_class_counts"][g-1][i] counts pattern
    i's pseudo labels per class. UserError as in PET, and for fewer than 2 patterns, generations < 1 or
    scale_factor < 1."""
    check_weighting(weighting)
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
    labelled = np.bincount(problem.labels(data.train), minlength=len(classes))
    counts: List[List[List[int]]] = []
    for generation in range(1, generations + 1):
        scores = pattern_scores(setup, problem, models, data.unlabelled)
        per_class = [int(count * (scale_factor ** generation - 1)) for count in labelled]
        training_sets, generation_counts = [], []
        for pattern in range(num_patterns):
            rng = np.random.default_rng(np.random.SeedSequence((seed, generation, pattern)))
            rows, labels = pseudo_labels(soft_labels(scores, other_weights(weights, pattern)), per_class, rng)
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
