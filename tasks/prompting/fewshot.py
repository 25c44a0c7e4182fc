"""The few-shot harness (LM-BFF's protocol, Gao et al. 2021, sec. 3): for each seed, sample K labelled examples
per class to train on and K per class as dev from a problem's pool, run every method on the same sample, and
report the test accuracy's mean and standard deviation over the seeds (5 seeds: 13, 21, 42, 87, 100).

`run_fewshot` is the `fewshot` run mode (gin_configs/prompting/*.gin):

    .venv/bin/python run.py --gin_file=prompting/demo.gin

It prints a progress line per (method, seed), then a table of mean ± std, and writes every result (per seed,
with each method's details) as JSON to `output_path` after each method ("complete": true once all ran; each
write goes to a temporary file, then a rename).
"""
from __future__ import annotations

import difflib
import inspect
import json
import os
import random
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from tasks import vocab as vocab_lib
from tasks.prompting import engine
from tasks.prompting.methods import get_method
from tasks.prompting.problem import FewShotData, Problem, Setting
from tasks.prompting.problems import get_problem
from text2text.errors import UserError

SEEDS = (13, 21, 42, 87, 100)


def sample_few_shot(problem: Problem, pool: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]], k: int,
                    seed: int, num_unlabelled: int = 0, num_test: Optional[int] = None) -> FewShotData:
    """K examples per class for train and K more per class for dev (disjoint, random.Random(seed)), up to
    `num_unlabelled` of the pool's other examples as unlabelled data, and the first `num_test` test examples.

    Raises UserError for k < 1, num_unlabelled < 0 or num_test < 1, and naming the class when a class has fewer
    than 2K examples in the pool.
    """
    if k < 1:
        raise UserError(f"few-shot problem {problem.name!r}: K must be >= 1, got {k}")
    if num_unlabelled < 0:
        raise UserError(f"few-shot problem {problem.name!r}: num_unlabelled (NUM_UNLABELLED) must be >= 0, got "
                        f"{num_unlabelled}")
    if num_test is not None and num_test < 1:
        raise UserError(f"few-shot problem {problem.name!r}: num_test (NUM_TEST) must be >= 1 or None (all), got "
                        f"{num_test}")
    rng = random.Random(seed)
    train: List[Mapping[str, Any]] = []
    dev: List[Mapping[str, Any]] = []
    chosen = set()
    for cls in problem.verbalizer.classes:
        members = [i for i, ex in enumerate(pool) if ex[problem.label_key] == cls]
        if len(members) < 2 * k:
            raise UserError(f"few-shot problem {problem.name!r}: K={k} per class for train and dev needs {2 * k} "
                            f"examples of class {cls!r}; the pool has {len(members)}")
        picked = rng.sample(members, 2 * k)
        train += [pool[i] for i in picked[:k]]
        dev += [pool[i] for i in picked[k:]]
        chosen.update(picked)
    rng.shuffle(train)
    rng.shuffle(dev)
    rest = [ex for i, ex in enumerate(pool) if i not in chosen]
    unlabelled = rng.sample(rest, min(num_unlabelled, len(rest)))
    return FewShotData(tuple(train), tuple(dev), tuple(unlabelled), tuple(test[:num_test]))


def summarize(accuracies: Sequence[float]) -> Dict[str, float]:
    """{"mean", "std"}: the mean and the sample standard deviation (0 for a single seed), in percent."""
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    return {"mean": statistics.fmean(accuracies), "std": std}


def method_options_of(function: Callable[..., Any]) -> Tuple[Optional[Tuple[str, ...]], Tuple[str, ...]]:
    """(the keyword options a method takes: its parameters after `seed`, less those a functools.partial fixes;
    None when it takes any, **kwargs), the options it requires (no default))."""
    fixed = getattr(function, "keywords", None) or {}
    parameters = list(inspect.signature(function).parameters.values())
    names = [p.name for p in parameters]
    after = parameters[names.index("seed") + 1:] if "seed" in names else parameters
    if any(p.kind is p.VAR_KEYWORD for p in after):
        return None, ()
    options = [p for p in after if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in fixed]
    return tuple(p.name for p in options), tuple(p.name for p in options if p.default is p.empty)


def check_methods(methods: Sequence[str], seeds: Sequence[int],
                  method_options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, Callable[..., Any]]:
    """{name: method function} of `methods` after checking a run's arguments. Raises UserError for an empty
    `methods` (METHODS) or `seeds` (SEEDS), an unknown method name in either `methods` or `method_options`
    (METHOD_OPTIONS), options that are not a mapping, an option a method does not take, or a required option
    missing for a method that runs."""
    if not methods:
        raise UserError("few-shot harness: METHODS (methods) is empty; name at least one method")
    if not seeds:
        raise UserError("few-shot harness: SEEDS (seeds) is empty; give at least one seed")
    options = dict(method_options or {})
    functions = {name: get_method(name) for name in methods}
    for name, given in options.items():  # options of registered methods that do not run are kept for other lists
        accepted, _ = method_options_of(get_method(name))
        if not isinstance(given, Mapping):
            raise UserError(f"METHOD_OPTIONS[{name!r}] must map option names to values, got {given!r}")
        for option in given:
            if accepted is not None and option not in accepted:
                close = difflib.get_close_matches(str(option), accepted, n=1)
                raise UserError(f"METHOD_OPTIONS[{name!r}]: method {name} has no option {option!r}"
                                + (f" (did you mean {close[0]!r}?)" if close else "")
                                + f"; it takes {', '.join(accepted) or 'none'}")
    for name, function in functions.items():
        missing = [option for option in method_options_of(function)[1] if option not in options.get(name, {})]
        if missing:
            raise UserError(f"METHOD_OPTIONS[{name!r}] must set {', '.join(missing)} (method {name} requires it)")
    return functions


def check_budget(steps: int, batch_size: int) -> None:
    """UserError unless every training run's steps (STEPS) and batch_size (BATCH_SIZE) are >= 1."""
    if steps < 1 or batch_size < 1:
        raise UserError(f"few-shot harness: STEPS (steps={steps}) and BATCH_SIZE (batch_size={batch_size}) must "
                        f"be >= 1")


def run_methods(setting: Setting, problem_name: str, methods: Sequence[str], k: int = 16,
                seeds: Sequence[int] = SEEDS, num_unlabelled: int = 0, num_test: Optional[int] = None,
                method_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                progress: Callable[[str], None] = print,
                on_method: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Runs each method on each seed's sample; returns {"problem", "k", "seeds", "methods": {name: {"mean",
    "std", "accuracies", "seconds", "details"}}, "complete"}. `method_options` maps a method name to keyword
    options (a method that does not run ignores its options); `on_method(results so far)` runs after each method
    (the mode saves them). Raises UserError before anything runs for an unknown problem, what `check_methods`
    rejects (empty methods or seeds, unknown method names or options), what `check_budget` rejects (setting's
    steps or batch_size < 1) and what `sample_few_shot` rejects (k, num_unlabelled, num_test, too small a pool)."""
    entry = get_problem(problem_name)
    options = dict(method_options or {})
    functions = check_methods(methods, seeds, options)
    check_budget(setting.steps, setting.batch_size)
    data = {seed: sample_few_shot(entry.problem, entry.pool, entry.test, k, seed, num_unlabelled, num_test)
            for seed in seeds}
    out: Dict[str, Any] = {"problem": problem_name, "k": k, "seeds": list(seeds), "methods": {}, "complete": False}
    total, done = len(methods) * len(seeds), 0
    for name in methods:
        rows = {"accuracies": [], "seconds": [], "details": []}
        for seed in seeds:
            start = time.perf_counter()
            result = functions[name](setting, entry.problem, data[seed], seed, **options.get(name, {}))
            seconds = time.perf_counter() - start
            done += 1
            rows["accuracies"].append(result.accuracy)
            rows["seconds"].append(seconds)
            rows["details"].append(dict(result.details))
            progress(f"fewshot [{done}/{total}] {problem_name} {name} seed {seed}: accuracy {result.accuracy:.1f} "
                     f"({seconds:.0f} s)")
        out["methods"][name] = {**summarize(rows["accuracies"]), **rows}
        out["complete"] = len(out["methods"]) == len(methods)
        if on_method is not None:
            on_method(out)
    return out


def format_table(results: Mapping[str, Any]) -> str:
    """Plain-text table: method | mean ± std | per-seed accuracies | seconds per seed."""
    lines = [("method", "accuracy (mean ± std)", "per seed", "s/seed")]
    for name, row in results["methods"].items():
        lines.append((name, f"{row['mean']:.1f} ± {row['std']:.1f}", " ".join(f"{a:.1f}" for a in row["accuracies"]),
                      f"{statistics.fmean(row['seconds']):.0f}"))
    widths = [max(len(line[c]) for line in lines) for c in range(4)]
    out = [" | ".join(f"{v:<{w}}" for v, w in zip(line, widths)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def write_json(path: str, value: Any) -> None:
    """Writes `value` as JSON to `path` atomically (a temporary file in the same directory, then a rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".fewshot-", suffix=".json")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(value, f, indent=1, default=str)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def run_fewshot(model: Any, problem: str, methods: Sequence[str], output_path: str,
                feature_lengths: Mapping[str, int], checkpoint: Optional[str] = None, k: int = 16,
                seeds: Sequence[int] = SEEDS, steps: int = 100, batch_size: int = 8, learning_rate: float = 1e-3,
                num_unlabelled: int = 0, num_test: Optional[int] = None, scoring_batch_size: int = 64,
                method_options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, Any]:
    """The `fewshot` mode: loads the base (`model` with params from `checkpoint`, random without one), runs
    `methods` (names in tasks.prompting.methods) on `problem` (tasks.prompting.problems) over `seeds` at K per
    class, prints progress and the table, writes the JSON to `output_path` and returns it.

    steps/batch_size/learning_rate: each training run's budget (examples per step) and full fine-tuning's rate;
    feature_lengths: {"inputs", "targets"} token lengths of a prompt and of a class's target text.
    Raises UserError, before the base is loaded, for an unknown problem and what `check_methods` and
    `check_budget` reject, and before any method runs for what `run_methods` rejects.
    """
    get_problem(problem)
    check_methods(methods, seeds, method_options)
    check_budget(steps, batch_size)
    base = engine.PromptModel(model, vocab_lib.get_default_vocabulary(), dict(feature_lengths), scoring_batch_size)
    setting = Setting(base, engine.init_params(base, checkpoint), checkpoint, steps, batch_size, learning_rate)
    print(f"few-shot {problem}: K={k} per class, seeds {list(seeds)}, {len(methods)} method(s), {steps} steps of "
          f"{batch_size} examples each; base {checkpoint or '(random init)'}")
    results = run_methods(setting, problem, methods, k, seeds, num_unlabelled, num_test, method_options,
                          on_method=lambda partial: write_json(output_path, partial))
    print(format_table(results))
    print(f"wrote {output_path}")
    return results


__all__ = ["SEEDS", "sample_few_shot", "summarize", "method_options_of", "check_methods", "check_budget",
           "run_methods", "format_table", "write_json", "run_fewshot"]
