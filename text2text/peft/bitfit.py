"""BitFit (Ben Zaken et al. 2022) adapted to T5, whose projections have no biases.

T5 has no bias terms to tune, so this variant adds zero-initialised biases `<projection>/bias` to the
chosen projections (by default every attention and MLP projection; zero init keeps the base function) and
trains them together with the RMSNorm `scale` vectors (the other per-feature parameters T5 has).
Trained biases cannot be exported to a Hugging Face T5, which has nowhere to put them.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from text2text.errors import UserError
from text2text.peft.lora import PROJECTIONS


@dataclasses.dataclass(frozen=True)
class BitFitConfig:
    """Projections that get a bias, and whether the RMSNorm scales train as well."""
    targets: tuple[str, ...] = PROJECTIONS
    train_layer_norms: bool = True

    def __post_init__(self):
        object.__setattr__(self, 'targets', tuple(self.targets))
        unknown = sorted(set(self.targets) - set(PROJECTIONS))
        if unknown:
            raise UserError(f'BitFitConfig.targets has unknown name(s) {unknown}; expected some of {PROJECTIONS}')
        if not self.targets and not self.train_layer_norms:
            raise UserError('BitFitConfig trains nothing: give targets or set train_layer_norms=True')


def add_bias(module: nn.Module, y: jax.Array) -> jax.Array:
    """y + a zero-initialised fp32 bias over the Dense `module`'s output features."""
    bias = module.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, (module.kernel_axes[1],)),
                        (module.features,), jnp.float32)
    return y + bias.astype(y.dtype)
