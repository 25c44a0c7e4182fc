"""Parameter-efficient tuning of T5: prompt tuning, P-tuning, prefix tuning, adapters, LoRA, BitFit, linear probing.

Select methods with `T5Config.peft = PeftConfig(...)` (gin: gin_configs/peft/*.gin), train only their
parameters with `trainable.peft_optimizer`, and keep them apart from the base with `save_peft_params` /
`load_peft_params`.
"""
from text2text.peft.adapters import AdapterConfig
from text2text.peft.bitfit import BitFitConfig
from text2text.peft.io import (base_params, load_peft_params, peft_leaves, read_peft_file,
                               save_peft_from_checkpoint, save_peft_params, with_base_params)
from text2text.peft.linear_probe import LinearProbeModel
from text2text.peft.lora import LoraConfig, export_merged_hf
from text2text.peft.lora import merge as merge_lora
from text2text.peft.p_tuning import PTuningConfig, fold_prompt_encoder
from text2text.peft.peft_config import METHODS, LinearProbeConfig, PeftConfig
from text2text.peft.prefix_tuning import PrefixTuningConfig, fold_reparameterization
from text2text.peft.prompt_tuning import PromptTuningConfig
from text2text.peft.trainable import count_params, peft_optimizer, predicate, trainable_mask

__all__ = ['AdapterConfig', 'BitFitConfig', 'LinearProbeConfig', 'LinearProbeModel', 'LoraConfig', 'METHODS',
           'PTuningConfig', 'PeftConfig', 'PrefixTuningConfig', 'PromptTuningConfig', 'base_params', 'count_params',
           'export_merged_hf', 'fold_prompt_encoder', 'fold_reparameterization', 'load_peft_params', 'merge_lora',
           'peft_leaves', 'peft_optimizer', 'predicate', 'read_peft_file', 'save_peft_from_checkpoint',
           'save_peft_params', 'trainable_mask', 'with_base_params']
