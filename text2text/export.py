"""Run mode "export": write a trained run's checkpoint as a Hugging Face T5 directory.

`run.py --gin_file=runs/export.gin --gin.MODEL_DIR='"DIR"' --gin.EXPORT_DIR='"OUT"' [--gin.EXPORT_STEP=N]`
reads the model config the run recorded in MODEL_DIR/config.gin, restores the params of the latest (or the
given) checkpoint and writes `config.json` + `model.safetensors` (`convert.hf.save_hf_checkpoint`) plus the
run's SentencePiece model as `spiece.model` and a `tokenizer_config.json` with its number of sentinel ids,
so that `T5ForConditionalGeneration.from_pretrained(OUT)` and `T5Tokenizer.from_pretrained(OUT)` load it.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import sentencepiece as spm
import tensorflow as tf
from flax.core import meta

from tasks import vocab as vocab_lib
from text2text import checkpoints, config as config_lib, gin_sources, scan, trainer
from text2text.config import T5Config
from text2text.convert import hf
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel

_GET_CONFIG = ("config.get_config", "text2text.config.get_config")
_VOCAB_PATH = ("vocab.sentencepiece_model_path", "tasks.vocab.sentencepiece_model_path")


def run_settings(model_dir: str) -> tuple[T5Config, str]:
    """(model config, SentencePiece model path) of a run, from the MODEL_DIR/config.gin it wrote.

    The model is `config.get_config(name, **overrides)` from its bindings; the vocabulary is the bound
    `vocab.sentencepiece_model_path.path`, else $T2T_VOCAB_PATH, else T5's default. Raises UserError if
    MODEL_DIR has no config.gin, or the model config is not made of literal values (a PEFT model)."""
    path = os.path.join(model_dir, "config.gin")
    if not os.path.isfile(path):
        raise UserError(f"MODEL_DIR {model_dir!r} has no config.gin (written by every training run); "
                        "is it a text2text run directory?")
    bindings = gin_sources.read_bindings(path)
    settings = {param: value for (selector, param), value in bindings.items() if selector in _GET_CONFIG}
    if "peft" in settings and settings["peft"] is not None:
        raise UserError(f"{path}: the run trained PEFT parameters (config.get_config.peft); export a LoRA run "
                        "merged with text2text.peft.export_merged_hf")
    unresolved = sorted(k for k, v in settings.items()
                        if isinstance(v, (gin_sources.MacroRef, gin_sources.ConfigurableRef)))
    if unresolved:
        raise UserError(f"{path}: config.get_config.{unresolved[0]} is not a literal value; cannot rebuild the model")
    name = settings.pop("name", None)
    if name is None:
        raise UserError(f"{path}: no config.get_config.name binding; cannot tell which model the run trained")
    vocab_path = next((bindings[(s, "path")] for s in _VOCAB_PATH if (s, "path") in bindings), None)
    return config_lib.get_config(name, **settings), vocab_lib.sentencepiece_model_path(vocab_path)


def _restore_params(model_dir: str, model_config: T5Config, step: int | None) -> tuple[int, Any]:
    steps = checkpoints.CheckpointManager(model_dir, read_only=True).all_steps()
    if not steps:
        raise UserError(f"MODEL_DIR {model_dir!r} holds no checkpoints")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise UserError(f"MODEL_DIR {model_dir!r} has no checkpoint for step {step}; it has {steps}")
    init = trainer.params_init_fn(EncoderDecoderModel(model_config), {"inputs": 1, "targets": 1})
    abstract = meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))
    params = checkpoints.restore_params_only(os.path.join(model_dir, str(step)), abstract)
    return step, jax.device_get(params)


def write_tokenizer(vocab_path: str, output_dir: str, model_vocab_size: int,
                    extra_ids: int = vocab_lib.DEFAULT_EXTRA_IDS) -> None:
    """Copies the SentencePiece model to OUTPUT_DIR/spiece.model and writes tokenizer_config.json
    (T5Tokenizer, `extra_ids` sentinels <extra_id_0> = the last id, as seqio numbers them).

    Raises UserError if the model cannot be read or its pieces plus sentinels exceed the model's vocab_size."""
    target = os.path.join(output_dir, "spiece.model")
    try:
        tf.io.gfile.copy(vocab_path, target, overwrite=True)
    except (tf.errors.OpError, OSError) as exc:
        raise UserError(f"cannot copy the SentencePiece model {vocab_path} to {target}: {exc}") from exc
    pieces = spm.SentencePieceProcessor(model_file=target).get_piece_size()
    if pieces + extra_ids > model_vocab_size:
        raise UserError(f"{vocab_path}: {pieces} pieces + {extra_ids} sentinels exceed the model's vocab_size "
                        f"{model_vocab_size}; is it the vocabulary the run trained with?")
    settings = {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids, "eos_token": "</s>",
                "unk_token": "<unk>", "pad_token": "<pad>"}
    with open(os.path.join(output_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)


def export_checkpoint(model_dir: str, output_dir: str, step: int | None = None) -> str:
    """Writes checkpoint `step` (default: the latest) of the run in `model_dir` to `output_dir` as a Hugging
    Face T5 directory (fp32 weights, config.json, spiece.model, tokenizer_config.json); prints and returns
    `output_dir`. Scanned layers are unstacked. Raises UserError for a directory without a run or checkpoint."""
    model_config, vocab_path = run_settings(model_dir)
    vocab_lib.check_model_file(vocab_path)
    step, params = _restore_params(model_dir, model_config, step)
    if model_config.scan_layers:
        params, model_config = scan.unscan_params(params, model_config), scan.unscanned_config(model_config)
    hf.save_hf_checkpoint(model_config, params, output_dir)
    write_tokenizer(vocab_path, output_dir, model_config.vocab_size)
    print(f"exported step {step} of {model_dir} to {output_dir} "
          f"({', '.join(sorted(os.listdir(output_dir)))})")
    return output_dir
