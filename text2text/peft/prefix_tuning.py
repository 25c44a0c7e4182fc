"""Prefix tuning (Li & Liang 2021) / P-tuning v2: learned key/value prefixes in every self-attention layer.

Each encoder `attention` and decoder `self_attention` gets `prefix_tuning/{key,value}` [P, heads*head_dim],
prepended to its keys and values and visible to every query (also to every packed segment: the prefix does
not depend on the input). With `reparameterize=True` the prefixes are instead an MLP of a learned
embedding, prefix = W_out tanh(W_in E + b_in) + b_out; unlike Li & Liang's single shared MLP, each layer has
its own. `fold_reparameterization` turns trained MLP prefixes into plain ones (drop the MLP after training).
Decoding with the KV cache appends the prefix after the cached keys, so cached and uncached decoding agree.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from text2text.errors import UserError

SELF_ATTENTION_NAMES = ('attention', 'self_attention')  # encoder / decoder self-attention module names
SCOPE = 'prefix_tuning'
_MLP_LEAVES = ('embedding', 'mlp_in_kernel', 'mlp_in_bias', 'mlp_out_kernel', 'mlp_out_bias')


@dataclasses.dataclass(frozen=True)
class PrefixTuningConfig:
    """Prefix length and the optional reparameterisation MLP (input width, hidden width)."""
    length: int = 20
    reparameterize: bool = False
    reparam_input_dim: int = 512
    reparam_hidden_dim: int = 512
    init_stddev: float = 1.0

    def __post_init__(self):
        if self.length < 1:
            raise UserError(f'PrefixTuningConfig.length must be >= 1, got {self.length}')
        if self.reparameterize and min(self.reparam_input_dim, self.reparam_hidden_dim) < 1:
            raise UserError('PrefixTuningConfig.reparam_input_dim and reparam_hidden_dim must be >= 1')


def mlp_prefix(embedding, mlp_in_kernel, mlp_in_bias, mlp_out_kernel, mlp_out_bias) -> tuple[jax.Array, jax.Array]:
    """(key, value) prefixes [P, heads*head_dim] computed by the reparameterisation MLP."""
    hidden = jnp.tanh(embedding @ mlp_in_kernel + mlp_in_bias[..., None, :])  # [..., None, :]: layer-stacked trees
    return jnp.split(hidden @ mlp_out_kernel + mlp_out_bias[..., None, :], 2, axis=-1)


class PrefixKeyValue(nn.Module):
    """The learned (key, value) prefix of one attention layer, each [P, heads, head_dim]."""
    cfg: PrefixTuningConfig
    num_heads: int
    head_dim: int

    def _param(self, name, init, shape, axes):
        return self.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        cfg, joined = self.cfg, self.num_heads * self.head_dim
        normal = nn.initializers.normal(cfg.init_stddev)
        if cfg.reparameterize:
            fan_in = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
            key, value = mlp_prefix(
                self._param('embedding', normal, (cfg.length, cfg.reparam_input_dim), ('prefix', 'prefix_mlp')),
                self._param('mlp_in_kernel', fan_in, (cfg.reparam_input_dim, cfg.reparam_hidden_dim),
                            ('prefix_mlp', 'mlp')),
                self._param('mlp_in_bias', nn.initializers.zeros, (cfg.reparam_hidden_dim,), ('mlp',)),
                self._param('mlp_out_kernel', fan_in, (cfg.reparam_hidden_dim, 2 * joined), ('mlp', 'joined_kv')),
                self._param('mlp_out_bias', nn.initializers.zeros, (2 * joined,), ('joined_kv',)))
        else:
            key = self._param('key', normal, (cfg.length, joined), ('prefix', 'joined_kv'))
            value = self._param('value', normal, (cfg.length, joined), ('prefix', 'joined_kv'))
        shape = (cfg.length, self.num_heads, self.head_dim)
        return key.reshape(shape), value.reshape(shape)


def attach_prefix(cfg: PrefixTuningConfig, module: nn.Module, key: jax.Array, value: jax.Array,
                  bias: jax.Array | None, key_axes: str = 'bkhd') -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Keys/values with the layer's P prefix positions in front of the k key positions, in the layout `key_axes`
    names ('bkhd': [b, P+k, h, d]; a decoding cache's 'bhdk': [b, h, d, P+k]); bias gets P zero (visible)
    columns."""
    prefix_key, prefix_value = PrefixKeyValue(cfg, module.num_heads, module.head_dim, name=SCOPE)()
    order = tuple('khd'.index(axis) for axis in key_axes[1:])
    axis = key_axes.index('k')

    def attach(prefix, x):
        prefix = jnp.transpose(prefix.astype(x.dtype), order)
        return jnp.concatenate([jnp.broadcast_to(prefix, (x.shape[0], *prefix.shape)), x], axis)

    key, value = attach(prefix_key, key), attach(prefix_value, value)
    if bias is not None:
        bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(cfg.length, 0)])
    return key, value, bias


def _fold(tree: Any) -> Any:
    if not isinstance(tree, dict):
        return tree
    folded = {}
    for name, sub in tree.items():
        if name == SCOPE and isinstance(sub, dict) and set(sub) == set(_MLP_LEAVES):
            key, value = mlp_prefix(*(jnp.asarray(sub[leaf], jnp.float32) for leaf in _MLP_LEAVES))
            folded[name] = {'key': key, 'value': value}
        else:
            folded[name] = _fold(sub)
    return folded


def fold_reparameterization(params: Any, peft_config: Any) -> tuple[Any, Any]:
    """(params with every reparameterised prefix replaced by its plain key/value, config without the MLP)."""
    cfg = peft_config.prefix_tuning
    if cfg is None or not cfg.reparameterize:
        raise UserError('fold_reparameterization: the PEFT config has no reparameterised prefix tuning')
    new_cfg = dataclasses.replace(peft_config, prefix_tuning=dataclasses.replace(cfg, reparameterize=False))
    return _fold(params), new_cfg
