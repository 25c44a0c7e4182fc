"""Packing: non-padding tokens/s training on a GLUE-like mixture of short examples, ours packed vs HF padded.

Five in-memory seqio tasks (byte vocabulary, so 1 byte = 1 token) with GLUE-like input lengths and 3-byte labels
are mixed at equal rates. The same examples (same order) go through text2text.data.get_dataset with
EncDecFeatureConverter pack=True (ours) and pack=False (HF T5ForConditionalGeneration, each example padded to
inputs 128 / targets 16; also timed for our model, to separate the packing gain from the step speed).
Batch 8 rows, fp32, model common.bench_config. Run:
`.venv/bin/python bench/packing.py [--threads N] [--rounds R] [--examples E]` (E examples per task).
"""
import statistics
import time

from common import HfTrainer, OurTrainer, bench_config, load_note, setup_threads

ARGS = setup_threads(rounds=2, examples=40)
BATCH = 8
FEATURE_LENGTHS = {'inputs': 128, 'targets': 16}
# name: (min, max) input length in tokens including the task prefix, labels (3 bytes; + EOS = 4 target tokens)
TASKS = {
    'cola': ((8, 30), ('yes', 'not')),
    'sst2': ((10, 60), ('pos', 'neg')),
    'mnli': ((25, 110), ('ent', 'neu', 'con')),
    'qqp': ((15, 80), ('dup', 'not')),
    'stsb': ((15, 70), ('1.2', '3.4', '4.8')),
}
MIXTURE = 'bench_glue_like'

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from text2text import data  # noqa: E402


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


def register(count: int) -> None:
    """Registers the five tasks (train split, `count` examples each) and their equal-rate mixture."""
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


def batches(pack: bool) -> list[dict[str, np.ndarray]]:
    """All batches of one epoch of the mixture (same examples and order for both settings), last one zero-padded."""
    dataset = data.get_dataset(MIXTURE, FEATURE_LENGTHS, 'train', BATCH, shuffle=False, seed=0, pack=pack,
                               num_epochs=1)
    return [data.pad_batch(batch, BATCH)[0] for batch in dataset.as_numpy_iterator()]


def real_tokens(batch_list) -> int:
    """Non-padding input plus target tokens."""
    return sum(int((b['encoder_input_tokens'] > 0).sum() + (b['decoder_target_tokens'] > 0).sum())
               for b in batch_list)


def main() -> None:
    register(ARGS.examples)
    packed, padded = batches(pack=True), batches(pack=False)
    tokens = real_tokens(packed)
    assert tokens == real_tokens(padded), 'packed and padded streams hold different examples'
    slots = BATCH * sum(FEATURE_LENGTHS.values())
    config = bench_config()
    ours, hf = OurTrainer(config, padded[0]), HfTrainer(config)
    runs = {'ours packed': (ours, [ours.prepare(b) for b in packed]),
            'ours padded': (ours, [ours.prepare(b) for b in padded]),
            'HF padded': (hf, [hf.prepare(b) for b in padded])}
    for trainer, prepared in runs.values():  # compile and warm up
        trainer.step(prepared[0])
    print(f'# {tokens} real tokens; {len(padded)} padded batches ({tokens / (len(padded) * slots):.0%} real), '
          f'{len(packed)} packed batches ({tokens / (len(packed) * slots):.0%} real)', flush=True)
    print(f'# {load_note()}; {ARGS.rounds} interleaved rounds of one pass each', flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(ARGS.rounds):
        for name, (trainer, prepared) in runs.items():
            start = time.perf_counter()
            for batch in prepared:
                trainer.step(batch)
            seconds[name].append(time.perf_counter() - start)
    rate = {name: tokens / statistics.median(values) for name, values in seconds.items()}
    print(f'# {load_note()}; ours padded {rate["ours padded"]:.0f} tokens/s')
    print(f'packing: ours {rate["ours packed"]:.0f} tokens/s, HF {rate["HF padded"]:.0f} tokens/s, '
          f'ratio {rate["ours packed"] / rate["HF padded"]:.2f}')


if __name__ == '__main__':
    main()
