"""Train-step speed: our jitted Adafactor step vs transformers' T5ForConditionalGeneration (torch eager, CPU).

Same shape (common.bench_config), batch 8, inputs 128, targets 32, the same random tokens; each framework in its
own worker process with the same CPUs/threads; steady state (compile and warm-up excluded), interleaved rounds,
medians; HF runs with glibc's malloc defaults, as its users get them, and also a second time with text2text's
settings (text2text.host_memory); prints the fp32 GEMM peak measured in the same rounds and the % of it each
framework's step reaches (model FLOPs of gpu_mfu.train_flops_per_step / step time).

`--dtype bfloat16` trains ours with bf16 activations (fp32 parameters and optimizer, T5X's T5.1.1 default) and
adds HF under torch.autocast(bfloat16) as a second peer, and the bf16 GEMM peak (bf16 operands, fp32
accumulation). Run from the repo root:
`.venv/bin/python bench/train_step.py [--threads N] [--rounds R] [--steps S] [--parts] [--dtype bfloat16]`.
"""
import numpy as np

from common import (PEER_ENVIRONMENT, HfTrainer, OurTrainer, Worker, bench_config, build_gemm, interleaved, load_note,
                    parse_args, peak_note, round_ratios)
from gpu_mfu import train_flops_per_step

BATCH, INPUTS, TARGETS = 8, 128, 32


def random_batch(vocab_size: int, seed: int = 0, batch: int = BATCH, length: int = INPUTS,
                 target_length: int = TARGETS) -> dict[str, np.ndarray]:
    """Full-length random batch (targets end with EOS=1) in EncDecFeatureConverter's features."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, vocab_size, (batch, length), dtype=np.int32)
    targets = rng.integers(2, vocab_size, (batch, target_length), dtype=np.int32)
    targets[:, -1] = 1
    decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return {'encoder_input_tokens': inputs, 'decoder_input_tokens': decoder_inputs,
            'decoder_target_tokens': targets, 'decoder_loss_weights': np.ones_like(targets)}


def build(framework: str, dtype: str = 'float32') -> dict:
    """Runners 'step', 'fwd', 'fwd+bwd' of one framework ('ours', 'hf' or 'hf-autocast') on the benchmark batch,
    compiled and warmed up; ours with `dtype` activations and the GEMM peak runners."""
    config = bench_config(dtype=dtype)
    batch = random_batch(config.vocab_size)
    trainer = OurTrainer(config, batch) if framework == 'ours' else HfTrainer(config, framework == 'hf-autocast')
    prepared = trainer.prepare(batch)
    runners = {'step': lambda: trainer.step(prepared), 'fwd': lambda: trainer.forward(prepared),
               'fwd+bwd': lambda: trainer.forward_backward(prepared)}
    for run in runners.values():
        run()
        run()
    if framework != 'ours':
        return runners
    return {**runners, **build_gemm(), **(build_gemm(dtype=dtype) if dtype != 'float32' else {})}


def main() -> None:
    args = parse_args(dtype=True)
    bf16 = args.dtype == 'bfloat16'
    workers = {'ours': Worker(args.threads, build, 'ours', args.dtype),
               'HF': Worker(args.threads, build, 'hf', environment=PEER_ENVIRONMENT),
               'HF, our malloc settings': Worker(args.threads, build, 'hf')}
    if bf16:
        workers['HF bf16 autocast'] = Worker(args.threads, build, 'hf-autocast', environment=PEER_ENVIRONMENT)
    parts = ('step', 'fwd', 'fwd+bwd') if args.parts else ('step',)
    runners = {(side, part): (worker, part) for part in parts for side, worker in workers.items()
               if part == 'step' or side != 'HF, our malloc settings'}
    runners['gemm'] = (workers['ours'], 'gemm')
    if bf16:
        runners['gemm_bfloat16'] = (workers['ours'], 'gemm_bfloat16')
    print(f'# {load_note()}, threads {args.threads} (XLA and torch); ours in {args.dtype}; {args.rounds} '
          f'interleaved rounds x {args.steps} steps; median s/step', flush=True)
    per_round = {}
    times = interleaved(runners, args.rounds, args.steps, per_round)
    for worker in workers.values():
        worker.close()
    for part in parts[1:]:
        ours, hf = times['ours', part], times['HF', part]
        print(f'{part}: ours {ours:.4f} s, HF {hf:.4f} s, ratio {ours / hf:.2f}')
    print(f'# {load_note()}')
    ours, hf = times['ours', 'step'], times['HF', 'step']
    flops = train_flops_per_step(bench_config(), BATCH, INPUTS, TARGETS)
    print(f'# ours: {peak_note(times["gemm"], flops, ours)}')
    if bf16:
        print(f'# ours: {peak_note(times["gemm_bfloat16"], flops, ours, precision="bf16")}')
    print(f'# HF: {peak_note(times["gemm"], flops, hf)}')
    tuned = times['HF, our malloc settings', 'step']
    print(f'# HF with text2text.host_memory\'s malloc settings: {tuned:.4f} s/step, ours / it {ours / tuned:.2f}')
    if bf16:
        autocast = times['HF bf16 autocast', 'step']
        print(f'# HF under torch.autocast(bfloat16): {autocast:.4f} s/step, ours / it {ours / autocast:.2f}')
    print(round_ratios(per_round, ('ours', 'step'), ('HF', 'step')))
    print(f'train_step: ours {ours:.4f} s/step, HF {hf:.4f} s/step, ratio {ours / hf:.2f}')


if __name__ == '__main__':
    main()
