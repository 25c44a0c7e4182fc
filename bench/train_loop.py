"""Host overhead of the training loop: how much longer trainer.train takes per step than its jitted step run back to
back, on the demo's fine-tuning shape.

The README demo's model (3+3 layers, d_model 128, mlp 512, vocabulary 2176), batch 32, inputs 32 / targets 16,
dense packing, log every 50 steps (as the demo), a checkpoint at the end of each segment, on bench/packing.py's
GLUE-like mixture (byte vocabulary, repeated). Loop and step alone alternate in one process: --rounds segments
of --steps loop steps, each a trainer.train run resumed from the previous segment's checkpoint (the first one
fresh), each followed by as many calls of the same compiled step on one fixed batch of the same shapes (block at
the end). A segment's host overhead = (loop s/step - step-alone s/step) / loop s/step, with the step alone taken
as the mean of the timings just before and just after the segment (the first segment has only the one after):
the step's own speed drifts by up to 10-20% over minutes on a shared machine, more than the overhead measured.
Reported in wall seconds and in this process's CPU seconds (all threads: XLA's and tf.data's; on a CPU backend
the input pipeline's threads take cores from the step). trainer.train's own per-phase wall times
(reporting.HostTimer) are printed beside it; their share is only an upper bound (the data of step N+1 is read
while the device runs step N). The CPU time of each group of threads is printed too
(`reporting.thread_cpu_seconds`, Linux): XLA's compute threads against the input pipeline's, a split that a
drifting step does not blur. Run: `.venv/bin/python bench/train_loop.py [--threads N] [--steps S] [--rounds R]`.
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


def loop_segment(model_dir: str, model, end_step: int) -> dict:
    """trainer.train up to `end_step` in `model_dir` (resuming its checkpoint if any): host time summary, the
    loop's wall and CPU s/step, and the run's result."""
    from text2text import optim, trainer
    result = trainer.train(model_dir, model, MIXTURE, LENGTHS, train_steps=end_step, batch_size=BATCH,
                           log_period=50, checkpoint_period=end_step,
                           optimizer=optim.adafactor(learning_rate=optim.constant_schedule(1e-2)))
    host = result['host_time']
    return {**host, 'loop': host['loop_seconds'] / host['steps'], 'loop_cpu': host['loop_cpu_seconds'] / host['steps'],
            'result': result}


def main() -> None:
    args = parse_args(steps=300, rounds=4)
    configure(args.threads)
    from text2text import config, models, trainer
    _register(200)
    model = models.EncoderDecoderModel(config.get_config(
        'tiny', vocab_size=2176, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=512, num_encoder_layers=3,
        num_decoder_layers=3))
    segments, alone = [], []
    with tempfile.TemporaryDirectory() as model_dir:
        for index in range(args.rounds):
            segment = loop_segment(model_dir, model, (index + 1) * args.steps)
            alone.append(step_alone(segment.pop('result'), segment['steps']))
            reference = [alone[-1]] if index == 0 else alone[-2:]
            wall, cpu = (statistics.mean(pair[k] for pair in reference) for k in (0, 1))
            segment.update(wall=(segment['loop'] - wall) / segment['loop'],
                           cpu=(segment['loop_cpu'] - cpu) / segment['loop_cpu'])
            segments.append(segment)
            per_step = {name: f'{1e3 * seconds / segment["steps"]:.2f}' for name, seconds in segment['seconds'].items()}
            print(f"# segment {index + 1}: {load_note()}, threads {args.threads}; {segment['steps']} loop steps timed "
                  '(all but the first, which compiles or restores)')
            print(f'#   ms per step by phase: {per_step}; phases {", ".join(trainer.HOST_OVERHEAD_PHASES)}: '
                  f'{100 * segment["overhead_fraction"]:.1f}% of the loop (an upper bound)')
            threads = {name: f'{1e3 * seconds / segment["steps"]:.1f}' for name, seconds
                       in sorted(segment['thread_cpu_seconds'].items(), key=lambda item: -item[1]) if seconds > 0}
            print(f'#   CPU ms per step by OS thread name: {threads} (tf_XLAEigen: the step; prefetch: the input '
                  'pipeline, read in the prefetch thread and tf.data threads it started)')
            print(f'#   loop {1e3 * segment["loop"]:.1f} ms per step (CPU {1e3 * segment["loop_cpu"]:.1f}), step alone '
                  f'{" and ".join(f"{1e3 * w:.1f}" for w, _ in reference)} ms (CPU '
                  f'{" and ".join(f"{1e3 * c:.1f}" for _, c in reference)}): host overhead {100 * segment["wall"]:.1f}% '
                  f'(wall), {100 * segment["cpu"]:.1f}% (CPU)', flush=True)
    wall, cpu = (statistics.median(r[key] for r in segments) for key in ('wall', 'cpu'))
    print(f'train_loop: host overhead {100 * wall:.1f}% of the loop (wall), {100 * cpu:.1f}% (CPU seconds of all '
          f'threads), medians of {args.rounds} segments')


if __name__ == '__main__':
    main()
