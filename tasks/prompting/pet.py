"""PET (Schick & Schütze 2021, "Exploiting Cloze Questions for Few Shot Text Classification and Natural Language
Inference", sec. 3): one model per pattern-verbalizer pair trained on the labelled examples, their ensemble's soft
labels on unlabelled data, and a final model distilled from them.

For T5 a pair's class distribution is the softmax over the classes' target log-likelihoods (engine). A pattern
model is trained with L = (1 - alpha) * CE + alpha * LM (sec. 3.1), the auxiliary LM loss being T5's span
corruption on the unlabelled examples' text. It is full fine-tuning of the base or a `text2text.peft` method; with
a PEFT method only the method's leaves are kept per pattern, so N patterns are N small trees. The ensemble
(sec. 3.2) weights each pattern uniformly or by its accuracy on the labelled set before training, averages the
patterns' class scores and takes the temperature-T softmax of that average as soft labels, and a model is distilled
on them by minimising the KL to them through rank classification under the main pattern. iPET is in
`tasks.prompting.ipet`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import optax
from flax import traverse_util

from tasks.prompting import engine
from tasks.prompting.core import Example, Template
from tasks.prompting.problem import FewShotData, MethodResult, Problem, Setting, details, evaluate
from tasks.span_corruption import MEAN_NOISE_SPAN_LENGTH, NOISE_DENSITY, random_spans_helper
from tasks.vocab import EOS_ID
from text2text import peft as peft_lib
from text2text.errors import UserError

WEIGHTINGS = ("accuracy", "uniform")


def noise_spans(length: int, rng: np.random.Generator, noise_density: float = NOISE_DENSITY,
                mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> List[Tuple[int, int]]:
    """[(start, end)] of the noise spans of a text of `length` >= 2 tokens (Raffel et al. 2019, sec. 3.1.4):
    round(length * density) noise tokens (at least 1, at most length - 1) in round(noise / mean) spans, kept and
    noise runs alternating from a kept run, every split of the counts into positive runs equally likely."""
    num_noise = int(np.clip(round(length * noise_density), 1, length - 1))
    num_spans = int(min(max(1, round(num_noise / mean_noise_span_length)), length - num_noise))

    def parts(total):
        cuts = np.sort(rng.choice(np.arange(1, total), num_spans - 1, replace=False))
        return np.diff(np.concatenate([[0], cuts, [total]]))

    spans, position = [], 0
    for kept, noise in zip(parts(length - num_noise), parts(num_noise)):
        position += int(kept)
        spans.append((position, position + int(noise)))
        position += int(noise)
    return spans


def corrupt_spans(tokens: Sequence[int], spans: Sequence[Tuple[int, int]],
                  sentinel_ids: Sequence[int]) -> Tuple[List[int], List[int]]:
    """(inputs, targets) token ids without EOS: span i is replaced in the inputs by sentinel_ids[i], and the
    targets list each sentinel followed by the span it hides (T5's span corruption)."""
    inputs, targets, position = [], [], 0
    for i, (start, end) in enumerate(spans):
        inputs += list(tokens[position:start]) + [sentinel_ids[i]]
        targets += [sentinel_ids[i]] + list(tokens[start:end])
        position = end
    return inputs + list(tokens[position:]), targets


def sentinel_ids(prompt_model: engine.PromptModel, count: int) -> List[int]:
    """Ids of <extra_id_0> ... <extra_id_{count-1}> (vocab_size - 1, - 2, ...); UserError if the vocabulary has none."""
    size = prompt_model.vocabulary.vocab_size
    if list(prompt_model.vocabulary.encode("<extra_id_0>")) != [size - 1]:
        raise UserError("auxiliary span corruption needs a vocabulary with sentinels <extra_id_i> (extra_ids > 0)")
    return [size - 1 - i for i in range(count)]


def span_corruption_batches(prompt_model: engine.PromptModel, texts: Sequence[str], batch_size: int, seed: int,
                            noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> Callable[[int], engine.Batch]:
    """`lm_batches(step)` for engine.train: `batch_size` texts drawn with numpy seeded by (seed, step), each cut
    to the raw tokens whose corruption fits the model's input length (tasks.span_corruption.random_spans_helper)
    and span-corrupted; int32 inputs [batch_size, inputs length], targets [batch_size, that helper's targets
    length], EOS-terminated and 0-padded. Texts of fewer than 2 tokens are skipped; UserError if none is left."""
    inputs_length = prompt_model.feature_lengths["inputs"]
    raw_length, targets_length = random_spans_helper(inputs_length, noise_density, mean_noise_span_length)
    documents = [ids[:raw_length] for ids in (prompt_model.encode(t, "unlabelled text") for t in texts)
                 if len(ids) >= 2]
    if not documents:
        raise UserError("auxiliary span corruption: no unlabelled text has 2 or more tokens")
    sentinels = sentinel_ids(prompt_model, raw_length)

    def lm_batches(step: int) -> engine.Batch:
        rng = np.random.default_rng((seed, step))
        rows = rng.choice(len(documents), batch_size, replace=len(documents) < batch_size)
        enc = np.zeros((batch_size, inputs_length), np.int32)
        dec = np.zeros((batch_size, targets_length), np.int32)
        for i, row in enumerate(rows):
            tokens = documents[row]
            spans = noise_spans(len(tokens), rng, noise_density, mean_noise_span_length)
            inputs, targets = corrupt_spans(tokens, spans, sentinels)
            enc[i, :len(inputs) + 1] = inputs + [EOS_ID]
            dec[i, :len(targets) + 1] = targets + [EOS_ID]
        return prompt_model.pair_batch(enc, dec)

    return lm_batches


@dataclasses.dataclass(frozen=True, eq=False)
class PatternSetup:
    """What every pattern model of one run starts from: the PromptModel (the base's, or one with PEFT parameters),
    the initial params (the base, plus the PEFT method's initialisation) and the optimizer (built once, so
    engine's compiled step is shared by all patterns)."""
    prompt_model: engine.PromptModel
    init: Any
    tx: optax.GradientTransformation
    peft: Optional[peft_lib.PeftConfig] = None

    def kept(self, params: Any) -> Any:
        """What is kept of a trained model: its PEFT leaves {'/'-joined path: float32 array}, or all params."""
        return params if self.peft is None else peft_lib.peft_leaves(params, self.peft)

    def full_params(self, kept: Any) -> Any:
        """The full param tree of a kept model (PEFT leaves put onto the initial params)."""
        if self.peft is None:
            return kept
        flat = dict(traverse_util.flatten_dict(self.init, sep="/"))
        flat.update(kept)
        return traverse_util.unflatten_dict(flat, sep="/")


@functools.lru_cache(maxsize=None)
def _optimizer(learning_rate: float, peft: Optional[peft_lib.PeftConfig]) -> optax.GradientTransformation:
    tx = engine.default_optimizer(learning_rate)
    return tx if peft is None else peft_lib.peft_optimizer(tx, peft=peft)


def pattern_setup(setting: Setting, peft: Optional[peft_lib.PeftConfig] = None, seed: int = 0,
                  learning_rate: Optional[float] = None) -> PatternSetup:
    """Full fine-tuning of `setting.base` (peft None) or `peft` on it (PEFT leaves initialised with `seed`, base
    leaves from setting.base_params), with Adafactor at `learning_rate` (default setting.learning_rate)."""
    rate = float(setting.learning_rate if learning_rate is None else learning_rate)
    if peft is None:
        return PatternSetup(setting.base, setting.base_params, _optimizer(rate, None))
    prompt_model = engine.peft_variant(setting.base, peft)
    init = engine.init_params(prompt_model, seed=seed)
    init = peft_lib.with_base_params(init, setting.base_params, prompt_model.model.config, seed)
    return PatternSetup(prompt_model, init, _optimizer(rate, peft), peft)


@dataclasses.dataclass(frozen=True)
class PatternModel:
    """A trained pattern model: its pattern, its percent accuracy on the labelled set before training, what is kept
    of its params (PatternSetup.kept) and its per-step training losses (float [steps]: total, auxiliary LM)."""
    template: Template
    zero_shot_accuracy: float
    params: Any
    losses: np.ndarray
    lm_losses: np.ndarray


def check_data(problem: Problem, data: FewShotData, method: str) -> None:
    """UserError (one line naming the problem and class) for an empty unlabelled set or a class without labelled
    examples."""
    if not data.unlabelled:
        raise UserError(f"{method} on {problem.name!r}: the unlabelled set is empty")
    present = set(problem.labels(data.train).tolist())
    for index, cls in enumerate(problem.verbalizer.classes):
        if index not in present:
            raise UserError(f"{method} on {problem.name!r}: no labelled example of class {cls!r}")


def train_pattern_models(setting: Setting, problem: Problem, setup: PatternSetup,
                         training_sets: Sequence[Sequence[Example]], seed: int, *, alpha: float = 0.0,
                         unlabelled: Sequence[Example] = (), zero_shot: Optional[Sequence[float]] = None
                         ) -> List[PatternModel]:
    """One model per pattern (problem.templates[i] with the verbalizer), trained from setup.init on
    training_sets[i] (labelled rows, hard labels under problem.label_key) for setting.steps steps of
    setting.batch_size, plus alpha x span corruption of `unlabelled`'s text (PET sec. 3.1). zero_shot[i], when
    given, is pattern i's accuracy before training; otherwise it is measured on training_sets[i]. UserError for
    alpha > 0 with a class-head (linear probe) model, which has no LM."""
    lm_batches = None
    if alpha > 0.0 and setup.prompt_model.has_class_head:
        raise UserError(f"PET on {problem.name!r}: a linear-probe pattern model has no LM loss; set alpha=0")
    if alpha > 0.0:
        lm_batches = span_corruption_batches(setup.prompt_model, problem.texts(unlabelled),
                                             setting.batch_size, seed)
    models = []
    for i, template in enumerate(problem.templates):
        task = problem.class_task(training_sets[i], template)
        before = engine.accuracy(setup.prompt_model, setup.init, task) if zero_shot is None else zero_shot[i]
        result = engine.train(setup.prompt_model, setup.init, task, setting.steps, setting.batch_size, tx=setup.tx,
                              seed=int(np.random.SeedSequence((seed, i)).generate_state(1)[0]), alpha=alpha,
                              lm_batches=lm_batches)
        models.append(PatternModel(template, before, setup.kept(result.params), result.losses, result.lm))
    return models


def pattern_scores(setup: PatternSetup, problem: Problem, models: Sequence[PatternModel],
                   examples: Sequence[Example]) -> np.ndarray:
    """float64 [patterns, n, C]: each pattern model's class scores s_p(l|x) on `examples` under its own pattern,
    the classes' target log-likelihoods (engine.class_log_likelihoods; T5's counterpart of PET's unnormalised
    verbalizer-token logits)."""
    out = []
    for model in models:
        inputs = [model.template.format_inputs(ex) for ex in examples]
        targets = [model.template.format_targets(words) for _, words in problem.verbalizer.words]
        out.append(engine.class_log_likelihoods(setup.prompt_model, setup.full_params(model.params), inputs,
                                                targets))
    return np.stack(out)


def check_weighting(weighting: str) -> None:
    """UserError unless `weighting` (how the pattern models' ensemble is weighted) is one of WEIGHTINGS."""
    if weighting not in WEIGHTINGS:
        raise UserError(f"PET weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")


def pattern_weights(models: Sequence[PatternModel], weighting: str = "accuracy") -> np.ndarray:
    """float64 [patterns] summing to 1: uniform, or each pattern's accuracy on the labelled set before training
    (PET sec. 3.2), normalised (uniform if every accuracy is 0). UserError for another weighting."""
    check_weighting(weighting)
    weights = np.ones(len(models))
    if weighting == "accuracy":
        accuracies = np.asarray([m.zero_shot_accuracy for m in models], np.float64)
        weights = accuracies if accuracies.sum() > 0 else weights
    return weights / weights.sum()


def soft_labels(scores: np.ndarray, weights: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float64 [n, C], rows summing to 1: the ensemble's distribution softmax(s / T), s = sum_p w_p s_p the
    weights-averaged pattern scores ([patterns, n, C], weights [patterns] summing to 1), T = `temperature` (PET
    sec. 3.2: scores are averaged before the one softmax, as PET's code merges logits; T = 2 for distillation)."""
    merged = np.tensordot(np.asarray(weights, np.float64), np.asarray(scores, np.float64), axes=1) / temperature
    merged -= merged.max(axis=1, keepdims=True)
    probs = np.exp(merged)
    return probs / probs.sum(axis=1, keepdims=True)


def distillation_task(problem: Problem, examples: Sequence[Example], labels: np.ndarray) -> engine.ClassTask:
    """`examples` under the main pattern (problem.templates[0]) with soft `labels` [n, C]."""
    template = problem.templates[0]
    return engine.ClassTask([template.format_inputs(ex) for ex in examples],
                            [template.format_targets(words) for _, words in problem.verbalizer.words], labels)


def distill(setup: PatternSetup, setting: Setting, problem: Problem, examples: Sequence[Example],
            labels: np.ndarray, steps: int, seed: int) -> engine.TrainResult:
    """The final model (PET sec. 3.2): trained from setup.init for `steps` steps of setting.batch_size on
    `examples` with soft `labels`, minimising KL(labels || model distribution); TrainResult.kl is that loss."""
    task = distillation_task(problem, examples, labels)
    return engine.train(setup.prompt_model, setup.init, task, steps, setting.batch_size, tx=setup.tx, seed=seed)


def ensemble_and_distill(setting: Setting, problem: Problem, data: FewShotData, seed: int, setup: PatternSetup,
                         models: Sequence[PatternModel], *, weighting: str, temperature: float,
                         distill_steps: Optional[int], distill_peft: Optional[peft_lib.PeftConfig],
                         **extra: Any) -> MethodResult:
    """PET's last stage for trained pattern models: soft labels of the unlabelled set, the distilled model, and a
    MethodResult of its test accuracy under the main pattern, with the patterns' and the ensemble's."""
    weights = pattern_weights(models, weighting)
    labels = soft_labels(pattern_scores(setup, problem, models, data.unlabelled), weights, temperature)
    final_setup = pattern_setup(setting, distill_peft, seed)
    result = distill(final_setup, setting, problem, data.unlabelled, labels, distill_steps or setting.steps, seed)
    test_labels = problem.labels(data.test)
    test_ensemble = soft_labels(pattern_scores(setup, problem, models, data.test), weights)
    pattern_accuracy = [evaluate(setup.prompt_model, setup.full_params(m.params), problem, data.test, m.template)
                        for m in models]
    info: Dict[str, Any] = details(
        templates=[m.template.inputs for m in models], pattern_weights=weights.tolist(),
        zero_shot_train_accuracy=[m.zero_shot_accuracy for m in models], pattern_test_accuracy=pattern_accuracy,
        ensemble_test_accuracy=100.0 * float(np.mean(np.argmax(test_ensemble, axis=1) == test_labels)),
        distill_kl=float(result.kl[-1]), template=problem.templates[0], **extra)
    return MethodResult(evaluate(final_setup.prompt_model, result.params, problem, data.test), info)


def pet(setting: Setting, problem: Problem, data: FewShotData, seed: int, *, alpha: float = 1e-4,
        weighting: str = "accuracy", temperature: float = 2.0, peft: Optional[peft_lib.PeftConfig] = None,
        peft_learning_rate: Optional[float] = None, distill_steps: Optional[int] = None,
        distill_peft: Optional[peft_lib.PeftConfig] = None) -> MethodResult:
    """PET: a model per pattern of `problem` (full fine-tuning, or `peft` at peft_learning_rate, default
    setting.learning_rate) on data.train with alpha x auxiliary span corruption of data.unlabelled (PET's
    alpha = 1e-4), the ensemble's temperature-`temperature` soft labels of data.unlabelled weighted by `weighting`
    ('accuracy' or 'uniform'), and a model distilled on them for distill_steps (default setting.steps) steps
    (full fine-tuning, or `distill_peft`). Accuracy: the distilled model's on data.test under templates[0].
    UserError for an unknown weighting (before anything trains), an empty unlabelled set or a class without
    labelled examples."""
    check_weighting(weighting)
    check_data(problem, data, "PET")
    setup = pattern_setup(setting, peft, seed, peft_learning_rate if peft is not None else None)
    models = train_pattern_models(setting, problem, setup, [data.train] * len(problem.templates), seed,
                                  alpha=alpha, unlabelled=data.unlabelled)
    return ensemble_and_distill(setting, problem, data, seed, setup, models, weighting=weighting,
                                temperature=temperature, distill_steps=distill_steps, distill_peft=distill_peft)


__all__ = ["PatternModel", "PatternSetup", "check_data", "check_weighting", "corrupt_spans", "distill",
           "distillation_task", "ensemble_and_distill", "noise_spans", "pattern_scores", "pattern_setup",
           "pattern_weights", "pet", "sentinel_ids", "soft_labels", "span_corruption_batches", "train_pattern_models"]
