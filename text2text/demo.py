"""The offline demo: a vocabulary, multitask prompted training of a small T5 (T0/FLAN in miniature), evaluation.

One training run on `demo_multitask` (span corruption on the shipped corpus + six prompted task families, see
tasks/demo) builds the base model; `demo_eval` then scores two held-out classification families zero-shot by
rank classification and the training families on their held-out templates. Running the same command again
prints the saved table instead of training again. Everything is generated or shipped, so it runs offline.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Dict, List, Mapping

import tasks.demo as demo_tasks
from tasks.demo.families import FAMILIES, Family
from text2text import optim, reporting, trainer
from text2text.models import EncoderDecoderModel


def _eval_results(model_dir: str, step: int) -> Dict[str, Dict[str, float]]:
    """{task: {metric: value}} of the eval records metrics.jsonl holds for `step`."""
    results: Dict[str, Dict[str, float]] = {}
    for record in reporting.read_metrics(model_dir, kind="eval"):
        if record.get("step") == step:
            results.setdefault(record["task"], {})[record["metric"]] = record["value"]
    return results


def family_rows(results: Mapping[str, Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One row per family: how it is evaluated, accuracy per eval template, their median and chance (percent).

    Held-out families are evaluated zero-shot on every template by rank classification (T0 reports the median
    over templates); training families on their held-out template(s). Families without results are left out.
    """
    rows = []
    for family in FAMILIES:
        names = [demo_tasks.eval_task_name(family, i) for i, _ in demo_tasks.eval_templates(family)]
        scores = [float(results[n]["accuracy"]) for n in names if "accuracy" in results.get(n, {})]
        if not scores:
            continue
        rows.append({"family": family.name, "evaluated": _how(family), "templates": scores,
                     "median": statistics.median(scores), "chance": _chance(family)})
    return rows


def _how(family: Family) -> str:
    if family.held_out:
        return "zero-shot, rank classification"
    return "held-out template, " + ("rank classification" if family.verbalizer else "exact match")


def _chance(family: Family) -> float | None:
    return 100.0 / len(family.verbalizer.classes) if family.verbalizer else None


def format_family_table(rows: List[Dict[str, Any]]) -> str:
    """The demo's final table (plain text, aligned): family | evaluated | per-template | median | chance."""
    lines = [("family", "evaluated", "per template", "median", "chance")]
    for row in rows:
        chance = "-" if row["chance"] is None else f"{row['chance']:.1f}"
        lines.append((row["family"], row["evaluated"], " ".join(f"{s:.1f}" for s in row["templates"]),
                      f"{row['median']:.1f}", chance))
    widths = [max(len(line[c]) for line in lines) for c in range(5)]
    out = [" | ".join(f"{v:<{w}}" if c < 3 else f"{v:>{w}}" for c, (v, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def run_demo(
    model: EncoderDecoderModel,
    vocab_path: str,
    model_dir: str = "runs/demo",
    train_steps: int = 800,
    feature_lengths: Mapping[str, int] = {"inputs": 48, "targets": 16},
    learning_rate: float = 1e-2,
    warmup_steps: int = 100,
    batch_size: int = 32,
    eval_batch_size: int = 64,
    log_period: int = 100,
) -> List[Dict[str, Any]]:
    """Runs the demo end to end (or reprints a finished run's table); returns family_rows of the final eval.

    Trains `model` from scratch on tasks.demo.TRAIN_MIXTURE for `train_steps` (Adafactor, constant
    `learning_rate` after a linear warmup), evaluates tasks.demo.EVAL_MIXTURE at the last step and prints the
    family table. Writes the vocabulary to `vocab_path` (the shipped one, if missing) and the model to
    `model_dir`/base (checkpoints, config.gin, metrics.jsonl, loss.png, TensorBoard events).
    """
    start = time.perf_counter()
    if not os.path.isfile(vocab_path):
        demo_tasks.install_demo_vocabulary(vocab_path)
        print(f"copied the demo's pinned SentencePiece vocabulary ({demo_tasks.VOCABULARY_PATH}) to {vocab_path}")
    base_dir = os.path.join(model_dir, "base")
    results = _eval_results(base_dir, train_steps)
    if results:
        print(f"{base_dir} already holds the finished run (step {train_steps}); its saved evaluation:")
    else:
        print(f"multitask prompted training on {demo_tasks.TRAIN_MIXTURE} for {train_steps} steps -> {base_dir}")
        trainer.train(base_dir, model, demo_tasks.TRAIN_MIXTURE, feature_lengths, train_steps=train_steps,
                      batch_size=batch_size, log_period=log_period, checkpoint_period=train_steps,
                      eval_period=train_steps, eval_mixture_or_task_name=demo_tasks.EVAL_MIXTURE,
                      eval_batch_size=eval_batch_size,
                      optimizer=optim.adafactor(learning_rate=optim.constant_schedule(learning_rate, warmup_steps)))
        results = _eval_results(base_dir, train_steps)
    rows = family_rows(results)
    print(format_family_table(rows))
    print(f"demo finished in {time.perf_counter() - start:.0f} s. Wrote: vocabulary {vocab_path}; checkpoint "
          f"{os.path.join(base_dir, str(train_steps))}; resolved config {os.path.join(base_dir, 'config.gin')}; "
          f"metrics {os.path.join(base_dir, 'metrics.jsonl')}; loss plot {os.path.join(base_dir, 'loss.png')}; "
          f"TensorBoard events in {base_dir}")
    return rows


__all__ = ["run_demo", "family_rows", "format_family_table"]
