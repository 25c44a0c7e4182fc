"""Train-step speed: our jitted Adafactor step vs transformers' T5ForConditionalGeneration (torch eager, CPU).

Same shape (common.bench_config), batch 8, inputs 128, targets 32, fp32, the same random tokens; steady state
(compile and warm-up excluded), interleaved rounds, medians. Run from the repo root:
`.venv/bin/python bench/train_step.py [--threads N] [--rounds R] [--steps S] [--parts]`.
"""
from common import HfTrainer, OurTrainer, bench_config, interleaved, load_note, setup_threads

ARGS = setup_threads()
BATCH, INPUTS, TARGETS = 8, 128, 32

import numpy as np  # noqa: E402


def random_batch(vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-length random batch (targets end with EOS=1) in EncDecFeatureConverter's features."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, vocab_size, (BATCH, INPUTS), dtype=np.int32)
    targets = rng.integers(2, vocab_size, (BATCH, TARGETS), dtype=np.int32)
    targets[:, -1] = 1
    decoder_inputs = np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)
    return {'encoder_input_tokens': inputs, 'decoder_input_tokens': decoder_inputs,
            'decoder_target_tokens': targets, 'decoder_loss_weights': np.ones_like(targets)}


def main() -> None:
    config = bench_config()
    batch = random_batch(config.vocab_size)
    ours, hf = OurTrainer(config, batch), HfTrainer(config)
    our_batch, hf_batch = ours.prepare(batch), hf.prepare(batch)
    runners = {'ours': lambda: ours.step(our_batch), 'HF': lambda: hf.step(hf_batch)}
    if ARGS.parts:
        runners.update({'ours fwd': lambda: ours.forward(our_batch), 'HF fwd': lambda: hf.forward(hf_batch),
                        'ours fwd+bwd': lambda: ours.forward_backward(our_batch),
                        'HF fwd+bwd': lambda: hf.forward_backward(hf_batch)})
    for run in runners.values():  # compile and warm up
        run()
        run()
    print(f'# {load_note()}; {ARGS.rounds} interleaved rounds x {ARGS.steps} steps; median s/step', flush=True)
    times = interleaved(runners, ARGS.rounds, ARGS.steps)
    if ARGS.parts:
        for part in ('fwd', 'fwd+bwd'):
            ours_s, hf_s = times[f'ours {part}'], times[f'HF {part}']
            print(f'{part}: ours {ours_s:.4f} s, HF {hf_s:.4f} s, ratio {ours_s / hf_s:.2f}')
    print(f'# {load_note()}')
    print(f'train_step: ours {times["ours"]:.4f} s/step, HF {times["HF"]:.4f} s/step, '
          f'ratio {times["ours"] / times["HF"]:.2f}')


if __name__ == '__main__':
    main()
