"""Adafactor as one fused computation per parameter, equal to `optax.adafactor` and faster on XLA:CPU.

The algorithm is Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost" (2018), with
optax's choices (which T5X uses): factored second moments over the two largest axes when the second largest is
>= min_dim_size_to_factor, decay 1 - (step + 1)^-decay_rate, epsilon added to the squared gradient, update
clipping by its RMS, parameter-scale multiplication by max(rms(param), 1e-3), then optional momentum and weight
decay. The state pytree is exactly `optax.adafactor(...)`'s (`init` is optax's own), so checkpoints, partitioning
rules and the masked optimizer see the same leaves.

What differs is only how the statistics of a 2-D factored leaf are computed: XLA:CPU runs a mean over the
non-contiguous axis of a matrix (e.g. the vocab axis of T5X's [embed, vocab] logits kernel) as a slow scalar
loop, so row and column sums of the squared gradient, and the sum of squares of the factored update, are
matrix-vector products (`jnp.dot` with a vector hits the GEMV kernels). Results match optax within float32
rounding of the different summation order (tests/test_adafactor.py checks 1e-6 relative).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PARAM_SCALE_MIN_RMS = 1e-3  # optax.scale_by_param_block_rms's min_scale (T5X's epsilon2)


class _Leaf(NamedTuple):
    update: jax.Array
    v_row: jax.Array
    v_col: jax.Array
    v: jax.Array


def factored_dims(shape: tuple[int, ...], min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """(d1, d0): the second largest and the largest axis (ties in `np.argsort` order, as optax), or None when
    the leaf has < 2 axes or its second largest axis is < min_dim_size_to_factor (full second moment)."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def _axis_mean(x: jax.Array, axis: int) -> jax.Array:
    """Mean over `axis` of a matrix as a matrix-vector product with a ones vector (mean elsewhere)."""
    if x.ndim != 2:
        return jnp.mean(x, axis=axis)
    ones = jnp.ones((x.shape[axis],), x.dtype)
    total = jnp.dot(ones, x) if axis == 0 else jnp.dot(x, ones)
    return total / x.shape[axis]


def _factored_update_square_mean(grad_sq: jax.Array, row_factor: jax.Array, col_factor: jax.Array,
                                 d1: int, d0: int) -> jax.Array:
    """mean((grad * expand(row_factor, d0) * expand(col_factor, d1)) ** 2), given grad_sq = grad ** 2."""
    if grad_sq.ndim != 2:
        update = grad_sq * jnp.expand_dims(jnp.square(row_factor), d0) * jnp.expand_dims(jnp.square(col_factor), d1)
        return jnp.mean(update)
    # row_factor varies along axis d1, col_factor along axis d0
    inner = jnp.dot(grad_sq, jnp.square(col_factor)) if d0 == 1 else jnp.dot(jnp.square(col_factor), grad_sq)
    return jnp.dot(inner, jnp.square(row_factor)) / grad_sq.size


def _scaled_leaf(grad, v_row, v_col, v, param, decay, epsilon, min_dim_size_to_factor, clipping_threshold,
                 multiply_by_parameter_scale):
    """One leaf's second-moment update, clipped and parameter-scaled (learning rate and sign not applied)."""
    dims = factored_dims(param.shape, min_dim_size_to_factor)
    grad_sq = jnp.square(grad)
    if dims is None:
        v = (decay * v + (1.0 - decay) * (grad_sq + epsilon)).astype(param.dtype)
        update = grad * v ** -0.5
        square_mean = jnp.mean(jnp.square(update))
    else:
        d1, d0 = dims
        v_row = (decay * v_row + (1.0 - decay) * (_axis_mean(grad_sq, d0) + epsilon)).astype(param.dtype)
        v_col = (decay * v_col + (1.0 - decay) * (_axis_mean(grad_sq, d1) + epsilon)).astype(param.dtype)
        reduced_d1 = d1 - 1 if d1 > d0 else d1
        row_factor = (v_row / jnp.mean(v_row, axis=reduced_d1, keepdims=True)) ** -0.5
        col_factor = v_col ** -0.5
        update = grad * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
        square_mean = _factored_update_square_mean(grad_sq, row_factor, col_factor, d1, d0)
    scale = 1.0
    if clipping_threshold is not None:
        scale = 1.0 / jnp.maximum(1.0, jnp.sqrt(square_mean) / clipping_threshold)
    if multiply_by_parameter_scale:
        rms = jnp.sqrt(jnp.mean(jnp.square(param)))
        scale = scale * jnp.where(rms <= PARAM_SCALE_MIN_RMS, PARAM_SCALE_MIN_RMS, rms)
    return _Leaf(update * scale, v_row, v_col, v)


def adafactor(learning_rate: optax.ScalarOrSchedule | None = None, min_dim_size_to_factor: int = 128,
              decay_rate: float = 0.8, decay_offset: int = 0, multiply_by_parameter_scale: bool = True,
              clipping_threshold: float | None = 1.0, momentum: float | None = None,
              weight_decay_rate: float | None = None, eps: float = 1e-30) -> optax.GradientTransformation:
    """`optax.adafactor(...)` with the same arguments (factored=True), state and results, fused per leaf.

    The update of each leaf is computed at once (statistics, clipping, learning rate, parameter scale); the
    optional momentum and weight decay, and the sign flip, are optax's own transformations applied after it.
    """
    reference = optax.adafactor(
        learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor, decay_rate=decay_rate,
        decay_offset=decay_offset, multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold, momentum=momentum, weight_decay_rate=weight_decay_rate, eps=eps,
        factored=True)
    # optax.adafactor's chain: factored rms, [clip], [learning rate], [param scale], then the tail below
    head = 1 + (clipping_threshold is not None) + (learning_rate is not None) + multiply_by_parameter_scale
    rate_index = 1 + (clipping_threshold is not None)
    rate_tx = None if learning_rate is None else optax.scale_by_learning_rate(learning_rate, flip_sign=False)
    tail = []
    if momentum is not None:
        tail.append(optax.ema(momentum, debias=False))
    if weight_decay_rate is not None:
        tail.append(optax.add_decayed_weights(weight_decay_rate))
    tail = optax.chain(*tail, optax.scale(-1.0))

    def update_fn(grads: Any, state: tuple, params: Any = None):
        if params is None:
            raise ValueError("adafactor.update needs params (parameter scaling)")
        states = list(state)
        factored: optax.FactoredState = states[0]
        step = jnp.asarray(factored.count - decay_offset, jnp.float32) + 1.0
        decay = 1.0 - step ** -decay_rate
        leaves = jax.tree.map(
            lambda g, vr, vc, v, p: _scaled_leaf(g, vr, vc, v, p, decay, eps, min_dim_size_to_factor,
                                                 clipping_threshold, multiply_by_parameter_scale),
            grads, factored.v_row, factored.v_col, factored.v, params)
        is_leaf = lambda x: isinstance(x, _Leaf)  # noqa: E731
        field = lambda name: jax.tree.map(lambda leaf: getattr(leaf, name), leaves, is_leaf=is_leaf)  # noqa: E731
        states[0] = optax.FactoredState(count=optax.safe_increment(factored.count), v_row=field('v_row'),
                                        v_col=field('v_col'), v=field('v'))
        updates = field('update')
        if rate_tx is not None:  # the schedule's value at the count it keeps in its own state
            rate, states[rate_index] = rate_tx.update(jnp.ones((), jnp.float32), states[rate_index])
            updates = jax.tree.map(lambda u: u * rate, updates)
        updates, tail_state = tail.update(updates, tuple(states[head:]), params)
        return updates, tuple(states[:head]) + tuple(tail_state)

    return optax.GradientTransformation(reference.init, update_fn)
