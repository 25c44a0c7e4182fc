"""Greedy decoding speed: our jitted EncoderDecoderModel.predict_batch (KV cache) vs HF generate (use_cache=True).

Same weights (our random init exported with text2text.convert.hf.save_hf_checkpoint, loaded with
from_pretrained), batch 8, 64 random input tokens, 32 new tokens, each framework in its own worker process.
With random weights EOS (id 1) is practically never the argmax, so every row runs all 32 steps; the script
checks that and reports how many tokens the two agree on, the fp32 GEMM peak and the % of it reached (FLOPs
of one teacher-forced forward pass over the same tokens / time). Run:
`.venv/bin/python bench/decode.py [--threads N] [--rounds R] [--steps S]`.
"""
import functools
import tempfile

import numpy as np

from common import (PEER_ENVIRONMENT, Worker, bench_config, build_gemm, interleaved, load_note, parse_args, peak_note,
                    round_ratios)
from gpu_mfu import train_flops_per_step

BATCH, INPUTS, NEW_TOKENS = 8, 64, 32


def _inputs(vocab_size: int, batch: int = BATCH, inputs: int = INPUTS) -> np.ndarray:
    return np.random.default_rng(0).integers(2, vocab_size, (batch, inputs), dtype=np.int32)


def build_ours(checkpoint_dir: str, config=None, batch: int = BATCH, inputs: int = INPUTS,
               new_tokens: int = NEW_TOKENS) -> dict:
    """Our greedy decoder (jitted predict_batch) on a random init of `config` (default common.bench_config), which
    it also exports to `checkpoint_dir`; on JAX's default device. With bf16 activations the parameters are cast
    to bf16 after the export, as an HF model cast with .to(bfloat16) holds them."""
    import flax
    import jax
    from text2text import models
    from text2text.convert.hf import save_hf_checkpoint
    config = config or bench_config()
    model = models.EncoderDecoderModel(config)
    shapes = {'inputs': (batch, inputs), 'targets': (batch, new_tokens)}
    params = flax.core.meta.unbox(model.init_variables(jax.random.PRNGKey(0), shapes))['params']
    save_hf_checkpoint(config, params, checkpoint_dir)
    if config.dtype == 'bfloat16':
        params = jax.tree.map(lambda x: x.astype(config.dtype), params)
    predict = jax.jit(functools.partial(model.predict_batch, method='greedy', max_decode_length=new_tokens))
    encoder_batch = jax.device_put({'encoder_input_tokens': _inputs(config.vocab_size, batch, inputs)})

    def generate():
        return np.asarray(jax.block_until_ready(predict(params, encoder_batch)))

    generate()
    return {'generate': generate, **build_gemm()}


def build_hf(checkpoint_dir: str, batch: int = BATCH, inputs: int = INPUTS, new_tokens: int = NEW_TOKENS,
             device: str = 'cpu', dtype: str = 'float32') -> dict:
    """HF greedy generate with the KV cache on the weights in `checkpoint_dir`, on torch `device`, weights cast to
    `dtype`."""
    import torch
    import transformers
    model = transformers.T5ForConditionalGeneration.from_pretrained(checkpoint_dir).eval()
    model = model.to(device=device, dtype=getattr(torch, dtype))
    input_ids = torch.from_numpy(_inputs(model.config.vocab_size, batch, inputs)).long().to(device)
    attention_mask = torch.ones_like(input_ids)

    @torch.inference_mode()
    def generate():
        tokens = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                                do_sample=False, num_beams=1, use_cache=True)
        return tokens[:, 1:].cpu().numpy()  # drop the decoder start token; the copy waits for the device

    generate()
    return {'generate': generate}


def main() -> None:
    args = parse_args(rounds=3, steps=3)
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        ours = Worker(args.threads, build_ours, checkpoint_dir)
        hf = Worker(args.threads, build_hf, checkpoint_dir, environment=PEER_ENVIRONMENT)
    ours_tokens, hf_tokens = ours.call('generate'), hf.call('generate')
    assert ours_tokens.shape == hf_tokens.shape == (BATCH, NEW_TOKENS), (ours_tokens.shape, hf_tokens.shape)
    assert (ours_tokens > 1).all() and (hf_tokens > 1).all(), 'a row emitted EOS early; timings would differ'
    print(f'# {load_note()}, threads {args.threads}; greedy tokens equal to HF: {np.mean(ours_tokens == hf_tokens):.3f};'
          f' {args.rounds} rounds x {args.steps} calls', flush=True)
    per_round = {}
    times = interleaved({'ours': (ours, 'generate'), 'HF': (hf, 'generate'), 'gemm': (ours, 'gemm')}, args.rounds,
                        args.steps, per_round)
    ours.close()
    hf.close()
    tokens = BATCH * NEW_TOKENS
    flops = train_flops_per_step(bench_config(), BATCH, INPUTS, NEW_TOKENS) / 3  # one forward pass of these tokens
    print(f'# {load_note()}')
    print(f'# ours: {peak_note(times["gemm"], flops, times["ours"])}')
    print(f'# HF: {peak_note(times["gemm"], flops, times["HF"])}')
    print(round_ratios(per_round, 'HF', 'ours'))
    print(f'decode: ours {tokens / times["ours"]:.0f} tokens/s, HF {tokens / times["HF"]:.0f} tokens/s, '
          f'ratio {times["HF"] / times["ours"]:.2f}')


if __name__ == '__main__':
    main()
