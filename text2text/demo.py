"""The offline demo: train a vocabulary, pre-train a small T5 on stdlib docstrings, fine-tune on a mixture, evaluate.

Everything it reads is generated or found on this machine (see tasks/demo.py), so it runs with no network.
"""
from __future__ import annotations

import os
import time
from typing import Mapping

from tasks import demo as demo_tasks
from text2text import optim, trainer
from text2text.models import EncoderDecoderModel


def run_demo(
    model: EncoderDecoderModel,
    vocab_path: str,
    model_dir: str = "runs/demo",
    vocab_size: int = 2000,
    pretrain_steps: int = 200,
    pretrain_feature_lengths: Mapping[str, int] = {"inputs": 64, "targets": 16},
    pretrain_warmup_steps: int = 100,
    finetune_steps: int = 2000,
    finetune_feature_lengths: Mapping[str, int] = {"inputs": 32, "targets": 16},
    finetune_learning_rate: float = 1e-2,
    batch_size: int = 32,
    log_period: int = 50,
) -> dict:
    """Runs the demo end to end; returns the fine-tuned model's metrics per task (the trainer prints the table)."""
    start = time.perf_counter()
    if not os.path.isfile(vocab_path):
        trained = demo_tasks.train_demo_vocabulary(vocab_path.removesuffix(".model"), vocab_size=vocab_size)
        print(f"trained a {vocab_size}-piece SentencePiece vocabulary on local text: {trained}")
    pretrain_dir, finetune_dir = os.path.join(model_dir, "pretrain"), os.path.join(model_dir, "finetune")
    print(f"pre-training on {demo_tasks.PRETRAINING_TASK_NAME} for {pretrain_steps} steps -> {pretrain_dir}")
    trainer.train(pretrain_dir, model, demo_tasks.PRETRAINING_TASK_NAME, pretrain_feature_lengths,
                  train_steps=pretrain_steps, batch_size=batch_size, log_period=log_period,
                  checkpoint_period=pretrain_steps,
                  optimizer=optim.adafactor(learning_rate=optim.rsqrt_schedule(1.0, pretrain_warmup_steps)))
    print(f"fine-tuning on {demo_tasks.MIXTURE_NAME} for {finetune_steps} steps -> {finetune_dir}")
    result = trainer.train(finetune_dir, model, demo_tasks.MIXTURE_NAME, finetune_feature_lengths,
                           train_steps=finetune_steps, batch_size=batch_size, log_period=log_period,
                           checkpoint_period=finetune_steps, eval_period=finetune_steps, init_checkpoint=pretrain_dir,
                           optimizer=optim.adafactor(learning_rate=optim.constant_schedule(finetune_learning_rate)))
    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs in {model_dir}")
    return result["eval"]
