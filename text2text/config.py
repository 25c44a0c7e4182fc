"""T5 model hyper-parameters: the frozen T5Config dataclass and the named presets."""
import dataclasses
import difflib
from typing import Any

from text2text.errors import UserError


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shape and numerics of a T5 encoder-decoder (field names follow T5X's TransformerConfig)."""
    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 2048
    mlp_activations: tuple[str, ...] = ('relu',)
    dropout_rate: float = 0.1
    logits_via_embedding: bool = True
    dtype: str = 'float32'
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    one_hot_embedding: bool = False
    scan_layers: bool = False
    remat_policy: str = 'none'
    # 'einsum' (T5X's attention), or jax.nn.dot_product_attention's 'xla' or 'cudnn' (fused flash attention on
    # NVIDIA GPUs, bf16/fp16 only); the fused kernels apply where no attention dropout is active, and not to
    # decoding's one-token steps
    attention_kernel: str = 'einsum'
    peft: Any = None  # text2text.peft.PeftConfig: parameter-efficient tuning hooks; None = plain T5


# (emb_dim, mlp_dim, num_heads, head_dim, num_layers per stack)
_T5_1_0_SHAPES = {
    'small': (512, 2048, 8, 64, 6),
    'base': (768, 3072, 12, 64, 12),
    'large': (1024, 4096, 16, 64, 24),
    'xl': (1024, 16384, 32, 128, 24),
    'xxl': (1024, 65536, 128, 128, 24),
}
_T5_1_1_SHAPES = {
    'small': (512, 1024, 6, 64, 8),
    'base': (768, 2048, 12, 64, 12),
    'large': (1024, 2816, 16, 64, 24),
    'xl': (2048, 5120, 32, 64, 24),
    'xxl': (4096, 10240, 64, 64, 24),
}


def _make(shape, **kwargs) -> T5Config:
    emb, mlp, heads, head_dim, layers = shape
    return T5Config(emb_dim=emb, mlp_dim=mlp, num_heads=heads, head_dim=head_dim,
                    num_encoder_layers=layers, num_decoder_layers=layers, **kwargs)


_GATED = dict(mlp_activations=('gelu', 'linear'), logits_via_embedding=False, dropout_rate=0.0)

PRESETS: dict[str, T5Config] = {
    **{f't5_1_0_{size}': _make(s, mlp_activations=('relu',), logits_via_embedding=True, dropout_rate=0.1)
       for size, s in _T5_1_0_SHAPES.items()},
    **{f't5_1_1_{size}': _make(s, **_GATED) for size, s in _T5_1_1_SHAPES.items()},
    **{f'mt5_{size}': _make(s, vocab_size=250112, **_GATED) for size, s in _T5_1_1_SHAPES.items()},
    **{f'flan_t5_{size}': _make(s, **_GATED) for size, s in _T5_1_1_SHAPES.items()},
    'tiny': T5Config(vocab_size=256, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                     num_encoder_layers=2, num_decoder_layers=2, **_GATED),
}


def get_config(name: str, **overrides) -> T5Config:
    """Return preset `name` with `overrides` applied; unknown names or fields raise UserError."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=5, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"known presets: {', '.join(PRESETS)}"
        raise UserError(f"unknown model preset {name!r}; {hint}")
    fields = {f.name for f in dataclasses.fields(T5Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown T5Config field(s) {', '.join(unknown)} for preset {name!r}; "
                        f"valid fields: {', '.join(sorted(fields))}")
    if 'mlp_activations' in overrides:
        overrides['mlp_activations'] = tuple(overrides['mlp_activations'])
    return dataclasses.replace(PRESETS[name], **overrides)
