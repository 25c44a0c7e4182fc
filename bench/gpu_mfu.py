"""Pre-training throughput and MFU: T5.1.1-base train steps on span-corruption-shaped batches (inputs 512,
targets 114), bf16 activations, data parallel over all local accelerators.

    pip install -e .[gpu]
    python bench/gpu_mfu.py                      # batch 64 per device
    python bench/gpu_mfu.py --find_batch         # doubles the batch until it no longer fits, keeps the largest
    python bench/gpu_mfu.py --smoke              # tiny model, 2 steps: exercises the script on CPU

MFU = model FLOPs per step (matmuls and attention, backward = 2x forward, no remat recompute) / step time /
(devices x bf16 dense peak of the device, from PEAK_TFLOPS or --peak_tflops). Batches are random tokens of the
exact span-corruption shapes with no padding, so every position counts (as packed pre-training batches do).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# bf16 dense tensor-core peak in TFLOP/s per device, matched in order against jax's device_kind (first hit wins).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ('H100 PCIe', 756.0),
    ('H100 NVL', 835.0),
    ('H100', 989.4),  # SXM (device_kind 'NVIDIA H100 80GB HBM3')
    ('H200', 989.4),
    ('GH200', 989.4),
    ('B200', 2250.0),
    ('A100', 312.0),
    ('L40S', 362.0),
    ('L4', 121.0),
    ('A10', 125.0),
)


def peak_tflops(device_kind: str) -> float | None:
    """bf16 dense peak of a device kind from PEAK_TFLOPS, or None if unknown."""
    kind = device_kind.lower()
    return next((tflops for name, tflops in PEAK_TFLOPS if name.lower() in kind), None)


def train_flops_per_step(config, batch: int, inputs: int, targets: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward), counting 2 FLOPs per multiply-add."""
    e, joined, m, vocab = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim, config.vocab_size
    mlp = (len(config.mlp_activations) + 1) * e * m  # wi (or wi_0, wi_1) and wo
    encoder = inputs * (4 * e * joined + mlp + 2 * inputs * joined) * config.num_encoder_layers
    decoder_tokens = targets * (6 * e * joined + mlp + 2 * targets * joined + 2 * inputs * joined)
    decoder = (decoder_tokens + inputs * 2 * e * joined) * config.num_decoder_layers  # + cross-attention K/V
    logits = targets * e * vocab
    return 3 * 2 * batch * (encoder + decoder + logits)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--preset', default='t5_1_1_base')
    parser.add_argument('--batch', type=int, default=None, help='global batch (default 64 per device)')
    parser.add_argument('--find_batch', action='store_true', help='double the batch until it does not fit')
    parser.add_argument('--inputs', type=int, default=512)
    parser.add_argument('--targets', type=int, default=114)
    parser.add_argument('--dtype', default='bfloat16', help='activation dtype (params stay fp32)')
    parser.add_argument('--remat_policy', default='none')
    parser.add_argument('--scan_layers', action='store_true')
    parser.add_argument('--attention_kernel', default='einsum', help="einsum, xla or cudnn (T5Config)")
    parser.add_argument('--steps', type=int, default=20, help='timed steps')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps (the first one compiles)')
    parser.add_argument('--peak_tflops', type=float, default=None, help='override the per-device peak')
    parser.add_argument('--smoke', action='store_true', help='tiny model, batch 4, 64/16 tokens, 2 steps')
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.inputs, args.targets, args.steps, args.warmup = 'tiny', 64, 16, 2, 1
        args.batch = args.batch or 4
    return args


class _Bench:
    """Sharded train state, step function and one synthetic batch for a config and global batch size."""

    def __init__(self, config, batch: int, inputs: int, targets: int):
        import jax
        import numpy as np

        from text2text import optim, partitioning
        from text2text.models import EncoderDecoderModel
        from text2text.train_state import TrainState, make_train_step

        self.mesh = partitioning.create_mesh(-1, 1)
        self.rules = partitioning.logical_axis_rules('dp')
        model = EncoderDecoderModel(config)
        tx = optim.adafactor(learning_rate=optim.constant_schedule(1e-3))
        shapes = {'inputs': (1, inputs), 'targets': (1, targets)}
        params, _ = partitioning.init_sharded(lambda rng: model.init_variables(rng, shapes)['params'], self.mesh,
                                              self.rules, jax.random.key(0))
        with partitioning.mesh_context(self.mesh, self.rules):
            self.state = jax.jit(lambda p: TrainState.create(p, tx))(params)
            shardings = jax.tree.map(lambda x: x.sharding, self.state)
            self.step_fn = jax.jit(make_train_step(model.loss_fn, tx),
                                   in_shardings=(shardings, partitioning.batch_sharding(self.mesh), None),
                                   out_shardings=(shardings, None), donate_argnums=0)
        rng = np.random.default_rng(0)
        low, high = 3, config.vocab_size - 100  # avoid pad/EOS/UNK and the sentinel range
        encoder = rng.integers(low, high, (batch, inputs), dtype=np.int32)
        target = rng.integers(low, high, (batch, targets), dtype=np.int32)
        encoder[:, -1] = target[:, -1] = 1  # EOS
        numpy_batch = {'encoder_input_tokens': encoder, 'decoder_target_tokens': target,
                       'decoder_input_tokens': np.concatenate([np.zeros((batch, 1), np.int32), target[:, :-1]], 1),
                       'decoder_loss_weights': np.ones((batch, targets), np.float32)}
        self.batch = partitioning.shard_batch(numpy_batch, self.mesh)
        self.rng = jax.random.key(1)

    def run(self, steps: int) -> float:
        """Seconds for `steps` train steps (waits for the last one)."""
        import jax

        from text2text import partitioning
        start = time.perf_counter()
        with partitioning.mesh_context(self.mesh, self.rules):
            for _ in range(steps):
                self.state, _ = self.step_fn(self.state, self.batch, self.rng)
        jax.block_until_ready(self.state)
        return time.perf_counter() - start


def _out_of_memory(exc: Exception) -> bool:
    text = str(exc)
    return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


def _find_batch(config, start: int, args) -> tuple[int, _Bench]:
    """Largest power-of-two multiple of `start` whose train step compiles and runs."""
    import jax
    best = None
    batch = start
    while True:
        try:
            bench = _Bench(config, batch, args.inputs, args.targets)
            bench.run(1)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory ends the search; anything else is raised
            if not _out_of_memory(exc) or best is None:
                raise
            print(f'batch {batch}: out of memory', flush=True)
            jax.clear_caches()
            return best
        print(f'batch {batch}: fits', flush=True)
        best = (batch, bench)
        batch *= 2


def main(argv=None) -> None:
    """Build the benchmark, time the steps and print tokens/s and MFU."""
    args = _parse(argv)
    if args.smoke:
        os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    import jax

    from text2text.config import get_config

    config = get_config(args.preset, dtype=args.dtype, dropout_rate=0.0, remat_policy=args.remat_policy,
                        scan_layers=args.scan_layers, attention_kernel=args.attention_kernel)
    devices = jax.devices()
    kind = devices[0].device_kind
    batch = args.batch or 64 * len(devices)
    if args.find_batch:
        batch, bench = _find_batch(config, batch, args)
    else:
        bench = _Bench(config, batch, args.inputs, args.targets)
    compile_s = bench.run(1)
    bench.run(max(args.warmup - 1, 0))
    seconds = bench.run(args.steps) / args.steps
    tokens = batch * (args.inputs + args.targets) / seconds
    flops = train_flops_per_step(config, batch, args.inputs, args.targets)
    peak = args.peak_tflops or peak_tflops(kind)
    print(f'{len(devices)} x {kind} ({jax.default_backend()}), {args.preset}, {args.dtype} activations, '
          f'remat {args.remat_policy}, scan {args.scan_layers}, attention {args.attention_kernel}, batch {batch}, '
          f'lengths {args.inputs}/{args.targets}')
    print(f'first step (compile) {compile_s:.1f} s, step {seconds * 1e3:.1f} ms, {tokens:,.0f} tokens/s, '
          f'{flops / seconds / 1e12 / len(devices):.2f} TFLOP/s per device')
    if peak:
        print(f'MFU {flops / seconds / (len(devices) * peak * 1e12):.1%} of {peak:g} TFLOP/s bf16 peak per device')
    else:
        print(f'MFU n/a: no bf16 peak known for {kind!r}; pass --peak_tflops')


if __name__ == '__main__':
    main()
