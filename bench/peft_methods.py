"""Parameter-efficient tuning methods side by side: trainable parameters, and one result on an offline demo task.

Default: for each gin_configs/peft/<method>.gin (its default settings) on top of a model file and
runs/finetune.gin, builds the model run.py would build, initialises it with jax.eval_shape (nothing is
allocated) and counts the parameters text2text.peft.trainable trains (the mask of the method's optimizer).

--demo: adapts the offline demo's multitask base (DEMO_DIR/base, written by gin_configs/demo.gin; the demo
runs first if it is missing) to each held-out family with each method, through run.py with
gin_configs/peft/demo_<family>.gin + the method's file, each run in its own MODEL_DIR under --out, at the
family file's fixed budget (K=64 examples, 100 steps of 16 rows). Reports the validation rank-classification
accuracy at the end beside the base's zero-shot accuracy on the same template and chance, the trainable
parameters and the wall time of the run.py command. DEMO_RUNS lists the runs and their extra bindings.

    python bench/peft_methods.py [--model models/t5_1_1/base.gin]
    python bench/peft_methods.py --demo [--demo_dir runs/demo] [--out runs/peft] [--runs full,lora,...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METHODS = ('prompt_tuning', 'prefix_tuning', 'adapters', 'lora', 'bitfit', 'linear_probe')
# Bound so the gin files parse: nothing here changes a parameter count except the probe's 2 classes.
PLACEHOLDERS = ['MIXTURE_OR_TASK_NAME = "unused"', 'TASK_FEATURE_LENGTHS = {"inputs": 8, "targets": 4}',
                'TRAIN_STEPS = 1', 'MODEL_DIR = "unused"', 'LABEL_WORDS = ["a", "b"]']
TWO_CLASS_PROBE = 'peft.LinearProbeConfig.label_token_ids = [[3], [4]]'  # token ids without a vocabulary
FAMILIES = ('review_sentiment', 'sentence_topic')
# name -> (PEFT method or None for full fine-tuning, extra gin bindings after the method's file)
DEMO_RUNS = {
    'full': (None, []),
    'prompt_tuning': ('prompt_tuning', []),
    'prefix_tuning': ('prefix_tuning', []),
    'adapters': ('adapters', []),
    'lora': ('lora', []),
    'bitfit': ('bitfit', []),
    'linear_probe': ('linear_probe', []),
}


def _gin_files(base: list[str], method: str | None) -> list[str]:
    return base + ([f'peft/{method}.gin'] if method else [])


def count(gin_files: list[str], bindings: list[str]) -> tuple[int, int, int]:
    """(trainable, total, base) parameter counts of the model these gin files give trainer.train.

    base: the plain T5's parameters (without the method's additions); full fine-tuning trains all of them.
    """
    import gin
    import jax
    from flax.core import meta

    from text2text import launch, peft
    from text2text.peft import trainable

    gin.clear_config()
    launch.load_gin(launch.Flags(gin_files=gin_files, gin_bindings=bindings))
    model = gin.query_parameter('trainer.train.model').scoped_configurable_fn()
    shapes = {'inputs': (1, 8), 'targets': (1, 4)}
    params = meta.unbox(jax.eval_shape(lambda rng: model.init_variables(rng, shapes)['params'], jax.random.key(0)))
    config = model.config
    base = sum(leaf.size for leaf in jax.tree.leaves(peft.base_params(params, config)))
    if config.peft is None:
        return base, base, base
    trained, total = trainable.count_params(params, config.peft)
    return trained, total, base


def parameter_table(model_file: str) -> None:
    rows = []
    for method in (None, *METHODS):
        bindings = PLACEHOLDERS + ([TWO_CLASS_PROBE] if method == 'linear_probe' else [])
        rows.append((method or 'full fine-tuning', *count(_gin_files([model_file, 'runs/finetune.gin'], method),
                                                          bindings)))
    base = rows[0][3]
    print(f'{model_file}: {base:,} base parameters (trainable % is of these; linear probe: 2 classes)\n')
    print('| method | gin file | trainable params | % of base |')
    print('| --- | --- | ---: | ---: |')
    for (name, trained, _, _), method in zip(rows, (None, *METHODS)):
        gin_file = f'`peft/{method}.gin`' if method else '`runs/finetune.gin`'
        print(f'| {name} | {gin_file} | {trained:,} | {100 * trained / base:.4g} |')


def eval_accuracy(model_dir: str, task: str) -> dict[int, float]:
    """{step: accuracy} of `task` in model_dir/metrics.jsonl."""
    with open(os.path.join(model_dir, 'metrics.jsonl'), encoding='utf-8') as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return {line['step']: line['value'] for line in lines
            if line.get('kind') == 'eval' and line.get('task') == task and line.get('metric') == 'accuracy'}


def run_py(gin_files: list[str], bindings: list[str], log_path: str) -> tuple[float, bool]:
    """Runs `python run.py` with these gin files and bindings (output to log_path): (wall seconds, succeeded)."""
    command = [sys.executable, 'run.py', *(f'--gin_file={f}' for f in gin_files),
               *(f'--gin.{key.strip()}={value.strip()}' for key, _, value in (b.partition('=') for b in bindings))]
    start = time.perf_counter()
    with open(log_path, 'w', encoding='utf-8') as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    return time.perf_counter() - start, code == 0


def demo_table(out: str, demo_dir: str, names: list[str]) -> None:
    import gin

    from tasks.demo.families import FAMILY_BY_NAME
    base_dir = os.path.join(demo_dir, 'base')
    if not os.path.isdir(base_dir):
        print(f'{base_dir} missing: running the demo first', flush=True)
        os.makedirs(out, exist_ok=True)
        seconds, ok = run_py(['gin_configs/demo.gin'], [f'MODEL_DIR = "{demo_dir}"',
                                                        f'VOCAB_PATH = "{demo_dir}/vocab/spm.model"'],
                             os.path.join(out, 'demo.log'))
        if not ok:
            sys.exit(f'the demo failed; see {out}/demo.log')
        print(f'demo: {seconds:.0f} s', flush=True)
    print('\nvalidation rank-classification accuracy (200 examples, %) after the fixed budget\n')
    print('| family | method | trainable params | % | LR | steps | K | accuracy | zero-shot base | chance | wall s |')
    print('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |', flush=True)
    for family_name in FAMILIES:
        family = FAMILY_BY_NAME[family_name]
        eval_task = f'demo_{family_name}_t0'
        base_steps = eval_accuracy(base_dir, eval_task)
        zero_shot = base_steps[max(base_steps)]
        label_words = [family.verbalizer.word(c) for c in family.verbalizer.classes]
        for name in names:
            method, extra = DEMO_RUNS[name]
            files, model_dir = _gin_files([f'peft/demo_{family_name}.gin'], method), os.path.join(out, family_name, name)
            if os.path.exists(model_dir):  # run.py would resume from its checkpoint
                sys.exit(f'{model_dir} exists: remove it or pass another --out')
            bindings = [f'INITIAL_CHECKPOINT_PATH = "{base_dir}"',
                        f'vocab.sentencepiece_model_path.path = "{demo_dir}/vocab/spm.model"',
                        *extra, f'MODEL_DIR = "{model_dir}"']
            if method == 'linear_probe':
                bindings.append(f'LABEL_WORDS = {json.dumps(label_words)}')
            trained, _, base = count(files, bindings)
            lr, steps = (gin.query_parameter(f'%{m}') for m in ('LEARNING_RATE', 'TRAIN_STEPS'))
            os.makedirs(model_dir, exist_ok=True)
            seconds, ok = run_py(files, bindings, os.path.join(model_dir, 'run.log'))
            if not ok:
                print(f'| {family_name} | {name} | failed: see {model_dir}/run.log |', flush=True)
                continue
            accuracy = eval_accuracy(model_dir, eval_task)[steps]
            print(f'| {family_name} | {name} | {trained:,} | {100 * trained / base:.3g} | {lr:g} | {steps} | 64 | '
                  f'{accuracy:.1f} | {zero_shot:.1f} | {100 / len(label_words):.1f} | {seconds:.0f} |', flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='models/t5_1_1/base.gin', help='model gin file for the parameter table')
    parser.add_argument('--demo', action='store_true', help='run the few-shot adaptation measurements')
    parser.add_argument('--demo_dir', default='runs/demo', help='the demo\'s MODEL_DIR (base model and vocabulary)')
    parser.add_argument('--out', default='runs/peft', help='parent of the demo runs\' MODEL_DIRs')
    parser.add_argument('--runs', default=','.join(DEMO_RUNS), help=f'demo runs, some of {",".join(DEMO_RUNS)}')
    args = parser.parse_args(argv)
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    os.chdir(ROOT)
    if args.demo:
        demo_table(args.out, args.demo_dir, [n.strip() for n in args.runs.split(',')])
    else:
        parameter_table(args.model)


if __name__ == '__main__':
    main()
