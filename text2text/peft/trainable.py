"""Which parameters each PEFT method trains: one regex per method, fed to optim.trainable_mask.

The optimizer side is optim.masked_optimizer, so frozen parameters get zero updates and no optimizer
state. `peft_optimizer` builds the mask from the parameter tree it is given, so it drops into
`trainer.train(optimizer=...)` (gin: `trainer.train.optimizer = @trainable.peft_optimizer()`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import optax

from text2text import optim
from text2text.errors import UserError
from text2text.peft.peft_config import METHODS, PeftConfig

PATTERNS = {
    'prompt_tuning': r'(^|/)prompt_tuning/',
    'p_tuning': r'(^|/)p_tuning/',
    'prefix_tuning': r'(^|/)prefix_tuning/',
    'adapters': r'_adapter/',
    'lora': r'/lora_[ab]$',
    'bitfit': r'/bias$',
    'linear_probe': r'^probe/',
}
LAYER_NORM_PATTERN = r'/scale$'

Methods = PeftConfig | str | Sequence[str]


def method_names(peft: Methods) -> tuple[str, ...]:
    """The method names of a PeftConfig, one name or a list of names (validated)."""
    names = peft.methods() if isinstance(peft, PeftConfig) else (peft,) if isinstance(peft, str) else tuple(peft)
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise UserError(f'unknown PEFT method(s) {unknown or names}; expected some of {", ".join(METHODS)}')
    return names


def predicate(peft: Methods) -> str:
    """Regex over '/'-joined param paths matching exactly the parameters `peft` trains."""
    patterns = [PATTERNS[m] for m in method_names(peft)]
    bitfit = peft.bitfit if isinstance(peft, PeftConfig) else None
    if 'bitfit' in method_names(peft) and (bitfit is None or bitfit.train_layer_norms):
        patterns.append(LAYER_NORM_PATTERN)
    return '|'.join(f'(?:{p})' for p in patterns)


def trainable_mask(params: Any, peft: Methods) -> Any:
    """Pytree of bools over `params`: True for the parameters the PEFT method(s) train."""
    return optim.trainable_mask(params, predicate(peft))


def peft_optimizer(optimizer: optax.GradientTransformation | None = None,
                   peft: Methods = None) -> optax.GradientTransformation:
    """`optimizer` (default Adafactor, constant LR 1e-3) applied only to the PEFT parameters.

    The mask is derived from the tree passed to init/update, so the same object works for any model size.
    """
    if peft is None:
        raise UserError('peft_optimizer needs peft= (a PeftConfig or method name(s))')
    tx = optimizer or optim.adafactor(learning_rate=optim.constant_schedule(1e-3))
    regex = predicate(peft)

    def masked(tree):
        return optim.masked_optimizer(tx, optim.trainable_mask(tree, regex))

    def init(params):
        return masked(params).init(params)

    def update(updates, state, params=None):
        return masked(updates).update(updates, state, params)

    return optax.GradientTransformation(init, update)


def count_params(params: Any, peft: Methods) -> tuple[int, int]:
    """(trainable, total) parameter counts; works on arrays or jax.eval_shape structs."""
    mask = trainable_mask(params, peft)
    sizes = jax.tree.leaves(jax.tree.map(lambda p: math.prod(p.shape), params))
    flags = jax.tree.leaves(mask)
    return sum(s for s, f in zip(sizes, flags) if f), sum(sizes)
