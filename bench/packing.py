"""Packing: non-padding tokens/s training on a GLUE-like mixture of short examples, ours packed vs HF padded.

Five in-memory seqio tasks (byte vocabulary, so 1 byte = 1 token) with GLUE-like input lengths and 3-byte labels
are mixed at equal rates. The same examples, in the same order, go through text2text.data.get_dataset with
EncDecFeatureConverter pack=True (ours) and pack=False (HF T5ForConditionalGeneration: each example padded to
inputs 128 / targets 16; our model is timed on these padded batches too, to separate the packing gain from the
step speed). Prints the fp32 GEMM peak and the % of it reached (model FLOPs of the batches' shapes / time).
Batch 8 rows, fp32, model common.bench_config, each framework in its own worker process. Run:
`.venv/bin/python bench/packing.py [--threads N] [--rounds R] [--examples E]` (E examples per task).
"""
import numpy as np

from common import (PEER_ENVIRONMENT, HfTrainer, OurTrainer, Worker, bench_config, build_gemm, interleaved, load_note,
                    parse_args, peak_note)
from gpu_mfu import train_flops_per_step

BATCH = 8
FEATURE_LENGTHS = {'inputs': 128, 'targets': 16}
# name: (min, max) input length in tokens including the task prefix and EOS; labels are 3 bytes (+ EOS)
TASKS = {
    'cola': ((8, 30), ('yes', 'not')),
    'sst2': ((10, 60), ('pos', 'neg')),
    'mnli': ((25, 110), ('ent', 'neu', 'con')),
    'qqp': ((15, 80), ('dup', 'not')),
    'stsb': ((15, 70), ('1.2', '3.4', '4.8')),
}
MIXTURE = 'bench_glue_like'


def _examples(name: str, count: int, seed: int) -> dict[str, list[str]]:
    """`count` examples 'name: w w w ...' of random lowercase words, input lengths uniform in the task's range."""
    (low, high), labels = TASKS[name]
    rng = np.random.default_rng(seed)
    inputs, targets = [], []
    for _ in range(count):
        length = int(rng.integers(low, high + 1)) - 1  # EOS is appended by the task
        text = f'{name}:'
        while len(text) < length:
            text += ' ' + ''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), int(rng.integers(2, 9))))
        inputs.append(text[:length])
        targets.append(str(rng.choice(labels)))
    return {'inputs': inputs, 'targets': targets}


def _register(count: int) -> None:
    """Registers the five tasks (train split, `count` examples each) and their equal-rate mixture."""
    import seqio
    import tensorflow as tf
    vocabulary = seqio.ByteVocabulary()
    features = {key: seqio.Feature(vocabulary) for key in FEATURE_LENGTHS}
    for seed, name in enumerate(TASKS):
        examples = _examples(name, count, seed)
        source = seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None, examples=examples: tf.data.Dataset.from_tensor_slices(examples),
            splits=['train'])
        seqio.TaskRegistry.add(f'bench_{name}', source, output_features=features,
                               preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos])
    seqio.MixtureRegistry.add(MIXTURE, [(f'bench_{name}', 1.0) for name in TASKS])


def _batches(pack: bool) -> list[dict[str, np.ndarray]]:
    """One epoch of the mixture as batches (same examples and order either way), the last one zero-padded."""
    from text2text import data
    dataset = data.get_dataset(MIXTURE, FEATURE_LENGTHS, 'train', BATCH, shuffle=False, seed=0, pack=pack,
                               num_epochs=1)
    return [data.pad_batch(batch, BATCH)[0] for batch in dataset.as_numpy_iterator()]


def _real_tokens(batches) -> int:
    """Non-padding input plus target tokens."""
    return sum(int((b['encoder_input_tokens'] > 0).sum() + (b['decoder_target_tokens'] > 0).sum()) for b in batches)


def build(framework: str, examples: int) -> dict:
    """Runners 'packed' (ours only) and 'padded': one training pass over the epoch's batches; 'count': stats."""
    _register(examples)
    streams = {'padded': _batches(pack=False)}
    if framework == 'ours':
        streams['packed'] = _batches(pack=True)
    config = bench_config()
    trainer = OurTrainer(config, streams['padded'][0]) if framework == 'ours' else HfTrainer(config)
    runners = {'count': lambda: {name: (len(b), _real_tokens(b)) for name, b in streams.items()}}
    for name, batches in streams.items():
        prepared = [trainer.prepare(batch) for batch in batches]
        trainer.step(prepared[0])  # compile / warm up
        runners[name] = lambda prepared=prepared: [trainer.step(batch) for batch in prepared]
    return {**runners, **build_gemm()} if framework == 'ours' else runners


def main() -> None:
    args = parse_args(rounds=2, steps=1, examples=40)
    ours = Worker(args.threads, build, 'ours', args.examples)
    hf = Worker(args.threads, build, 'hf', args.examples, environment=PEER_ENVIRONMENT)
    counts = ours.call('count')
    (padded_batches, tokens), (packed_batches, packed_tokens) = counts['padded'], counts['packed']
    assert tokens == packed_tokens == hf.call('count')['padded'][1], 'the streams hold different examples'
    slots = BATCH * sum(FEATURE_LENGTHS.values())
    print(f'# {tokens} real tokens; {padded_batches} padded batches ({tokens / (padded_batches * slots):.0%} real), '
          f'{packed_batches} packed batches ({tokens / (packed_batches * slots):.0%} real)')
    print(f'# {load_note()}, threads {args.threads}; {args.rounds} interleaved rounds of one pass each', flush=True)
    seconds = interleaved({'ours packed': (ours, 'packed'), 'ours padded': (ours, 'padded'),
                           'HF padded': (hf, 'padded'), 'gemm': (ours, 'gemm')}, args.rounds, args.steps)
    ours.close()
    hf.close()
    rate = {name: tokens / value for name, value in seconds.items() if name != 'gemm'}
    step_flops = train_flops_per_step(bench_config(), BATCH, FEATURE_LENGTHS['inputs'], FEATURE_LENGTHS['targets'])
    print(f'# ours packed: {peak_note(seconds["gemm"], step_flops * packed_batches, seconds["ours packed"])}')
    print(f'# HF padded: {peak_note(seconds["gemm"], step_flops * padded_batches, seconds["HF padded"])}')
    print(f'# {load_note()}; ours on padded batches {rate["ours padded"]:.0f} tokens/s')
    print(f'packing: ours {rate["ours packed"]:.0f} tokens/s, HF {rate["HF padded"]:.0f} tokens/s, '
          f'ratio {rate["ours packed"] / rate["HF padded"]:.2f}')


if __name__ == '__main__':
    main()
