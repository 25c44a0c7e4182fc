"""Host overhead of the training loop: how much longer trainer.train takes per step than its jitted step run back to
back, on the demo's fine-tuning shape.

The README demo's model (3+3 layers, d_model 128, mlp 512, vocabulary 2176), batch 32, inputs 32 / targets 16,
dense packing, log every 50 steps (as the demo), one checkpoint at the end, on bench/packing.py's GLUE-like
mixture (byte vocabulary, repeated). After the loop the same compiled step runs as many times on one fixed batch
of the same shapes (block at the end): host overhead = (loop s/step - step-alone s/step) / loop s/step, in wall
seconds and in this process's CPU seconds (all threads: XLA's and tf.data's; steadier on a shared machine, and on
a CPU backend the input pipeline's threads take cores from the step). trainer.train's own per-phase wall times
(reporting.HostTimer) are printed beside it; their share is only an upper bound (the data of step N+1 is read
while the device runs step N). Each of --rounds rounds is a fresh run (load on a shared machine moves between the
loop and the step alone: compare rounds). Run: `.venv/bin/python bench/train_loop.py [--threads N] [--steps S]
[--rounds R]`.
"""
import statistics
import tempfile
import time

from common import configure, load_note, parse_args
from packing import MIXTURE, _register

LENGTHS = {'inputs': 32, 'targets': 16}
BATCH = 32


def step_alone(result: dict, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of the run's compiled step on one fixed packed batch, `steps` calls back to back
    from the run's final state (one untimed call first)."""
    import jax
    from text2text import data, partitioning
    state, step_fn = result['state'], result['step_fn']
    mesh = state.step.sharding.mesh
    dataset = data.get_dataset(MIXTURE, LENGTHS, 'train', BATCH, shuffle=True, seed=0, pack=True).take(1)
    batch = next(dataset.as_numpy_iterator())
    rng = jax.random.PRNGKey(1)
    with partitioning.mesh_context(mesh, partitioning.logical_axis_rules('dp')):
        sharded = partitioning.shard_batch(batch, mesh)
        state, metrics = step_fn(state, sharded, rng)
        jax.block_until_ready((state, metrics))
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            state, metrics = step_fn(state, sharded, rng)
        jax.block_until_ready((state, metrics))
        return (time.perf_counter() - start) / steps, (time.process_time() - start_cpu) / steps


def one_round(steps: int) -> dict:
    """One fresh trainer.train run of `steps` steps, then its step alone: host time summary and s/step."""
    from text2text import config, models, optim, trainer
    model = models.EncoderDecoderModel(config.get_config(
        'tiny', vocab_size=2176, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=512, num_encoder_layers=3,
        num_decoder_layers=3))
    with tempfile.TemporaryDirectory() as model_dir:
        result = trainer.train(model_dir, model, MIXTURE, LENGTHS, train_steps=steps, batch_size=BATCH,
                               log_period=50, checkpoint_period=steps,
                               optimizer=optim.adafactor(learning_rate=optim.constant_schedule(1e-2)))
    host = result['host_time']
    alone, alone_cpu = step_alone(result, host['steps'])
    loop, loop_cpu = host['loop_seconds'] / host['steps'], host['loop_cpu_seconds'] / host['steps']
    return {**host, 'loop': loop, 'loop_cpu': loop_cpu, 'alone': alone, 'alone_cpu': alone_cpu,
            'wall': (loop - alone) / loop, 'cpu': (loop_cpu - alone_cpu) / loop_cpu}


def main() -> None:
    args = parse_args(steps=300, rounds=2)
    configure(args.threads)
    from text2text import trainer
    _register(200)
    rounds = []
    for index in range(args.rounds):
        r = one_round(args.steps)
        rounds.append(r)
        per_step = {name: f'{1e3 * seconds / r["steps"]:.2f}' for name, seconds in r['seconds'].items()}
        print(f"# round {index + 1}: {load_note()}, threads {args.threads}; {r['steps']} steps timed (all but the "
              'first, which compiles)')
        print(f'#   ms per step by phase: {per_step}; phases {", ".join(trainer.HOST_OVERHEAD_PHASES)}: '
              f'{100 * r["overhead_fraction"]:.1f}% of the loop (an upper bound)')
        print(f'#   loop {1e3 * r["loop"]:.1f} ms per step (CPU {1e3 * r["loop_cpu"]:.1f}), step alone '
              f'{1e3 * r["alone"]:.1f} ms (CPU {1e3 * r["alone_cpu"]:.1f}): host overhead {100 * r["wall"]:.1f}% '
              f'(wall), {100 * r["cpu"]:.1f}% (CPU)', flush=True)
    wall, cpu = (statistics.median(r[key] for r in rounds) for key in ('wall', 'cpu'))
    print(f'train_loop: host overhead {100 * wall:.1f}% of the loop (wall), {100 * cpu:.1f}% (CPU seconds of all '
          f'threads), medians of {args.rounds} rounds')


if __name__ == '__main__':
    main()
