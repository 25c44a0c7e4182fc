"""Adapters (Houlsby et al. 2019): bottleneck residual MLPs on the output of each attention and MLP sublayer.

adapter(h) = h + up(act(down(h))), inserted before the sublayer's residual add, as
`<layer>/<sublayer>_adapter/{down_kernel, down_bias, up_kernel, up_bias}` with sublayer one of attention,
mlp (encoder), self_attention, encoder_decoder_attention, mlp (decoder). Kernels start as truncated normals
of std `init_scale` and biases at zero, so a new adapter is close to the identity.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from text2text.errors import UserError

SUBLAYERS = ('attention', 'self_attention', 'encoder_decoder_attention', 'mlp')
ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': lambda x: jax.nn.gelu(x, approximate=True)}


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Bottleneck width, nonlinearity, init scale and the sublayers that get an adapter."""
    bottleneck: int = 64
    activation: str = 'relu'
    init_scale: float = 1e-2
    sublayers: tuple[str, ...] = SUBLAYERS

    def __post_init__(self):
        object.__setattr__(self, 'sublayers', tuple(self.sublayers))
        if self.bottleneck < 1:
            raise UserError(f'AdapterConfig.bottleneck must be >= 1, got {self.bottleneck}')
        if self.activation not in ACTIVATIONS:
            raise UserError(f'AdapterConfig.activation={self.activation!r}; expected one of {", ".join(ACTIVATIONS)}')
        unknown = sorted(set(self.sublayers) - set(SUBLAYERS))
        if unknown:
            raise UserError(f'AdapterConfig.sublayers has unknown name(s) {unknown}; expected some of {SUBLAYERS}')


class Adapter(nn.Module):
    """h + up(act(down(h))) with fp32 params; computed in the activation dtype."""
    cfg: AdapterConfig

    def _param(self, name, init, shape, axes):
        return self.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        cfg, width = self.cfg, h.shape[-1]
        init = nn.initializers.truncated_normal(cfg.init_scale)
        down = self._param('down_kernel', init, (width, cfg.bottleneck), ('embed', 'adapter'))
        down_bias = self._param('down_bias', nn.initializers.zeros, (cfg.bottleneck,), ('adapter',))
        up = self._param('up_kernel', init, (cfg.bottleneck, width), ('adapter', 'embed'))
        up_bias = self._param('up_bias', nn.initializers.zeros, (width,), ('embed',))
        z = ACTIVATIONS[cfg.activation](h @ down.astype(h.dtype) + down_bias.astype(h.dtype))
        return h + z @ up.astype(h.dtype) + up_bias.astype(h.dtype)


def apply_adapter(cfg: AdapterConfig, x: jax.Array, sublayer: str) -> jax.Array:
    """The sublayer output through its adapter (named `<sublayer>_adapter`), or unchanged if not selected."""
    if sublayer not in cfg.sublayers:
        return x
    return Adapter(cfg, name=f'{sublayer}_adapter')(x)
