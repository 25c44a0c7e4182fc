"""Packing: non-padding tokens/s training on a GLUE-like mixture of short examples, ours packed vs HF padded.

Five in-memory seqio tasks (byte vocabulary, so 1 byte = 1 token) with GLUE-like input lengths and 3-byte labels
are mixed at equal rates. The same examples, in the same order, go through text2text.data.get_dataset with
EncDecFeatureConverter pack=True (ours) and pack=False (HF T5ForConditionalGeneration: each example padded to
inputs 128 / targets 16; our model is timed on these padded batches too, to separate the packing gain from the
step speed). Prints the fp32 GEMM peak and the % of it reached (model FLOPs of the batches' shapes / time).
Batch 8 rows, fp32, model common.bench_config, each framework in its own worker process. Run:
`.venv/bin/python bench/packing.py [--threads N] [--rounds R] [--examples E]` (E examples per task).
`--batch B` sets the rows per batch (default 8); `--save_batches FILE.npz` only writes both streams, for
bench/gpu_peers.py.
"""
import numpy as np

from common import (PEER_ENVIRONMENT, HfTrainer, OurTrainer, Worker, bench_config, build_gemm, interleaved, load_note,
                    parse_args, peak_note, round_ratios)
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


def _batches(pack: bool, batch_size: int = BATCH) -> list[dict[str, np.ndarray]]:
    """One epoch of the mixture as batches (same examples and order either way), the last one zero-padded."""
    from text2text import data
    dataset = data.get_dataset(MIXTURE, FEATURE_LENGTHS, 'train', batch_size, shuffle=False, seed=0, pack=pack,
                               num_epochs=1)
    return [data.pad_batch(batch, batch_size)[0] for batch in dataset.as_numpy_iterator()]


def save_batches(path: str, examples: int, batch_size: int) -> None:
    """Writes both streams to the .npz `path` as 'padded/<feature>' and 'packed/<feature>' arrays of shape
    [batches, batch_size, length] (for bench/gpu_peers.py on a machine without seqio or TensorFlow)."""
    _register(examples)
    arrays = {}
    for stream in ('padded', 'packed'):
        batches = _batches(stream == 'packed', batch_size)
        arrays.update({f'{stream}/{key}': np.stack([b[key] for b in batches]) for key in batches[0]})
    np.savez_compressed(path, **arrays)


def load_batches(path: str) -> dict[str, list[dict[str, np.ndarray]]]:
    """The streams written by `save_batches`: {'padded': [batch, ...], 'packed': [...]}."""
    with np.load(path) as arrays:
        streams: dict[str, dict[str, np.ndarray]] = {}
        for name in arrays.files:
            stream, key = name.split('/')
            streams.setdefault(stream, {})[key] = arrays[name]
    return {stream: [{key: value[i] for key, value in features.items()}
                     for i in range(len(next(iter(features.values()))))] for stream, features in streams.items()}


def real_tokens(batches) -> int:
    """Non-padding input plus target tokens."""
    return sum(int((b['encoder_input_tokens'] > 0).sum() + (b['decoder_target_tokens'] > 0).sum()) for b in batches)


def build(framework: str, examples: int, batch_size: int = BATCH) -> dict:
    """Runners 'packed' (ours only) and 'padded': one training pass over the epoch's batches; 'count': stats."""
    _register(examples)
    streams = {'padded': _batches(False, batch_size)}
    if framework == 'ours':
        streams['packed'] = _batches(True, batch_size)
    config = bench_config()
    trainer = OurTrainer(config, streams['padded'][0]) if framework == 'ours' else HfTrainer(config)
    runners = {'count': lambda: {name: (len(b), real_tokens(b)) for name, b in streams.items()}}
    for name, batches in streams.items():
        prepared = [trainer.prepare(batch) for batch in batches]
        trainer.step(prepared[0])  # compile / warm up
        runners[name] = lambda prepared=prepared: [trainer.step(batch) for batch in prepared]
    return {**runners, **build_gemm()} if framework == 'ours' else runners


def main() -> None:
    args = parse_args(rounds=2, steps=1, examples=40, batch=BATCH, save_batches='')
    if args.save_batches:
        from text2text.console import configure_logging, quiet_native_stderr
        configure_logging(verbose=False)
        with quiet_native_stderr():  # TensorFlow's start-up lines
            save_batches(args.save_batches, args.examples, args.batch)
        return
    ours = Worker(args.threads, build, 'ours', args.examples, args.batch)
    hf = Worker(args.threads, build, 'hf', args.examples, args.batch, environment=PEER_ENVIRONMENT)
    counts = ours.call('count')
    (padded_batches, tokens), (packed_batches, packed_tokens) = counts['padded'], counts['packed']
    assert tokens == packed_tokens == hf.call('count')['padded'][1], 'the streams hold different examples'
    slots = args.batch * sum(FEATURE_LENGTHS.values())
    print(f'# {tokens} real tokens; {padded_batches} padded batches ({tokens / (padded_batches * slots):.0%} real), '
          f'{packed_batches} packed batches ({tokens / (packed_batches * slots):.0%} real)')
    print(f'# {load_note()}, threads {args.threads}; {args.rounds} interleaved rounds of one pass each', flush=True)
    per_round = {}
    seconds = interleaved({'ours packed': (ours, 'packed'), 'ours padded': (ours, 'padded'),
                           'HF padded': (hf, 'padded'), 'gemm': (ours, 'gemm')}, args.rounds, args.steps, per_round)
    ours.close()
    hf.close()
    rate = {name: tokens / value for name, value in seconds.items() if name != 'gemm'}
    step_flops = train_flops_per_step(bench_config(), args.batch, FEATURE_LENGTHS['inputs'], FEATURE_LENGTHS['targets'])
    print(f'# ours packed: {peak_note(seconds["gemm"], step_flops * packed_batches, seconds["ours packed"])}')
    print(f'# HF padded: {peak_note(seconds["gemm"], step_flops * padded_batches, seconds["HF padded"])}')
    print(f'# {load_note()}; ours on padded batches {rate["ours padded"]:.0f} tokens/s')
    print(round_ratios(per_round, 'HF padded', 'ours packed'))
    print(f'packing: ours {rate["ours packed"]:.0f} tokens/s, HF {rate["HF padded"]:.0f} tokens/s, '
          f'ratio {rate["ours packed"] / rate["HF padded"]:.2f}')


if __name__ == '__main__':
    main()
