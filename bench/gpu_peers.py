"""text2text against HF on one CUDA GPU: train step, greedy decode and packing, same shapes, tokens and weights.

Ours: JAX on the GPU with bf16 activations (fp32 parameters and Adafactor, as T5X trains T5.1.1). HF:
transformers' T5ForConditionalGeneration on torch CUDA under torch.autocast('cuda', bfloat16) (fp32 weights,
transformers' Adafactor set like T5X's, common.HfTrainer); for decoding both sides' weights are cast to bf16
and HF's `generate(use_cache=True)` runs greedy. Each framework runs in its own worker process (JAX sees no GPU in
HF's). Prints s/step, tokens/s, TFLOP/s and MFU against the GPU's bf16 dense peak (gpu_mfu.PEAK_TFLOPS), and
the ratios ours/HF (time) or ours/HF (tokens/s).

- step: a batch of `--batch` random full-length examples, inputs `--inputs`, targets `--targets`.
- decode: `--decode_batch` rows of `--decode_inputs` random tokens, `--new_tokens` greedy tokens (random weights
  practically never emit EOS, so every row runs all steps; checked).
- packing: training passes over the streams that `bench/packing.py --save_batches FILE --batch B` wrote on a
  machine with seqio and TensorFlow (the GPU image has neither): ours on the packed batches, HF on the padded
  ones (inputs 128, targets 16); non-padding tokens/s. Skipped without `--packing_batches`.

    python bench/packing.py --save_batches packing.npz --batch 64 --examples 400     # with the test extras
    python bench/gpu_peers.py [--preset t5_1_1_base] [--packing_batches packing.npz]
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from common import PEER_ENVIRONMENT, HfTrainer, OurTrainer, Worker, interleaved
from decode import build_hf as build_hf_decode
from decode import build_ours as build_ours_decode
from gpu_mfu import peak_tflops, train_flops_per_step
from packing import load_batches, real_tokens
from train_step import random_batch



def _environments(device: str) -> tuple[dict[str, str], dict[str, str]]:
    """Worker environments (ours, HF) for torch device type `device`: on 'cuda' ours runs JAX on the GPU and leaves
    memory for the peer's process, HF runs torch on the GPU and JAX (the weight export) on the CPU."""
    if device == 'cpu':
        return {}, dict(PEER_ENVIRONMENT)
    visible = os.environ.get('CUDA_VISIBLE_DEVICES', '0')
    return ({'JAX_PLATFORMS': 'cuda', 'CUDA_VISIBLE_DEVICES': visible, 'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.45'},
            {'JAX_PLATFORMS': 'cpu', 'CUDA_VISIBLE_DEVICES': visible, **PEER_ENVIRONMENT})


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--preset', default='t5_1_1_base')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--inputs', type=int, default=512)
    parser.add_argument('--targets', type=int, default=114)
    parser.add_argument('--decode_batch', type=int, default=64)
    parser.add_argument('--decode_inputs', type=int, default=128)
    parser.add_argument('--new_tokens', type=int, default=64)
    parser.add_argument('--packing_batches', default='', help='.npz from bench/packing.py --save_batches')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--steps', type=int, default=5, help='timed calls per round')
    parser.add_argument('--sections', default='step,decode,packing')
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda', help='cpu: a smoke run of the script')
    return parser.parse_args(argv)


def _config(preset: str, dtype: str = 'bfloat16'):
    from text2text.config import get_config
    return get_config(preset, dtype=dtype, dropout_rate=0.0)


def _device_name(framework: str, device: str) -> str:
    if framework == 'ours':
        import jax
        return jax.devices()[0].device_kind
    import torch
    return torch.cuda.get_device_name() if device == 'cuda' else 'cpu'


def build_step(framework: str, device: str, preset: str, batch: int, inputs: int, targets: int) -> dict:
    """Runner 'step' (one train step, waited for) of `framework` ('ours' or 'hf'), compiled and warmed up."""
    config = _config(preset)
    features = random_batch(config.vocab_size, 0, batch, inputs, targets)
    trainer = OurTrainer(config, features) if framework == 'ours' else HfTrainer(config, True, device)
    prepared = trainer.prepare(features)
    for _ in range(3):
        trainer.step(prepared)
    return {'step': lambda: trainer.step(prepared), 'device': lambda: _device_name(framework, device)}


def build_decode(framework: str, device: str, checkpoint_dir: str, preset: str, batch: int, inputs: int,
                 new_tokens: int) -> dict:
    """Runner 'generate' of `framework`; ours writes its random init to `checkpoint_dir` first, HF loads it."""
    if framework == 'ours':
        return build_ours_decode(checkpoint_dir, _config(preset), batch, inputs, new_tokens)
    return build_hf_decode(checkpoint_dir, batch, inputs, new_tokens, device=device, dtype='bfloat16')


def build_packing(framework: str, device: str, preset: str, path: str) -> dict:
    """Runner 'pass': one training pass over the packed (ours) or padded (HF) stream of `path`; 'count': its
    batches and non-padding tokens."""
    config = _config(preset)
    batches = load_batches(path)['packed' if framework == 'ours' else 'padded']
    trainer = OurTrainer(config, batches[0]) if framework == 'ours' else HfTrainer(config, True, device)
    prepared = [trainer.prepare(batch) for batch in batches]
    trainer.step(prepared[0])
    trainer.step(prepared[0])
    return {'pass': lambda: [trainer.step(batch) for batch in prepared],
            'count': lambda: (len(batches), real_tokens(batches))}


def _mfu(flops: float, seconds: float, device: str) -> str:
    peak = peak_tflops(device)
    rate = flops / seconds / 1e12
    return f'{rate:.1f} TFLOP/s' + (f' = {rate / peak:.1%} MFU' if peak else '')


def _compare(ours_worker: Worker, hf_worker: Worker, name: str, rounds: int, calls: int) -> dict[str, float]:
    """Median seconds of runner `name` on each side over interleaved rounds; closes both workers."""
    times = interleaved({'ours': (ours_worker, name), 'HF': (hf_worker, name)}, rounds, calls)
    ours_worker.close()
    hf_worker.close()
    return times


def main(argv=None) -> None:
    """Run the requested sections, printing one result line each."""
    args = _parse(argv)
    sections = args.sections.split(',')
    threads = len(os.sched_getaffinity(0))
    ours_environment, hf_environment = _environments(args.device)
    if 'step' in sections:
        shape = (args.preset, args.batch, args.inputs, args.targets)
        ours = Worker(threads, build_step, 'ours', args.device, *shape, environment=ours_environment)
        hf = Worker(threads, build_step, 'hf', args.device, *shape, environment=hf_environment)
        device, hf_device = ours.call('device'), hf.call('device')
        print(f'# {device} (JAX), {hf_device} (torch); {args.preset}, bf16; {args.rounds} rounds x {args.steps}',
              flush=True)
        times = _compare(ours, hf, 'step', args.rounds, args.steps)
        flops = train_flops_per_step(_config(args.preset), args.batch, args.inputs, args.targets)
        tokens = args.batch * (args.inputs + args.targets)
        print(f'# ours: {_mfu(flops, times["ours"], device)}, {tokens / times["ours"]:,.0f} tokens/s; '
              f'HF: {_mfu(flops, times["HF"], device)}, {tokens / times["HF"]:,.0f} tokens/s')
        print(f'gpu train step (batch {args.batch}, {args.inputs}/{args.targets}): ours {times["ours"]:.4f} s, '
              f'HF {times["HF"]:.4f} s, ratio {times["ours"] / times["HF"]:.2f}', flush=True)
    if 'decode' in sections:
        shape = (args.preset, args.decode_batch, args.decode_inputs, args.new_tokens)
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            ours = Worker(threads, build_decode, 'ours', args.device, checkpoint_dir, *shape,
                          environment=ours_environment)
            hf = Worker(threads, build_decode, 'hf', args.device, checkpoint_dir, *shape, environment=hf_environment)
        ours_tokens, hf_tokens = ours.call('generate'), hf.call('generate')
        assert ours_tokens.shape == hf_tokens.shape, (ours_tokens.shape, hf_tokens.shape)
        assert (ours_tokens > 1).all() and (hf_tokens > 1).all(), 'a row emitted EOS early; timings would differ'
        times = _compare(ours, hf, 'generate', args.rounds, args.steps)
        tokens = args.decode_batch * args.new_tokens
        print(f'# greedy tokens equal to HF (both bf16): {np.mean(ours_tokens == hf_tokens):.3f}')
        print(f'gpu decode (batch {args.decode_batch}, {args.decode_inputs} in, {args.new_tokens} new): ours '
              f'{tokens / times["ours"]:,.0f} tokens/s, HF {tokens / times["HF"]:,.0f} tokens/s, ratio '
              f'{times["HF"] / times["ours"]:.2f}', flush=True)
    if 'packing' in sections and args.packing_batches:
        source = (args.device, args.preset, args.packing_batches)
        ours = Worker(threads, build_packing, 'ours', *source, environment=ours_environment)
        hf = Worker(threads, build_packing, 'hf', *source, environment=hf_environment)
        (packed, tokens), (padded, hf_tokens) = ours.call('count'), hf.call('count')
        assert tokens == hf_tokens, 'the streams hold different examples'
        times = _compare(ours, hf, 'pass', args.rounds, 1)
        print(f'# {tokens} real tokens in {packed} packed / {padded} padded batches')
        print(f'gpu packing: ours {tokens / times["ours"]:,.0f} tokens/s, HF {tokens / times["HF"]:,.0f} tokens/s, '
              f'ratio {times["HF"] / times["ours"]:.2f}', flush=True)


if __name__ == '__main__':
    main()
