"""Greedy decoding speed: our jitted EncoderDecoderModel.predict_batch (KV cache) vs HF generate (use_cache=True).

Same weights (ours exported with text2text.convert.hf.save_hf_checkpoint, loaded with from_pretrained), batch 8,
64 random input tokens, 32 new tokens. With random weights EOS (id 1) is practically never the argmax, so
every row runs the full 32 steps; the script checks that and that both produce the same tokens. Run:
`.venv/bin/python bench/decode.py [--threads N] [--rounds R] [--steps S]`.
"""
from common import bench_config, interleaved, load_note, setup_threads

ARGS = setup_threads(rounds=3, steps=3)
BATCH, INPUTS, NEW_TOKENS = 8, 64, 32

import functools  # noqa: E402
import tempfile  # noqa: E402

import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from text2text import models  # noqa: E402
from text2text.convert.hf import save_hf_checkpoint  # noqa: E402


def main() -> None:
    config = bench_config()
    rng = np.random.default_rng(0)
    inputs = rng.integers(2, config.vocab_size, (BATCH, INPUTS), dtype=np.int32)
    model = models.EncoderDecoderModel(config)
    params = flax.core.meta.unbox(model.init_variables(jax.random.PRNGKey(0), {'inputs': (BATCH, INPUTS),
                                                                              'targets': (BATCH, NEW_TOKENS)}))
    params = params['params']
    predict = jax.jit(functools.partial(model.predict_batch, method='greedy', max_decode_length=NEW_TOKENS))
    batch = jax.device_put({'encoder_input_tokens': inputs})
    with tempfile.TemporaryDirectory() as directory:
        save_hf_checkpoint(config, params, directory)
        hf = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
    input_ids = torch.from_numpy(inputs).long()
    attention_mask = torch.ones_like(input_ids)

    def ours():
        return jax.block_until_ready(predict(params, batch))

    @torch.inference_mode()
    def hf_generate():
        return hf.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                           do_sample=False, num_beams=1, use_cache=True)

    ours_tokens, hf_tokens = np.asarray(ours()), hf_generate()[:, 1:].numpy()
    assert ours_tokens.shape == hf_tokens.shape == (BATCH, NEW_TOKENS), (ours_tokens.shape, hf_tokens.shape)
    assert (ours_tokens > 1).all() and (hf_tokens > 1).all(), 'a row emitted EOS early; timings would differ'
    agreement = float(np.mean(ours_tokens == hf_tokens))
    print(f'# {load_note()}; token agreement ours vs HF {agreement:.3f}; {ARGS.rounds} rounds x {ARGS.steps} calls',
          flush=True)
    times = interleaved({'ours': ours, 'HF': hf_generate}, ARGS.rounds, ARGS.steps)
    tokens = BATCH * NEW_TOKENS
    print(f'# {load_note()}')
    print(f'decode: ours {tokens / times["ours"]:.0f} tokens/s, HF {tokens / times["HF"]:.0f} tokens/s, '
          f'ratio {times["HF"] / times["ours"]:.2f}')


if __name__ == '__main__':
    main()
