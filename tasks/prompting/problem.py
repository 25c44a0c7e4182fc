"""What a few-shot method is given: a classification problem (its patterns and verbalizer), the data of one seed
(K labelled examples per class for training and for dev, unlabelled and test examples) and the shared setting
(base model and training budget). Every method in `tasks.prompting` is a function

    method(setting: Setting, problem: Problem, data: FewShotData, seed: int) -> MethodResult

so the few-shot harness runs any list of them over seeds (LM-BFF's protocol, Gao et al. 2021, sec. 3).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from tasks.prompting import engine
from tasks.prompting.core import Example, Template, Verbalizer
from text2text import peft
from text2text.errors import UserError


@dataclasses.dataclass(frozen=True)
class Problem:
    """A classification problem: manual patterns (templates[0] is the main one), verbalizer, label field and the
    text fields a pattern fills (automatic template search wraps these)."""
    name: str
    templates: Tuple[Template, ...]
    verbalizer: Verbalizer
    text_fields: Tuple[str, ...]
    label_key: str = "label"

    def __post_init__(self):
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "text_fields", tuple(self.text_fields))
        if not self.templates or not self.text_fields:
            raise UserError(f"few-shot problem {self.name!r} needs at least one template and one text field")

    def class_task(self, examples: Sequence[Example], template: Optional[Template] = None,
                   verbalizer: Optional[Verbalizer] = None) -> engine.ClassTask:
        """`examples` as rank-classification data under a pattern-verbalizer pair (default: the main ones)."""
        template = template or self.templates[0]
        verbalizer = verbalizer or self.verbalizer
        return engine.ClassTask([template.format_inputs(ex) for ex in examples],
                                [template.format_targets(words) for _, words in verbalizer.words],
                                [verbalizer.index(ex[self.label_key]) for ex in examples])

    def texts(self, examples: Sequence[Example]) -> Tuple[str, ...]:
        """Each example's text fields joined by spaces: the unprompted text (standard fine-tuning's input, PET's
        unlabelled LM text, the sentence an embedder sees)."""
        return tuple(" ".join(str(ex[field]) for field in self.text_fields) for ex in examples)

    def labels(self, examples: Sequence[Example]) -> np.ndarray:
        """int [n]: class index of each example."""
        return np.asarray([self.verbalizer.index(ex[self.label_key]) for ex in examples], np.int64)


@dataclasses.dataclass(frozen=True)
class FewShotData:
    """One seed's data: K per class to train on and K per class of dev, unlabelled rows (labels unused) and the
    test rows the harness scores."""
    train: Tuple[Example, ...]
    dev: Tuple[Example, ...]
    unlabelled: Tuple[Example, ...]
    test: Tuple[Example, ...]


@dataclasses.dataclass(frozen=True)
class Setting:
    """The base model every method starts from, and the shared budget of a training run.

    base: the frozen base as a PromptModel; base_params its (loaded) params; checkpoint where they came from
    (methods that build another model, e.g. with PEFT parameters, load the base from it). steps and
    batch_size (examples per step) bound every training run; learning_rate is full fine-tuning's.
    """
    base: engine.PromptModel
    base_params: Any
    checkpoint: Optional[str] = None
    steps: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-3


def params_for(setting: Setting, prompt_model: engine.PromptModel, seed: int = 0) -> Any:
    """Params of `prompt_model` (the base or a PEFT/classifier variant of it) starting from the setting's base:
    read from setting.checkpoint when there is one, else setting.base_params put into the new model's tree
    (extra leaves, e.g. PEFT parameters or a classifier head, keep their `seed` initialisation)."""
    if prompt_model is setting.base:
        return setting.base_params
    if setting.checkpoint is not None:
        return engine.init_params(prompt_model, setting.checkpoint, seed)
    params = engine.init_params(prompt_model, seed=seed)
    config = prompt_model.model.config
    if config.peft is None:
        return setting.base_params
    return peft.with_base_params(params, setting.base_params, config, seed)


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """A method's test metric (percent accuracy) and what else it reports (chosen template, label words, ...)."""
    accuracy: float
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def evaluate(prompt_model: engine.PromptModel, params: Any, problem: Problem, test: Sequence[Example],
                  template: Optional[Template] = None, verbalizer: Optional[Verbalizer] = None) -> float:
    """Percent rank-classification accuracy of `params` on `test` under a pattern-verbalizer pair."""
    return engine.accuracy(prompt_model, params, problem.class_task(test, template, verbalizer))


def details(**values: Any) -> Dict[str, Any]:
    """A MethodResult.details dict with templates/verbalizers made printable."""
    out = {}
    for key, value in values.items():
        if isinstance(value, Template):
            value = value.inputs
        elif isinstance(value, Verbalizer):
            value = dict(value.words)
        out[key] = value
    return out


__all__ = ["Problem", "FewShotData", "Setting", "MethodResult", "evaluate", "params_for", "details"]
