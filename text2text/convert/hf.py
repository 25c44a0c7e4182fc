"""Import and export Hugging Face T5 checkpoints (config.json + safetensors/torch weights) to and from
our T5X-named parameter tree, so published HF models can be fine-tuned here and results used in HF."""
import json
import os
from typing import Any, Iterator

import numpy as np
from flax import traverse_util

from text2text.config import T5Config
from text2text.convert.t5x import check_params, param_shapes
from text2text.errors import UserError

WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json',
                'pytorch_model.bin', 'pytorch_model.bin.index.json')
_SHARED_KEYS = ('shared.weight', 'encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')
_IGNORED_SUFFIX = 'EncDecAttention.relative_attention_bias.weight'  # unused by HF T5 too
_ACTIVATIONS_BY_HF = {
    'relu': ('relu',),
    'gelu_new': ('gelu',),
    'gated-gelu': ('gelu', 'linear'),
    'gated-gelu_new': ('gelu', 'linear'),
    'gated-relu': ('relu', 'linear'),
}
_HF_BY_ACTIVATIONS = {('relu',): 'relu', ('gelu',): 'gelu_new', ('gelu', 'linear'): 'gated-gelu',
                      ('relu', 'linear'): 'gated-relu'}
# Fields that define the computation; a checkpoint and a target config must agree on all of them.
_ARCH_FIELDS = ('emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_encoder_layers', 'num_decoder_layers',
                'mlp_activations', 'logits_via_embedding', 'relative_attention_num_buckets',
                'relative_attention_max_distance', 'layer_norm_epsilon')


def config_from_hf(hf: dict, source: str = 'config.json') -> T5Config:
    """Build a T5Config from an HF T5 config dict (`source` names the file in error messages)."""
    model_type = hf.get('model_type', 't5')
    if model_type not in ('t5', 'mt5'):
        raise UserError(f"{source}: model_type {model_type!r} is not supported; expected 't5' or 'mt5'")
    missing = [k for k in ('d_model', 'd_kv', 'd_ff', 'num_heads', 'num_layers', 'vocab_size') if k not in hf]
    if missing:
        raise UserError(f"{source}: missing key(s) {', '.join(missing)} needed for a T5 config")
    proj = hf.get('feed_forward_proj', 'relu')
    if proj not in _ACTIVATIONS_BY_HF:
        raise UserError(f"{source}: feed_forward_proj {proj!r} is not supported; "
                        f"expected one of {', '.join(_ACTIVATIONS_BY_HF)}")
    # transformers 5.x always sets tie_word_embeddings=True and records the real choice as
    # scale_decoder_outputs; older files only have tie_word_embeddings (absent means tied).
    tied = hf.get('scale_decoder_outputs', hf.get('tie_word_embeddings', True))
    return T5Config(
        vocab_size=int(hf['vocab_size']), emb_dim=int(hf['d_model']), num_heads=int(hf['num_heads']),
        num_encoder_layers=int(hf['num_layers']),
        num_decoder_layers=int(hf.get('num_decoder_layers') or hf['num_layers']),
        head_dim=int(hf['d_kv']), mlp_dim=int(hf['d_ff']), mlp_activations=_ACTIVATIONS_BY_HF[proj],
        dropout_rate=float(hf.get('dropout_rate', 0.1)), logits_via_embedding=bool(tied),
        relative_attention_num_buckets=int(hf.get('relative_attention_num_buckets', 32)),
        relative_attention_max_distance=int(hf.get('relative_attention_max_distance', 128)),
        layer_norm_epsilon=float(hf.get('layer_norm_epsilon', 1e-6)))


def config_to_hf(config: T5Config) -> dict:
    """The HF T5 config.json dict describing `config` (loadable by T5ForConditionalGeneration)."""
    activations = tuple(config.mlp_activations)
    if activations not in _HF_BY_ACTIVATIONS:
        raise UserError(f"mlp_activations {activations} have no HF T5 equivalent; "
                        f"expected one of {', '.join(map(str, _HF_BY_ACTIVATIONS))}")
    return {
        'architectures': ['T5ForConditionalGeneration'], 'model_type': 't5',
        'vocab_size': config.vocab_size, 'd_model': config.emb_dim, 'd_kv': config.head_dim,
        'd_ff': config.mlp_dim, 'num_heads': config.num_heads, 'num_layers': config.num_encoder_layers,
        'num_decoder_layers': config.num_decoder_layers, 'feed_forward_proj': _HF_BY_ACTIVATIONS[activations],
        'tie_word_embeddings': config.logits_via_embedding, 'scale_decoder_outputs': config.logits_via_embedding,
        'relative_attention_num_buckets': config.relative_attention_num_buckets,
        'relative_attention_max_distance': config.relative_attention_max_distance,
        'layer_norm_epsilon': config.layer_norm_epsilon, 'dropout_rate': config.dropout_rate,
        'initializer_factor': 1.0, 'is_encoder_decoder': True, 'use_cache': True,
        'pad_token_id': 0, 'eos_token_id': 1, 'decoder_start_token_id': 0,
    }


def _attention(prefix: tuple[str, ...], hf_prefix: str) -> Iterator[tuple[tuple[str, ...], str, bool]]:
    for ours, theirs in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o')):
        yield prefix + (ours, 'kernel'), f'{hf_prefix}.{theirs}.weight', True


def _mlp(prefix: tuple[str, ...], hf_prefix: str, config: T5Config) -> Iterator[tuple[tuple[str, ...], str, bool]]:
    names = ['wi'] if len(config.mlp_activations) == 1 else [f'wi_{i}' for i in range(len(config.mlp_activations))]
    for name in names + ['wo']:
        yield prefix + (name, 'kernel'), f'{hf_prefix}.DenseReluDense.{name}.weight', True


def name_map(config: T5Config) -> list[tuple[tuple[str, ...], str, bool]]:
    """(our param path, HF weight name, transpose?) for every parameter except the embedding/logits pair."""
    rel = 'block.0.layer.0.SelfAttention.relative_attention_bias.weight'
    entries = [(('encoder', 'relpos_bias', 'rel_embedding'), f'encoder.{rel}', True),
               (('decoder', 'relpos_bias', 'rel_embedding'), f'decoder.{rel}', True),
               (('encoder', 'encoder_norm', 'scale'), 'encoder.final_layer_norm.weight', False),
               (('decoder', 'decoder_norm', 'scale'), 'decoder.final_layer_norm.weight', False)]
    for i in range(config.num_encoder_layers):
        ours, hf = ('encoder', f'layers_{i}'), f'encoder.block.{i}.layer'
        entries.append((ours + ('pre_attention_layer_norm', 'scale'), f'{hf}.0.layer_norm.weight', False))
        entries.extend(_attention(ours + ('attention',), f'{hf}.0.SelfAttention'))
        entries.append((ours + ('pre_mlp_layer_norm', 'scale'), f'{hf}.1.layer_norm.weight', False))
        entries.extend(_mlp(ours + ('mlp',), f'{hf}.1', config))
    for i in range(config.num_decoder_layers):
        ours, hf = ('decoder', f'layers_{i}'), f'decoder.block.{i}.layer'
        entries.append((ours + ('pre_self_attention_layer_norm', 'scale'), f'{hf}.0.layer_norm.weight', False))
        entries.extend(_attention(ours + ('self_attention',), f'{hf}.0.SelfAttention'))
        entries.append((ours + ('pre_cross_attention_layer_norm', 'scale'), f'{hf}.1.layer_norm.weight', False))
        entries.extend(_attention(ours + ('encoder_decoder_attention',), f'{hf}.1.EncDecAttention'))
        entries.append((ours + ('pre_mlp_layer_norm', 'scale'), f'{hf}.2.layer_norm.weight', False))
        entries.extend(_mlp(ours + ('mlp',), f'{hf}.2', config))
    return entries


class _HFWeights:
    """Lazy name -> fp32 numpy access to the weights of an HF model directory (single or sharded files)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.file_of: dict[str, str] = {}
        self._open: dict[str, Any] = {}
        for name in WEIGHT_FILES:
            full = os.path.join(directory, name)
            if os.path.isfile(full):
                self._index(full)
                return
        raise UserError(f"{directory}: no HF weights file found; expected one of {', '.join(WEIGHT_FILES)}")

    def _index(self, full: str) -> None:
        if full.endswith('.index.json'):
            with open(full) as f:
                weight_map = json.load(f).get('weight_map')
            if not isinstance(weight_map, dict):
                raise UserError(f"{full}: expected a JSON object with a 'weight_map' of name -> shard file")
            self.file_of = {k: os.path.join(self.directory, v) for k, v in weight_map.items()}
        else:
            self.file_of = {k: full for k in self._handle(full).keys()}

    def _handle(self, file: str) -> Any:
        if file not in self._open:
            if not os.path.isfile(file):
                raise UserError(f"{file}: weight shard listed in the index is missing")
            if file.endswith('.safetensors'):
                from safetensors import safe_open
                self._open[file] = safe_open(file, framework='numpy')
            else:
                self._open[file] = _load_torch(file)
        return self._open[file]

    def __contains__(self, key: str) -> bool:
        return key in self.file_of

    def get(self, key: str) -> np.ndarray:
        """The weight `key` as an fp32 numpy array; a missing name raises UserError naming the directory."""
        if key not in self.file_of:
            raise UserError(f"{self.directory}: weight {key!r} not found in the checkpoint "
                            f"({len(self.file_of)} weights present)")
        handle = self._handle(self.file_of[key])
        if isinstance(handle, dict):
            return handle[key].float().numpy()
        return np.asarray(handle.get_tensor(key), dtype=np.float32)


def _load_torch(file: str) -> dict:
    try:
        import torch
    except ImportError as e:
        raise UserError(f"{file}: reading pytorch_model.bin needs torch (pip install torch), "
                        "or save the model with safetensors") from e
    return torch.load(file, map_location='cpu', weights_only=True)


def _read_config(directory: str) -> dict | None:
    path = os.path.join(directory, 'config.json')
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e


def _check_directory(path: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise UserError(f"{path}: HF checkpoint directory not found (expected config.json and one of "
                        f"{', '.join(WEIGHT_FILES)})")
    return path


def _check_compatible(checkpoint: T5Config, config: T5Config, source: str) -> None:
    if checkpoint.vocab_size != config.vocab_size:
        raise UserError(f"{source}: vocabulary size mismatch: checkpoint vocab_size={checkpoint.vocab_size}, "
                        f"target config vocab_size={config.vocab_size}")
    diffs = [f"{f}: checkpoint {getattr(checkpoint, f)!r} vs config {getattr(config, f)!r}"
             for f in _ARCH_FIELDS if getattr(checkpoint, f) != getattr(config, f)]
    if diffs:
        raise UserError(f"{source}: checkpoint architecture does not match the target config ({'; '.join(diffs)})")


def load_hf_params(path: str, config: T5Config) -> dict:
    """Load HF T5 weights from directory `path` into our param tree for `config`, checking every shape."""
    path = _check_directory(path)
    hf_config = _read_config(path)
    if hf_config is not None:
        _check_compatible(config_from_hf(hf_config, os.path.join(path, 'config.json')), config, path)
    weights = _HFWeights(path)
    shared_key = next((k for k in _SHARED_KEYS if k in weights), _SHARED_KEYS[0])
    embedding = weights.get(shared_key)
    if embedding.ndim != 2 or embedding.shape[0] != config.vocab_size:
        raise UserError(f"{path}: vocabulary size mismatch: {shared_key} has shape {embedding.shape} "
                        f"(vocab {embedding.shape[0]}) but config vocab_size={config.vocab_size}")
    flat = {('token_embedder', 'embedding'): (embedding, shared_key)}
    lm_head = weights.get('lm_head.weight') if 'lm_head.weight' in weights else None
    if config.logits_via_embedding:
        if lm_head is not None and not np.array_equal(lm_head, embedding):
            raise UserError(f"{path}: checkpoint has an lm_head.weight separate from {shared_key}, but the config "
                            "ties logits to the embedding (logits_via_embedding=True)")
    else:
        flat[('decoder', 'logits_dense', 'kernel')] = ((embedding if lm_head is None else lm_head).T,
                                                       'lm_head.weight')
    for ours, key, transpose in name_map(config):
        array = weights.get(key)
        flat[ours] = (array.T if transpose else array, key)
    used = {key for _, key in flat.values()} | set(_SHARED_KEYS) | {'lm_head.weight'}
    unused = sorted(k for k in weights.file_of if k not in used and not k.endswith(_IGNORED_SUFFIX))
    if unused:
        raise UserError(f"{path}: checkpoint weights with no place in the model for this config: "
                        f"{', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}")
    expected = param_shapes(config)
    for ours, (array, key) in flat.items():
        if ours in expected and tuple(array.shape) != expected[ours]:
            raise UserError(f"{path}: shape mismatch for parameter {'/'.join(ours)} (HF {key}): "
                            f"checkpoint {tuple(array.shape)} vs config {expected[ours]}")
    params = traverse_util.unflatten_dict({k: np.ascontiguousarray(a) for k, (a, _) in flat.items()})
    return check_params(params, config, path)


def load_hf_checkpoint(path: str) -> tuple[T5Config, dict]:
    """Read an HF T5 model directory (config.json + weights) and return (T5Config, params)."""
    path = _check_directory(path)
    hf_config = _read_config(path)
    if hf_config is None:
        raise UserError(f"{path}: config.json not found; an HF T5 checkpoint directory needs config.json "
                        f"and one of {', '.join(WEIGHT_FILES)}")
    config = config_from_hf(hf_config, os.path.join(path, 'config.json'))
    return config, load_hf_params(path, config)


def save_hf_checkpoint(config: T5Config, params: Any, path: str) -> None:
    """Write `params` as an HF T5 directory (config.json + model.safetensors, fp32) without torch."""
    from safetensors.numpy import save_file

    params = check_params(params, config, 'params to export')
    flat = traverse_util.flatten_dict(params)
    embedding = np.asarray(flat[('token_embedder', 'embedding')], np.float32)
    tensors = {'shared.weight': embedding}
    tensors['lm_head.weight'] = (embedding if config.logits_via_embedding
                                 else np.asarray(flat[('decoder', 'logits_dense', 'kernel')], np.float32).T)
    for ours, key, transpose in name_map(config):
        array = np.asarray(flat[ours], np.float32)
        tensors[key] = array.T if transpose else array
    os.makedirs(path, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})
    with open(os.path.join(path, 'config.json'), 'w') as f:
        json.dump(config_to_hf(config), f, indent=2, sort_keys=True)


__all__ = ['config_from_hf', 'config_to_hf', 'load_hf_checkpoint', 'load_hf_params', 'name_map',
           'save_hf_checkpoint', 'WEIGHT_FILES']
