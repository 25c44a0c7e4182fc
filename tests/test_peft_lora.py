"""LoRA: merged weights give the unmerged logits, and the merged model exports to Hugging Face T5."""
import dataclasses

import jax
import numpy as np
import pytest

from peft_fixtures import config, flat, model, peft_params, randomized, toy_batch
from text2text import peft
from text2text.errors import UserError

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
torch.set_num_threads(1)


def _trained_lora():
    mdl = model(config('lora', peft=peft.PeftConfig(lora=peft.LoraConfig(rank=2, alpha=4.0,
                                                                          targets=('query', 'value', 'wo')))))
    params = peft_params(mdl)
    return mdl, randomized(params, peft.trainable_mask(params, mdl.config.peft), scale=0.1)


def _logits(mdl, params, batch):
    return np.asarray(jax.jit(lambda p: mdl.module.apply(
        {'params': p}, batch['encoder_input_tokens'], batch['decoder_input_tokens'], enable_dropout=False))(params))


def test_merged_equals_unmerged_and_exports_to_hf(tmp_path):
    mdl, params = _trained_lora()
    merged = peft.merge_lora(params, mdl.config.peft.lora)
    assert not any('lora_' in k for k in flat(merged))
    batch = toy_batch()
    plain = model(dataclasses.replace(mdl.config, peft=None))
    unmerged_logits = _logits(mdl, params, batch)
    merged_logits = _logits(plain, merged, batch)
    diff = np.abs(merged_logits - unmerged_logits).max()
    print(f'merged vs unmerged logits max|diff|={diff:.3g} (max|logit|={np.abs(merged_logits).max():.3g})')
    assert diff <= 1e-5
    base_logits = _logits(plain, peft.base_params(params, plain.config), batch)
    assert np.abs(base_logits - unmerged_logits).max() > 1e-2  # the LoRA update is not negligible

    base_config = peft.export_merged_hf(mdl.config, params, str(tmp_path / 'hf'))
    assert base_config.peft is None
    hf = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / 'hf')).eval()
    enc = batch['encoder_input_tokens']
    with torch.no_grad():
        hf_logits = hf(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=torch.tensor(enc > 0),
                       decoder_input_ids=torch.tensor(batch['decoder_input_tokens'], dtype=torch.long)).logits.numpy()
    valid = batch['decoder_target_tokens'] > 0
    hf_diff = np.abs(hf_logits - unmerged_logits)[valid].max()
    print(f'HF export vs unmerged logits max|diff|={hf_diff:.3g}')
    assert hf_diff <= 1e-4


def test_only_pure_lora_models_export():
    both = peft.PeftConfig(lora=peft.LoraConfig(), bitfit=peft.BitFitConfig())
    with pytest.raises(UserError, match='bitfit cannot be merged'):
        peft.export_merged_hf(config('lora', peft=both), {}, '/nonexistent')
    with pytest.raises(UserError, match='has no LoRA'):
        peft.export_merged_hf(config(None), {}, '/nonexistent')
