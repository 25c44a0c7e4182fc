"""Tests for text2text.partitioning; multi-device checks run in one subprocess with 8 forced CPU devices."""

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import pytest
from jax.sharding import PartitionSpec as P

from text2text import partitioning
from text2text.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs with 8 CPU devices; prints one JSON object with everything the tests below check.
_SCRIPT = textwrap.dedent('''
    import json
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from text2text import partitioning as pt
    from text2text.errors import UserError

    out = {'device_count': jax.device_count()}

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            init = nn.initializers.normal(1.0)
            emb = self.param('embedding', nn.with_logical_partitioning(init, ('vocab', 'embed')), (64, 16))
            wi = self.param('wi', nn.with_logical_partitioning(init, ('embed', 'mlp')), (16, 32))
            wo = self.param('wo', nn.with_logical_partitioning(init, ('mlp', 'embed')), (32, 16))
            self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)), (16,))
            self.param('rel', nn.with_logical_partitioning(init, ('heads', 'relpos_buckets')), (3, 32))
            x = nn.with_logical_constraint(emb[tokens], ('batch', 'length', 'embed'))
            h = nn.with_logical_constraint(jnp.maximum(x @ wi, 0), ('batch', 'length', 'mlp'))
            return nn.with_logical_constraint(h @ wo, ('batch', 'length', 'embed'))

    model = Tiny()
    tokens = np.arange(32, dtype=np.int32).reshape(8, 4)
    reference = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens))['params']
    out['specs'], out['same_values'], out['activation'] = {}, {}, {}
    for mode, (data, mdl) in {'dp': (8, 1), 'tp': (4, 2), 'fsdp': (8, 1), 'tp+fsdp': (4, 2)}.items():
        mesh, rules = pt.create_mesh(data, mdl), pt.logical_axis_rules(mode)
        variables, shardings = pt.init_sharded(model.init, mesh, rules, jax.random.key(0), tokens)
        params = variables['params']
        out['specs'][mode] = {k: [a if a is None or isinstance(a, str) else list(a) for a in v.sharding.spec]
                              for k, v in params.items()}
        assert all(params[k].sharding == shardings['params'][k] for k in params)
        out['same_values'][mode] = all(
            bool(jnp.array_equal(params[k], reference[k])) for k in params)
        if mode in ('fsdp', 'tp+fsdp'):
            with pt.mesh_context(mesh, rules):
                y = jax.jit(model.apply)(variables, pt.shard_batch({'t': tokens}, mesh)['t'])
            out['activation'][mode] = list(y.sharding.spec)

    mesh = pt.create_mesh(-1, 2)
    out['mesh_shape'] = dict(mesh.shape)
    batch = pt.shard_batch({'x': np.zeros((8, 5), np.int32)}, mesh)['x']
    out['batch'] = {'shape': list(batch.shape), 'spec': list(batch.sharding.spec),
                    'shard_shape': list(batch.addressable_shards[0].data.shape)}
    errors = {}
    for name, fn in {'too_big': lambda: pt.create_mesh(16, 1), 'indivisible': lambda: pt.create_mesh(3, 1),
                     'partial': lambda: pt.create_mesh(2, 2), 'both_auto': lambda: pt.create_mesh(-1, -1),
                     'batch': lambda: pt.shard_batch({'x': np.zeros((6, 5))}, mesh)}.items():
        try:
            fn()
            errors[name] = None
        except UserError as e:
            errors[name] = str(e)
    out['errors'] = errors
    print('RESULT' + json.dumps(out))
''')


# Single-process jax.distributed run (a real coordinator on localhost); kept apart because it slows CPU collectives.
_DISTRIBUTED_SCRIPT = textwrap.dedent('''
    import json, socket
    import jax
    from text2text import partitioning as pt

    with socket.socket() as s:
        s.bind(('localhost', 0))
        port = s.getsockname()[1]
    out = {'initialized': pt.maybe_initialize_distributed(f'localhost:{port}', num_processes=1, process_id=0)}
    out['initialized_again'] = pt.maybe_initialize_distributed()
    out['process_count'] = jax.process_count()
    print('RESULT' + json.dumps(out))
''')


def _run(script):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT')]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len('RESULT'):])


@pytest.fixture(scope='module')
def eight_devices():
    return _run(_SCRIPT)


def test_rules_are_derived_from_the_one_table():
    for mode in partitioning.MODES:
        rules = dict(partitioning.logical_axis_rules(mode))
        assert set(rules) == {row[0] for row in partitioning.LOGICAL_AXIS_RULES}
        assert rules['batch'] == 'data'
    assert dict(partitioning.logical_axis_rules('dp'))['mlp'] is None
    assert dict(partitioning.logical_axis_rules('tp'))['mlp'] == 'model'
    assert dict(partitioning.logical_axis_rules('fsdp'))['embed'] == 'data'
    assert dict(partitioning.logical_axis_rules('tp+fsdp'))['joined_kv'] == 'model'


def test_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match='zero3'):
        partitioning.logical_axis_rules('zero3')


def test_fsdp_activations_keep_batch_on_data():
    rules = partitioning.logical_axis_rules('fsdp')
    assert nn.logical_to_mesh_axes(('batch', 'length', 'embed'), rules) == P('data', None, None)
    assert nn.logical_to_mesh_axes(('embed', 'mlp'), rules) == P('data', None)
    tp_fsdp = partitioning.logical_axis_rules('tp+fsdp')
    assert nn.logical_to_mesh_axes(('batch', 'length', 'heads', 'kv'), tp_fsdp) == P('data', None, 'model', None)


def test_distributed_init_explicit_then_idempotent():
    result = _run(_DISTRIBUTED_SCRIPT)
    assert result == {'initialized': True, 'initialized_again': False, 'process_count': 1}


def test_no_distributed_init_without_flags_or_env(monkeypatch):
    for var in ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID', 'OMPI_MCA_orte_hnp_uri', 'MEGASCALE_COORDINATOR_ADDRESS',
                'TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES'):
        monkeypatch.delenv(var, raising=False)
    assert partitioning.maybe_initialize_distributed() is False


def test_param_shardings_follow_the_table(eight_devices):
    specs = eight_devices['specs']
    assert specs['dp'] == {'embedding': [None, None], 'wi': [None, None], 'wo': [None, None], 'scale': [None],
                           'rel': [None, None]}
    # tp: [embed, mlp] kernel split over 'model' on its second axis; heads=3 is indivisible by 2 -> replicated.
    assert specs['tp'] == {'embedding': ['model', None], 'wi': [None, 'model'], 'wo': ['model', None],
                           'scale': [None], 'rel': [None, None]}
    assert specs['fsdp'] == {'embedding': [None, 'data'], 'wi': ['data', None], 'wo': [None, 'data'],
                             'scale': ['data'], 'rel': [None, None]}
    assert specs['tp+fsdp'] == {'embedding': ['model', 'data'], 'wi': ['data', 'model'], 'wo': ['model', 'data'],
                                'scale': ['data'], 'rel': [None, None]}


def test_init_sharded_matches_unsharded_init(eight_devices):
    assert all(eight_devices['same_values'].values())


def test_activations_constrained_to_batch_on_data(eight_devices):
    assert set(eight_devices['activation']) == {'fsdp', 'tp+fsdp'}
    for mode in eight_devices['activation']:
        assert eight_devices['activation'][mode][0] == 'data'
        assert all(a is None for a in eight_devices['activation'][mode][1:])


def test_mesh_and_batch(eight_devices):
    assert eight_devices['device_count'] == 8
    assert eight_devices['mesh_shape'] == {'data': 4, 'model': 2}
    assert eight_devices['batch'] == {'shape': [8, 5], 'spec': ['data'], 'shard_shape': [2, 5]}


def test_mesh_and_batch_errors(eight_devices):
    errors = eight_devices['errors']
    assert '16 devices' in errors['too_big'] and 'only 8' in errors['too_big']
    assert 'not divisible by 3' in errors['indivisible']
    assert 'uses 4 of the 8' in errors['partial']
    assert 'at most one' in errors['both_auto']
    assert 'global batch size 6' in errors['batch'] and 'data axis size 4' in errors['batch']
