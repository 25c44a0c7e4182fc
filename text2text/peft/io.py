"""PEFT parameters apart from the frozen base: save/load only the method's leaves, merge a base into a PEFT tree.

Files are safetensors: one fp32 tensor per trained leaf, named by its '/'-joined param path, with the
method names in the metadata. `load_peft_params` puts them onto any param tree (a base checkpoint's or a
freshly initialised PEFT model's). `base_params` / `with_base_params` let a plain T5 checkpoint initialise
a PEFT model (text2text.pretrained uses them); the PEFT leaves keep their init, except that tuned prompts and
P-tuning's initial embeddings are re-drawn from the loaded vocabulary embedding.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from flax.core import meta
from safetensors import safe_open
from safetensors.numpy import save_file

from text2text import checkpoints
from text2text.config import T5Config
from text2text.convert.t5x import param_shapes
from text2text.errors import UserError
from text2text.optim import param_path
from text2text.peft import p_tuning, prompt_tuning, trainable

FORMAT = 'text2text-peft'


def _flat(params: Any) -> dict[str, Any]:
    return {param_path(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(params)}


def peft_leaves(params: Any, peft: trainable.Methods) -> dict[str, np.ndarray]:
    """{'/'-joined path: fp32 numpy array} of exactly the parameters `peft` trains."""
    mask = _flat(trainable.trainable_mask(params, peft))
    return {path: np.asarray(jax.device_get(leaf), np.float32) for path, leaf in _flat(params).items() if mask[path]}


def save_peft_params(path: str, params: Any, peft: trainable.Methods) -> list[str]:
    """Writes the method's parameters (only) to the safetensors file `path`; returns the saved names."""
    leaves = peft_leaves(params, peft)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    metadata = {'format': FORMAT, 'methods': ','.join(trainable.method_names(peft))}
    save_file({k: np.ascontiguousarray(v) for k, v in leaves.items()}, path, metadata=metadata)
    return sorted(leaves)


def save_peft_from_checkpoint(checkpoint: str, model: Any, path: str) -> list[str]:
    """Writes the PEFT params of a training checkpoint (MODEL_DIR or one step's directory) of `model` to `path`."""
    def init(rng):
        return model.init_variables(rng, {'inputs': (1, 1), 'targets': (1, 1)})['params']

    abstract = meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
    return save_peft_params(path, checkpoints.restore_params_only(checkpoint, abstract), model.config.peft)


def read_peft_file(path: str) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """({name: array}, method names) of a file written by save_peft_params."""
    if not os.path.isfile(path):
        raise UserError(f'PEFT parameter file {path} not found')
    with safe_open(path, framework='numpy') as f:
        metadata = f.metadata() or {}
        if metadata.get('format') != FORMAT:
            raise UserError(f'{path} is not a text2text PEFT file (metadata format={metadata.get("format")!r})')
        return {name: f.get_tensor(name) for name in f.keys()}, tuple(metadata['methods'].split(','))


def load_peft_params(path: str, params: Any) -> dict:
    """`params` (nested dicts, e.g. a base checkpoint) with the saved PEFT leaves added or replaced.

    A saved leaf whose path exists in `params` with another shape raises UserError naming both shapes.
    """
    saved, _ = read_peft_file(path)
    flat = dict(traverse_util.flatten_dict(jax.device_get(params), sep='/'))
    for name, array in saved.items():
        if name in flat and tuple(np.shape(flat[name])) != array.shape:
            raise UserError(f'{path}: parameter {name} has shape {array.shape}, the model has '
                            f'{tuple(np.shape(flat[name]))}')
        flat[name] = array
    return traverse_util.unflatten_dict(flat, sep='/')


def base_params(params: Any, config: T5Config) -> dict:
    """The subtree of `params` holding the plain T5's parameters (what a base checkpoint provides)."""
    base_config = dataclasses.replace(config, peft=None)
    wanted = {'/'.join(p) for p in param_shapes(base_config)}
    flat = traverse_util.flatten_dict(params, sep='/')
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if k in wanted}, sep='/')


def with_base_params(params: Any, loaded: Any, config: T5Config, seed: int = 0) -> dict:
    """`params` with every base leaf taken from `loaded`; a tuned prompt and P-tuning's initial embeddings are
    re-initialised from the new embedding."""
    flat = dict(traverse_util.flatten_dict(params, sep='/'))
    for name, value in traverse_util.flatten_dict(loaded, sep='/').items():
        if name not in flat:
            raise UserError(f'base checkpoint parameter {name} has no place in the PEFT model')
        flat[name] = value
    merged = traverse_util.unflatten_dict(flat, sep='/')
    if config.peft.p_tuning is not None:
        merged = p_tuning.reinitialize(merged, config.peft.p_tuning, jax.random.PRNGKey(seed))
    if config.peft.prompt_tuning is None:
        return merged
    merged = prompt_tuning.reinitialize(merged, config.peft.prompt_tuning, jax.random.PRNGKey(seed))
    old = params['encoder']['prompt_tuning']['prompt']
    if isinstance(old, jax.Array):
        prompt_params = merged['encoder']['prompt_tuning']
        prompt_params['prompt'] = jax.device_put(prompt_params['prompt'], old.sharding)
    return merged
