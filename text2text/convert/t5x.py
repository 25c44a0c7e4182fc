"""Import T5X checkpoints (msgpack `checkpoint` file + per-array TensorStore zarr directories) and
orbax-written param trees; T5X parameter names equal ours, so the mapping is 1:1 after validation."""
import functools
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util
from flax.core import meta

from text2text.config import T5Config
from text2text.errors import UserError
from text2text.network import Transformer

T5X_FILE = 'checkpoint'
_ORBAX_MARKERS = ('_METADATA', 'manifest.ocdbt', '_CHECKPOINT_METADATA')
_TOP_KEYS = frozenset({'token_embedder', 'encoder', 'decoder'})


@functools.lru_cache(maxsize=8)
def _param_shapes(config: T5Config) -> dict[tuple[str, ...], tuple[int, ...]]:
    tokens = jnp.ones((1, 1), jnp.int32)
    init = functools.partial(Transformer(config).init, enable_dropout=False)
    variables = jax.eval_shape(init, jax.random.key(0), tokens, tokens, tokens)
    flat = traverse_util.flatten_dict(meta.unbox(variables['params']))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def param_shapes(config: T5Config) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {param path: shape} of the Transformer built from `config` (abstract init, no memory used)."""
    return dict(_param_shapes(config))


def check_params(params: Any, config: T5Config, source: str) -> dict:
    """Validate a param tree against `config` (names and shapes) and return it as nested fp32 numpy arrays.

    Accepts boxed (nn.LogicallyPartitioned) trees and a {'params': ...} wrapper; `source` names the
    checkpoint in UserError messages."""
    params = meta.unbox(params)
    if isinstance(params, dict) and set(params) == {'params'}:
        params = params['params']
    flat = traverse_util.flatten_dict(params)
    expected = param_shapes(config)
    missing = sorted('/'.join(k) for k in expected.keys() - flat.keys())
    unexpected = sorted('/'.join(k) for k in flat.keys() - expected.keys())
    if missing or unexpected:
        raise UserError(f"{source}: parameter names do not match the model for this config; "
                        f"missing: {', '.join(missing[:8]) or 'none'}{' ...' if len(missing) > 8 else ''}; "
                        f"unexpected: {', '.join(unexpected[:8]) or 'none'}{' ...' if len(unexpected) > 8 else ''}")
    vocab = ('token_embedder', 'embedding')
    if tuple(np.shape(flat[vocab])) != expected[vocab]:
        raise UserError(f"{source}: vocabulary size mismatch: token_embedder/embedding has shape "
                        f"{tuple(np.shape(flat[vocab]))}, config expects {expected[vocab]} "
                        f"(vocab_size={config.vocab_size})")
    for path, want in expected.items():
        got = tuple(np.shape(flat[path]))
        if got != want:
            raise UserError(f"{source}: shape mismatch for parameter {'/'.join(path)}: "
                            f"checkpoint {got} vs config {want}")
    return traverse_util.unflatten_dict({k: np.asarray(v, dtype=np.float32) for k, v in flat.items()})


def _is_ts_spec(value: Any) -> bool:
    return isinstance(value, dict) and 'driver' in value and ('kvstore' in value or 'path' in value)


def _read_ts_array(spec: dict, ckpt_dir: str, name: str) -> np.ndarray:
    """Read one TensorStore-backed array whose (relative) path T5X stored in the msgpack file."""
    import tensorstore as ts

    kvstore = spec.get('kvstore')
    rel = (kvstore.get('path') if isinstance(kvstore, dict) else None) or spec.get('path')  # pre-0.1.14 specs
    if not isinstance(rel, str):
        raise UserError(f"{ckpt_dir}: array {name} has a TensorStore spec without a path: {spec}")
    full = rel if os.path.isabs(rel) else os.path.join(ckpt_dir, rel)
    if not os.path.isdir(full):
        raise UserError(f"{ckpt_dir}: array {name} refers to missing TensorStore directory {full}")
    try:
        store = ts.open({'driver': spec['driver'], 'kvstore': {'driver': 'file', 'path': full}},
                        open=True, read=True).result()
        return np.asarray(store.read().result(), dtype=np.float32)
    except ValueError as e:
        raise UserError(f"{full}: cannot read array {name} with TensorStore ({e})") from e


def _read_t5x_msgpack(file: str) -> dict:
    """Params ('target') of a T5X msgpack checkpoint, with externally stored arrays read in."""
    ckpt_dir = os.path.dirname(file)
    with open(file, 'rb') as f:
        try:
            contents = serialization.msgpack_restore(f.read())
        except Exception as e:  # msgpack raises several unrelated types for corrupt input
            raise UserError(f"{file}: not a T5X msgpack checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(contents, dict):
        raise UserError(f"{file}: expected a msgpack map with 'version' and 'optimizer', got {type(contents).__name__}")
    state = contents.get('optimizer', contents) if contents.get('version', 0) else contents
    if not isinstance(state, dict) or 'target' not in state:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{file}: expected T5X state 'optimizer/target' (keys version, optimizer/target, "
                        f"optimizer/state); found top-level keys {sorted(contents)} and state {found}")

    def load(path, leaf):
        name = '/'.join(['target'] + [str(getattr(p, 'key', p)) for p in path])
        return _read_ts_array(leaf, ckpt_dir, name) if _is_ts_spec(leaf) else leaf

    return jax.tree_util.tree_map_with_path(load, state['target'], is_leaf=_is_ts_spec)


def _find_params(tree: Any) -> Any:
    """The first subtree (breadth first) keyed by token_embedder/encoder/decoder, or None."""
    queue = [tree]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            if _TOP_KEYS <= set(node):
                return node
            queue.extend(node[k] for k in ('target', 'params') if k in node)
            queue.extend(v for k, v in node.items() if k not in ('target', 'params'))
    return None


def _read_orbax(directory: str) -> Any:
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(directory)
        tree = getattr(metadata, 'item_metadata', metadata)
        tree = getattr(tree, 'tree', tree)
        restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return checkpointer.restore(directory, restore_args=restore_args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UserError(f"{directory}: cannot restore orbax checkpoint ({type(e).__name__}: {e})") from e


def _latest_step_dir(directory: str) -> str | None:
    steps = [(int(m.group(1)), name) for name in os.listdir(directory)
             if (m := re.fullmatch(r'checkpoint_(\d+)', name)) and os.path.isdir(os.path.join(directory, name))]
    return os.path.join(directory, max(steps)[1]) if steps else None


def _describe(directory: str) -> str:
    names = sorted(os.listdir(directory))
    return ', '.join(names[:12]) + (' ...' if len(names) > 12 else '') if names else 'an empty directory'


def load_t5x_checkpoint(path: str, config: T5Config) -> dict:
    """Load params from a T5X `checkpoint_N/` dir (or its model dir, or the msgpack file) or an orbax tree."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return check_params(_read_t5x_msgpack(path), config, path)
    if not os.path.isdir(path):
        raise UserError(f"{path}: checkpoint not found")
    if not os.path.isfile(os.path.join(path, T5X_FILE)) and not any(
            os.path.exists(os.path.join(path, m)) for m in _ORBAX_MARKERS):
        step_dir = _latest_step_dir(path)
        if step_dir is not None:
            path = step_dir
    t5x_file = os.path.join(path, T5X_FILE)
    if os.path.isfile(t5x_file):
        return check_params(_read_t5x_msgpack(t5x_file), config, path)
    candidates = [path] + sorted(os.path.join(path, d) for d in os.listdir(path)
                                 if os.path.isdir(os.path.join(path, d)))
    for candidate in candidates:
        if any(os.path.exists(os.path.join(candidate, m)) for m in _ORBAX_MARKERS):
            params = _find_params(_read_orbax(candidate))
            if params is not None:
                return check_params(params, config, candidate)
    raise UserError(f"{path}: unrecognised checkpoint layout; found {_describe(path)}; expected a T5X "
                    f"checkpoint_N directory with a msgpack '{T5X_FILE}' file (+ TensorStore array "
                    "directories), a model dir holding checkpoint_N subdirectories, or an orbax checkpoint "
                    "containing token_embedder/encoder/decoder params")


__all__ = ['check_params', 'load_t5x_checkpoint', 'param_shapes']
