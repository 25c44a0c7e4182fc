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
the text with the trigger words written in. The result is a printable Template with the trigger words as text;
the few-shot method evaluates it zero-shot on the frozen base (AutoPrompt's setting), optionally after prompt-based
fine-tuning.

Label words are the problem's verbalizer, or searched as in sec. 2.3: a logistic regression p(y | h) is fitted to
the decoder's final hidden state h at the position that predicts the label's first token, and each class takes the
usable token w whose output embedding o_w scores highest, s(y, w) = log softmax_y(W o_w + b).
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
from tasks.prompting.core import SENTINEL, Example, Template, Verbalizer
from tasks.prompting.p_tuning import p_tuning_model, virtual_tokens
from tasks.prompting.problem import FewShotData, MethodResult, Problem, Setting, details, evaluate
from text2text import peft
from text2text.errors import UserError
from text2text.peft.p_tuning import with_prompt_encoder

TRIGGER = "[T]"
_FORBIDDEN_TEXT = ("{", "}", TRIGGER, "<extra_id_", " ")  # would break Template formatting or the slots


def check_template(template: Template) -> int:
    """Number of trigger slots of `template`; UserError naming the template if it has no [T] (or fails
    Template.check: a cloze pattern without <extra_id_0>)."""
    slots = template.inputs.count(TRIGGER)
    if not slots:
        raise UserError(f"AutoPrompt: template {template.inputs!r} needs trigger slots {TRIGGER}")
    template.check()
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


def random_triggers(prompt_model: engine.PromptModel, num: int, rng: np.random.Generator) -> np.ndarray:
    """int [num]: usable tokens drawn with `rng` (initial, or baseline, triggers)."""
    return rng.choice(np.flatnonzero(usable_tokens(prompt_model)), num)


def _round_trips(vocabulary, marker_template: Template, template: Template, example: Example,
                 marker_ids: Sequence[int], ids: Sequence[int]) -> bool:
    """True if the example's text under the filled template encodes to its marker encoding with markers -> ids."""
    words = [vocabulary.decode([i]) for i in ids]
    want = [dict(zip(marker_ids, ids)).get(int(t), int(t)) for t in vocabulary.encode(
        marker_template.format_inputs(example))]
    return [int(t) for t in vocabulary.encode(fill(template, words).format_inputs(example))] == want


def search_triggers(setting: Setting, problem: Problem, examples: Sequence[Example], template: Template, seed: int,
                    *, search_steps: int = 30, candidates: int = 10, batch_size: Optional[int] = None,
                    init_ids: Optional[Sequence[int]] = None,
                    verbalizer: Optional[Verbalizer] = None) -> TriggerSearch:
    """AutoPrompt's gradient-guided trigger search (see the module docstring) on `examples` (labelled) for the
    [T] slots of `template`, with label words `verbalizer` (default the problem's). Each step draws (with `seed`)
    a gradient batch and an evaluation batch of `batch_size` examples (default setting.batch_size, at most
    len(examples)); initial triggers `init_ids`, else usable tokens drawn with `seed`. UserError for a template
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
    task = problem.class_task(examples, marker_template, verbalizer)
    embedding = np.asarray(base_params["token_embedder"]["embedding"], np.float32)
    usable = usable_tokens(setting.base)
    rng = np.random.default_rng(seed)
    ids = np.asarray(init_ids if init_ids is not None else random_triggers(setting.base, slots, rng), np.int32)
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


@functools.lru_cache(maxsize=8)
def _decoder_states_fn(prompt_model: engine.PromptModel):
    """jit (params, encoder tokens [b, Li], decoder inputs [b, Lt]) -> decoder final hidden states [b, Lt, emb]."""
    module = prompt_model.model.module

    def states(params, enc, dec):
        _, captured = module.apply({"params": params}, enc, dec, enable_dropout=False, mutable=["intermediates"],
                                   capture_intermediates=lambda m, _: m.name == "decoder_norm")
        return captured["intermediates"]["decoder"]["decoder_norm"]["__call__"][0]

    return jax.jit(states)


def label_states(prompt_model: engine.PromptModel, params: Any, inputs: Sequence[str], template: Template
                 ) -> np.ndarray:
    """float32 [n, emb]: the decoder's final hidden state (before the output projection) at the position that
    predicts the first label token, for each prompt text in `inputs` (decoder input: the targets' text before
    "{label}"), computed in batches of prompt_model.batch_size."""
    prefix = template.targets.split("{label}")[0].strip()
    prefix_ids = [int(i) for i in prompt_model.vocabulary.encode(prefix)] if prefix else []
    enc = prompt_model.tokens(inputs, prompt_model.feature_lengths["inputs"], "input")
    dec = np.zeros((prompt_model.batch_size, len(prefix_ids) + 1), np.int32)
    dec[:, 1:] = prefix_ids
    fn, out = _decoder_states_fn(prompt_model), []
    for start in range(0, len(enc), prompt_model.batch_size):
        chunk = enc[start:start + prompt_model.batch_size]
        padded = np.pad(chunk, ((0, prompt_model.batch_size - len(chunk)), (0, 0)))
        out.append(np.asarray(fn(params, padded, dec), np.float32)[:len(chunk), len(prefix_ids)])
    return np.concatenate(out)


def output_embeddings(params: Any, config: Any) -> np.ndarray:
    """float32 [vocab, emb]: o_w with logit_w = h . o_w (tied: embedding / sqrt(emb_dim); else logits_dense)."""
    if config.logits_via_embedding:
        return np.asarray(params["token_embedder"]["embedding"], np.float32) / np.sqrt(config.emb_dim)
    return np.asarray(params["decoder"]["logits_dense"]["kernel"], np.float32).T


def fit_logistic(features: np.ndarray, labels: np.ndarray, num_classes: int, steps: int = 300,
                 learning_rate: float = 0.05, l2: float = 1e-3) -> Tuple[np.ndarray, np.ndarray]:
    """(W [C, d], b [C]) of a multinomial logistic regression on features [n, d] (labels int [n]), full-batch Adam
    on the mean cross-entropy + l2 * |W|^2."""
    x, y = jnp.asarray(features), jax.nn.one_hot(labels, num_classes)
    tx = optax.adam(learning_rate)

    def loss(wb):
        log_probs = jax.nn.log_softmax(x @ wb[0].T + wb[1])
        return -jnp.mean(jnp.sum(y * log_probs, axis=1)) + l2 * jnp.sum(wb[0] ** 2)

    @jax.jit
    def fit(wb):
        def step(carry, _):
            wb, state = carry
            updates, state = tx.update(jax.grad(loss)(wb), state, wb)
            return (optax.apply_updates(wb, updates), state), None
        return jax.lax.scan(step, (wb, tx.init(wb)), None, length=steps)[0][0]

    w, b = fit((jnp.zeros((num_classes, x.shape[1])), jnp.zeros(num_classes)))
    return np.asarray(w), np.asarray(b)


def search_label_words(setting: Setting, problem: Problem, examples: Sequence[Example], template: Template
                       ) -> Verbalizer:
    """AutoPrompt's label token selection (sec. 2.3; see the module docstring): one usable token per class (distinct
    across classes), for the prompt `template` (its [T] slots already filled) on labelled `examples`."""
    inputs = [template.format_inputs(ex) for ex in examples]
    labels = problem.labels(examples)
    classes = problem.verbalizer.classes
    w, b = fit_logistic(label_states(setting.base, setting.base_params, inputs, template), labels, len(classes))
    log_probs = jax.nn.log_softmax(output_embeddings(setting.base_params, setting.base.model.config) @ w.T + b)
    scores = np.where(usable_tokens(setting.base)[:, None], np.asarray(log_probs), -np.inf)  # s(y, w) [vocab, C]
    chosen: list = []
    for c in range(len(classes)):
        chosen.append(next(int(t) for t in np.argsort(-scores[:, c]) if int(t) not in chosen))
    return Verbalizer([(cls, setting.base.vocabulary.decode([t])) for cls, t in zip(classes, chosen)])


def class_loss(prompt_model: engine.PromptModel, params: Any, task: engine.ClassTask) -> float:
    """Mean KL(labels || class distribution) of `task` (AutoPrompt's objective; the cross-entropy for hard labels)."""
    scores = engine.class_log_likelihoods(prompt_model, params, task.inputs, task.class_targets)
    return float(engine.kl_to_targets(jax.nn.log_softmax(jnp.asarray(scores), axis=-1), jnp.asarray(task.labels)))


def default_template(problem: Problem, num_triggers: int) -> Template:
    """AutoPrompt's template shape: the problem's text fields, `num_triggers` [T] slots, then the answer (the
    cloze slot for a cloze problems.templates[0]; targets as that template's)."""
    fields = " ".join(f"{{{name}}}" for name in problem.text_fields)
    main = problem.templates[0]
    inputs = f"{fields} {' '.join([TRIGGER] * num_triggers)}"
    return Template(f"{inputs} {SENTINEL}" if main.is_cloze else inputs, main.targets)


@functools.lru_cache(maxsize=None)
def _finetune_optimizer(learning_rate: float) -> optax.GradientTransformation:
    return engine.default_optimizer(learning_rate)


def autoprompt(setting: Setting, problem: Problem, data: FewShotData, seed: int, *, num_triggers: int = 3,
               search_steps: int = 30, candidates: int = 10, template: Union[Template, str, None] = None,
               search_labels: bool = False, finetune: bool = False, steps: Optional[int] = None) -> MethodResult:
    """AutoPrompt few-shot method: search `num_triggers` triggers (or the [T] slots of `template`; default
    `default_template`) on data.train, then test accuracy zero-shot on the frozen base with the found template, or,
    with finetune=True, after prompt-based fine-tuning of the whole model for `steps` (default setting.steps).
    search_labels: first pick label words (`search_label_words`, under the initial triggers) instead of the
    problem's verbalizer. details: template, triggers, label words, search objective before/after, dev accuracy."""
    if template is None:
        template = default_template(problem, num_triggers)
    elif isinstance(template, str):
        template = Template(template, problem.templates[0].targets)
    init_ids = random_triggers(setting.base, check_template(template), np.random.default_rng(seed))
    verbalizer = problem.verbalizer
    if search_labels:
        words = [setting.base.vocabulary.decode([int(i)]) for i in init_ids]
        verbalizer = search_label_words(setting, problem, data.train, fill(template, words))
    found = search_triggers(setting, problem, data.train, template, seed, search_steps=search_steps,
                            candidates=candidates, init_ids=init_ids, verbalizer=verbalizer)
    params = setting.base_params
    if finetune:
        params = engine.train(setting.base, params, problem.class_task(data.train, found.template, verbalizer),
                              steps or setting.steps, setting.batch_size,
                              tx=_finetune_optimizer(setting.learning_rate), seed=seed).params
    dev = evaluate(setting.base, params, problem, data.dev, found.template, verbalizer) if data.dev else None
    return MethodResult(evaluate(setting.base, params, problem, data.test, found.template, verbalizer),
                        details(template=found.template, triggers=list(found.words), label_words=verbalizer,
                                dev_accuracy=dev, search_loss=[float(found.losses[0]), float(found.losses[-1])]))


__all__ = ["TRIGGER", "check_template", "fill", "usable_tokens", "random_triggers", "TriggerSearch", "search_triggers",
           "label_states", "output_embeddings", "fit_logistic", "search_label_words", "class_loss", "default_template",
           "autoprompt"]
