"""Scanning over layers (T5Config.scan_layers): one nn.scan'd layer whose params carry a leading 'layers' axis,
so large models compile one layer instead of N; plus conversion between the scanned and unscanned param trees.

Scanned tree: `encoder/layers/<layer params with shape [num_layers, ...]>` (likewise `decoder/layers`);
unscanned (the default, what the HF/T5X converters read and write): `encoder/layers_{i}/<layer params>`.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from text2text.config import T5Config
from text2text.errors import UserError

SCAN_AXIS = 'layers'  # module name of a scanned stack and logical name of its leading param axis
STACKS = (('encoder', 'num_encoder_layers'), ('decoder', 'num_decoder_layers'))


@functools.cache
def _carry_layer(layer_cls: type[nn.Module]) -> type[nn.Module]:
    """Subclass of `layer_cls` with the scan body signature: (x, *args) -> (new x, None)."""

    class Carry(layer_cls):
        def __call__(self, x, *args):
            return super().__call__(x, *args), None

    Carry.__name__ = Carry.__qualname__ = layer_cls.__name__
    return Carry


def apply_scanned(layer_cls: type[nn.Module], config: T5Config, num_layers: int,
                  transform: Callable[[type[nn.Module]], type[nn.Module]], x: jax.Array, *args: Any) -> jax.Array:
    """Apply `num_layers` layers `layer_cls(config)` to `x` as one nn.scan named 'layers' (call from a compact method).

    `args` are passed unchanged to every layer (biases, encoder output, Python flags); `transform` wraps the
    layer class before scanning (e.g. nn.remat). Params and the decoding cache are stacked on axis 0.
    """
    stack = nn.scan(transform(_carry_layer(layer_cls)), variable_axes={'params': 0, 'cache': 0},
                    split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast, length=num_layers,
                    metadata_params={nn.PARTITION_NAME: SCAN_AXIS})
    x, _ = stack(config, name=SCAN_AXIS)(x, *args)
    return x


def first_layer_cache(cache: Mapping[str, Any], scanned: bool, name: str) -> Any:
    """The decoding cache of submodule `name` of a stack's first layer (None if absent), for either layout."""
    if not scanned:
        return cache.get('layers_0', {}).get(name)
    stacked = cache.get(SCAN_AXIS, {}).get(name)
    return None if stacked is None else jax.tree.map(lambda a: a[0], stacked)


def is_scanned(params: Mapping[str, Any]) -> bool:
    """Whether a param tree uses the scanned layout (has encoder/layers)."""
    return SCAN_AXIS in params.get('encoder', {})


def unscanned_config(config: T5Config) -> T5Config:
    """`config` with scan_layers=False: the layout of converted (HF/T5X) checkpoints."""
    return dataclasses.replace(config, scan_layers=False)


def _stack(leaves: list[Any]) -> Any:
    """Stack on a new axis 0, staying in numpy for numpy leaves (host memory for big checkpoints)."""
    if all(isinstance(leaf, np.ndarray) for leaf in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def scan_params(params: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
    """Unscanned param tree (layers_{i}) -> scanned tree (layers, leading axis = layer index)."""
    if is_scanned(params):
        raise UserError('scan_params: params are already scanned (encoder/layers exists)')
    out = dict(params)
    for stack, count_field in STACKS:
        count = getattr(config, count_field)
        tree = dict(params[stack])
        missing = [f'{stack}/layers_{i}' for i in range(count) if f'layers_{i}' not in tree]
        if missing:
            raise UserError(f'scan_params: {", ".join(missing)} missing for T5Config.{count_field}={count}')
        layers = [tree.pop(f'layers_{i}') for i in range(count)]
        tree[SCAN_AXIS] = jax.tree.map(lambda *leaves: _stack(list(leaves)), *layers)
        out[stack] = tree
    return out


def unscan_params(params: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
    """Scanned param tree (layers, leading axis = layer index) -> unscanned tree (layers_{i})."""
    if not is_scanned(params):
        raise UserError('unscan_params: params are not scanned (no encoder/layers)')
    out = dict(params)
    for stack, count_field in STACKS:
        count = getattr(config, count_field)
        tree = dict(params[stack])
        stacked = tree.pop(SCAN_AXIS)
        for path, leaf in jax.tree_util.tree_leaves_with_path(stacked):
            if leaf.shape[0] != count:
                raise UserError(f'unscan_params: {stack}/layers{jax.tree_util.keystr(path)} has {leaf.shape[0]} '
                                f'layers but T5Config.{count_field}={count}')
        for i in range(count):
            tree[f'layers_{i}'] = jax.tree.map(lambda a, i=i: a[i], stacked)
        out[stack] = tree
    return out


def match_layout(params: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
    """Convert `params` (either layout) to the layout `config.scan_layers` asks for."""
    if is_scanned(params) == config.scan_layers:
        return dict(params)
    return scan_params(params, config) if config.scan_layers else unscan_params(params, config)
