"""Optimizers, learning-rate schedules and the one mechanism that decides which parameters train.

All public constructors are gin-configurable (e.g. `adafactor.decay_rate = 0.8` in a .gin file) and work
as plain Python functions with their defaults. Schedules map the optimizer's update count (0 for the
first update) to a learning rate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax

from text2text import adafactor as fused_adafactor
from text2text.errors import UserError

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]
TRAIN_LABEL = 'train'
FROZEN_LABEL = 'frozen'


@gin.configurable
def rsqrt_schedule(base_learning_rate: float = 1.0, warmup_steps: int = 10_000) -> Schedule:
    """T5 pre-training schedule: base / sqrt(max(step, warmup_steps)), i.e. constant during warmup."""
    if warmup_steps < 1:
        raise UserError(f'rsqrt_schedule.warmup_steps must be >= 1, got {warmup_steps}')

    def schedule(step):
        return base_learning_rate / jnp.sqrt(jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps))

    return schedule


@gin.configurable
def constant_schedule(value: float = 1e-3, warmup_steps: int = 0) -> Schedule:
    """Constant learning rate (T5 fine-tuning), optionally ramped linearly from 0 over `warmup_steps`."""
    if warmup_steps < 0:
        raise UserError(f'constant_schedule.warmup_steps must be >= 0, got {warmup_steps}')

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        if warmup_steps == 0:
            return jnp.full_like(step, value)
        return value * jnp.minimum(1.0, (step + 1.0) / warmup_steps)

    return schedule


@gin.configurable
def adafactor(learning_rate: float | Schedule | None = None, decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0, multiply_by_parameter_scale: bool = True,
              min_dim_size_to_factor: int = 128, momentum: float | None = None,
              weight_decay_rate: float | None = None, epsilon1: float = 1e-30,
              decay_offset: int = 0) -> optax.GradientTransformation:
    """Adafactor with T5X's defaults (no momentum, factored second moments for dims >= 128, update clipping 1.0).

    `learning_rate=None` means `rsqrt_schedule()`. Parameter-scale multiplication uses
    max(rms(param), 1e-3) (T5X's epsilon2=1e-3, as optax). `decay_offset` is T5X's `step_offset`: the
    second-moment decay restarts at that optimizer update count, meant for fine-tuning a checkpoint whose count
    continues (`trainer.train.initial_step`); counts below it decay like the first update (see
    `text2text.adafactor.second_moment_decay`). Results and state equal `optax.adafactor`'s (with that decay
    schedule); the update is text2text.adafactor's per-leaf fused one (faster on XLA:CPU). UserError for a
    negative offset.
    """
    if learning_rate is None:
        learning_rate = rsqrt_schedule()
    if decay_offset < 0:
        raise UserError(f'adafactor.decay_offset must be >= 0, got {decay_offset}')
    return fused_adafactor.adafactor(
        learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate,
        decay_offset=decay_offset, multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold, momentum=momentum, weight_decay_rate=weight_decay_rate,
        eps=epsilon1)


def with_update_count(opt_state: Any, count: int) -> Any:
    """`opt_state` with every optax update counter (the `count` fields of the schedule and Adafactor states) set
    to `count`, each in its own dtype and sharding; e.g. to continue a pre-trained checkpoint's step count."""
    def reset(path, leaf):
        if path and getattr(path[-1], 'name', None) == 'count':
            return jax.device_put(jnp.full(leaf.shape, count, leaf.dtype), leaf.sharding)
        return leaf

    return jax.tree_util.tree_map_with_path(reset, opt_state)


@gin.configurable
def adamw(learning_rate: float | Schedule | None = None, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.01, grad_clip_norm: float | None = None) -> optax.GradientTransformation:
    """AdamW; weight decay applies to parameters with >= 2 dims only. `learning_rate=None` means 1e-3.

    `grad_clip_norm` clips gradients by global norm first. Adam keeps two fp32 moments per parameter.
    """
    if learning_rate is None:
        learning_rate = constant_schedule()
    tx = optax.adamw(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                     mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
    if grad_clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
    return tx


def param_path(path: tuple[Any, ...]) -> str:
    """'/'-joined names of a pytree key path, e.g. 'encoder/layers_0/mlp/wi/kernel'."""
    parts = []
    for key in path:
        for attr in ('key', 'name', 'idx'):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return '/'.join(parts)


def trainable_mask(params: Any, predicate: str | Callable[[str, Any], bool] | None = None) -> Any:
    """Pytree of bools (True = trains) over `params`.

    `predicate` is a regex searched in each parameter's '/'-joined path (gin-friendly), or a callable
    `(path, leaf) -> bool`; None means every parameter trains.
    """
    if predicate is None:
        return jax.tree.map(lambda _: True, params)
    if isinstance(predicate, str):
        try:
            pattern = re.compile(predicate)
        except re.error as e:
            raise UserError(f'trainable parameter regex {predicate!r} is invalid: {e}') from e
        predicate_fn = lambda path, _: pattern.search(path) is not None  # noqa: E731
    else:
        predicate_fn = predicate
    mask = jax.tree_util.tree_map_with_path(lambda p, leaf: bool(predicate_fn(param_path(p), leaf)), params)
    if not any(jax.tree.leaves(mask)):
        raise UserError(f'trainable parameter predicate {predicate!r} matches no parameter')
    return mask


def masked_optimizer(tx: optax.GradientTransformation, mask: Any) -> optax.GradientTransformation:
    """Apply `tx` to parameters where `mask` is True; the others get zero updates and no optimizer state."""
    labels = jax.tree.map(lambda m: TRAIN_LABEL if m else FROZEN_LABEL, mask)
    return optax.multi_transform({TRAIN_LABEL: tx, FROZEN_LABEL: optax.set_to_zero()}, labels)
