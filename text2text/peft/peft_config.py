"""PeftConfig: which parameter-efficient methods a T5 uses, and the hooks layers.py / network.py call.

A T5Config with `peft=None` (the default) builds exactly the plain T5. With a PeftConfig, the network
calls the hooks below at five places: after every Dense matmul (LoRA, BitFit), on self-attention keys and
values (prefix tuning), on every sublayer output (adapters), on the encoder's input embeddings (P-tuning's
virtual tokens, prompt tuning) and on the encoder-decoder attention bias (prompt tuning). Methods combine
freely, except the linear probe, which is a separate classifier model (text2text.peft.linear_probe) and is
used alone.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from text2text.errors import UserError
from text2text.peft import adapters, bitfit, lora, p_tuning, prefix_tuning, prompt_tuning
from text2text.peft.adapters import AdapterConfig
from text2text.peft.bitfit import BitFitConfig
from text2text.peft.lora import LoraConfig
from text2text.peft.p_tuning import PTuningConfig
from text2text.peft.prefix_tuning import PrefixTuningConfig
from text2text.peft.prompt_tuning import PromptTuningConfig

METHODS = ('prompt_tuning', 'p_tuning', 'prefix_tuning', 'adapters', 'lora', 'bitfit', 'linear_probe')


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
    """Linear classifier on the pooled encoder: class label token ids (targets as tokenized, no EOS).

    train_encoder=False (linear probing) stops gradients at the encoder output; True lets them through, which
    with an unmasked optimizer is standard fine-tuning with a classification head (LM-BFF's baseline).
    """
    label_token_ids: tuple = ()
    pooling: str = 'mean'
    train_encoder: bool = False

    def __post_init__(self):
        ids = tuple(tuple(int(i) for i in row) for row in self.label_token_ids)
        object.__setattr__(self, 'label_token_ids', ids)
        if len(ids) < 2 or not all(ids):
            raise UserError('LinearProbeConfig.label_token_ids needs >= 2 non-empty token id tuples, one per class '
                            '(see tasks.prompting.label_token_ids)')
        if len(set(ids)) != len(ids):
            raise UserError('LinearProbeConfig.label_token_ids has two classes with the same tokens')
        if self.pooling not in ('mean', 'first'):
            raise UserError(f"LinearProbeConfig.pooling={self.pooling!r}; expected 'mean' or 'first'")


@dataclasses.dataclass(frozen=True)
class PeftConfig:
    """One optional config per method (None = method off); set as T5Config.peft."""
    prompt_tuning: PromptTuningConfig | None = None
    p_tuning: PTuningConfig | None = None
    prefix_tuning: PrefixTuningConfig | None = None
    adapters: AdapterConfig | None = None
    lora: LoraConfig | None = None
    bitfit: BitFitConfig | None = None
    linear_probe: LinearProbeConfig | None = None

    def __post_init__(self):
        if not self.methods():
            raise UserError(f'PeftConfig selects no method; set one of {", ".join(METHODS)}')
        if self.linear_probe is not None and len(self.methods()) > 1:
            raise UserError('PeftConfig.linear_probe is a separate classifier and cannot be combined with '
                            f'{", ".join(m for m in self.methods() if m != "linear_probe")}')

    def methods(self) -> tuple[str, ...]:
        """Names of the enabled methods, in METHODS order."""
        return tuple(m for m in METHODS if getattr(self, m) is not None)

    def dense(self, module: nn.Module, x: jax.Array, y: jax.Array) -> jax.Array:
        """Hook after a Dense's matmul y = x W: adds the LoRA update and/or the BitFit bias by projection name."""
        if self.lora is not None and module.name in self.lora.targets:
            y = y + lora.lora_delta(self.lora, module, x).astype(y.dtype)
        if self.bitfit is not None and module.name in self.bitfit.targets:
            y = bitfit.add_bias(module, y)
        return y

    def attention_kv(self, module: nn.Module, key: jax.Array, value: jax.Array, bias: jax.Array | None,
                     key_axes: str = 'bkhd'):
        """Hook on an attention's (key, value, bias) after the KV cache, K/V in `key_axes` layout ('bkhd' or a
        decoding cache's 'bhdk'): prefix tuning in self-attention."""
        if self.prefix_tuning is not None and module.name in prefix_tuning.SELF_ATTENTION_NAMES:
            return prefix_tuning.attach_prefix(self.prefix_tuning, module, key, value, bias, key_axes)
        return key, value, bias

    def adapter(self, x: jax.Array, sublayer: str) -> jax.Array:
        """Hook on a sublayer's output before its residual add: a Houlsby adapter."""
        if self.adapters is None:
            return x
        return adapters.apply_adapter(self.adapters, x, sublayer)

    def encoder_inputs(self, x: jax.Array, tokens: jax.Array, segment_ids: jax.Array | None, mask: jax.Array,
                       embedding: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Hook on the encoder's (input embeddings, self-attention mask): places P-tuning's virtual tokens at their
        markers (mask unchanged), then prepends prompt tuning's prompt (mask extended)."""
        if self.p_tuning is not None:
            x = p_tuning.place_virtual_tokens(self.p_tuning, x, tokens, embedding)
        if self.prompt_tuning is None:
            return x, mask
        return prompt_tuning.prepend_prompt(self.prompt_tuning, x, tokens, segment_ids, embedding)

    def cross_attention_bias(self, bias: jax.Array, encoder_tokens: jax.Array) -> jax.Array:
        """Hook on the encoder-decoder attention bias: adds the prompt positions' columns."""
        if self.prompt_tuning is None:
            return bias
        return prompt_tuning.extend_cross_bias(self.prompt_tuning, bias, encoder_tokens)
