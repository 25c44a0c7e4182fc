"""Evaluation throughput: seqio.Evaluator predict + metrics (text2text.evaluation.TaskEvaluator) vs an HF
`generate` loop, on 1,000 examples of a generated GLUE-like classification task, same weights.

The task (offline): 'sst2 sentence: <random words>' inputs of 6-110 words (about 8-120 SentencePiece tokens),
'positive'/'negative' targets, a SentencePiece vocabulary trained on the generated text (tasks.vocab), inputs
128 / targets 8 tokens. The model is common.bench_config with that vocabulary, random weights (so rows rarely
emit EOS and both sides decode all 8 steps); our init is exported with text2text.convert.hf and loaded by
transformers. Ours: TaskEvaluator.evaluate (greedy, batch 32; examples sorted by input length, encoder padding
cut to `eval_batches.input_width` widths, 4 per octave) including seqio's postprocessing and the accuracy metric;
also timed with `by_length=False` (every batch at the full 128 inputs). HF: batches of 32 in dataset order, padded to the
longest input of each batch (as DataCollatorWithPadding does), `generate(max_new_tokens=8, num_beams=1)`, decoded
with the same vocabulary, accuracy. Each side in its own worker process on the same CPUs; compile counts are
jax's backend compilations (jax.monitoring) of the first and of later evaluations. Run:
`.venv/bin/python bench/eval.py [--threads N] [--rounds R] [--examples E]`.
"""
import os
import tempfile

import numpy as np

from common import (PEER_ENVIRONMENT, Worker, bench_config, build_gemm, interleaved, load_note, parse_args, peak_note,
                    round_ratios)
from gpu_mfu import train_flops_per_step

TASK = 'bench_eval_sst2_like'
LENGTHS = {'inputs': 128, 'targets': 8}
BATCH = 32
COMPARED = 128  # examples whose predicted text is compared with HF's
LABELS = ('positive', 'negative')
WORDS = ('the', 'a', 'film', 'movie', 'plot', 'actor', 'story', 'was', 'is', 'not', 'very', 'quite', 'good', 'bad',
         'boring', 'great', 'funny', 'dull', 'scene', 'music', 'ending', 'and', 'but', 'with', 'an', 'of', 'too',
         'charming', 'awful', 'brilliant', 'slow', 'long', 'short', 'cast', 'director', 'script', 'visual', 'effects')


def _examples(count: int, seed: int = 0) -> dict[str, list[str]]:
    """`count` inputs of 6-110 random words (a few misspelt, so the vocabulary has several pieces per word)."""
    rng = np.random.default_rng(seed)
    inputs, targets = [], []
    for _ in range(count):
        words = [str(rng.choice(WORDS)) for _ in range(int(rng.integers(6, 111)))]
        words = [w[::-1] if rng.random() < 0.1 else w for w in words]
        inputs.append(' '.join(words))
        targets.append(LABELS[int('good' in words or 'great' in words)])
    return {'inputs': inputs, 'targets': targets}


def _register(directory: str, count: int):
    """Trains the vocabulary in `directory` (same texts, same model in every process) and registers the task."""
    import seqio
    import tensorflow as tf
    from tasks.vocab import train_sentencepiece
    examples = _examples(count)
    model_file = train_sentencepiece(examples['inputs'] + list(LABELS), os.path.join(directory, 'sp'), vocab_size=500)
    vocabulary = seqio.SentencePieceVocabulary(model_file)
    source = seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
            {'inputs': [f'sst2 sentence: {text}' for text in examples['inputs']], 'targets': examples['targets']}),
        splits=['validation'])
    seqio.TaskRegistry.add(TASK, source, output_features={k: seqio.Feature(vocabulary) for k in LENGTHS},
                           preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
                           metric_fns=[_accuracy])
    return vocabulary


def _accuracy(targets, predictions) -> dict:
    return {'accuracy': 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def _model_config(vocabulary):
    return bench_config(vocab_size=-(-vocabulary.vocab_size // 128) * 128)


class _CompileCounter:
    """Counts jax backend compilations (jax.monitoring's backend-compile duration events)."""

    def __init__(self):
        import jax
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        del duration, kwargs
        if event == '/jax/core/compile/backend_compile_duration':
            self.count += 1


def build_ours(directory: str, count: int) -> dict:
    """Runners 'eval' (length buckets) and 'eval full width', 'result' (metrics, predictions, compile counts)."""
    import flax
    import jax
    import seqio
    from text2text import evaluation, models
    from text2text.convert.hf import save_hf_checkpoint
    vocabulary = _register(directory, count)
    config = _model_config(vocabulary)
    model = models.EncoderDecoderModel(config)
    params = flax.core.meta.unbox(model.init_variables(jax.random.PRNGKey(0), {k: (1, v) for k, v in LENGTHS.items()}))['params']
    save_hf_checkpoint(config, params, os.path.join(directory, 'hf'))
    counter = _CompileCounter()
    compiles, results = {}, {}
    runners = {}
    for name, by_length in (('eval', True), ('eval full width', False)):
        evaluator = evaluation.TaskEvaluator(model, TASK, LENGTHS, batch_size=BATCH, by_length=by_length)
        before = counter.count
        results[name] = evaluator.evaluate(params)[TASK]
        compiles[name] = [counter.count - before]
        runners[name] = lambda evaluator=evaluator, name=name: _counted(evaluator, params, counter, compiles[name])
    dataset = seqio.get_mixture_or_task(TASK).get_dataset(LENGTHS, split='validation', shuffle=False).take(COMPARED)
    predictions = dict(evaluation.make_predict_fn(model, params, BATCH)(
        seqio.EncDecFeatureConverter(pack=False)(dataset, LENGTHS).enumerate()))
    texts = [vocabulary.decode([t for t in predictions[i] if t > 1]) for i in range(len(predictions))]
    flops = train_flops_per_step(config, count, LENGTHS['inputs'], LENGTHS['targets']) / 3  # forward, full width
    runners['result'] = lambda: {'metrics': results, 'compiles': compiles, 'predictions': texts, 'flops': flops}
    return {**runners, **build_gemm()}


def _counted(evaluator, params, counter: _CompileCounter, compiles: list) -> None:
    before = counter.count
    evaluator.evaluate(params)
    compiles.append(counter.count - before)


def build_hf(directory: str, count: int) -> dict:
    """Runner 'eval': HF generate over the task's examples in dataset order, dynamic padding; 'result'."""
    import seqio
    import torch
    import transformers
    vocabulary = _register(directory, count)
    model = transformers.T5ForConditionalGeneration.from_pretrained(os.path.join(directory, 'hf')).eval()
    examples = list(seqio.get_mixture_or_task(TASK).get_dataset(LENGTHS, split='validation', shuffle=False)
                    .as_numpy_iterator())
    inputs = [example['inputs'].tolist() for example in examples]
    targets = [vocabulary.decode(example['targets'].tolist()) for example in examples]
    last = {}

    @torch.inference_mode()
    def evaluate():
        predictions = []
        for start in range(0, len(inputs), BATCH):
            rows = inputs[start:start + BATCH]
            width = max(len(row) for row in rows)
            ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
            tokens = model.generate(input_ids=ids, attention_mask=(ids > 0).long(),
                                    max_new_tokens=LENGTHS['targets'], do_sample=False, num_beams=1)
            predictions += [vocabulary.decode([t for t in row[1:].tolist() if t > 1]) for row in tokens]
        last['metrics'] = _accuracy(targets, predictions)
        last['predictions'] = predictions

    evaluate()
    return {'eval': evaluate, 'result': lambda: dict(last)}


def main() -> None:
    args = parse_args(rounds=1, steps=1, examples=1000)
    with tempfile.TemporaryDirectory() as directory:
        ours = Worker(args.threads, build_ours, directory, args.examples)
        hf = Worker(args.threads, build_hf, directory, args.examples, environment=PEER_ENVIRONMENT)
        print(f'# {load_note()}, threads {args.threads}; {args.examples} examples, batch {BATCH}, '
              f'{args.rounds} interleaved rounds', flush=True)
        per_round = {}
        times = interleaved({'ours': (ours, 'eval'), 'ours full width': (ours, 'eval full width'),
                             'HF': (hf, 'eval'), 'gemm': (ours, 'gemm')}, args.rounds, args.steps, per_round)
        mine, theirs = ours.call('result'), hf.call('result')
        ours.close()
        hf.close()
    agree = np.mean([a == b for a, b in zip(mine['predictions'], theirs['predictions'][:COMPARED])])
    print(f'# {load_note()}; predictions equal to HF on the first {COMPARED}: {agree:.3f}; accuracy ours {mine["metrics"]["eval"]} '
          f'(full width {mine["metrics"]["eval full width"]}), HF {theirs["metrics"]}')
    print(f'# compilations (first evaluation, then each later one): by length {mine["compiles"]["eval"]}, '
          f'full width {mine["compiles"]["eval full width"]}')
    print(f'# ours: {peak_note(times["gemm"], mine["flops"], times["ours"])} (effective: full-width forward FLOPs, though buckets skip padding)')
    print(f'# HF: {peak_note(times["gemm"], mine["flops"], times["HF"])}')
    rate = {name: args.examples / seconds for name, seconds in times.items() if name != 'gemm'}
    print(f'# ours full width {rate["ours full width"]:.0f} examples/s')
    print(round_ratios(per_round, 'HF', 'ours'))
    print(f'eval: ours {rate["ours"]:.0f} examples/s, HF {rate["HF"]:.0f} examples/s, '
          f'ratio {rate["ours"] / rate["HF"]:.2f}')


if __name__ == '__main__':
    main()
