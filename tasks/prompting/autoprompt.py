"""AutoPrompt (Shin et al. 2020): trigger tokens in a template found by gradient-guided search, for T5.

A template marks trigger slots with "[T]":  Template("{text} [T] [T] [T] <extra_id_0>").  Each search step takes one
trigger position j (at random), and (sec. 2.2 of the paper):
  1. computes the gradient g_j of the class-distribution loss (engine's KL to the labels, i.e. the cross-entropy of
     the softmax over the classes' target log-likelihoods) w.r.t. the input embedding at slot j, averaged over a
     batch of training examples;
  2. ranks the vocabulary by -(g_j . e_w), the first-order estimate of the loss change when token w takes the slot,
     and keeps the top `candidates` tokens that are usable (see `usable_tokens`);
  3. evaluates the real loss of every candidate on another batch and keeps the best if it beats the current token.
Slots are filled through P-tuning's hook (text2text.peft.p_tuning, encoder 'none'): slot j holds a marker token
whose input embedding is row j of a table set to the trigger tokens' embeddings, which is exactly the plain T5 on
the text with the trigger words written in. The label words stay the problem's verbalizer. The result is a
printable Template with the trigger words as text; the few-shot method evaluates it zero-shot on the frozen base
(AutoPrompt's setting), optionally after prompt-based fine-tuning.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import vocab as vocab_lib
from tasks.prompting import engine
from tasks.prompting.core import SENTINEL, Example, Template
from tasks.prompting.p_tuning import p_tuning_model, virtual_tokens
from tasks.prompting.problem import FewShotData, MethodResult, Problem, Setting, details, evaluate
from text2text import peft
from text2text.errors import UserError
from text2text.peft.p_tuning import with_prompt_encoder

TRIGGER = "[T]"
_FORBIDDEN_TEXT = ("{", "}", TRIGGER, "<extra_id_", " ")  # would break Template formatting or the slots


def check_template(template: Template) -> int:
    """Number of trigger slots of `template`; UserError naming the template if it has no [T] or no <extra_id_0>."""
    slots = template.inputs.count(TRIGGER)
    if not slots or SENTINEL not in template.inputs:
        raise UserError(f"AutoPrompt: template {template.inputs!r} needs trigger slots {TRIGGER} and the cloze slot "
                        f"{SENTINEL}")
    return slots


def fill(template: Template, words: Sequence[str]) -> Template:
    """`template` with its [T] slots replaced, in order, by `words`."""
    parts = template.inputs.split(TRIGGER)
    if len(parts) != len(words) + 1:
        raise UserError(f"AutoPrompt: template {template.inputs!r} has {len(parts) - 1} trigger slots, got "
                        f"{len(words)} words")
    inputs = parts[0] + "".join(word + part for word, part in zip(words, parts[1:]))
    return dataclasses.replace(template, inputs=inputs)


@functools.lru_cache(maxsize=8)
def usable_tokens(prompt_model: engine.PromptModel) -> np.ndarray:
    """bool [the model's vocab_size]: ids that may fill a trigger slot: SentencePiece pieces (no pad/EOS/unk,
    sentinels or padding rows of the embedding table) whose text re-encodes to the same single id and is safe inside
    a template."""
    vocabulary, num_rows = prompt_model.vocabulary, prompt_model.model.config.vocab_size
    pieces = int(vocabulary.vocab_size) - int(vocabulary.extra_ids)
    usable = np.zeros(num_rows, bool)
    for i in range(vocab_lib.UNK_ID + 1, min(pieces, num_rows)):
        text = vocabulary.decode([i])
        usable[i] = bool(text) and not any(bad in text for bad in _FORBIDDEN_TEXT) and \
            [int(t) for t in vocabulary.encode(text)] == [i]
    return usable


@dataclasses.dataclass(frozen=True)
class TriggerSearch:
    """A search's outcome: the filled template, the trigger ids and words, and the objective (mean class loss on
    the step's batch) of the initial triggers, then after each step (float [steps + 1])."""
    template: Template
    trigger_ids: Tuple[int, ...]
    words: Tuple[str, ...]
    losses: np.ndarray


def _class_loss(prompt_model: engine.PromptModel, base_params: Any, table: jax.Array, batch, num_classes: int):
    params = with_prompt_encoder(base_params, {"embedding": table})
    scores = prompt_model.model.score_batch(params, batch).reshape(-1, num_classes)
    return engine.kl_to_targets(jax.nn.log_softmax(scores, axis=-1), batch["class_targets"])


@functools.lru_cache(maxsize=32)
def _search_fns(prompt_model: engine.PromptModel, num_classes: int):
    """(jit loss-and-gradient w.r.t. the trigger table [m, emb], jit losses of candidate tables [k, m, emb] -> [k])."""
    loss = functools.partial(_class_loss, prompt_model, num_classes=num_classes)
    grad = jax.jit(jax.value_and_grad(loss, argnums=1))
    many = jax.jit(lambda params, tables, batch: jax.lax.map(lambda t: loss(params, t, batch), tables))
    return grad, many


def _round_trips(vocabulary, marker_template: Template, template: Template, example: Example,
                 marker_ids: Sequence[int], ids: Sequence[int]) -> bool:
    """True if the example's text under the filled template encodes to its marker encoding with markers -> ids."""
    words = [vocabulary.decode([i]) for i in ids]
    want = [dict(zip(marker_ids, ids)).get(int(t), int(t)) for t in vocabulary.encode(
        marker_template.format_inputs(example))]
    return [int(t) for t in vocabulary.encode(fill(template, words).format_inputs(example))] == want


def search_triggers(setting: Setting, problem: Problem, examples: Sequence[Example], template: Template, seed: int,
                    *, search_steps: int = 30, candidates: int = 10, batch_size: Optional[int] = None,
                    init_ids: Optional[Sequence[int]] = None) -> TriggerSearch:
    """AutoPrompt's gradient-guided trigger search (see the module docstring) on `examples` (labelled) for the
    [T] slots of `template`; batches of `batch_size` (default setting.batch_size, at most len(examples)) examples
    drawn with `seed`; initial triggers `init_ids` or usable tokens drawn with `seed`. UserError for a template
    without [T] or <extra_id_0>, no examples, or search_steps/candidates < 1."""
    slots = check_template(template)
    if not examples or search_steps < 1 or candidates < 1:
        raise UserError(f"AutoPrompt: {len(examples)} examples, search_steps={search_steps}, candidates={candidates} "
                        "(each must be >= 1)")
    vocabulary, base_params = setting.base.vocabulary, setting.base_params
    marker_texts, marker_ids = virtual_tokens(slots, vocabulary)
    marker_template = fill(template, marker_texts)
    prompt_model = p_tuning_model(setting.base, peft.PTuningConfig(num_virtual=slots, marker_ids=marker_ids,
                                                                   encoder="none"))
    task = problem.class_task(examples, marker_template)
    embedding = np.asarray(base_params["token_embedder"]["embedding"], np.float32)
    usable = usable_tokens(setting.base)
    rng = np.random.default_rng(seed)
    ids = np.asarray(init_ids if init_ids is not None else rng.choice(np.flatnonzero(usable), slots), np.int32)
    grad_fn, losses_fn = _search_fns(prompt_model, task.num_classes)
    size = min(batch_size or setting.batch_size, len(examples))

    def batch():
        return engine.training_batch(prompt_model, task, rng.choice(len(examples), size, replace=False))

    history = []
    for _ in range(search_steps):
        slot = int(rng.integers(slots))
        loss, grad = grad_fn(base_params, embedding[ids], batch())
        if not history:
            history.append(float(loss))
        scores = np.where(usable, -(embedding @ np.asarray(grad[slot])), -np.inf)
        ranked = [int(w) for w in np.argsort(-scores)[:4 * candidates] if w != ids[slot] and np.isfinite(scores[w])]
        trials = [np.where(np.arange(slots) == slot, w, ids) for w in ranked]
        trials = [t for t in trials if _round_trips(vocabulary, marker_template, template, examples[0], marker_ids,
                                                    t)][:candidates]
        trials += [ids] * (candidates - len(trials))  # a fixed shape (one compiled program); ties keep the current
        losses = np.asarray(losses_fn(base_params, embedding[np.stack([ids, *trials])], batch()))
        best = int(np.argmin(losses))
        if best > 0:
            ids = trials[best - 1]
        history.append(float(losses[best]))
    words = tuple(vocabulary.decode([int(i)]) for i in ids)
    return TriggerSearch(fill(template, words), tuple(int(i) for i in ids), words, np.asarray(history))


def class_loss(prompt_model: engine.PromptModel, params: Any, task: engine.ClassTask) -> float:
    """Mean KL(labels || class distribution) of `task` (AutoPrompt's objective; the cross-entropy for hard labels)."""
    scores = engine.class_log_likelihoods(prompt_model, params, task.inputs, task.class_targets)
    return float(engine.kl_to_targets(jax.nn.log_softmax(jnp.asarray(scores), axis=-1), jnp.asarray(task.labels)))


def default_template(problem: Problem, num_triggers: int) -> Template:
    """AutoPrompt's template shape: the problem's text fields, `num_triggers` [T] slots, the cloze slot (targets as
    problem.templates[0])."""
    fields = " ".join(f"{{{name}}}" for name in problem.text_fields)
    return Template(f"{fields} {' '.join([TRIGGER] * num_triggers)} {SENTINEL}", problem.templates[0].targets)


@functools.lru_cache(maxsize=None)
def _finetune_optimizer(learning_rate: float) -> optax.GradientTransformation:
    return engine.default_optimizer(learning_rate)


def autoprompt(setting: Setting, problem: Problem, data: FewShotData, seed: int, *, num_triggers: int = 3,
               search_steps: int = 30, candidates: int = 10, template: Union[Template, str, None] = None,
               finetune: bool = False, steps: Optional[int] = None) -> MethodResult:
    """AutoPrompt few-shot method: search `num_triggers` triggers (or the [T] slots of `template`; default
    `default_template`) on data.train, then test accuracy zero-shot on the frozen base with the found template, or,
    with finetune=True, after prompt-based fine-tuning of the whole model for `steps` (default setting.steps).
    details: template, triggers, search objective before/after, dev accuracy."""
    if template is None:
        template = default_template(problem, num_triggers)
    elif isinstance(template, str):
        template = Template(template, problem.templates[0].targets)
    found = search_triggers(setting, problem, data.train, template, seed, search_steps=search_steps,
                            candidates=candidates)
    params = setting.base_params
    if finetune:
        params = engine.train(setting.base, params, problem.class_task(data.train, found.template),
                              steps or setting.steps, setting.batch_size,
                              tx=_finetune_optimizer(setting.learning_rate), seed=seed).params
    dev = evaluate(setting.base, params, problem, data.dev, found.template) if data.dev else None
    return MethodResult(evaluate(setting.base, params, problem, data.test, found.template),
                        details(template=found.template, triggers=list(found.words), dev_accuracy=dev,
                                search_loss=[float(found.losses[0]), float(found.losses[-1])]))


__all__ = ["TRIGGER", "check_template", "fill", "usable_tokens", "TriggerSearch", "search_triggers", "class_loss",
           "default_template", "autoprompt"]
