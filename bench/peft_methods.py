"""Parameter-efficient tuning methods side by side: trainable parameters, and one result on an offline demo task.

Default: for each gin_configs/peft/<method>.gin (its default settings) on top of a model file and
runs/finetune.gin, builds the model run.py would build, initialises it with jax.eval_shape (nothing is
allocated) and counts the parameters text2text.peft.trainable trains (the mask of the method's optimizer).

--demo: fine-tunes the offline demo's pre-trained tiny model (runs/demo/pretrain; runs the demo first if it
is missing) with gin_configs/peft/demo_reverse.gin + each method's file through run.py, each run in its own
MODEL_DIR under --out, for --steps steps (the gin file's 300 are too few even for full fine-tuning). Reports
the validation accuracy (MODEL_DIR/metrics.jsonl) after 300 steps and at the end, the last train loss and
the wall time of the run.py command. Linear probing classifies, so it runs on demo_parity, next to full
fine-tuning there. DEMO_RUNS lists the runs and their extra bindings (learning rate, steps).

    python bench/peft_methods.py [--model models/t5_1_1/base.gin]
    python bench/peft_methods.py --demo [--steps 1000] [--out runs/peft] [--runs full,lora,...]
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
DEMO_GIN = 'peft/demo_reverse.gin'
PARITY = ['MIXTURE_OR_TASK_NAME = "demo_parity"', 'LABEL_WORDS = ["even", "odd"]']
# name -> (PEFT method or None for full fine-tuning, extra gin bindings after the method's file)
DEMO_RUNS = {
    'full': (None, []),
    'prompt_tuning': ('prompt_tuning', []),
    'prefix_tuning': ('prefix_tuning', []),
    'adapters': ('adapters', []),
    'lora': ('lora', []),
    'bitfit': ('bitfit', []),
    'full_parity': (None, PARITY[:1]),
    'linear_probe': ('linear_probe', PARITY),
    # At their defaults no method learns demo_reverse in 1000 steps: 10x the learning rate, then 3x the steps.
    'prefix_tuning_lr0.1': ('prefix_tuning', ['LEARNING_RATE = 0.1']),
    'adapters_lr1e-2': ('adapters', ['LEARNING_RATE = 1e-2']),
    'lora_lr1e-2': ('lora', ['LEARNING_RATE = 1e-2']),
    'bitfit_lr1e-2': ('bitfit', ['LEARNING_RATE = 1e-2']),
    'bitfit_lr1e-2_3k': ('bitfit', ['LEARNING_RATE = 1e-2', 'TRAIN_STEPS = 3000', 'CHECKPOINT_PERIOD = 3000']),
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


def read_metrics(model_dir: str) -> tuple[dict[int, float], float]:
    """({step: validation accuracy}, last train loss per token) from model_dir/metrics.jsonl."""
    with open(os.path.join(model_dir, 'metrics.jsonl'), encoding='utf-8') as f:
        lines = [json.loads(line) for line in f if line.strip()]
    accuracy = {line['step']: line['value'] for line in lines
                if line.get('kind') == 'eval' and line.get('metric') == 'accuracy'}
    return accuracy, [line['loss'] for line in lines if line.get('kind') == 'train'][-1]


def run_py(gin_files: list[str], bindings: list[str], log_path: str) -> tuple[float, bool]:
    """Runs `python run.py` with these gin files and bindings (output to log_path): (wall seconds, succeeded)."""
    command = [sys.executable, 'run.py', *(f'--gin_file={f}' for f in gin_files),
               *(f'--gin.{key.strip()}={value.strip()}' for key, _, value in (b.partition('=') for b in bindings))]
    start = time.perf_counter()
    with open(log_path, 'w', encoding='utf-8') as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    return time.perf_counter() - start, code == 0


def demo_table(out: str, names: list[str], steps: int) -> None:
    import gin
    if not os.path.isdir('runs/demo/pretrain'):
        print('runs/demo/pretrain missing: running the demo first (about 6 min)', flush=True)
        os.makedirs(out, exist_ok=True)
        seconds, ok = run_py(['gin_configs/demo.gin'], [], os.path.join(out, 'demo.log'))
        if not ok:
            sys.exit(f'the demo failed; see {out}/demo.log')
        print(f'demo: {seconds:.0f} s', flush=True)
    common = [f'TRAIN_STEPS = {steps}', f'CHECKPOINT_PERIOD = {steps}']
    print(f'\n{DEMO_GIN}; validation accuracy (exact match, 200 examples, %); train loss per token at the end\n')
    print('| run | task | trainable params | % | LR | steps | acc @300 | final acc | train loss | wall s |')
    print('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |', flush=True)
    for name in names:
        method, extra = DEMO_RUNS[name]
        files, model_dir = _gin_files([DEMO_GIN], method), os.path.join(out, name)
        if os.path.exists(model_dir):  # run.py would resume from its checkpoint
            sys.exit(f'{model_dir} exists: remove it or pass another --out')
        bindings = [*common, *extra, f'MODEL_DIR = "{model_dir}"']
        trained, _, base = count(files, bindings)
        task, lr, run_steps = (gin.query_parameter(f'%{m}') for m in ('MIXTURE_OR_TASK_NAME', 'LEARNING_RATE',
                                                                       'TRAIN_STEPS'))
        os.makedirs(model_dir, exist_ok=True)
        seconds, ok = run_py(files, bindings, os.path.join(model_dir, 'run.log'))
        if not ok:
            print(f'| {name} | {task} | failed: see {model_dir}/run.log |', flush=True)
            continue
        accuracy, loss = read_metrics(model_dir)
        print(f'| {name} | {task} | {trained:,} | {100 * trained / base:.3g} | {lr:g} | {run_steps} | '
              f'{accuracy.get(300, float("nan")):.1f} | {accuracy[run_steps]:.1f} | {loss:.2f} | {seconds:.0f} |',
              flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='models/t5_1_1/base.gin', help='model gin file for the parameter table')
    parser.add_argument('--demo', action='store_true', help='run the demo-task measurements (about 40 min on 2 CPUs)')
    parser.add_argument('--steps', type=int, default=1000, help='train steps of each demo run')
    parser.add_argument('--out', default='runs/peft', help='parent of the demo runs\' MODEL_DIRs')
    parser.add_argument('--runs', default=','.join(DEMO_RUNS), help=f'demo runs, some of {",".join(DEMO_RUNS)}')
    args = parser.parse_args(argv)
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    os.chdir(ROOT)
    if args.demo:
        demo_table(args.out, [n.strip() for n in args.runs.split(',')], args.steps)
    else:
        parameter_table(args.model)


if __name__ == '__main__':
    main()
