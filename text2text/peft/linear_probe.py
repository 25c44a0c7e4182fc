"""Linear probing: a linear classifier on the mean-pooled (or first-token) output of the frozen T5 encoder (or,
with LinearProbeConfig.train_encoder, of a trained one: standard fine-tuning with a classification head).

`LinearProbeModel` speaks the EncoderDecoderModel interface the trainer and evaluator use: classes are the
label texts of a classification task (T5Config.peft.linear_probe.label_token_ids), the class of a batch row
is read from its decoder_target_tokens, and predict_batch writes the predicted class's tokens, so seqio
postprocessors and metrics work unchanged. The params hold the whole base T5 (so base checkpoints load as
they are) plus `probe/{kernel,bias}`; gradients stop at the encoder output unless train_encoder. Batches must
be unpacked.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from text2text.config import T5Config
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel
from text2text.network import Transformer

EOS_ID = 1
Batch = Mapping[str, jax.Array]


class ProbeHead(nn.Module):
    """Dense layer with bias: pooled [b, emb] -> class logits [b, classes] (fp32)."""
    num_classes: int

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        kernel = self.param('kernel', nn.with_logical_partitioning(nn.initializers.zeros, ('embed', 'classes')),
                            (pooled.shape[-1], self.num_classes), jnp.float32)
        bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('classes',)),
                          (self.num_classes,), jnp.float32)
        return pooled.astype(jnp.float32) @ kernel + bias


class ProbeTransformer(Transformer):
    """The T5 Transformer plus a `probe` head on its pooled, gradient-stopped encoder output."""

    def setup(self):
        super().setup()
        self.probe = ProbeHead(len(self.config.peft.linear_probe.label_token_ids))

    def classify(self, encoder_input_tokens: jax.Array) -> jax.Array:
        """Class logits [b, classes] from the encoder (dropout off; frozen unless train_encoder)."""
        encoded = self.encode(encoder_input_tokens, enable_dropout=False)
        if not self.config.peft.linear_probe.train_encoder:
            encoded = jax.lax.stop_gradient(encoded)
        if self.config.peft.linear_probe.pooling == 'first':
            pooled = encoded[:, 0]
        else:
            valid = (encoder_input_tokens > 0)[..., None].astype(encoded.dtype)
            pooled = (encoded * valid).sum(axis=1) / jnp.maximum(valid.sum(axis=1), 1.0)
        return self.probe(pooled)

    def init_all(self, encoder_input_tokens: jax.Array, decoder_tokens: jax.Array) -> jax.Array:
        """Touches every base parameter and the probe (used only to initialise)."""
        self(encoder_input_tokens, decoder_tokens, decoder_tokens, enable_dropout=False)
        return self.classify(encoder_input_tokens)


class LinearProbeModel(EncoderDecoderModel):
    """Classifier with EncoderDecoderModel's methods: loss_fn, score_batch, predict_batch, init_variables."""

    def __init__(self, config: T5Config):
        if config.peft is None or config.peft.linear_probe is None:
            raise UserError('LinearProbeModel needs config.peft = PeftConfig(linear_probe=LinearProbeConfig(...))')
        super().__init__(config, z_loss=0.0)
        self.module = ProbeTransformer(config)
        labels = config.peft.linear_probe.label_token_ids
        width = max(len(ids) for ids in labels) + 1
        self.label_tokens = np.zeros((len(labels), width), np.int32)
        for row, ids in enumerate(labels):
            self.label_tokens[row, :len(ids) + 1] = (*ids, EOS_ID)

    def init_variables(self, rng: jax.Array, batch_shapes: Mapping[str, Any]):
        """Initial variables of the base T5 and the probe head (batch_shapes as in EncoderDecoderModel)."""
        def ones(*names):
            shape = next((batch_shapes[n] for n in names if n in batch_shapes), None)
            if shape is None:
                raise UserError(f'init_variables: batch_shapes needs one of {", ".join(names)}')
            return jnp.ones(tuple(getattr(shape, 'shape', shape)), jnp.int32)

        encoder = ones('encoder_input_tokens', 'inputs')
        decoder = ones('decoder_input_tokens', 'decoder_target_tokens', 'targets')
        return self.module.init({'params': rng}, encoder, decoder, method=ProbeTransformer.init_all)

    def _label_table(self, length: int) -> jnp.ndarray:
        table = self.label_tokens[:, :length]
        return jnp.asarray(np.pad(table, ((0, 0), (0, length - table.shape[1]))))

    def labels(self, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(class index [b], weight [b]): the class whose tokens the target row spells; weight 0 if none."""
        matches = jnp.all(targets[:, None, :] == self._label_table(targets.shape[1])[None], axis=-1)
        return jnp.argmax(matches, axis=-1), jnp.any(matches, axis=-1).astype(jnp.float32)

    def class_log_probs(self, params, batch: Batch) -> jax.Array:
        """Log-softmax over classes [b, classes]; packed batches raise UserError."""
        if 'encoder_segment_ids' in batch:
            raise UserError('LinearProbeModel classifies whole rows; train with pack=False')
        logits = self.module.apply({'params': params}, batch['encoder_input_tokens'],
                                   method=ProbeTransformer.classify)
        return jax.nn.log_softmax(logits, axis=-1)

    def loss_fn(self, params, batch: Batch, dropout_rng: jax.Array | None):
        """(summed cross-entropy over rows with a known class, metrics as EncoderDecoderModel.loss_fn)."""
        del dropout_rng
        log_probs = self.class_log_probs(params, batch)
        label, weight = self.labels(batch['decoder_target_tokens'])
        loss = -jnp.sum(jnp.take_along_axis(log_probs, label[:, None], axis=-1)[:, 0] * weight)
        num_correct = jnp.sum((jnp.argmax(log_probs, axis=-1) == label) * weight)
        weight_sum = jnp.sum(weight)
        metrics = {'loss': loss, 'z_loss': jnp.zeros(()), 'cross_ent_loss': loss, 'loss_sum': loss,
                   'weight_sum': weight_sum, 'num_correct': num_correct,
                   'accuracy': num_correct / jnp.maximum(weight_sum, 1e-8)}
        return loss, metrics

    def score_batch(self, params, batch: Batch) -> jax.Array:
        """[b] log-probability of the target's class (-1e9 for targets that are no class)."""
        label, weight = self.labels(batch['decoder_target_tokens'])
        scores = jnp.take_along_axis(self.class_log_probs(params, batch), label[:, None], axis=-1)[:, 0]
        return jnp.where(weight > 0, scores, -1e9)

    def predict_batch_with_scores(self, params, batch: Batch, rng: jax.Array | None = None, method: str = 'greedy',
                                  max_decode_length: int | None = None, num_beams: int = 4, alpha: float = 0.6,
                                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                                  return_all_beams: bool = False):
        """(tokens [b, L] of the most likely class followed by EOS, its log-probability [b]); the decoding
        options are accepted for interface compatibility and ignored."""
        del rng, method, num_beams, alpha, temperature, top_k, top_p, return_all_beams
        length = max_decode_length or batch['decoder_target_tokens'].shape[1]
        log_probs = self.class_log_probs(params, batch)
        return self._label_table(length)[jnp.argmax(log_probs, axis=-1)], jnp.max(log_probs, axis=-1)
