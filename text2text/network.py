"""T5 encoder-decoder (T5X parameter tree) built from text2text.layers."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from text2text import scan
from text2text.config import T5Config
from text2text.errors import UserError
from text2text.layers import NEG_INF, Dense, Embed, MlpBlock, MultiHeadAttention, RelativePositionBias, RMSNorm

EMBED_AXES = ('batch', 'length', 'embed')
REMAT_POLICIES = {'none': None, 'full': None, 'minimal': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
                  'dots_saveable': jax.checkpoint_policies.dots_saveable}
ATTENTION_KERNELS = ('einsum', 'xla', 'cudnn')  # T5Config.attention_kernel, see layers.MultiHeadAttention


def attention_bias(query_valid: jax.Array, key_valid: jax.Array, query_segment_ids: jax.Array | None = None,
                   key_segment_ids: jax.Array | None = None, causal: bool = False) -> jax.Array:
    """Additive fp32 mask [b, 1, q, k]: 0 where query may attend key (both valid, same segment, causal), else -1e10."""
    mask = query_valid[:, :, None] & key_valid[:, None, :]
    if query_segment_ids is not None:
        mask &= query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    if causal:
        mask &= jnp.tril(jnp.ones((query_valid.shape[1], key_valid.shape[1]), dtype=bool))
    return jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)[:, None]


def _adapter(config: T5Config, x: jax.Array, sublayer: str) -> jax.Array:
    """PEFT hook on a sublayer's output before its residual add (adapters); identity when config.peft is None."""
    return x if config.peft is None else config.peft.adapter(x, sublayer)


def _layer_class(cls, config: T5Config, static_argnums: tuple[int, ...]):
    """Wrap a layer class in nn.remat according to config.remat_policy."""
    if config.remat_policy == 'none':
        return cls
    return nn.remat(cls, policy=REMAT_POLICIES[config.remat_policy], static_argnums=static_argnums)


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + MLP block with residual dropout."""
    config: T5Config

    @nn.compact
    def __call__(self, inputs: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        x = RMSNorm(cfg.layer_norm_epsilon, dtype, name='pre_attention_layer_norm')(inputs)
        x = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype, peft=cfg.peft,
                               kernel=cfg.attention_kernel,
                               name='attention')(x, x, bias, deterministic)
        x = dropout(_adapter(cfg, x, 'attention'), deterministic=deterministic) + inputs
        y = RMSNorm(cfg.layer_norm_epsilon, dtype, name='pre_mlp_layer_norm')(x)
        y = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype, peft=cfg.peft, name='mlp')(
            y, deterministic)
        y = dropout(_adapter(cfg, y, 'mlp'), deterministic=deterministic) + x
        return nn.with_logical_constraint(y, EMBED_AXES)


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, encoder-decoder attention and MLP, each with residual dropout."""
    config: T5Config

    @nn.compact
    def __call__(self, inputs: jax.Array, encoded: jax.Array, self_bias: jax.Array | None,
                 cross_bias: jax.Array, deterministic: bool, decode: bool) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        x = RMSNorm(cfg.layer_norm_epsilon, dtype, name='pre_self_attention_layer_norm')(inputs)
        x = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype, peft=cfg.peft,
                               kernel=cfg.attention_kernel,
                               name='self_attention')(x, x, self_bias, deterministic, decode)
        x = dropout(_adapter(cfg, x, 'self_attention'), deterministic=deterministic) + inputs
        y = RMSNorm(cfg.layer_norm_epsilon, dtype, name='pre_cross_attention_layer_norm')(x)
        y = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype, peft=cfg.peft,
                               kernel=cfg.attention_kernel,
                               name='encoder_decoder_attention')(y, encoded, cross_bias, deterministic, decode,
                                                                 cache_kv_once=True)
        y = dropout(_adapter(cfg, y, 'encoder_decoder_attention'), deterministic=deterministic) + x
        z = RMSNorm(cfg.layer_norm_epsilon, dtype, name='pre_mlp_layer_norm')(y)
        z = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype, peft=cfg.peft, name='mlp')(
            z, deterministic)
        z = dropout(_adapter(cfg, z, 'mlp'), deterministic=deterministic) + y
        return nn.with_logical_constraint(z, EMBED_AXES)


class Encoder(nn.Module):
    """Embedding, bidirectional relative-position bias (shared by all layers), layer stack, final norm."""
    config: T5Config
    shared_embedding: Embed

    @nn.compact
    def __call__(self, tokens: jax.Array, segment_ids: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        x = self.shared_embedding(tokens)
        mask = attention_bias(tokens > 0, tokens > 0, segment_ids, segment_ids)
        if cfg.peft is not None:  # PEFT hook: prompt tuning prepends its prompt and extends the mask
            x, mask = cfg.peft.encoder_inputs(x, tokens, segment_ids, mask, self.shared_embedding.embedding)
        x = dropout(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, EMBED_AXES)
        positions = jnp.arange(x.shape[1])
        relpos = RelativePositionBias(cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
                                      cfg.num_heads, bidirectional=True, name='relpos_bias')(positions, positions)
        bias = mask + relpos
        if cfg.scan_layers:
            x = scan.apply_scanned(EncoderLayer, cfg, cfg.num_encoder_layers,
                                   lambda cls: _layer_class(cls, cfg, (3,)), x, bias, deterministic)
        else:
            layer_cls = _layer_class(EncoderLayer, cfg, static_argnums=(3,))
            for i in range(cfg.num_encoder_layers):
                x = layer_cls(cfg, name=f'layers_{i}')(x, bias, deterministic)
        x = RMSNorm(cfg.layer_norm_epsilon, dtype, name='encoder_norm')(x)
        return dropout(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Embedding, causal relative-position bias (shared by all layers), layer stack, final norm, logits."""
    config: T5Config
    shared_embedding: Embed

    @nn.compact
    def __call__(self, encoded: jax.Array, tokens: jax.Array, self_bias: jax.Array | None,
                 cross_bias: jax.Array, deterministic: bool = True, decode: bool = False) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        x = dropout(self.shared_embedding(tokens), deterministic=deterministic)
        x = nn.with_logical_constraint(x, EMBED_AXES)
        query_positions, key_positions = self._positions(tokens.shape[1], decode)
        relpos = RelativePositionBias(cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance,
                                      cfg.num_heads, bidirectional=False, name='relpos_bias')(
                                          query_positions, key_positions)
        self_bias = relpos if self_bias is None else self_bias + relpos
        if cfg.scan_layers:
            x = scan.apply_scanned(DecoderLayer, cfg, cfg.num_decoder_layers,
                                   lambda cls: _layer_class(cls, cfg, (5, 6)),
                                   x, encoded, self_bias, cross_bias, deterministic, decode)
        else:
            layer_cls = _layer_class(DecoderLayer, cfg, static_argnums=(5, 6))
            for i in range(cfg.num_decoder_layers):
                x = layer_cls(cfg, name=f'layers_{i}')(x, encoded, self_bias, cross_bias, deterministic, decode)
        x = RMSNorm(cfg.layer_norm_epsilon, dtype, name='decoder_norm')(x)
        x = dropout(x, deterministic=deterministic)
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(x) / math.sqrt(cfg.emb_dim)
        else:
            logits = Dense(cfg.vocab_size, ('embed', 'vocab'), dtype=dtype, output_dtype=jnp.float32,
                           name='logits_dense')(x)
        return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))

    def _positions(self, length: int, decode: bool) -> tuple[jax.Array, jax.Array]:
        """Query/key positions for the relative bias; a decode step's query sits at the cache index."""
        cache = scan.first_layer_cache(self.variables.get('cache', {}), self.config.scan_layers, 'self_attention')
        if not decode or cache is None:
            return jnp.arange(length), jnp.arange(length)
        return cache['cache_index'][None], jnp.arange(cache['cached_key'].shape[-1])


class Transformer(nn.Module):
    """T5 encoder-decoder with T5X EncoderDecoder's methods and parameter names."""
    config: T5Config

    def setup(self):
        cfg = self.config
        if cfg.remat_policy not in REMAT_POLICIES:
            raise UserError(f'T5Config.remat_policy={cfg.remat_policy!r} is not supported; '
                            f'expected one of {", ".join(REMAT_POLICIES)}')
        if cfg.attention_kernel not in ATTENTION_KERNELS:
            raise UserError(f'T5Config.attention_kernel={cfg.attention_kernel!r} is not supported; '
                            f'expected one of {", ".join(ATTENTION_KERNELS)}')
        try:
            floating = jnp.issubdtype(jnp.dtype(cfg.dtype), jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise UserError(f"T5Config.dtype={cfg.dtype!r} is not a floating-point dtype; expected e.g. 'float32' "
                            "or 'bfloat16'")
        if cfg.attention_kernel == 'cudnn' and jax.default_backend() != 'gpu':
            raise UserError(f"T5Config.attention_kernel='cudnn' needs an NVIDIA GPU (JAX's backend here is "
                            f"{jax.default_backend()!r}); use 'einsum' or 'xla'")
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.one_hot_embedding, jnp.dtype(cfg.dtype))
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None, enable_dropout=True):
        """Encoder output [b, l, emb] (activation dtype). encoder_positions is unused: T5 positions are relative."""
        del encoder_positions
        return self.encoder(encoder_input_tokens, encoder_segment_ids, deterministic=not enable_dropout)

    def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None, enable_dropout=True,
               decode=False, max_decode_length=None):
        """fp32 logits [b, l, vocab]. decode=True: one token per call with the KV cache (positions from the
        cache index, so decoder_positions/max_decode_length are accepted for T5X compatibility but unused)."""
        del decoder_positions, max_decode_length
        if decode:
            self_bias = None
            cross_bias = attention_bias(jnp.ones_like(decoder_input_tokens, dtype=bool), encoder_input_tokens > 0)
        else:
            query_valid = (jnp.ones_like(decoder_input_tokens, dtype=bool) if decoder_target_tokens is None
                           else decoder_target_tokens > 0)
            self_bias = attention_bias(query_valid, query_valid, decoder_segment_ids, decoder_segment_ids,
                                       causal=True)
            cross_bias = attention_bias(query_valid, encoder_input_tokens > 0, decoder_segment_ids,
                                        encoder_segment_ids)
        if self.config.peft is not None:  # PEFT hook: prompt tuning's prompt positions are encoder keys too
            cross_bias = self.config.peft.cross_attention_bias(cross_bias, encoder_input_tokens)
        return self.decoder(encoded, decoder_input_tokens, self_bias, cross_bias,
                            deterministic=not enable_dropout, decode=decode)

    def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
                 encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
                 decoder_positions=None, enable_dropout=True, decode=False):
        """Teacher-forced (or, with decode=True, cached single-step) fp32 logits [b, l, vocab]."""
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                           encoder_segment_ids, decoder_segment_ids, decoder_positions, enable_dropout, decode)
