"""Train state and the jitted train step (with gradient accumulation over microbatches)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from text2text import losses

Batch = Mapping[str, jax.Array]
# Metrics that are per-microbatch means, averaged (not summed) over microbatches.
_MEAN_METRICS = ("accuracy",)
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds of training: the step counter, params and optimizer state."""

    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    def split(x):
        if x.shape[0] % num_microbatches:
            raise ValueError(f"batch of {x.shape[0]} does not split into {num_microbatches} microbatches")
        return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])

    return jax.tree.map(split, batch)


def accumulate_gradients(loss_fn: LossFn, params: Any, batch: Batch, rng: jax.Array, num_microbatches: int,
                         average: bool) -> tuple[Any, dict[str, jax.Array]]:
    """Gradients and metrics of `loss_fn` over `num_microbatches` slices of the batch.

    Gradients are summed (exact for summed or constant-normalised losses) or averaged when the loss
    is normalised per microbatch (`average=True`); metrics are summed except accuracy-like means.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def grads_and_metrics(microbatch, microbatch_rng):
        (loss, metrics), grads = grad_fn(params, microbatch, microbatch_rng)
        return grads, {**metrics, "loss": loss}

    if num_microbatches <= 1:
        return grads_and_metrics(batch, rng)

    micro = _split_microbatches(batch, num_microbatches)

    def body(totals, xs):
        index, microbatch = xs
        return jax.tree.map(jnp.add, totals, grads_and_metrics(microbatch, jax.random.fold_in(rng, index))), None

    shapes = jax.eval_shape(grads_and_metrics, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), micro))
    if average:
        grads = jax.tree.map(lambda g: g / num_microbatches, grads)
    metrics = {k: (v / num_microbatches if k in _MEAN_METRICS else v) for k, v in metrics.items()}
    return grads, metrics



def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, num_microbatches: int = 1,
                    loss_normalizing_factor: Any = None) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
    """Builds `step(state, batch, rng) -> (state, metrics)`; dropout rng is folded with the step."""
    average = isinstance(loss_normalizing_factor, str) and loss_normalizing_factor in losses.SPECIAL_NORMALIZING_FACTORS

    def step(state: TrainState, batch: Batch, rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)
        grads, metrics = accumulate_gradients(loss_fn, state.params, batch, step_rng, num_microbatches, average)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.global_norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step
