"""Train-step speed: our jitted Adafactor step vs transformers' T5ForConditionalGeneration (torch eager, CPU).

Same shape (common.bench_config), batch 8, inputs 128, targets 32, fp32, the same random tokens; each framework
in its own worker process with the same CPUs/threads; steady state (compile and warm-up excluded), interleaved
rounds, medians; HF runs with glibc's malloc defaults, as its users get them, and also a second time with
text2text's settings (text2text.host_memory); prints the fp32 GEMM peak measured in the same rounds and the % of
it each framework's step reaches (model FLOPs of gpu_mfu.train_flops_per_step / step time). Run from the repo root:
`.venv/bin/python bench/train_step.py [--threads N] [--rounds R] [--steps S] [--parts]`.
"""
import numpy as np

from common import (PEER_ENVIRONMENT, HfTrainer, OurTrainer, Worker, bench_config, build_gemm, interleaved, load_note,
                    parse_args, peak_note)
from gpu_mfu import train_flops_per_step

BATCH, INPUTS, TARGETS = 8, 128, 32


def random_batch(vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-length random batch (targets end with EOS=1) in EncDecFeatureConverter's features."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, vocab_size, (BATCH, INPUTS), dtype=np.int32)
    targets = rng.integers(2, vocab_size, (BATCH, TARGETS), dtype=np.int32)
    targets[:, -1] = 1
    decoder_inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
    return {'encoder_input_tokens': inputs, 'decoder_input_tokens': decoder_inputs,
            'decoder_target_tokens': targets, 'decoder_loss_weights': np.ones_like(targets)}


def build(framework: str) -> dict:
    """Runners 'step', 'fwd', 'fwd+bwd' of one framework on the benchmark batch, compiled and warmed up."""
    config = bench_config()
    batch = random_batch(config.vocab_size)
    trainer = OurTrainer(config, batch) if framework == 'ours' else HfTrainer(config)
    prepared = trainer.prepare(batch)
    runners = {'step': lambda: trainer.step(prepared), 'fwd': lambda: trainer.forward(prepared),
               'fwd+bwd': lambda: trainer.forward_backward(prepared)}
    for run in runners.values():
        run()
        run()
    return {**runners, **build_gemm()} if framework == 'ours' else runners


def main() -> None:
    args = parse_args()
    workers = {'ours': Worker(args.threads, build, 'ours'),
               'HF': Worker(args.threads, build, 'hf', environment=PEER_ENVIRONMENT),
               'HF, our malloc settings': Worker(args.threads, build, 'hf')}
    parts = ('step', 'fwd', 'fwd+bwd') if args.parts else ('step',)
    runners = {(side, part): (worker, part) for part in parts for side, worker in workers.items()
               if part == 'step' or side != 'HF, our malloc settings'}
    runners['gemm'] = (workers['ours'], 'gemm')
    print(f'# {load_note()}, threads {args.threads} (XLA and torch); {args.rounds} interleaved rounds x '
          f'{args.steps} steps; median s/step', flush=True)
    times = interleaved(runners, args.rounds, args.steps)
    for worker in workers.values():
        worker.close()
    for part in parts[1:]:
        ours, hf = times['ours', part], times['HF', part]
        print(f'{part}: ours {ours:.4f} s, HF {hf:.4f} s, ratio {ours / hf:.2f}')
    print(f'# {load_note()}')
    ours, hf = times['ours', 'step'], times['HF', 'step']
    flops = train_flops_per_step(bench_config(), BATCH, INPUTS, TARGETS)
    print(f'# ours: {peak_note(times["gemm"], flops, ours)}')
    print(f'# HF: {peak_note(times["gemm"], flops, hf)}')
    tuned = times['HF, our malloc settings', 'step']
    print(f'# HF with text2text.host_memory\'s malloc settings: {tuned:.4f} s/step, ours / it {ours / tuned:.2f}')
    print(f'train_step: ours {ours:.4f} s/step, HF {hf:.4f} s/step, ratio {ours / hf:.2f}')


if __name__ == '__main__':
    main()
