"""A real two-process run (jax.distributed on 127.0.0.1, 2 CPU processes x 1 device, gloo collectives) trains
like one process on 2 forced host devices: same per-step losses, same final params, and a checkpoint in the
shared MODEL_DIR that both processes restore and that the next `trainer.train` call resumes from.

Why the losses can match exactly: with shuffle and packing off, `data.get_dataset` gives host h the examples
h, h+2, h+4, ... (seqio shards a FunctionDataSource at the example level, like `ds.shard(2, h)`), in order,
two rows a step. So global batch k holds examples 4k..4k+3 in both runs, only in another row order
(4k, 4k+2 | 4k+1, 4k+3); the loss is a sum over tokens, so the order changes only the float summation order.
The test checks those batch contents itself rather than trusting this paragraph.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH, EXAMPLES = 4, 4, 16  # 4 steps of 4 rows read each of the 16 examples once
TIMEOUT = 300

# argv[1]: {"dir", "out", "legs": [train_steps, ...], "examples", "batch", "layers", optional "coordinator" and
# "process_id"}. Without "coordinator", trainer.train joins a job from JAX_COORDINATOR_ADDRESS etc. if set.
_WORKER = textwrap.dedent('''
    import json, sys
    cfg = json.loads(sys.argv[1])
    from text2text import partitioning
    if "coordinator" in cfg:  # before any other jax call
        assert partitioning.maybe_initialize_distributed(cfg["coordinator"], num_processes=2,
                                                         process_id=cfg["process_id"])
    import jax, numpy as np, seqio, tensorflow as tf
    from flax import traverse_util
    from text2text import checkpoints, data, trainer
    from text2text.config import get_config
    from text2text.models import EncoderDecoderModel

    def dataset_fn(split, shuffle_files, seed=None):
        texts = [f"example {i} " + "z" * (i % 6) for i in range(cfg["examples"])]  # lengths differ per row
        return tf.data.Dataset.from_tensor_slices({"inputs": texts, "targets": [t[::-1] for t in texts]})

    vocab = seqio.ByteVocabulary()
    seqio.TaskRegistry.add("text2text_multiprocess_task", source=seqio.FunctionDataSource(dataset_fn, ["train"]),
                           preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
                           output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)})
    model = EncoderDecoderModel(get_config("tiny", **cfg["layers"]))
    steps_done = []
    for steps in cfg["legs"]:  # a later leg resumes from the checkpoint the earlier one left in cfg["dir"]
        result = trainer.train(cfg["dir"], model, "text2text_multiprocess_task", {"inputs": 24, "targets": 24},
                               train_steps=steps, batch_size=cfg["batch"], pack=False, shuffle=False,
                               mesh_config=trainer.MeshConfig(-1, 1, "dp"), checkpoint_period=2, log_period=1)
        steps_done.append(result["step"])
    state = result["state"]
    report = {"process": [jax.process_index(), jax.process_count()], "local_devices": jax.local_device_count(),
              "devices": jax.device_count(), "collectives": jax.config.jax_cpu_collectives_implementation,
              "steps": steps_done}

    # Every process restores the shared directory's checkpoints: the last one equals the final state.
    manager = checkpoints.CheckpointManager(cfg["dir"], read_only=True)
    step, restored, data_state = manager.restore_latest(checkpoints.abstract_like(state))
    earlier, _ = manager.restore(2, checkpoints.abstract_like(state))
    manager.close()
    report["restored_step"], report["batches_consumed"] = step, data_state["batches_consumed"]
    report["restored_equal"] = all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(jax.device_get(state))))
    report["moved"] = max(float(np.max(np.abs(a - b))) for a, b in zip(  # by steps 3 and 4
        jax.tree.leaves(jax.device_get(earlier.params)), jax.tree.leaves(jax.device_get(state.params))))

    # This host's batches: the trainer's own data pipeline, rebuilt from the settings saved with the checkpoint.
    ds = data.get_dataset(**data_state["fingerprint"], num_epochs=None).take(data_state["batches_consumed"])
    report["rows"] = [b["encoder_input_tokens"].tolist() for b in ds.as_numpy_iterator()]

    np.savez(cfg["out"], **traverse_util.flatten_dict(jax.device_get(state.params), sep="/"))
    print("RESULT" + json.dumps(report))
''')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _start(cfg: dict, devices: int, tmp_path, extra_env: dict | None = None) -> tuple:
    """Starts one worker with `devices` CPU devices; stdout/stderr go to files (no pipe can fill up and block)."""
    cfg = dict(cfg, examples=EXAMPLES, batch=BATCH, layers={'num_encoder_layers': 1, 'num_decoder_layers': 1})
    env = {k: v for k, v in os.environ.items() if k not in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES',
                                                             'JAX_PROCESS_ID')}
    env.update(JAX_PLATFORMS='cpu', PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='',
               XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
               # process 0's second leg reuses its compiled step (jax caches only what process 0 compiles)
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               **(extra_env or {}))
    name = os.path.splitext(os.path.basename(cfg['out']))[0]
    out, err = open(tmp_path / f'{name}.stdout', 'w+'), open(tmp_path / f'{name}.stderr', 'w+')
    proc = subprocess.Popen([sys.executable, '-c', _WORKER, json.dumps(cfg)], cwd=REPO, env=env,
                            stdout=out, stderr=err, text=True)
    return name, proc, out, err


def _finish(started: list) -> list:
    """Waits for all workers; on a failure or the timeout kills the rest, then fails showing every stderr."""
    deadline = time.monotonic() + TIMEOUT
    problem = None
    while problem is None and any(proc.poll() is None for _, proc, _, _ in started):
        crashed = [name for name, proc, _, _ in started if proc.poll() not in (None, 0)]
        if crashed:
            problem = f'{", ".join(crashed)} failed'
            time.sleep(2)  # let its peer log its side of the failure
        elif time.monotonic() > deadline:
            problem = f'timed out after {TIMEOUT} s'
        else:
            time.sleep(0.2)
    reports, logs = [], []
    for name, proc, out, err in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        out.close()
        err.close()
        logs.append(f'--- {name}: exit code {proc.returncode}; stderr:\n{stderr[-4000:]}')
        lines = [line for line in stdout.splitlines() if line.startswith('RESULT')]
        reports.append(json.loads(lines[-1][len('RESULT'):]) if lines else None)
    ok = problem is None and all(proc.returncode == 0 for _, proc, _, _ in started) and all(reports)
    assert ok, f'{problem or "a worker failed"}\n' + '\n'.join(logs)
    return reports


def _losses(model_dir) -> list:
    with open(os.path.join(model_dir, 'metrics.jsonl'), encoding='utf-8') as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [(r['step'], r['loss']) for r in records if r['kind'] == 'train']


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_two_devices(tmp_path):
    started_at = time.monotonic()
    coordinator = f'127.0.0.1:{_free_port()}'
    shared = tmp_path / 'two_processes'  # one MODEL_DIR for both processes, as on a shared filesystem
    # The two-process job trains 2 steps, then resumes from that checkpoint for 2 more; the reference runs 4.
    # Process 0 joins with explicit maybe_initialize_distributed arguments; process 1 through the environment,
    # which trainer.train reads itself.
    process0 = {'dir': str(shared), 'out': str(tmp_path / 'process0.npz'), 'legs': [2, STEPS],
                'coordinator': coordinator, 'process_id': 0}
    process1 = {'dir': str(shared), 'out': str(tmp_path / 'process1.npz'), 'legs': [2, STEPS]}
    process1_env = {'JAX_COORDINATOR_ADDRESS': coordinator, 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'}
    reference = {'dir': str(tmp_path / 'one_process'), 'out': str(tmp_path / 'reference.npz'), 'legs': [STEPS]}
    first, second, single = _finish([_start(process0, 1, tmp_path), _start(process1, 1, tmp_path, process1_env),
                                     _start(reference, 2, tmp_path)])
    wall = time.monotonic() - started_at

    assert first['process'] == [0, 2] and second['process'] == [1, 2]
    assert first['local_devices'] == second['local_devices'] == 1 and first['devices'] == 2
    assert first['collectives'] == second['collectives'] == 'gloo'
    assert single['process'] == [0, 1] and single['local_devices'] == single['devices'] == 2
    for report in (first, second, single):
        assert report['steps'][-1] == report['restored_step'] == report['batches_consumed'] == STEPS
        assert report['restored_equal']
    assert first['steps'] == second['steps'] == [2, STEPS]  # the second call resumed at step 2

    # Each host read half of every global batch; together exactly the reference's rows, in another order.
    for step in range(STEPS):
        host0, host1, whole = first['rows'][step], second['rows'][step], single['rows'][step]
        assert len(host0) == len(host1) == BATCH // 2 and len(whole) == BATCH
        assert sorted(host0 + host1) == sorted(whole) and len({tuple(row) for row in whole}) == BATCH
        assert host0 + host1 != whole
    assert len({tuple(row) for rows in single['rows'] for row in rows}) == EXAMPLES

    # Only process 0 logs, one record per step (both legs); the losses are the one-process run's.
    two, one = _losses(shared), _losses(reference['dir'])
    assert [s for s, _ in two] == [s for s, _ in one] == list(range(1, STEPS + 1))
    two_losses, one_losses = np.array([l for _, l in two]), np.array([l for _, l in one])
    print(f'\none process, 2 devices: {one_losses.tolist()}\ntwo processes:          {two_losses.tolist()}\n'
          f'max |diff| {np.max(np.abs(two_losses - one_losses)):.3g}; wall {wall:.1f} s')
    assert len(set(one_losses.tolist())) == STEPS  # every step saw other data, so equal losses mean something
    np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
    assert {'2', '4'} <= set(os.listdir(shared))

    # Final params: both replicas agree, and match the one-process run up to float summation order.
    assert min(first['moved'], single['moved']) > 1e-3  # steps 3-4 changed them: equality means something
    params0, params1, ref = (np.load(tmp_path / f'{n}.npz') for n in ('process0', 'process1', 'reference'))
    assert sorted(params0.files) == sorted(params1.files) == sorted(ref.files)
    for key in ref.files:
        np.testing.assert_array_equal(params0[key], params1[key], err_msg=key)
        np.testing.assert_allclose(params0[key], ref[key], rtol=1e-4, atol=1e-6, err_msg=key)
