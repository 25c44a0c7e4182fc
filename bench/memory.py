"""Memory of one jitted train step with and without rematerialisation and scanned layers.

XLA's compiled memory analysis of the real train step (model loss, gradients, Adafactor update) at a fixed
config, batch and lengths, compiled from shapes only (nothing is allocated): `temp` is the scratch memory
the step needs beyond its inputs/outputs, mostly activations kept for the backward pass.

    python bench/memory.py [--preset t5_1_1_small] [--batch 8] [--inputs 512] [--targets 114]
                           [--policies none,full,dots_saveable,minimal] [--scan false,true] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--preset', default='t5_1_1_small')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--inputs', type=int, default=512)
    parser.add_argument('--targets', type=int, default=114)
    parser.add_argument('--dtype', default='float32', help='activation dtype, e.g. bfloat16')
    parser.add_argument('--policies', default='none,full,dots_saveable,minimal')
    parser.add_argument('--scan', default='false,true', help='comma-separated scan_layers values to measure')
    parser.add_argument('--device', default='cpu', help='JAX platform (cpu, gpu, tpu)')
    parser.add_argument('--json', default=None, help='also write the rows to this JSON file')
    return parser.parse_args(argv)


def measure(preset: str, batch: int, inputs: int, targets: int, dtype: str, remat_policy: str, scan_layers: bool):
    """Compile the train step for these settings from shapes; returns its memory analysis and compile time."""
    import jax
    import jax.numpy as jnp
    from flax.core import meta

    from text2text import optim
    from text2text.config import get_config
    from text2text.models import EncoderDecoderModel
    from text2text.train_state import TrainState, make_train_step

    config = get_config(preset, dtype=dtype, remat_policy=remat_policy, scan_layers=scan_layers, dropout_rate=0.0)
    model = EncoderDecoderModel(config)
    tx = optim.adafactor(learning_rate=optim.constant_schedule(1e-3))
    shapes = {'inputs': (batch, inputs), 'targets': (batch, targets)}
    state = jax.eval_shape(lambda rng: TrainState.create(meta.unbox(model.init_variables(rng, shapes)['params']), tx),
                           jax.random.key(0))
    tokens = {'encoder_input_tokens': (batch, inputs), 'decoder_input_tokens': (batch, targets),
              'decoder_target_tokens': (batch, targets)}
    batch_shapes = {k: jax.ShapeDtypeStruct(v, jnp.int32) for k, v in tokens.items()}
    batch_shapes['decoder_loss_weights'] = jax.ShapeDtypeStruct((batch, targets), jnp.float32)
    start = time.perf_counter()
    compiled = jax.jit(make_train_step(model.loss_fn, tx)).lower(state, batch_shapes, jax.random.key(1)).compile()
    seconds = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    return {'preset': preset, 'scan_layers': scan_layers, 'remat_policy': remat_policy, 'batch': batch,
            'lengths': f'{inputs}/{targets}', 'dtype': dtype, 'compile_s': round(seconds, 1),
            'temp_mib': analysis.temp_size_in_bytes / 2 ** 20,
            'arguments_mib': analysis.argument_size_in_bytes / 2 ** 20,
            'outputs_mib': analysis.output_size_in_bytes / 2 ** 20}


def main(argv=None) -> None:
    """Measure every (scan, remat policy) combination asked for and print one table row each."""
    args = _parse(argv)
    os.environ.setdefault('JAX_PLATFORMS', args.device)
    import jax
    print(f'device: {jax.devices()[0].device_kind} ({jax.default_backend()}), preset {args.preset}, '
          f'batch {args.batch}, lengths {args.inputs}/{args.targets}, activations {args.dtype}')
    print(f'{"scan":>5} {"remat":>13} {"temp MiB":>10} {"args MiB":>10} {"out MiB":>10} {"compile s":>10}')
    rows = []
    for scan in [s.strip().lower() == 'true' for s in args.scan.split(',')]:
        for policy in [p.strip() for p in args.policies.split(',')]:
            row = measure(args.preset, args.batch, args.inputs, args.targets, args.dtype, policy, scan)
            rows.append(row)
            print(f'{str(scan):>5} {policy:>13} {row["temp_mib"]:>10.1f} {row["arguments_mib"]:>10.1f} '
                  f'{row["outputs_mib"]:>10.1f} {row["compile_s"]:>10.1f}', flush=True)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()
