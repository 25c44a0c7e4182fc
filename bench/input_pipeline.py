"""Input pipeline CPU per training batch: packed batches converted a window at a time (ours) vs row by row.

`text2text.data.get_dataset` on bench/train_loop.py's shape (bench/packing.py's GLUE-like mixture of five byte
vocabulary tasks, batch 32, inputs 32 / targets 16, dense packing, shuffled, repeated). Ours converts each packed
window to model features at once and cuts it into batches (`DensePackingEncDecFeatureConverter.batched`); the
peer is the same converter run as seqio runs converters, one tf.data element per packed row, then `batch` (a
subclass, which `get_dataset` does not give the window path). Both give the same batches. Each is read for
--steps batches at full speed and for --steps batches paced one per --pace_ms milliseconds, as a training loop
reads them (tf.data's threads then wake up for every batch), in --rounds alternated rounds; the process's CPU
seconds of all threads per batch, medians. Packing fills windows of 1024 examples (~24 batches here) in bursts,
so --steps should cover several windows. Run: `.venv/bin/python bench/input_pipeline.py [--threads N]
[--rounds R] [--steps S] [--pace_ms P]`.
"""
import statistics
import time

from common import configure, load_note, parse_args
from packing import MIXTURE, _register
from train_loop import BATCH, LENGTHS

WARM_UP = 50


def cpu_per_batch(converter_cls, steps: int, pace: float) -> float:
    """CPU seconds (all threads) per batch of `steps` batches read `pace` seconds apart (0: at full speed),
    after WARM_UP batches, from a fresh pipeline built with `converter_cls`."""
    from text2text import data
    iterator = data.DataIterator(lambda: data.get_dataset(MIXTURE, LENGTHS, 'train', BATCH, shuffle=True, seed=0,
                                                          pack=True, feature_converter_cls=converter_cls))
    for _ in range(WARM_UP):
        next(iterator)
    start = time.process_time()
    for _ in range(steps):
        next(iterator)
        if pace:
            time.sleep(pace)
    return (time.process_time() - start) / steps


def main() -> None:
    args = parse_args(rounds=2, steps=300, pace_ms=90)
    configure(args.threads)
    from text2text import packing

    class PerRow(packing.DensePackingEncDecFeatureConverter):
        """The peer: the same converter, one tf.data element per packed row."""

    _register(200)
    converters = {'ours': packing.DensePackingEncDecFeatureConverter, 'per-row': PerRow}
    paces = {0.0: 'full speed', args.pace_ms / 1e3: f'one batch per {args.pace_ms} ms'}
    times = {(name, pace): [] for name in converters for pace in paces}
    print(f'# {load_note()}, threads {args.threads}; {args.rounds} alternated rounds x {args.steps} batches of '
          f'{BATCH} rows, {LENGTHS}', flush=True)
    for _ in range(args.rounds):
        for name, converter_cls in converters.items():
            for pace, label in paces.items():
                times[name, pace].append(cpu_per_batch(converter_cls, args.steps, pace))
                print(f'#   {name}, {label}: {1e3 * times[name, pace][-1]:.2f} ms CPU per batch', flush=True)
    for pace, label in paces.items():
        ours, peer = (statistics.median(times[name, pace]) for name in converters)
        print(f'input pipeline, {label}: ours {1e3 * ours:.2f} ms CPU per batch, per-row {1e3 * peer:.2f} ms; '
              f'ratio ours/per-row {ours / peer:.2f}')


if __name__ == '__main__':
    main()
