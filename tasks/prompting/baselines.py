"""The few-shot baselines the prompt-based systems are measured against (LM-BFF's Table 3 rows, for T5):

- zero_shot: the base model, rank classification under the manual pattern-verbalizer pair, no training;
- fine_tuning: standard fine-tuning, no prompt: the raw text into the encoder, a new linear classification head
  on its mean-pooled states, every parameter trained (LM-BFF's "Fine-tuning" row, Gao et al. 2021, sec. 3);
- peft_prompt_finetune: prompt-based fine-tuning (manual pattern, class-distribution loss) of only the
  parameters of one `text2text.peft` method (prompt tuning, prefix tuning, adapters, LoRA, BitFit) on a frozen
  base.

Each has the method signature of tasks.prompting.problem.
"""
from __future__ import annotations

import functools
from typing import Tuple

import optax

from tasks.prompting import engine
from tasks.prompting.problem import FewShotData, MethodResult, Problem, Setting, details, evaluate, params_for
from text2text import optim, peft
from text2text.errors import UserError

# Each PEFT method at the hyper-parameters of its paper's few-shot/low-resource setting, scaled to small models.
PEFT_METHODS = {
    "prompt_tuning": (peft.PeftConfig(prompt_tuning=peft.PromptTuningConfig(length=20, init="vocab",
                                                                              vocab_sample_size=500)), 0.3),
    "prefix_tuning": (peft.PeftConfig(prefix_tuning=peft.PrefixTuningConfig(length=10)), 1e-2),
    "adapters": (peft.PeftConfig(adapters=peft.AdapterConfig(bottleneck=16)), 1e-2),
    "lora": (peft.PeftConfig(lora=peft.LoraConfig(rank=8, alpha=16.0)), 1e-2),
    "bitfit": (peft.PeftConfig(bitfit=peft.BitFitConfig()), 1e-2),
}


def zero_shot(setting: Setting, problem: Problem, data: FewShotData, seed: int) -> MethodResult:
    """Test accuracy of the untrained base under problem.templates[0] (seed unused: nothing is sampled)."""
    del seed
    return MethodResult(evaluate(setting.base, setting.base_params, problem, data.test),
                        details(template=problem.templates[0]))


@functools.lru_cache(maxsize=16)
def _classifier(base: engine.PromptModel, label_ids: Tuple[Tuple[int, ...], ...], learning_rate: float):
    model = engine.peft_variant(base, peft.PeftConfig(
        linear_probe=peft.LinearProbeConfig(label_token_ids=label_ids, train_encoder=True)))
    return model, engine.default_optimizer(learning_rate)


def fine_tuning(setting: Setting, problem: Problem, data: FewShotData, seed: int) -> MethodResult:
    """Standard fine-tuning with a classification head (no pattern, no verbalizer): setting.steps steps of
    setting.batch_size examples at setting.learning_rate; test accuracy of the head's argmax."""
    label_ids = tuple(setting.base.encode(words, f"label words of class {cls!r}")
                      for cls, words in problem.verbalizer.words)
    model, tx = _classifier(setting.base, label_ids, setting.learning_rate)
    labels = problem.labels(data.train)
    task = engine.ClassTask(problem.texts(data.train), [w for _, w in problem.verbalizer.words], labels)
    result = engine.train(model, params_for(setting, model, seed), task, setting.steps, setting.batch_size, tx, seed)
    test = engine.ClassTask(problem.texts(data.test), task.class_targets, problem.labels(data.test))
    return MethodResult(engine.accuracy(model, result.params, test), details(final_loss=float(result.losses[-1])))


@functools.lru_cache(maxsize=16)
def peft_model(base: engine.PromptModel, method: str) -> Tuple[engine.PromptModel, optax.GradientTransformation]:
    """(the base with `method`'s parameters as a PromptModel, its masked optimizer): one object pair per base and
    method, so every seed reuses the compiled step. UserError for a method not in PEFT_METHODS."""
    if method not in PEFT_METHODS:
        raise UserError(f"unknown PEFT method {method!r}; expected one of {', '.join(PEFT_METHODS)}")
    config, learning_rate = PEFT_METHODS[method]
    model = engine.peft_variant(base, config)
    tx = optim.adafactor(learning_rate=optim.constant_schedule(learning_rate), multiply_by_parameter_scale=False)
    return model, peft.peft_optimizer(tx, config)


def peft_prompt_finetune(setting: Setting, problem: Problem, data: FewShotData, seed: int,
                         method: str = "lora") -> MethodResult:
    """Prompt-based fine-tuning of one PEFT method's parameters under problem.templates[0] (base frozen)."""
    model, tx = peft_model(setting.base, method)
    task = problem.class_task(data.train)
    result = engine.train(model, params_for(setting, model, seed), task, setting.steps, setting.batch_size, tx, seed)
    trainable, total = peft.count_params(result.params, model.model.config.peft)
    return MethodResult(evaluate(model, result.params, problem, data.test),
                        details(trainable_params=trainable, total_params=total))


__all__ = ["PEFT_METHODS", "zero_shot", "fine_tuning", "peft_model", "peft_prompt_finetune"]
