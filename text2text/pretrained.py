"""Initial params from a pretrained checkpoint: a Hugging Face directory, a T5X checkpoint or one of ours."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from text2text import checkpoints, peft, scan
from text2text.config import T5Config
from text2text.convert import hf, t5x
from text2text.errors import UserError


def checkpoint_kind(path: str) -> str:
    """'hf', 't5x' or 'text2text', judged by the files the directory holds."""
    if not os.path.exists(path) and "://" not in path:
        raise UserError(f"initial checkpoint {path!r} does not exist")
    if os.path.isfile(os.path.join(path, "config.json")):
        return "hf"
    if os.path.isfile(os.path.join(path, "checkpoint")) or os.path.basename(os.path.normpath(path)).startswith("checkpoint_"):
        return "t5x"
    return "text2text"


def load_params(path: str, config: T5Config, current_params: Any) -> Any:
    """Reads params for `config` from `path` into the shardings of `current_params` (shapes are checked).

    With `config.peft` set, `path` holds a plain T5: its params are loaded and the PEFT params kept.
    """
    if config.peft is not None:
        loaded = load_params(path, dataclasses.replace(config, peft=None), peft.base_params(current_params, config))
        return peft.with_base_params(current_params, loaded, config)
    kind = checkpoint_kind(path)
    if kind == "text2text":
        return checkpoints.restore_params_only(path, checkpoints.abstract_like(current_params))
    base = scan.unscanned_config(config)  # converters read the unscanned layout; stack layers if config scans
    loaded = hf.load_hf_params(path, base) if kind == "hf" else t5x.load_t5x_checkpoint(path, base)
    loaded = scan.match_layout(loaded, config)
    return jax.tree.map(lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding), loaded, current_params)
