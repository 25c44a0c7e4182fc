"""Every PEFT method: expected trainable-parameter count, frozen base bitwise unchanged, loss decreases."""
import dataclasses

import jax
import numpy as np
import pytest

from peft_fixtures import BASE, METHOD_CONFIGS, config, flat, model, peft_params, toy_batch, train
from text2text import peft
from text2text.errors import UserError

E, H, HD, M = BASE.emb_dim, BASE.num_heads, BASE.head_dim, BASE.mlp_dim
ENC, DEC = BASE.num_encoder_layers, BASE.num_decoder_layers
ATTENTIONS = ENC + 2 * DEC  # attention modules (encoder self, decoder self + cross)
SELF_ATTENTIONS = ENC + DEC


def expected_count(method: str) -> int:
    """Trainable parameters of each method in the fixtures' configs, counted by hand from the paper designs."""
    cfg = METHOD_CONFIGS[method]
    if method == 'prompt_tuning':
        return cfg.prompt_tuning.length * E
    if method == 'p_tuning':  # embeddings [n, E], bi-LSTM (2 x (W_x [E, 4h], W_h [h, 4h], b [4h])), MLP 2h -> h -> E
        n, h = cfg.p_tuning.num_virtual, cfg.p_tuning.hidden_dim
        return n * E + 2 * (E * 4 * h + h * 4 * h + 4 * h) + (2 * h * h + h) + (h * E + E)
    if method == 'prefix_tuning':
        return SELF_ATTENTIONS * 2 * cfg.prefix_tuning.length * H * HD
    if method == 'adapters':
        m = cfg.adapters.bottleneck
        return (2 * ENC + 3 * DEC) * (2 * E * m + m + E)
    if method == 'lora':
        r = cfg.lora.rank
        return ATTENTIONS * 2 * r * (E + H * HD)  # query and value: A [E, r], B [r, H*HD]
    if method == 'bitfit':
        attention_biases = 3 * H * HD + E
        mlp_biases = 2 * M + E  # gated: wi_0, wi_1, wo
        biases = ATTENTIONS * attention_biases + (ENC + DEC) * mlp_biases
        scales = (2 * ENC + 1 + 3 * DEC + 1) * E
        return biases + scales
    return E * 3 + 3  # linear probe: 3 classes


@pytest.mark.parametrize('method', sorted(METHOD_CONFIGS))
def test_trains_only_its_params_and_loss_decreases(method):
    mdl = model(config(method))
    params = peft_params(mdl)
    trainable, total = peft.count_params(params, mdl.config.peft)
    assert trainable == expected_count(method)
    assert total > 10 * trainable

    # Prompt tuning as Lester et al.: Adafactor with parameter scaling, constant LR 0.3.
    lr, param_scale = (0.3, True) if method == 'prompt_tuning' else (0.02, False)
    new_params, opt_state, losses = train(mdl, params, toy_batch(classify=method == 'linear_probe'), 10, lr,
                                          param_scale)
    print(f'{method}: trainable {trainable}/{total}, loss {losses[0]:.3f} -> {losses[-1]:.3f}')
    assert losses[-1] < 0.95 * losses[0]

    mask = flat(peft.trainable_mask(params, mdl.config.peft))
    before, after = flat(params), flat(new_params)
    changed = [k for k in before if before[k].tobytes() != after[k].tobytes()]
    assert changed and all(mask[k] for k in changed), [k for k in changed if not mask[k]]
    frozen = [k for k in before if not mask[k]]
    assert all(before[k].tobytes() == after[k].tobytes() for k in frozen)
    # Frozen parameters carry no optimizer state: Adafactor keeps at most ~2 numbers per trainable one.
    state_size = sum(np.size(x) for x in jax.tree.leaves(opt_state))
    assert state_size <= 2 * trainable + 8 * len(changed) + 16, (state_size, trainable)


def test_plain_config_has_no_peft_params_and_same_numerics():
    base_model = model(config(None))
    lora_model = model(config('lora'))
    params = peft_params(lora_model)
    batch = toy_batch()
    assert set(flat(peft.base_params(params, lora_model.config))) == set(flat(peft.base_params(params, BASE)))
    # LoRA's B starts at zero, BitFit's biases at zero: a fresh method computes the base function exactly.
    base_loss, _ = base_model.loss_fn(peft.base_params(params, BASE), batch, None)
    lora_loss, _ = lora_model.loss_fn(params, batch, None)
    assert float(base_loss) == pytest.approx(float(lora_loss), rel=1e-6)


def test_adapters_start_near_identity_and_methods_combine():
    combined = dataclasses.replace(METHOD_CONFIGS['adapters'], lora=METHOD_CONFIGS['lora'].lora,
                                   bitfit=METHOD_CONFIGS['bitfit'].bitfit)
    mdl = model(config('adapters', peft=combined))
    params = peft_params(mdl)
    trainable, _ = peft.count_params(params, combined)
    assert trainable == sum(expected_count(m) for m in ('adapters', 'lora', 'bitfit'))
    batch = toy_batch()
    base_loss, _ = model(config(None)).loss_fn(peft.base_params(params, BASE), batch, None)
    loss, _ = mdl.loss_fn(params, batch, None)
    assert abs(float(loss) - float(base_loss)) < 0.02 * float(base_loss)


def test_config_errors_name_the_field():
    with pytest.raises(UserError, match='PeftConfig selects no method'):
        peft.PeftConfig()
    with pytest.raises(UserError, match=r'LoraConfig.targets .*qkv'):
        peft.LoraConfig(targets=('qkv',))
    with pytest.raises(UserError, match='PromptTuningConfig.init=.labels. needs non-empty init_token_ids'):
        peft.PromptTuningConfig(init='labels')
    with pytest.raises(UserError, match='linear_probe is a separate classifier'):
        peft.PeftConfig(lora=peft.LoraConfig(), linear_probe=METHOD_CONFIGS['linear_probe'].linear_probe)
    with pytest.raises(UserError, match='unknown PEFT method'):
        peft.predicate('lorra')
