"""Trainer checkpoints move between meshes: train on 8 (forced host) devices with tp+fsdp, resume on 2, and back.

Each leg is `trainer.train` in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N; orbax
reads the saved shards straight into the new mesh's shardings. A resumed run must end where an uninterrupted
run on one mesh ends (up to float reduction order), which also checks the restored optimizer state and
data position.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, numpy as np, seqio, tensorflow as tf
    from flax import traverse_util
    from text2text import trainer
    from text2text.config import get_config
    from text2text.models import EncoderDecoderModel

    def dataset_fn(split, shuffle_files, seed=None):
        texts = [f"example {i} " + "z" * (i % 6) for i in range(64)]
        return tf.data.Dataset.from_tensor_slices({"inputs": texts, "targets": [t[::-1] for t in texts]})

    vocab = seqio.ByteVocabulary()
    seqio.TaskRegistry.add("text2text_resharding_task", source=seqio.FunctionDataSource(dataset_fn, ["train"]),
                           preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
                           output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)})
    report = {"devices": jax.device_count()}
    for leg in json.loads(sys.argv[1]):
        result = trainer.train(leg["dir"], EncoderDecoderModel(get_config("tiny")), "text2text_resharding_task",
                               {"inputs": 24, "targets": 24}, train_steps=leg["steps"], batch_size=8, pack=False,
                               mesh_config=trainer.MeshConfig(*leg["mesh"]), checkpoint_period=2, log_period=1)
        params = traverse_util.flatten_dict(result["state"].params, sep="/")
        np.savez(leg["out"], **{k: np.asarray(v) for k, v in params.items()})
        kernel = next(v for k, v in params.items() if k.endswith("mlp/wi_0/kernel"))
        report[leg["out"]] = {"step": result["step"], "loss": result["metrics"]["loss_per_token"],
                              "shards": len(kernel.addressable_shards),
                              "distinct": len({str(s.index) for s in kernel.addressable_shards})}
    print("RESULT" + json.dumps(report))
''')


def _run(devices: int, legs: list[dict], compile_cache: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
               PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=compile_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
    proc = subprocess.run([sys.executable, '-c', _SCRIPT, json.dumps(legs)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith('RESULT'))
    report = json.loads(line[len('RESULT'):])
    assert report['devices'] == devices
    return report


def _assert_params_close(path_a, path_b):
    a, b = np.load(path_a), np.load(path_b)
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=2e-5, err_msg=key)


@pytest.mark.slow
def test_checkpoints_reshard_between_8_and_2_devices(tmp_path):
    cache = str(tmp_path / 'jax_cache')  # identical legs on one mesh compile once

    def out(name, steps):
        return str(tmp_path / f'{name}-{steps}.npz')

    def leg(name, steps, mesh):
        return {'dir': str(tmp_path / name), 'steps': steps, 'mesh': mesh, 'out': out(name, steps)}

    eight, two = [4, 2, 'tp+fsdp'], [1, 2, 'tp']
    # 2 devices: start the run that 8 devices continue.
    first = _run(2, [leg('up', 2, two)], cache)
    # 8 devices: the reference (4 uninterrupted steps), start the run that 2 devices continue, continue 'up'.
    middle = _run(8, [leg('ref', 4, eight), leg('down', 2, eight), leg('up', 4, eight)], cache)
    # 2 devices: continue 'down' from the 8-device checkpoint.
    last = _run(2, [leg('down', 4, two)], cache)

    ref, up, down = middle[out('ref', 4)], middle[out('up', 4)], last[out('down', 4)]
    assert first[out('up', 2)]['step'] == middle[out('down', 2)]['step'] == 2
    assert up['step'] == down['step'] == ref['step'] == 4
    assert ref['shards'] == ref['distinct'] == 8  # the wi_0 kernel is split over data and model on 8 devices
    assert down['shards'] == down['distinct'] == 2
    assert {'2', '4'} <= set(os.listdir(tmp_path / 'down')) and {'2', '4'} <= set(os.listdir(tmp_path / 'up'))
    for resumed in (up, down):
        np.testing.assert_allclose(resumed['loss'], ref['loss'], rtol=1e-4)
    _assert_params_close(out('down', 4), out('ref', 4))
    _assert_params_close(out('up', 4), out('ref', 4))


def test_launcher_joins_a_job_from_explicit_flags():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    script = textwrap.dedent('''
        import sys, types, jax
        from text2text import launch
        probe = types.ModuleType("probe")
        probe.probe = lambda: [jax.distributed.is_initialized(), jax.process_count(), jax.process_index()]
        sys.modules["probe"] = probe
        launch.MODES["probe"] = ("probe", "probe")
        launch.gin.get_configurable = lambda function: function
        print("RESULT", launch.run("probe", coordinator_address=sys.argv[1], num_processes=1, process_id=0))
    ''')
    env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, '-c', script, f'127.0.0.1:{port}'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'RESULT [True, 1, 0]' in proc.stdout
