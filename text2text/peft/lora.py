"""LoRA (Hu et al. 2021): low-rank updates W + (alpha/r) A B on chosen projections; merge and HF export.

A projection named in `targets` (query/key/value/out of every attention, wi/wi_0/wi_1/wo of every MLP) gets
`lora_a` [in, r] (normal, std 1/sqrt(in)) and `lora_b` [r, out] (zeros), so training starts at the base
model. Dropout on the LoRA branch's input is active when a 'dropout' rng is given (training).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from text2text.convert.hf import save_hf_checkpoint
from text2text.errors import UserError

PROJECTIONS = ('query', 'key', 'value', 'out', 'wi', 'wi_0', 'wi_1', 'wo')


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Rank r, scale numerator alpha (update scaled by alpha/r), branch dropout and target projections."""
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ('query', 'value')

    def __post_init__(self):
        object.__setattr__(self, 'targets', tuple(self.targets))
        if self.rank < 1:
            raise UserError(f'LoraConfig.rank must be >= 1, got {self.rank}')
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f'LoraConfig.dropout must be in [0, 1), got {self.dropout}')
        unknown = sorted(set(self.targets) - set(PROJECTIONS))
        if unknown or not self.targets:
            raise UserError(f'LoraConfig.targets {list(self.targets)} must be a non-empty subset of {PROJECTIONS}')

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_delta(cfg: LoraConfig, module: nn.Module, x: jax.Array) -> jax.Array:
    """The low-rank update (alpha/r) * dropout(x) @ A @ B of a Dense `module` (creates A, B in its scope)."""
    in_axis, out_axis = module.kernel_axes
    a = module.param('lora_a', nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'), (in_axis, 'lora_rank')),
        (x.shape[-1], cfg.rank), jnp.float32)
    b = module.param('lora_b', nn.with_logical_partitioning(nn.initializers.zeros, ('lora_rank', out_axis)),
                     (cfg.rank, module.features), jnp.float32)
    if cfg.dropout > 0.0 and module.has_rng('dropout'):
        keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - cfg.dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - cfg.dropout), 0.0)
    dtype = module.dtype
    return (x.astype(dtype) @ a.astype(dtype)) @ b.astype(dtype) * cfg.scale


def merge(params: Any, cfg: LoraConfig) -> Any:
    """Params with every kernel replaced by W + (alpha/r) A B and the lora_a/lora_b leaves removed (fp32)."""
    if not isinstance(params, dict):
        return params
    if 'lora_a' in params:
        merged = {k: v for k, v in params.items() if k not in ('lora_a', 'lora_b')}
        delta = np.asarray(params['lora_a'], np.float64) @ np.asarray(params['lora_b'], np.float64) * cfg.scale
        merged['kernel'] = (np.asarray(params['kernel'], np.float64) + delta).astype(np.float32)
        return merged
    return {k: merge(v, cfg) for k, v in params.items()}


def export_merged_hf(config: Any, params: Any, path: str) -> Any:
    """Merge LoRA into the base weights and write an HF T5 directory; returns the base config it describes.

    Only LoRA can be merged into a plain T5: other PEFT methods in `config.peft` raise UserError.
    """
    peft = config.peft
    if peft is None or peft.lora is None:
        raise UserError('export_merged_hf: the model config has no LoRA (config.peft.lora is None)')
    others = [m for m in peft.methods() if m != 'lora']
    if others:
        raise UserError(f'export_merged_hf: {", ".join(others)} cannot be merged into a plain T5 checkpoint')
    base_config = dataclasses.replace(config, peft=None)
    save_hf_checkpoint(base_config, merge(jax.device_get(params), peft.lora), path)
    return base_config
