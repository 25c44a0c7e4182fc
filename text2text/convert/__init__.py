"""Checkpoint conversion: Hugging Face T5 import/export and T5X/orbax import into our param tree."""
from text2text.convert.hf import (config_from_hf, config_to_hf, load_hf_checkpoint, load_hf_params,
                                  save_hf_checkpoint)
from text2text.convert.t5x import check_params, load_t5x_checkpoint, param_shapes

__all__ = ['check_params', 'config_from_hf', 'config_to_hf', 'load_hf_checkpoint', 'load_hf_params',
           'load_t5x_checkpoint', 'param_shapes', 'save_hf_checkpoint']
