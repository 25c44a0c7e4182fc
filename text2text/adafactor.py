"""Adafactor as one fused computation per parameter, equal to `optax.adafactor` and faster on XLA:CPU.

The algorithm is Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost" (2018), with
optax's choices (which T5X uses): factored second moments over the two largest axes when the second largest is
>= min_dim_size_to_factor, decay 1 - (step + 1)^-decay_rate, epsilon added to the squared gradient, update
clipping by its RMS, parameter-scale multiplication by max(rms(param), 1e-3), then optional momentum and weight
decay. The state pytree is exactly `optax.adafactor(...)`'s (`init` is optax's own), so checkpoints, partitioning
rules and the masked optimizer see the same leaves.

What differs is only how the statistics of a 2-D factored leaf are computed: XLA:CPU runs a mean over the
major axis of a matrix (e.g. the vocab axis of T5X's [embed, vocab] logits kernel) as a slow strided loop, and
a reduction with broadcast factors (the RMS of the factored update, for clipping) does not vectorise. Column
sums of the squared gradient and that RMS are a loop over blocks of rows instead (`_column_sums_of_squares`),
with no temporary of the gradient's size; row sums stay XLA reductions over the contiguous axis. Other
backends keep optax's reductions: on a GPU every iteration of such a loop is its own kernel launches, run one
after another, where one reduction is a single kernel. Results match
optax within float32 rounding of the different summation order (tests/test_adafactor.py checks 1e-6
relative); bench/optimizer.py times it against optax and transformers.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from text2text import backend

PARAM_SCALE_MIN_RMS = 1e-3  # optax.scale_by_param_block_rms's min_scale (T5X's epsilon2)


class _Leaf(NamedTuple):
    update: jax.Array
    v_row: jax.Array
    v_col: jax.Array
    v: jax.Array


def second_moment_decay(steps_since_offset: jax.typing.ArrayLike, exponent: float) -> jax.Array:
    """Adafactor's second-moment decay 1 - (k + 1)^-exponent at k = max(steps_since_offset, 0) (float32 scalar).

    Shazeer & Stern (2018) and T5X/optax use k = update count - offset; that is 0 at the offset itself and
    negative before it, where the power gives inf or NaN. Clamping at 0 keeps T5X's values from the offset on
    and makes every update before it decay like the first one (decay 0: the second moment is the squared
    gradient of that step), so an offset is finite from a fresh state as from a restored one.
    """
    k = jnp.maximum(jnp.asarray(steps_since_offset, jnp.float32), 0.0)
    return 1.0 - (k + 1.0) ** (-exponent)


def factored_dims(shape: tuple[int, ...], min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """(d1, d0): the second largest and the largest axis (ties in `np.argsort` order, as optax), or None when
    the leaf has < 2 axes or its second largest axis is < min_dim_size_to_factor (full second moment)."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


ROW_BLOCK = 8  # rows added per loop iteration in `_column_sums`
ROW_WIDTH = 16384  # elements per row that `_column_sums` reshapes narrow matrices to


def _column_sums_of_squares(x: jax.Array, row_weights: jax.Array | None = None) -> jax.Array:
    """sum_i w_i * x[i, :] ** 2 of a matrix [a, b] -> [b] (w = `row_weights` [a], default 1), as a loop adding
    ROW_BLOCK weighted squared rows at a time.

    XLA:CPU runs a reduction over the major axis as a strided scalar loop, a matrix-vector product needs the
    squares in a temporary array, and a reduction with broadcast weights does not vectorise; this loop reads
    each row once, vectorised along it. Narrow matrices are first viewed as [a / k, k * b] (a free reshape) so
    each iteration does enough work, and the k groups folded at the end.
    """
    a, b = x.shape
    k = max((d for d in range(1, a + 1) if a % d == 0 and d * b <= max(ROW_WIDTH, b)), default=1)
    rows = x.reshape(a // k, k * b)
    weights = None if row_weights is None else row_weights.reshape(a // k, k)
    blocks = rows.shape[0] // ROW_BLOCK

    def add_row(total, row, weight):
        square = jnp.square(row)
        return total + (square if weight is None else square * jnp.repeat(weight, b))

    def add_block(i, total):
        block = jax.lax.dynamic_slice_in_dim(rows, i * ROW_BLOCK, ROW_BLOCK, axis=0)
        block_weights = None if weights is None else jax.lax.dynamic_slice_in_dim(weights, i * ROW_BLOCK,
                                                                                  ROW_BLOCK, axis=0)
        for j in range(ROW_BLOCK):
            total = add_row(total, block[j], None if weights is None else block_weights[j])
        return total

    total = jnp.zeros((k * b,), x.dtype)
    if blocks:
        total = jax.lax.fori_loop(0, blocks, add_block, total)
    for j in range(blocks * ROW_BLOCK, rows.shape[0]):
        total = add_row(total, rows[j], None if weights is None else weights[j])
    return total.reshape(k, b).sum(axis=0)


def _mean_of_squares(x: jax.Array, axis: int) -> jax.Array:
    """mean(x ** 2, axis); on XLA:CPU without an [x.shape] temporary (matrices only take the fast paths)."""
    if x.ndim != 2 or not backend.on_cpu():
        return jnp.mean(jnp.square(x), axis=axis)
    if axis == 1:
        return jnp.mean(jnp.square(x), axis=1)  # contiguous rows: a fused, vectorised reduction
    return _column_sums_of_squares(x) / x.shape[0]


def _factored_update_square_mean(grad: jax.Array, row_factor: jax.Array, col_factor: jax.Array,
                                 d1: int, d0: int) -> jax.Array:
    """mean((grad * expand(row_factor, d0) * expand(col_factor, d1)) ** 2), weighting grad's rows by the factor
    that varies along axis 0 and the resulting column sums by the other."""
    if grad.ndim != 2 or not backend.on_cpu():
        return jnp.mean(jnp.square(grad * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)))
    # row_factor varies along axis d1, col_factor along axis d0
    along_axis0, along_axis1 = (row_factor, col_factor) if d0 == 1 else (col_factor, row_factor)
    columns = _column_sums_of_squares(grad, jnp.square(along_axis0))
    return jnp.sum(columns * jnp.square(along_axis1)) / grad.size


def _scaled_leaf(grad, v_row, v_col, v, param, decay, epsilon, min_dim_size_to_factor, clipping_threshold,
                 multiply_by_parameter_scale):
    """One leaf's second-moment update, clipped and parameter-scaled (learning rate and sign not applied)."""
    dims = factored_dims(param.shape, min_dim_size_to_factor)
    if dims is None:
        v = (decay * v + (1.0 - decay) * (jnp.square(grad) + epsilon)).astype(param.dtype)
        update = grad * v ** -0.5
        square_mean = jnp.mean(jnp.square(update))
    else:
        d1, d0 = dims
        v_row = (decay * v_row + (1.0 - decay) * (_mean_of_squares(grad, d0) + epsilon)).astype(param.dtype)
        v_col = (decay * v_col + (1.0 - decay) * (_mean_of_squares(grad, d1) + epsilon)).astype(param.dtype)
        reduced_d1 = d1 - 1 if d1 > d0 else d1
        row_factor = (v_row / jnp.mean(v_row, axis=reduced_d1, keepdims=True)) ** -0.5
        col_factor = v_col ** -0.5
        update = grad * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
        square_mean = _factored_update_square_mean(grad, row_factor, col_factor, d1, d0)
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
        decay = second_moment_decay(factored.count - decay_offset, decay_rate)
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
