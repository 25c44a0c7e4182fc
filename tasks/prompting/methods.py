"""The few-shot methods by name, each `method(setting, problem, data, seed, **options) -> MethodResult`
(tasks.prompting.problem); the harness (tasks.prompting.fewshot) and gin files name them here."""
from __future__ import annotations

import difflib
import functools
from typing import Callable, Dict

from tasks.prompting import autoprompt, baselines, ipet, lm_bff, p_tuning, pet, spot
from text2text.errors import UserError

Method = Callable[..., "baselines.MethodResult"]

METHODS: Dict[str, Method] = {
    "zero_shot": baselines.zero_shot,
    "fine_tuning": baselines.fine_tuning,
    **{name: functools.partial(baselines.peft_prompt_finetune, method=name) for name in baselines.PEFT_METHODS},
    "prompt_finetune": lm_bff.prompt_finetune,
    "prompt_finetune_demos": functools.partial(lm_bff.prompt_finetune, demonstrations=True),
    "auto_template": lm_bff.auto_template,
    "auto_label": lm_bff.auto_label,
    "pet": pet.pet,
    "ipet": ipet.ipet,
    "autoprompt": autoprompt.autoprompt,
    "p_tuning": p_tuning.p_tuning,
    "spot": spot.spot,
}


def get_method(name: str) -> Method:
    """The method registered as `name`; UserError naming the closest names otherwise."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=3)
        raise UserError(f"unknown few-shot method {name!r}; " + (f"did you mean {', '.join(close)}?" if close else
                                                                 f"expected one of {', '.join(METHODS)}"))
    return METHODS[name]


__all__ = ["METHODS", "get_method"]
