"""T5X checkpoint import: a checkpoint written here in T5X's on-disk layout (msgpack + zarr) loads back exactly."""
import dataclasses
import os

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from flax import serialization, traverse_util

from text2text.config import get_config
from text2text.convert import load_t5x_checkpoint, param_shapes
from text2text.errors import UserError

CONFIG = get_config('tiny', vocab_size=64)


def _random_params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    flat = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in param_shapes(CONFIG).items()}
    return traverse_util.unflatten_dict(flat)


def _write_zarr(ckpt_dir: str, name: str, array: np.ndarray) -> dict:
    """Write `array` as T5X does (zarr, gzip, relative dotted path) and return the spec stored in msgpack."""
    chunks = [max(1, s // 2) for s in array.shape]
    metadata = {'compressor': {'id': 'gzip'}, 'shape': list(array.shape), 'chunks': chunks}
    rel = name.replace('/', '.')
    dtype = 'bfloat16' if array.dtype == ml_dtypes.bfloat16 else 'float32'
    store = ts.open({'driver': 'zarr', 'dtype': dtype, 'metadata': metadata,
                     'kvstore': {'driver': 'file', 'path': os.path.join(ckpt_dir, rel)}},
                    create=True).result()
    store.write(array).result()
    return {'driver': 'zarr', 'dtype': dtype, 'kvstore': {'driver': 'file', 'path': rel}, 'metadata': metadata}


def _write_t5x(model_dir: str, params: dict, step: int) -> str:
    """A T5X `checkpoint_<step>` dir: 1-D scales inline in msgpack, the embedding in bf16, the rest in zarr
    (one array with the old top-level-path spec), plus Adafactor-like optimizer state."""
    ckpt_dir = os.path.join(model_dir, f'checkpoint_{step}')
    os.makedirs(ckpt_dir)
    target = {}
    for path, array in traverse_util.flatten_dict(params).items():
        name = '/'.join(('target',) + path)
        if array.ndim == 1:
            target[path] = array
        elif path == ('token_embedder', 'embedding'):
            target[path] = _write_zarr(ckpt_dir, name, array.astype(ml_dtypes.bfloat16))
        elif path == ('decoder', 'relpos_bias', 'rel_embedding'):  # tensorstore<0.1.14 spec: path at top level
            spec = _write_zarr(ckpt_dir, name, array)
            target[path] = {**spec, 'path': spec['kvstore'].pop('path')}
        else:
            target[path] = _write_zarr(ckpt_dir, name, array)
    kernel = params['encoder']['layers_0']['mlp']['wo']['kernel']
    state = {'step': np.int32(step), 'param_states': {'encoder': {'layers_0': {'mlp': {'wo': {'kernel': {
        'v_row': _write_zarr(ckpt_dir, 'state/param_states/encoder/layers_0/mlp/wo/kernel/v_row', kernel[:, 0]),
        'v_col': kernel[0]}}}}}}}
    contents = {'version': 3, 'optimizer': {'target': traverse_util.unflatten_dict(target), 'state': state}}
    with open(os.path.join(ckpt_dir, 'checkpoint'), 'wb') as f:
        f.write(serialization.msgpack_serialize(contents))
    return ckpt_dir


def _expected(params: dict) -> dict:
    """What a load returns: the bf16-stored embedding rounds through bfloat16."""
    out = jax.tree_util.tree_map(np.copy, params)
    emb = out['token_embedder']['embedding']
    out['token_embedder']['embedding'] = emb.astype(ml_dtypes.bfloat16).astype(np.float32)
    return out


def _assert_tree_equal(got, want):
    assert traverse_util.flatten_dict(got).keys() == traverse_util.flatten_dict(want).keys()
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


@pytest.fixture
def model_dir(tmp_path):
    _write_t5x(str(tmp_path), _random_params(1), step=100)
    _write_t5x(str(tmp_path), _random_params(2), step=200)
    return tmp_path


def test_step_dir_model_dir_and_msgpack_file_load_the_same_params(model_dir):
    want = _expected(_random_params(2))
    for path in (model_dir / 'checkpoint_200', model_dir, model_dir / 'checkpoint_200' / 'checkpoint'):
        got = load_t5x_checkpoint(str(path), CONFIG)
        _assert_tree_equal(got, want)
        assert all(a.dtype == np.float32 for a in jax.tree_util.tree_leaves(got))
    _assert_tree_equal(load_t5x_checkpoint(str(model_dir / 'checkpoint_100'), CONFIG),
                       _expected(_random_params(1)))


def test_orbax_params_tree_loads(tmp_path):
    params = _random_params(3)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(str(tmp_path / 'orbax' / 'state'), {'params': params, 'step': 7})
    checkpointer.wait_until_finished()
    _assert_tree_equal(load_t5x_checkpoint(str(tmp_path / 'orbax' / 'state'), CONFIG), params)
    _assert_tree_equal(load_t5x_checkpoint(str(tmp_path / 'orbax'), CONFIG), params)


def test_shape_and_vocab_mismatch_name_the_parameter(model_dir):
    with pytest.raises(UserError, match=r'wi_0/kernel: checkpoint \(32, 64\) vs config \(32, 80\)'):
        load_t5x_checkpoint(str(model_dir), dataclasses.replace(CONFIG, mlp_dim=80))
    with pytest.raises(UserError, match=r'vocabulary size mismatch.*\(64, 32\).*vocab_size=100'):
        load_t5x_checkpoint(str(model_dir), dataclasses.replace(CONFIG, vocab_size=100))
    with pytest.raises(UserError, match=r'missing: none; unexpected: decoder/logits_dense/kernel'):
        load_t5x_checkpoint(str(model_dir), dataclasses.replace(CONFIG, logits_via_embedding=True))
    with pytest.raises(UserError, match=r'missing: decoder/layers_2/encoder_decoder_attention/key/kernel'):
        load_t5x_checkpoint(str(model_dir), dataclasses.replace(CONFIG, num_decoder_layers=3))


def test_malformed_checkpoints_raise_user_errors(tmp_path, model_dir):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match=r'empty: unrecognised checkpoint layout; found an empty directory'):
        load_t5x_checkpoint(str(tmp_path / 'empty'), CONFIG)
    (tmp_path / 'junk').mkdir()
    (tmp_path / 'junk' / 'checkpoint').write_bytes(b'\xc1not msgpack')
    with pytest.raises(UserError, match=r'junk/checkpoint: not a T5X msgpack checkpoint'):
        load_t5x_checkpoint(str(tmp_path / 'junk'), CONFIG)
    (tmp_path / 'no_target').mkdir()
    (tmp_path / 'no_target' / 'checkpoint').write_bytes(
        serialization.msgpack_serialize({'version': 3, 'optimizer': {'state': {'step': 1}}}))
    with pytest.raises(UserError, match=r"expected T5X state 'optimizer/target'.*state \['state'\]"):
        load_t5x_checkpoint(str(tmp_path / 'no_target'), CONFIG)
    missing = model_dir / 'checkpoint_200' / 'target.decoder.layers_1.mlp.wo.kernel'
    os.rename(missing, str(missing) + '.moved')
    with pytest.raises(UserError, match=r'target/decoder/layers_1/mlp/wo/kernel refers to missing TensorStore'):
        load_t5x_checkpoint(str(model_dir), CONFIG)
