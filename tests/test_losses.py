"""Tests for text2text.losses against hand-computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from text2text import losses
from text2text.errors import UserError


def test_uniform_logits_cross_entropy_and_z_loss():
    logits = jnp.zeros((1, 2, 4))
    targets = jnp.array([[3, 1]])
    total, z, weight_sum = losses.cross_entropy_with_z_loss(logits, targets, jnp.ones((1, 2)), z_loss=1e-4)
    per_token_z = 1e-4 * math.log(4) ** 2
    np.testing.assert_allclose(z, 2 * per_token_z, rtol=1e-6)
    np.testing.assert_allclose(total, 2 * (math.log(4) + per_token_z), rtol=1e-6)
    assert float(weight_sum) == 2.0


def test_cross_entropy_matches_manual_and_respects_weights():
    logits = jnp.array([[[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]])
    targets = jnp.array([[2, 0]])
    weights = jnp.array([[1.0, 0.0]])
    total, z, weight_sum = losses.cross_entropy_with_z_loss(logits, targets, weights, z_loss=0.0)
    expected = math.log(math.e + math.e ** 2 + math.e ** 3) - 3.0
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    assert float(z) == 0.0
    assert float(weight_sum) == 1.0


def test_label_smoothing_minimum_is_zero():
    vocab, ls = 5, 0.1
    soft = np.full(vocab, ls / (vocab - 1))
    soft[2] = 1.0 - ls
    best_logits = jnp.log(jnp.asarray(soft))[None, None]
    targets = jnp.array([[2]])
    best, _, _ = losses.cross_entropy_with_z_loss(best_logits, targets, None, z_loss=0.0, label_smoothing=ls)
    np.testing.assert_allclose(best, 0.0, atol=1e-5)
    sharp = jnp.array([[[0.0, 0.0, 8.0, 0.0, 0.0]]])
    worse, _, _ = losses.cross_entropy_with_z_loss(sharp, targets, None, z_loss=0.0, label_smoothing=ls)
    assert float(worse) > 0.1


def test_numeric_and_real_token_normalizing_factors():
    logits = jnp.zeros((2, 3, 4))
    targets = jnp.array([[1, 2, 0], [3, 0, 0]])
    weights = (targets > 0).astype(jnp.float32)
    raw, raw_z, _ = losses.cross_entropy_with_z_loss(logits, targets, weights, z_loss=1e-4)
    by_two, by_two_z, _ = losses.cross_entropy_with_z_loss(logits, targets, weights, loss_normalizing_factor=2.0)
    np.testing.assert_allclose(by_two, raw / 2, rtol=1e-6)
    np.testing.assert_allclose(by_two_z, raw_z / 2, rtol=1e-6)
    real, _, _ = losses.cross_entropy_with_z_loss(logits, targets, weights,
                                                  loss_normalizing_factor='NUM_REAL_TARGET_TOKENS')
    np.testing.assert_allclose(real, raw / 3, rtol=1e-6)
    total, _, _ = losses.cross_entropy_with_z_loss(logits, targets, weights,
                                                   loss_normalizing_factor='NUM_TOTAL_TARGET_TOKENS')
    np.testing.assert_allclose(total, raw / 6, rtol=1e-6)


def test_average_per_sequence_and_packed_equivalent():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)
    targets = jnp.array([[1, 2, 3, 4], [5, 2, 0, 0]])
    weights = (targets > 0).astype(jnp.float32)
    loss, _, _ = losses.cross_entropy_with_z_loss(logits, targets, weights, z_loss=0.0,
                                                  loss_normalizing_factor='AVERAGE_PER_SEQUENCE')
    token_ll = np.asarray(losses.token_log_likelihood(logits, targets))
    expected = (-token_ll[0].mean() - token_ll[1, :2].mean()) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-5)

    packed_logits = jnp.concatenate([logits[0], logits[1, :2], jnp.zeros((2, 6))])[None]
    packed_targets = jnp.array([[1, 2, 3, 4, 5, 2, 0, 0]])
    packed_segments = jnp.array([[1, 1, 1, 1, 2, 2, 0, 0]])
    packed, _, _ = losses.cross_entropy_with_z_loss(
        packed_logits, packed_targets, (packed_targets > 0).astype(jnp.float32), z_loss=0.0,
        loss_normalizing_factor='AVERAGE_PER_SEQUENCE', segment_ids=packed_segments)
    np.testing.assert_allclose(packed, expected, rtol=1e-5)


def test_unknown_normalizing_factor_is_user_error():
    with pytest.raises(UserError, match='loss_normalizing_factor'):
        losses.cross_entropy_with_z_loss(jnp.zeros((1, 1, 3)), jnp.array([[1]]), None, loss_normalizing_factor='BAD')


def test_sequence_log_likelihood():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]]))
    targets = jnp.array([[2, 1, 0]])
    scores = losses.sequence_log_likelihood(logits, targets)
    np.testing.assert_allclose(scores, [math.log(0.25) + math.log(0.6)], rtol=1e-5)
    normalized = losses.sequence_log_likelihood(logits, targets, length_normalize=True)
    np.testing.assert_allclose(normalized, [(math.log(0.25) + math.log(0.6)) / 2], rtol=1e-5)
    weighted = losses.sequence_log_likelihood(logits, targets, jnp.array([[0.0, 1.0, 1.0]]))
    np.testing.assert_allclose(weighted, [math.log(0.6) + math.log(0.2)], rtol=1e-5)


def _reference_token_loss(logits, targets, z_loss, label_smoothing):
    """Textbook T5X loss per position: soft one-hot targets against log_softmax, plus z_loss * logsumexp^2."""
    import jax
    vocab = logits.shape[-1]
    confidence, low = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
    soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
    constant = -(confidence * jnp.log(confidence + 1e-20) + (vocab - 1) * low * jnp.log(low + 1e-20))
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return -jnp.sum(soft * jax.nn.log_softmax(logits), axis=-1) - constant + z_loss * log_z ** 2


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
def test_token_cross_entropy_values_gradients_and_correct_match_reference(label_smoothing):
    import jax
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5, 37)) * 4, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 37, (3, 5)), jnp.int32)
    weights = jnp.asarray(rng.random((3, 5)), jnp.float32)
    token_loss, token_z, correct = losses.token_cross_entropy(logits, targets, 1e-4, label_smoothing)
    np.testing.assert_allclose(token_loss, _reference_token_loss(logits, targets, 1e-4, label_smoothing),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(token_z, 1e-4 * jax.nn.logsumexp(logits, axis=-1) ** 2, rtol=1e-6)
    np.testing.assert_array_equal(correct, jnp.argmax(logits, axis=-1) == targets)

    def ours(x):
        return jnp.sum(losses.token_cross_entropy(x, targets, 1e-4, label_smoothing)[0] * weights)

    def reference(x):
        return jnp.sum(_reference_token_loss(x, targets, 1e-4, label_smoothing) * weights)

    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits), rtol=1e-5, atol=1e-6)


def test_token_cross_entropy_is_finite_for_huge_and_masked_logits_and_ties_count_as_correct():
    logits = jnp.array([[[1e4, 0.0, -1e4], [-jnp.inf, 2.0, 2.0]]], jnp.float32)
    token_loss, _, correct = losses.token_cross_entropy(logits, jnp.array([[0, 2]]), z_loss=0.0)
    np.testing.assert_allclose(token_loss, [[0.0, math.log(2.0)]], atol=1e-6)
    assert correct.tolist() == [[True, True]]  # argmax would say id 1 at the tie; the target's logit is the max
    _, _, outside = losses.token_cross_entropy(logits, jnp.array([[-1, 3]]), z_loss=0.0)
    assert outside.tolist() == [[False, False]]
