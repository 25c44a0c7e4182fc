"""Token-level losses and sequence scores for encoder-decoder training (pure jax.numpy, fp32)."""

import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp

from text2text.errors import UserError

NUM_REAL_TARGET_TOKENS = 'NUM_REAL_TARGET_TOKENS'
NUM_TOTAL_TARGET_TOKENS = 'NUM_TOTAL_TARGET_TOKENS'
AVERAGE_PER_SEQUENCE = 'AVERAGE_PER_SEQUENCE'
SPECIAL_NORMALIZING_FACTORS = (NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE)


def _per_sequence_weight_sums(weights, segment_ids):
    """Sum of weights over each token's own sequence (its row, or its segment when packed)."""
    if segment_ids is None:
        return jnp.sum(weights, axis=-1, keepdims=True)
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    return jnp.sum(jnp.where(same_segment, weights[:, None, :], 0.0), axis=-1)


def check_loss_normalizing_factor(value: Union[float, str, None]):
    """Returns a string option in canonical (upper) case; raises UserError for unknown strings."""
    if not isinstance(value, str):
        return value
    if value.upper() not in SPECIAL_NORMALIZING_FACTORS:
        raise UserError(f'loss_normalizing_factor={value!r}: expected None, a number or one of '
                        f'{", ".join(SPECIAL_NORMALIZING_FACTORS)}')
    return value.upper()


def normalize_weights(weights, loss_normalizing_factor, segment_ids=None):
    """Resolves `loss_normalizing_factor` into (weights, divisor or None), following T5X semantics.

    None -> plain weighted sum; a number -> divide by it; 'NUM_REAL_TARGET_TOKENS' -> divide by sum(weights);
    'NUM_TOTAL_TARGET_TOKENS' -> divide by the number of target positions; 'AVERAGE_PER_SEQUENCE' -> each
    sequence's (or packed segment's) weights are scaled to sum to 1 and the loss is divided by the number of
    sequences with any weight, i.e. the mean over sequences of the per-sequence mean token loss.
    """
    weights = jnp.asarray(weights, jnp.float32)
    if loss_normalizing_factor is None:
        return weights, None
    if isinstance(loss_normalizing_factor, str):
        name = check_loss_normalizing_factor(loss_normalizing_factor)
        if name == NUM_REAL_TARGET_TOKENS:
            return weights, jnp.sum(weights)
        if name == NUM_TOTAL_TARGET_TOKENS:
            return weights, jnp.asarray(weights.size, jnp.float32)
        sums = _per_sequence_weight_sums(weights, segment_ids)
        scaled = jnp.where(sums > 0, weights / jnp.where(sums > 0, sums, 1.0), 0.0)
        return scaled, jnp.sum(scaled)
    return weights, jnp.asarray(loss_normalizing_factor, jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _logit_statistics(logits, targets, with_sum: bool):
    """Per position: log-partition logsumexp(logits), the target id's logit (0 for ids outside the vocab), the
    sum of all logits if with_sum (else 0) and the largest logit (no gradient). Two passes over [..., vocab]
    forward (max, sum of exp), one backward, no one-hot."""
    return _logit_statistics_fwd(logits, targets, with_sum)[0]


def _logit_statistics_fwd(logits, targets, with_sum):
    max_logit = jnp.max(logits, axis=-1)
    shift = jnp.where(jnp.isfinite(max_logit), max_logit, 0.0)
    log_z = jnp.log(jnp.sum(jnp.exp(logits - shift[..., None]), axis=-1)) + shift
    in_vocab = (targets >= 0) & (targets < logits.shape[-1])
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1, mode='clip')[..., 0]
    target_logit = jnp.where(in_vocab, target_logit, 0.0)
    logit_sum = jnp.sum(logits, axis=-1) if with_sum else jnp.zeros_like(log_z)
    return (log_z, target_logit, logit_sum, max_logit), (logits, log_z, targets)


def _logit_statistics_bwd(with_sum, residuals, cotangents):
    logits, log_z, targets = residuals
    d_log_z, d_target_logit, d_logit_sum, _ = cotangents
    grad = jnp.exp(logits - log_z[..., None]) * d_log_z[..., None]
    is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == targets[..., None]
    grad = grad + jnp.where(is_target, d_target_logit[..., None], 0.0)
    if with_sum:
        grad = grad + d_logit_sum[..., None]
    return grad, None


_logit_statistics.defvjp(_logit_statistics_fwd, _logit_statistics_bwd)


def token_cross_entropy(logits, targets, z_loss: float = 1e-4, label_smoothing: float = 0.0):
    """Per-position label-smoothed cross entropy plus z-loss (T5X semantics), from one pass of statistics.

    Args: logits [..., vocab] (computed in fp32); targets [...] int ids; z_loss coefficient of log(Z)^2 per
    token; label_smoothing mass spread over the other vocab-1 ids (the constant entropy of the smoothed targets
    is subtracted so a perfect model reaches loss 0).
    Returns (token_loss, token_z_loss, correct), each [...]: token_loss includes token_z_loss (fp32); correct
    (bool) is True where the target's logit is the largest, i.e. argmax(logits) == target, except that an exact
    tie for the largest logit also counts as correct (argmax would pick the first tied id): this reuses the
    forward's max instead of another pass over [..., vocab].
    """
    logits = jnp.asarray(logits, jnp.float32)
    vocab_size = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low_confidence = label_smoothing / (vocab_size - 1)
    normalizing_constant = -(confidence * jnp.log(confidence + 1e-20)
                             + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20))
    smoothing = not isinstance(label_smoothing, (int, float)) or label_smoothing != 0
    targets = jnp.asarray(targets, jnp.int32)
    log_z, target_logit, logit_sum, max_logit = _logit_statistics(logits, targets, smoothing)
    # -sum(soft_targets * log_softmax) with soft targets summing to 1, without a [..., vocab] one-hot.
    cross_entropy = log_z - (confidence - low_confidence) * target_logit
    if smoothing:
        cross_entropy = cross_entropy - low_confidence * logit_sum
    token_z_loss = z_loss * jnp.square(log_z)
    correct = (target_logit >= max_logit) & (targets >= 0) & (targets < vocab_size)
    return cross_entropy - normalizing_constant + token_z_loss, token_z_loss, correct


def weighted_loss(token_loss, token_z_loss, weights, loss_normalizing_factor=None, segment_ids=None):
    """(total_loss, z_loss_part) of per-position losses [...] under `weights` [...] and
    `loss_normalizing_factor` (see `normalize_weights`; segment_ids [b, l] for 'AVERAGE_PER_SEQUENCE')."""
    weights, divisor = normalize_weights(weights, loss_normalizing_factor, segment_ids)
    total_loss = jnp.sum(token_loss * weights)
    total_z_loss = jnp.sum(token_z_loss * weights)
    if divisor is not None:
        total_loss = total_loss / divisor
        total_z_loss = total_z_loss / divisor
    return total_loss, total_z_loss


def cross_entropy_with_z_loss(logits, targets, weights=None, z_loss: float = 1e-4, label_smoothing: float = 0.0,
                              loss_normalizing_factor: Optional[Union[float, str]] = None, segment_ids=None):
    """Weighted, label-smoothed cross entropy plus z-loss (T5X semantics), summed over tokens.

    Args: logits [..., vocab]; targets [...] int ids; weights [...] (None = all ones); z_loss, label_smoothing
    see `token_cross_entropy`; loss_normalizing_factor see `normalize_weights`; segment_ids [b, l] only used by
    'AVERAGE_PER_SEQUENCE' on packed batches.
    Returns (total_loss, z_loss_part, weight_sum): total_loss already includes z_loss_part; weight_sum is the
    plain sum of the (unnormalised) weights.
    """
    if weights is None:
        weights = jnp.ones(jnp.shape(targets), jnp.float32)
    weight_sum = jnp.sum(jnp.asarray(weights, jnp.float32))
    token_loss, token_z_loss, _ = token_cross_entropy(logits, targets, z_loss, label_smoothing)
    total_loss, total_z_loss = weighted_loss(token_loss, token_z_loss, weights, loss_normalizing_factor, segment_ids)
    return total_loss, total_z_loss, weight_sum


def token_log_likelihood(logits, targets):
    """Log-probability of each target id under softmax(logits), in fp32: [...]."""
    logits = jnp.asarray(logits, jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sequence_log_likelihood(logits, targets, weights=None, length_normalize: bool = False):
    """Per-sequence sum over positions of weight * log p(target): [b] (used for scoring / rank classification).

    With length_normalize=True the sum is divided by the sequence's total weight (mean token log-likelihood).
    """
    if weights is None:
        weights = (targets > 0).astype(jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    scores = jnp.sum(token_log_likelihood(logits, targets) * weights, axis=-1)
    if length_normalize:
        scores = scores / jnp.maximum(jnp.sum(weights, axis=-1), 1e-8)
    return scores
