"""P-tuning (Liu et al. 2021, "GPT Understands, Too"): virtual tokens anywhere in the encoder input, produced by a
prompt encoder.

A template writes virtual token j as a reserved marker token (by default the highest sentinels <extra_id_99>,
<extra_id_98>, ...; see tasks.prompting.p_tuning.virtual_tokens), at any position between text and anchor words
(the paper's mixed templates, sec. 3). The encoder-input hook replaces the input embedding at every position
holding `marker_ids[j]` by the prompt encoder's output h_j. The markers are real tokens, so the attention mask and
the relative positions are those of the plain input.

The prompt encoder maps learned embeddings e_1..e_n [n, emb] to h_1..h_n [n, emb] (sec. 3, "prompt encoder"):
  'lstm': h = MLP([LSTM_fwd(e); LSTM_bwd(e)]), a bi-LSTM then a two-layer ReLU MLP (the paper's choice);
  'mlp':  h = MLP(e);
  'none': h = e, plain embeddings (what `fold_prompt_encoder` leaves after training).
Parameters live under `encoder/p_tuning/`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
from flax.core import meta
import jax.numpy as jnp
import numpy as np

from text2text.errors import UserError
from text2text.peft.prompt_tuning import FIRST_SAMPLED_ID

ENCODERS = ('lstm', 'mlp', 'none')
SCOPE = 'p_tuning'


@dataclasses.dataclass(frozen=True)
class PTuningConfig:
    """n virtual tokens, the marker token id of each, and the prompt encoder.

    marker_ids: n distinct token ids; position of marker_ids[j] in the encoder input gets virtual token j.
    encoder: 'lstm' | 'mlp' | 'none' (see the module docstring). hidden_dim: LSTM state width per direction and
    MLP hidden width (0: the model's embedding width). init_token_ids: n token ids whose embeddings are the initial
    e_j (AutoPrompt-style searches start from real tokens); empty: rows of the embedding table sampled from ids
    [3, vocab_sample_size).
    """
    num_virtual: int = 4
    marker_ids: tuple = ()
    encoder: str = 'lstm'
    hidden_dim: int = 0
    init_token_ids: tuple = ()
    vocab_sample_size: int = 5000

    def __post_init__(self):
        object.__setattr__(self, 'marker_ids', tuple(int(i) for i in self.marker_ids))
        object.__setattr__(self, 'init_token_ids', tuple(int(i) for i in self.init_token_ids))
        if self.num_virtual < 1:
            raise UserError(f'PTuningConfig.num_virtual must be >= 1, got {self.num_virtual}')
        if len(self.marker_ids) != self.num_virtual or len(set(self.marker_ids)) != self.num_virtual:
            raise UserError(f'PTuningConfig.marker_ids={self.marker_ids} must be {self.num_virtual} distinct token ids '
                            '(see tasks.prompting.p_tuning.virtual_tokens)')
        if self.encoder not in ENCODERS:
            raise UserError(f'PTuningConfig.encoder={self.encoder!r}; expected one of {", ".join(ENCODERS)}')
        if self.hidden_dim < 0:
            raise UserError(f'PTuningConfig.hidden_dim must be >= 0 (0: embedding width), got {self.hidden_dim}')
        if self.init_token_ids and len(self.init_token_ids) != self.num_virtual:
            raise UserError(f'PTuningConfig.init_token_ids has {len(self.init_token_ids)} ids for '
                            f'{self.num_virtual} virtual tokens')


def initial_embeddings(rng: jax.Array, embedding: jax.Array, cfg: PTuningConfig) -> jax.Array:
    """[n, emb] fp32 initial e_j: embeddings of cfg.init_token_ids, else sampled rows of `embedding` [vocab, emb]."""
    embedding = jnp.asarray(embedding, jnp.float32)
    if cfg.init_token_ids:
        return embedding[np.asarray(cfg.init_token_ids, np.int32)]
    high = max(min(cfg.vocab_sample_size, embedding.shape[0]), FIRST_SAMPLED_ID + 1)
    return embedding[jax.random.randint(rng, (cfg.num_virtual,), FIRST_SAMPLED_ID, high)]


def lstm(inputs: jax.Array, input_kernel: jax.Array, recurrent_kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Hidden states [n, h] of a one-directional LSTM over inputs [n, d] (gates i, f, g, o; zero initial state)."""
    hidden = recurrent_kernel.shape[0]

    def step(carry, gates_x):
        h, c = carry
        i, f, g, o = jnp.split(gates_x + h @ recurrent_kernel, 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((hidden,), inputs.dtype)
    _, states = jax.lax.scan(step, (zeros, zeros), inputs @ input_kernel + bias)
    return states


class PromptEncoder(nn.Module):
    """The virtual tokens h [n, emb] (fp32) from learned embeddings, initialised from the token table `embedding`."""
    cfg: PTuningConfig

    def _param(self, name, init, shape, axes):
        return self.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)

    def _lstm(self, name: str, x: jax.Array, hidden: int) -> jax.Array:
        fan_in = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
        return lstm(x,
                    self._param(f'{name}_input_kernel', fan_in, (x.shape[1], 4 * hidden), ('embed', 'prompt_gates')),
                    self._param(f'{name}_recurrent_kernel', fan_in, (hidden, 4 * hidden),
                                ('prompt_hidden', 'prompt_gates')),
                    self._param(f'{name}_bias', nn.initializers.zeros, (4 * hidden,), ('prompt_gates',)))

    @nn.compact
    def __call__(self, embedding: jax.Array) -> jax.Array:
        cfg, emb = self.cfg, embedding.shape[1]
        hidden = cfg.hidden_dim or emb
        init = nn.with_logical_partitioning(lambda rng: initial_embeddings(rng, embedding, cfg), ('virtual', 'embed'))
        e = self.param('embedding', init)
        if cfg.encoder == 'none':
            return e
        in_axis = 'embed'
        if cfg.encoder == 'lstm':
            e = jnp.concatenate([self._lstm('lstm_fwd', e, hidden), self._lstm('lstm_bwd', e[::-1], hidden)[::-1]], 1)
            in_axis = 'prompt_bilstm'
        fan_in = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
        h = jax.nn.relu(e @ self._param('mlp_in_kernel', fan_in, (e.shape[1], hidden), (in_axis, 'prompt_mlp'))
                        + self._param('mlp_in_bias', nn.initializers.zeros, (hidden,), ('prompt_mlp',)))
        return (h @ self._param('mlp_out_kernel', fan_in, (hidden, emb), ('prompt_mlp', 'embed'))
                + self._param('mlp_out_bias', nn.initializers.zeros, (emb,), ('embed',)))


def place_virtual_tokens(cfg: PTuningConfig, x: jax.Array, tokens: jax.Array, embedding: jax.Array) -> jax.Array:
    """Input embeddings x [b, l, emb] with every marker_ids[j] position replaced by virtual token j (x's dtype).

    tokens: int [b, l] encoder input ids; embedding: the token table [vocab, emb] (initialises the prompt encoder).
    """
    virtual = PromptEncoder(cfg, name=SCOPE)(embedding)
    match = tokens[..., None] == jnp.asarray(cfg.marker_ids, tokens.dtype)  # [b, l, n]
    placed = jnp.take(virtual.astype(x.dtype), jnp.argmax(match, axis=-1), axis=0)  # a gather: exact at any precision
    return jnp.where(match.any(axis=-1, keepdims=True), placed, x)


def _encoder_params(params: Any) -> Any:
    try:
        return params['encoder'][SCOPE]
    except KeyError as e:
        raise UserError(f'the params have no encoder/{SCOPE} (not a P-tuning model)') from e


def with_prompt_encoder(params: Any, tree: Any) -> dict:
    """`params` (a T5's tree) with `tree` as its encoder/p_tuning parameters (added or replaced)."""
    return {**params, 'encoder': {**params['encoder'], SCOPE: tree}}


def init_prompt_encoder(params: Any, cfg: PTuningConfig, rng: jax.Array) -> dict:
    """A plain T5's `params` with a freshly initialised (unboxed) prompt encoder added: a P-tuning T5's params."""
    variables = PromptEncoder(cfg).init(rng, params['token_embedder']['embedding'])
    return with_prompt_encoder(params, meta.unbox(variables['params']))


def virtual_embeddings(params: Any, cfg: PTuningConfig) -> jax.Array:
    """[n, emb] fp32: the virtual tokens h_j the prompt encoder in `params` (a P-tuning T5's tree) produces."""
    return PromptEncoder(cfg).apply({'params': _encoder_params(params)}, params['token_embedder']['embedding'])


def fold_prompt_encoder(params: Any, peft_config: Any) -> tuple[dict, Any]:
    """(params whose prompt encoder is replaced by its output, a plain [n, emb] table; the config with encoder
    'none'). The folded model computes the same logits. Raises UserError without P-tuning in `peft_config`."""
    cfg = peft_config.p_tuning
    if cfg is None:
        raise UserError('fold_prompt_encoder: the PEFT config has no P-tuning')
    table = virtual_embeddings(params, cfg)
    new_cfg = dataclasses.replace(peft_config, p_tuning=dataclasses.replace(cfg, encoder='none'))
    return with_prompt_encoder(params, {'embedding': table}), new_cfg


def reinitialize(params: dict, cfg: PTuningConfig, rng: jax.Array) -> dict:
    """Params with the initial embeddings e re-drawn from their (e.g. just loaded) token table; other leaves kept."""
    table = initial_embeddings(rng, params['token_embedder']['embedding'], cfg)
    old = _encoder_params(params)
    if isinstance(old['embedding'], jax.Array):
        table = jax.device_put(table, old['embedding'].sharding)
    return with_prompt_encoder(params, {**old, 'embedding': table})
