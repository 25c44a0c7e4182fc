"""P-tuning (Liu et al. 2021, "GPT Understands, Too") as a few-shot method: a mixed template of text, anchor words
and virtual tokens, the virtual tokens produced by a trained prompt encoder (text2text.peft.p_tuning) while the
base stays frozen (the paper's setting for frozen models; `train_base=True` trains everything, its SuperGLUE
setting).

Virtual token j is written in a template as the sentinel <extra_id_{E-1-j}> (E = the vocabulary's extra ids, so
<extra_id_99>, <extra_id_98>, ... for T5), far from the <extra_id_0>/<extra_id_1> of the cloze slot and targets:

    Template("<extra_id_99> {text} It was <extra_id_98> <extra_id_0>.")
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Tuple, Union

import jax
import optax
import seqio

from tasks import vocab as vocab_lib
from tasks.prompting import engine
from tasks.prompting.core import SENTINEL, Template
from tasks.prompting.problem import FewShotData, MethodResult, Problem, Setting, details, evaluate
from text2text import optim, peft
from text2text.errors import UserError
from text2text.peft import p_tuning as peft_p_tuning

RESERVED_SENTINELS = 2  # <extra_id_0> (the cloze slot) and <extra_id_1> (end of the target span)


def virtual_tokens(num_virtual: int, vocabulary: Optional[seqio.Vocabulary] = None
                   ) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
    """(marker texts, marker ids) of virtual tokens 0..n-1: the highest sentinels <extra_id_{E-1}>, <extra_id_{E-2}>,
    ... of `vocabulary` (default: the T5 vocabulary). UserError if n does not fit beside <extra_id_0>/<extra_id_1>
    or a marker does not encode to one token."""
    vocabulary = vocabulary or vocab_lib.get_default_vocabulary()
    extra = int(vocabulary.extra_ids)
    if not 1 <= num_virtual <= extra - RESERVED_SENTINELS:
        raise UserError(f"P-tuning: num_virtual={num_virtual}; the vocabulary has room for 1 to "
                        f"{extra - RESERVED_SENTINELS} virtual tokens (its sentinels minus <extra_id_0>, <extra_id_1>)")
    texts = tuple(f"<extra_id_{extra - 1 - j}>" for j in range(num_virtual))
    ids = []
    for text in texts:
        encoded = [int(i) for i in vocabulary.encode(text)]
        if len(encoded) != 1:
            raise UserError(f"P-tuning: virtual token {text} encodes to {encoded}, not one token")
        ids.append(encoded[0])
    return texts, tuple(ids)


def virtual_token_ids(num_virtual: int, vocabulary: Optional[seqio.Vocabulary] = None) -> Tuple[int, ...]:
    """The marker ids of `virtual_tokens` (gin: PTuningConfig.marker_ids)."""
    return virtual_tokens(num_virtual, vocabulary)[1]


def mixed_template(template: Template, marker_texts: Sequence[str]) -> Template:
    """`template` with the first ceil(n/2) virtual tokens before its text and the others before the answer: the
    cloze slot <extra_id_0>, or the end of an instruction pattern's inputs (anchor words of the manual template
    stay). UserError as Template.check."""
    template.check()
    front = (len(marker_texts) + 1) // 2
    head, slot = " ".join(marker_texts[:front]), " ".join(marker_texts[front:])
    if not template.is_cloze:
        return dataclasses.replace(template, inputs=" ".join(filter(None, (head, template.inputs, slot))))
    inputs = template.inputs.replace(SENTINEL, f"{slot} {SENTINEL}" if slot else SENTINEL, 1)
    return dataclasses.replace(template, inputs=f"{head} {inputs}")


def check_template(template: Template, marker_texts: Sequence[str]) -> None:
    """UserError naming the template unless it passes Template.check and holds at least one virtual token."""
    template.check()
    if not any(text in template.inputs for text in marker_texts):
        raise UserError(f"P-tuning: template {template.inputs!r} has none of the virtual tokens "
                        f"{', '.join(marker_texts)}")


def p_tuning_model(base: engine.PromptModel, cfg: peft.PTuningConfig) -> engine.PromptModel:
    """The base T5 with P-tuning `cfg` added to its PEFT config, as a PromptModel (one object per (base, cfg), so
    compiled programs are shared across seeds). UserError for a class-head base."""
    if base.has_class_head:
        raise UserError("P-tuning needs a T5 that scores target texts, not a class-head model")
    config = base.model.config
    peft_config = dataclasses.replace(config.peft, p_tuning=cfg) if config.peft else peft.PeftConfig(p_tuning=cfg)
    return engine.peft_variant(base, peft_config)


@functools.lru_cache(maxsize=None)
def prompt_optimizer(learning_rate: float, train_base: bool = False,
                     base_learning_rate: float = 1e-3) -> optax.GradientTransformation:
    """Adafactor (constant LR, no parameter scaling) on the P-tuning parameters only; with train_base, T5's
    fine-tuning optimizer (engine.default_optimizer(base_learning_rate)) on every parameter. One object per
    arguments, so engine.train reuses its compiled step."""
    if train_base:
        return engine.default_optimizer(base_learning_rate)
    tx = optim.adafactor(learning_rate=optim.constant_schedule(learning_rate), multiply_by_parameter_scale=False)
    return peft.peft_optimizer(tx, "p_tuning")


def train_prompt_encoder(setting: Setting, task: engine.ClassTask, cfg: peft.PTuningConfig, seed: int, *,
                         train_base: bool = False, learning_rate: float = 1e-2, steps: Optional[int] = None
                         ) -> Tuple[engine.PromptModel, object, engine.TrainResult]:
    """(P-tuning PromptModel, trained params, TrainResult): the prompt encoder (initialised with PRNGKey(seed)) on
    top of setting.base_params, trained on `task` for `steps` (default setting.steps) steps of setting.batch_size.
    Deploy with text2text.peft.fold_prompt_encoder."""
    prompt_model = p_tuning_model(setting.base, cfg)
    params = peft_p_tuning.init_prompt_encoder(setting.base_params, cfg, jax.random.PRNGKey(seed))
    tx = prompt_optimizer(learning_rate, train_base, setting.learning_rate)
    result = engine.train(prompt_model, params, task, steps or setting.steps, setting.batch_size, tx=tx, seed=seed)
    return prompt_model, result.params, result


def p_tuning(setting: Setting, problem: Problem, data: FewShotData, seed: int, *, num_virtual: int = 4,
             encoder: str = "lstm", hidden_dim: int = 0, template: Union[Template, str, None] = None,
             train_base: bool = False, learning_rate: float = 1e-2, steps: Optional[int] = None) -> MethodResult:
    """P-tuning few-shot method: train a prompt encoder for `num_virtual` virtual tokens in a mixed template (default
    `mixed_template(problem.templates[0])`; a str keeps templates[0]'s targets) on data.train, then report the
    test accuracy (details: template, dev accuracy, last training loss). encoder: 'lstm' | 'mlp' | 'none';
    learning_rate: the prompt encoder's (train_base=True: setting.learning_rate for all params)."""
    marker_texts, marker_ids = virtual_tokens(num_virtual, setting.base.vocabulary)
    if template is None:
        template = mixed_template(problem.templates[0], marker_texts)
    elif isinstance(template, str):
        template = Template(template, problem.templates[0].targets)
    check_template(template, marker_texts)
    cfg = peft.PTuningConfig(num_virtual=num_virtual, marker_ids=marker_ids, encoder=encoder, hidden_dim=hidden_dim)
    prompt_model, params, result = train_prompt_encoder(setting, problem.class_task(data.train, template), cfg, seed,
                                                        train_base=train_base, learning_rate=learning_rate,
                                                        steps=steps)
    dev = evaluate(prompt_model, params, problem, data.dev, template) if data.dev else None
    return MethodResult(evaluate(prompt_model, params, problem, data.test, template),
                        details(template=template, dev_accuracy=dev, final_loss=float(result.losses[-1])))


__all__ = ["virtual_tokens", "virtual_token_ids", "mixed_template", "check_template", "p_tuning_model",
           "prompt_optimizer", "train_prompt_encoder", "p_tuning"]
