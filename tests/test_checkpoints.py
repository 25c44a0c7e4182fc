"""Tests for text2text.checkpoints: round trip, keep-N, interval, atomicity, params-only, 8 -> 2 device restore."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from text2text import checkpoints, optim
from text2text.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {'dense': {'kernel': jax.random.normal(k1, (8, 4))}, 'frozen': jax.random.normal(k2, (4,))}
    tx = optim.masked_optimizer(optim.adafactor(), optim.trainable_mask(params, '^dense/'))
    opt_state = tx.init(params)
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    return {'params': params, 'opt_state': opt_state, 'step': jnp.asarray(seed, jnp.int32)}


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_state_and_data_state(tmp_path):
    state = _state(3)
    data_state = {'batches_consumed': 3, 'fingerprint': {'task': 'x', 'seed': 1}}
    manager = checkpoints.CheckpointManager(tmp_path, save_interval_steps=1, max_to_keep=3, async_save=True)
    assert manager.latest_step() is None
    assert manager.save(3, state, data_state)
    manager.wait_until_finished()
    assert manager.latest_step() == 3
    restored, restored_data = manager.restore(None, checkpoints.abstract_like(state))
    _assert_trees_equal(restored, state)
    assert restored_data == data_state
    assert restored['params']['frozen'].sharding == state['params']['frozen'].sharding
    manager.close()


def test_keeps_last_n_and_respects_interval(tmp_path):
    manager = checkpoints.CheckpointManager(tmp_path, save_interval_steps=2, max_to_keep=2, async_save=False)
    saved = [manager.save(step, _state(step)) for step in range(1, 7)]
    assert saved == [False, True, False, True, False, True]
    assert manager.all_steps() == [4, 6]
    assert manager.save(7, _state(7), force=True)
    assert manager.all_steps() == [6, 7]
    state, data_state = manager.restore(6, checkpoints.abstract_like(_state()))
    assert int(state['step']) == 6 and data_state == {}
    with pytest.raises(UserError, match='step 5 not found'):
        manager.restore(5, checkpoints.abstract_like(_state()))
    manager.close()


def test_incomplete_save_is_invisible_and_cleaned_up(tmp_path):
    manager = checkpoints.CheckpointManager(tmp_path, async_save=False)
    manager.save(1, _state(1), force=True)
    manager.close()
    partial = tmp_path / '5.orbax-checkpoint-tmp'
    shutil.copytree(tmp_path / '1', partial)
    reader = checkpoints.CheckpointManager(tmp_path, read_only=True)
    assert reader.all_steps() == [1]
    assert int(reader.restore(1, checkpoints.abstract_like(_state()))[0]['step']) == 1
    reader.close()
    assert partial.exists()  # a reader never removes what may be a save in progress
    reopened = checkpoints.CheckpointManager(tmp_path, async_save=False)
    assert reopened.all_steps() == [1]
    reopened.save(2, _state(2), force=True)  # orbax finishes its tmp-directory cleanup before saving
    assert reopened.all_steps() == [1, 2]
    assert not partial.exists()
    reopened.close()


def test_restore_params_only(tmp_path):
    manager = checkpoints.CheckpointManager(tmp_path, async_save=False)
    manager.save(5, _state(5), force=True)
    manager.save(9, _state(9), force=True)
    manager.close()
    abstract = checkpoints.abstract_like(_state()['params'])
    _assert_trees_equal(checkpoints.restore_params_only(tmp_path, abstract), _state(9)['params'])
    _assert_trees_equal(checkpoints.restore_params_only(tmp_path / '5', abstract), _state(5)['params'])
    as_numpy = checkpoints.restore_params_only(tmp_path, jax.eval_shape(lambda: _state()['params']))
    assert isinstance(as_numpy['frozen'], np.ndarray)


def test_restore_errors_name_the_directory(tmp_path):
    manager = checkpoints.CheckpointManager(tmp_path / 'empty', async_save=False)
    with pytest.raises(UserError, match='no checkpoint found in .*empty'):
        manager.restore(None, {})
    manager.close()
    with pytest.raises(UserError, match='is not a text2text checkpoint'):
        checkpoints.restore_params_only(tmp_path / 'empty', {})


_SAVE_8 = textwrap.dedent('''
    import sys, jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from text2text import checkpoints, partitioning
    mesh = partitioning.create_mesh(-1, 1)
    sharding = NamedSharding(mesh, P('data', None))
    params = {'w': jax.device_put(jnp.arange(64.0).reshape(16, 4), sharding)}
    assert len(params['w'].addressable_shards) == 8
    manager = checkpoints.CheckpointManager(sys.argv[1], async_save=True)
    manager.save(11, {'params': params, 'step': jnp.asarray(11)}, {'batches_consumed': 11}, force=True)
    manager.close()
    print('RESULT' + '{}')
''')

_RESTORE_2 = textwrap.dedent('''
    import json, sys, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from text2text import checkpoints, partitioning
    mesh = partitioning.create_mesh(-1, 1)
    shardings = {'params': {'w': NamedSharding(mesh, P('data', None))}, 'step': NamedSharding(mesh, P())}
    shapes = {'params': {'w': jax.ShapeDtypeStruct((16, 4), jnp.float32)}, 'step': jax.ShapeDtypeStruct((), jnp.int32)}
    manager = checkpoints.CheckpointManager(sys.argv[1])
    state, data_state = manager.restore(None, checkpoints.abstract_with_shardings(shapes, shardings))
    w = state['params']['w']
    params = checkpoints.restore_params_only(sys.argv[1], checkpoints.abstract_with_shardings(
        shapes['params'], shardings['params']))
    manager.close()
    print('RESULT' + json.dumps({
        'devices': jax.device_count(), 'equal': bool(np.array_equal(np.asarray(w), np.arange(64.0).reshape(16, 4))),
        'shards': [list(s.data.shape) for s in w.addressable_shards], 'step': int(state['step']),
        'data_state': data_state, 'params_only_shards': len(params['w'].addressable_shards)}))
''')


def _run(script, devices, directory):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu')
    proc = subprocess.run([sys.executable, '-c', script, str(directory)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT')]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len('RESULT'):])


def test_restore_on_a_different_mesh_8_to_2_devices(tmp_path):
    _run(_SAVE_8, 8, tmp_path)
    result = _run(_RESTORE_2, 2, tmp_path)
    assert result == {'devices': 2, 'equal': True, 'shards': [[8, 4], [8, 4]], 'step': 11,
                      'data_state': {'batches_consumed': 11}, 'params_only_shards': 2}
