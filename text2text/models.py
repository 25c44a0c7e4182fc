"""EncoderDecoderModel: training loss, scoring and cached decoding around the T5 `Transformer`.

All methods take `params` as an argument and are pure, so the runtime can `jax.jit` them with shardings;
decoding options (method, lengths, beams, sampling knobs) are static Python values.
"""
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from text2text import decoding, losses
from text2text.config import T5Config
from text2text.errors import UserError
from text2text.network import Transformer

Batch = Mapping[str, jax.Array]
DECODE_METHODS = ('greedy', 'sample', 'beam')


def _shape_of(batch_shapes: Mapping[str, Any], *names: str):
    """First of `names` present in batch_shapes, as a shape tuple (accepts tuples or objects with .shape)."""
    for name in names:
        if name in batch_shapes:
            return tuple(getattr(batch_shapes[name], 'shape', batch_shapes[name]))
    raise UserError(f'init_variables: batch_shapes needs one of {", ".join(names)}; got keys '
                    f'{", ".join(batch_shapes) or "(none)"}')


class EncoderDecoderModel:
    """T5 encoder-decoder with T5X-style loss (z-loss, label smoothing, normalising factor) and decoding."""

    def __init__(self, config: T5Config, z_loss: float = 1e-4, label_smoothing: float = 0.0,
                 loss_normalizing_factor: Optional[Union[float, str]] = None):
        self.config = config
        self.z_loss = z_loss
        self.label_smoothing = label_smoothing
        self.loss_normalizing_factor = losses.check_loss_normalizing_factor(loss_normalizing_factor)
        self.module = Transformer(config)

    def init_variables(self, rng: jax.Array, batch_shapes: Mapping[str, Any]):
        """Initial variables (params boxed in nn.LogicallyPartitioned) from a dummy batch of the given shapes.

        batch_shapes maps feature names (encoder_input_tokens, decoder_input_tokens / decoder_target_tokens) or
        'inputs' / 'targets' to shapes.
        """
        encoder_shape = _shape_of(batch_shapes, 'encoder_input_tokens', 'inputs')
        decoder_shape = _shape_of(batch_shapes, 'decoder_input_tokens', 'decoder_target_tokens', 'targets')
        params_rng, dropout_rng = jax.random.split(rng)
        encoder_tokens = jnp.ones(encoder_shape, jnp.int32)
        decoder_tokens = jnp.ones(decoder_shape, jnp.int32)
        return self.module.init({'params': params_rng, 'dropout': dropout_rng}, encoder_tokens, decoder_tokens,
                                decoder_tokens, enable_dropout=False)

    def _logits(self, params, batch: Batch, dropout_rng=None):
        """Teacher-forced fp32 logits [b, l, vocab]; dropout is on iff dropout_rng is given."""
        enable_dropout = dropout_rng is not None
        return self.module.apply(
            {'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
            batch['decoder_target_tokens'], encoder_segment_ids=batch.get('encoder_segment_ids'),
            decoder_segment_ids=batch.get('decoder_segment_ids'), encoder_positions=batch.get('encoder_positions'),
            decoder_positions=batch.get('decoder_positions'), enable_dropout=enable_dropout,
            rngs={'dropout': dropout_rng} if enable_dropout else None)

    @staticmethod
    def _loss_weights(batch: Batch):
        if 'decoder_loss_weights' in batch:
            return jnp.asarray(batch['decoder_loss_weights'], jnp.float32)
        return (batch['decoder_target_tokens'] > 0).astype(jnp.float32)

    def loss_fn(self, params, batch: Batch, dropout_rng: Optional[jax.Array]):
        """(loss, metrics) for one batch; dropout_rng=None disables dropout.

        loss follows `loss_normalizing_factor` (None: summed over target tokens, as T5X). Metrics: loss,
        z_loss, cross_ent_loss (normalised like loss), loss_sum (unnormalised total), weight_sum, num_correct
        (sums, safe to add over microbatches) and accuracy (a mean).
        """
        logits = self._logits(params, batch, dropout_rng)
        targets = batch['decoder_target_tokens']
        weights = self._loss_weights(batch)
        token_loss, token_z_loss, correct = losses.token_cross_entropy(logits, targets, self.z_loss,
                                                                       self.label_smoothing)
        loss, z_loss = losses.weighted_loss(token_loss, token_z_loss, weights, self.loss_normalizing_factor,
                                            batch.get('decoder_segment_ids'))
        loss_sum = loss if self.loss_normalizing_factor is None else jnp.sum(token_loss * weights)
        weight_sum = jnp.sum(weights)
        num_correct = jnp.sum(correct * weights)
        metrics = {
            'loss': loss,
            'z_loss': z_loss,
            'cross_ent_loss': loss - z_loss,
            'loss_sum': jax.lax.stop_gradient(loss_sum),
            'weight_sum': weight_sum,
            'num_correct': num_correct,
            'accuracy': num_correct / jnp.maximum(weight_sum, 1e-8),
        }
        return loss, metrics

    def score_batch(self, params, batch: Batch):
        """[b] sum over target tokens of log p(target) (weighted by decoder_loss_weights if present)."""
        logits = self._logits(params, batch)
        return losses.sequence_log_likelihood(logits, batch['decoder_target_tokens'], self._loss_weights(batch))

    def _tokens_to_logits_and_cache(self, params, batch: Batch, max_decode_length: int, copies: int):
        """Encodes once and builds (tokens_to_logits callback, empty cache for the batch rows).

        The callback works on batch*copies rows (beam search); encoder outputs are repeated accordingly.
        """
        encoder_tokens = batch['encoder_input_tokens']
        encoded = self.module.apply({'params': params}, encoder_tokens, enable_dropout=False,
                                    method=Transformer.encode)
        dummy = jnp.zeros((encoder_tokens.shape[0], max_decode_length), jnp.int32)
        _, variables = self.module.apply({'params': params}, encoded, encoder_tokens, dummy, dummy,
                                         enable_dropout=False, decode=True, max_decode_length=max_decode_length,
                                         mutable=['cache'], method=Transformer.decode)
        encoded = jnp.repeat(encoded, copies, axis=0)
        encoder_tokens = jnp.repeat(encoder_tokens, copies, axis=0)

        def tokens_to_logits(token_ids, cache):
            logits, new_variables = self.module.apply(
                {'params': params, 'cache': cache}, encoded, encoder_tokens, token_ids, token_ids,
                enable_dropout=False, decode=True, max_decode_length=max_decode_length, mutable=['cache'],
                method=Transformer.decode)
            return logits[:, -1, :], new_variables['cache']

        return tokens_to_logits, variables['cache']

    def predict_batch_with_scores(self, params, batch: Batch, rng: Optional[jax.Array] = None,
                                  method: str = 'greedy', max_decode_length: Optional[int] = None,
                                  num_beams: int = 4, alpha: float = 0.6, temperature: float = 1.0,
                                  top_k: int = 0, top_p: float = 1.0, return_all_beams: bool = False):
        """Decodes the batch: (tokens int32 [b, L], scores fp32 [b]); EOS (1) then 0 padding.

        method 'greedy' | 'sample' (temperature, top_k, top_p; needs rng) | 'beam' (num_beams, alpha; scores are
        length-penalised log-probs, and return_all_beams=True gives [b, num_beams, L] / [b, num_beams] best-first).
        Greedy/sample scores are summed token log-probs. L defaults to decoder_target_tokens' length.
        """
        if method not in DECODE_METHODS:
            raise UserError(f'predict_batch: method={method!r}; expected one of {", ".join(DECODE_METHODS)}')
        if max_decode_length is None:
            if 'decoder_target_tokens' not in batch:
                raise UserError('predict_batch: pass max_decode_length or a batch with decoder_target_tokens')
            max_decode_length = batch['decoder_target_tokens'].shape[1]
        if method == 'sample' and rng is None and temperature != 0.0:
            raise UserError("predict_batch: method='sample' needs rng (a jax.random key)")
        batch_size = batch['encoder_input_tokens'].shape[0]
        copies = num_beams if method == 'beam' else 1
        tokens_to_logits, cache = self._tokens_to_logits_and_cache(params, batch, max_decode_length, copies)
        if method == 'beam':
            tokens, scores = decoding.beam_search(tokens_to_logits, cache, batch_size, max_decode_length,
                                                  num_beams=num_beams, alpha=alpha)
            return (tokens, scores) if return_all_beams else (tokens[:, 0], scores[:, 0])
        if method == 'greedy':
            return decoding.greedy_decode(tokens_to_logits, cache, batch_size, max_decode_length)
        return decoding.temperature_sample(tokens_to_logits, cache, batch_size, max_decode_length, rng=rng,
                                           temperature=temperature, top_k=top_k, top_p=top_p)

    def predict_batch(self, params, batch: Batch, rng: Optional[jax.Array] = None, method: str = 'greedy',
                      max_decode_length: Optional[int] = None, num_beams: int = 4, alpha: float = 0.6,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
        """Decoded tokens int32 [b, L] (EOS then 0 padding); see `predict_batch_with_scores` for the options."""
        tokens, _ = self.predict_batch_with_scores(params, batch, rng, method, max_decode_length, num_beams, alpha,
                                                   temperature, top_k, top_p)
        return tokens
