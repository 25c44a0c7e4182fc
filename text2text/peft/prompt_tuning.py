"""Prompt tuning (Lester et al. 2021): P learned vectors prepended to the encoder's input embeddings.

The prompt is `encoder/prompt_tuning/prompt` of shape [num_tasks, P, emb]. With num_tasks > 1 the first
input token of every row is the task index (see tasks.prompting.prepend_task_index); it selects the row's
prompt inside the jitted step and is itself masked out. Unpacked rows attend freely between prompt and
input (as in the paper). In packed rows every segment sees the prompt positions, while the prompt
positions attend only to each other, so no information flows between the packed examples.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from text2text.errors import UserError
from text2text.layers import NEG_INF

INIT_MODES = ('vocab', 'labels', 'text', 'uniform')
PROMPT_SEGMENT = -1  # segment id of the prompt positions in packed rows: visible to every segment
FIRST_SAMPLED_ID = 3  # skip pad (0), EOS (1) and unk (2) when sampling vocabulary rows


@dataclasses.dataclass(frozen=True)
class PromptTuningConfig:
    """Prompt length, initialisation and number of per-task prompts.

    init: 'vocab' (rows of the token embedding sampled from ids [3, vocab_sample_size)), 'labels' (the first
    len(init_token_ids) prompt vectors are the mean embeddings of each class label's tokens, the rest sampled
    as 'vocab'), 'text' (the embeddings of init_token_ids, repeated to length P) or 'uniform' (U[-s, s]).
    """
    length: int = 100
    init: str = 'vocab'
    init_token_ids: tuple = ()  # 'labels': one tuple of token ids per class; 'text': one flat tuple of ids
    vocab_sample_size: int = 5000
    uniform_scale: float = 0.5
    num_tasks: int = 1

    def __post_init__(self):
        if self.length < 1:
            raise UserError(f'PromptTuningConfig.length must be >= 1, got {self.length}')
        if self.num_tasks < 1:
            raise UserError(f'PromptTuningConfig.num_tasks must be >= 1, got {self.num_tasks}')
        if self.init not in INIT_MODES:
            raise UserError(f'PromptTuningConfig.init={self.init!r}; expected one of {", ".join(INIT_MODES)}')
        ids = tuple(tuple(int(i) for i in row) for row in self.init_token_ids) if self.init == 'labels' \
            else tuple(int(i) for i in self.init_token_ids)
        object.__setattr__(self, 'init_token_ids', ids)
        if self.init in ('labels', 'text') and (not ids or (self.init == 'labels' and not all(ids))):
            raise UserError(f"PromptTuningConfig.init={self.init!r} needs non-empty init_token_ids (see "
                            "tasks.prompting.label_token_ids / text_token_ids)")
        if self.init == 'labels' and len(ids) > self.length:
            raise UserError(f'PromptTuningConfig: {len(ids)} class labels do not fit in a prompt of length '
                            f'{self.length}')


def initial_prompt(rng: jax.Array, embedding: jax.Array, cfg: PromptTuningConfig) -> jax.Array:
    """[num_tasks, P, emb] fp32 prompt initialised from the token embedding table [vocab, emb] per `cfg.init`."""
    shape = (cfg.num_tasks, cfg.length, embedding.shape[1])
    if cfg.init == 'uniform':
        return jax.random.uniform(rng, shape, jnp.float32, -cfg.uniform_scale, cfg.uniform_scale)
    embedding = jnp.asarray(embedding, jnp.float32)
    if cfg.init == 'text':
        ids = np.resize(np.asarray(cfg.init_token_ids, np.int32), cfg.length)
        return jnp.broadcast_to(embedding[ids], shape)
    high = max(min(cfg.vocab_sample_size, embedding.shape[0]), FIRST_SAMPLED_ID + 1)
    prompt = embedding[jax.random.randint(rng, shape[:2], FIRST_SAMPLED_ID, high)]
    if cfg.init == 'labels':
        labels = jnp.stack([embedding[np.asarray(ids, np.int32)].mean(axis=0) for ids in cfg.init_token_ids])
        prompt = prompt.at[:, :len(cfg.init_token_ids)].set(labels)
    return prompt


class PromptEmbedding(nn.Module):
    """Holds the learned prompt `prompt` [num_tasks, P, emb], initialised from the current embedding table."""
    cfg: PromptTuningConfig

    @nn.compact
    def __call__(self, embedding: jax.Array) -> jax.Array:
        init = nn.with_logical_partitioning(lambda rng: initial_prompt(rng, embedding, self.cfg),
                                            ('prompt_tasks', 'prompt', 'embed'))
        return self.param('prompt', init)


def prepend_prompt(cfg: PromptTuningConfig, x: jax.Array, tokens: jax.Array, segment_ids: jax.Array | None,
                   embedding: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encoder embeddings [b, P+l, emb] with the prompt in front, and their self-attention mask [b, 1, P+l, P+l]."""
    prompts = PromptEmbedding(cfg, name='prompt_tuning')(embedding)
    batch = x.shape[0]
    valid = jnp.asarray(tokens) > 0
    if cfg.num_tasks > 1:
        if segment_ids is not None:
            raise UserError('prompt tuning with num_tasks > 1 reads the task index from the first input token, '
                            'so it needs unpacked batches (pack=False)')
        prompt = prompts[jnp.clip(tokens[:, 0], 0, cfg.num_tasks - 1)]
        valid = valid.at[:, 0].set(False)
    else:
        prompt = jnp.broadcast_to(prompts[0], (batch, *prompts.shape[1:]))
    x = jnp.concatenate([prompt.astype(x.dtype), x], axis=1)
    full_valid = jnp.concatenate([jnp.ones((batch, cfg.length), bool), valid], axis=1)
    mask = full_valid[:, :, None] & full_valid[:, None, :]
    if segment_ids is not None:
        segments = jnp.concatenate([jnp.full((batch, cfg.length), PROMPT_SEGMENT, segment_ids.dtype), segment_ids], 1)
        mask &= (segments[:, :, None] == segments[:, None, :]) | (segments[:, None, :] == PROMPT_SEGMENT)
    return x, jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)[:, None]


def extend_cross_bias(cfg: PromptTuningConfig, bias: jax.Array, encoder_tokens: jax.Array) -> jax.Array:
    """Encoder-decoder attention bias with P always-visible prompt keys in front (task index key masked)."""
    if cfg.num_tasks > 1:
        bias = bias.at[..., 0].set(NEG_INF)
    prompt_keys = jnp.zeros((*bias.shape[:-1], cfg.length), bias.dtype)
    return jnp.concatenate([prompt_keys, bias], axis=-1)


def reinitialize(params: dict, cfg: PromptTuningConfig, rng: jax.Array) -> dict:
    """Params with the prompt re-drawn from their (e.g. just loaded, pretrained) token embedding table."""
    if cfg.init == 'uniform':
        return params
    prompt = initial_prompt(rng, params['token_embedder']['embedding'], cfg)
    encoder = {**params['encoder'], 'prompt_tuning': {'prompt': prompt}}
    return {**params, 'encoder': encoder}
