"""P-tuning: virtual tokens at their markers only, folding the prompt encoder, training only it (PEFT and few-shot)."""
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from peft_fixtures import base_params, config, flat, model, toy_batch
from prompting_fixtures import prompt_model, toy_examples
from tasks.prompting import Template, Verbalizer
from tasks.prompting import p_tuning as method
from tasks.prompting.problem import FewShotData, Problem, Setting
from tasks.prompting import engine
from text2text import peft
from text2text.errors import UserError
from text2text.peft import p_tuning

MARKERS = (42, 50, 26)  # ids toy_batch's rows hold (each row one or two)


def _cfg(encoder='lstm', **kw):
    return peft.PeftConfig(p_tuning=peft.PTuningConfig(num_virtual=3, marker_ids=MARKERS, encoder=encoder,
                                                       hidden_dim=8, **kw))


def _params(cfg):
    """The fixtures' base T5 with a fresh prompt encoder (only the small module is initialised)."""
    return p_tuning.init_prompt_encoder(base_params(), cfg.p_tuning, jax.random.PRNGKey(1))


def _logits(mdl, params, batch):
    apply = jax.jit(lambda p, enc, dec: mdl.module.apply({'params': p}, enc, dec, enable_dropout=False))
    return np.asarray(apply(params, batch['encoder_input_tokens'], batch['decoder_input_tokens']))


class _InputHook(nn.Module):
    peft_config: peft.PeftConfig

    @nn.compact
    def __call__(self, x, tokens, mask, embedding):
        return self.peft_config.encoder_inputs(x, tokens, None, mask, embedding)


def test_virtual_tokens_land_exactly_at_their_markers():
    cfg = _cfg('mlp')
    params = _params(cfg)
    tokens = toy_batch()['encoder_input_tokens']
    table = params['token_embedder']['embedding']
    x, mask = np.asarray(table)[tokens], np.random.RandomState(0).randn(4, 1, 10, 10).astype(np.float32)
    out, out_mask = _InputHook(cfg).apply({'params': {'p_tuning': params['encoder']['p_tuning']}}, x, tokens, mask,
                                          table)
    virtual = np.asarray(p_tuning.virtual_embeddings(params, cfg.p_tuning))
    out = np.asarray(out)
    assert np.array_equal(np.asarray(out_mask), mask)  # markers are real tokens: the mask stays
    placed = 0
    for b, l in np.ndindex(tokens.shape):
        if tokens[b, l] in MARKERS:
            np.testing.assert_array_equal(out[b, l], virtual[MARKERS.index(tokens[b, l])])
            placed += 1
        else:
            np.testing.assert_array_equal(out[b, l], x[b, l])
    assert placed == 6 and np.abs(virtual - np.asarray(table)[list(MARKERS)]).min() > 1e-3


def test_plain_virtual_tokens_equal_real_tokens_in_their_place():
    """Encoder 'none' with e_j = embedding of token t_j gives the plain T5's logits on the input with t_j written in."""
    words = (7, 8, 9)
    cfg = _cfg('none', init_token_ids=words)
    params = _params(cfg)
    batch = toy_batch()
    got = _logits(model(config('p_tuning', peft=cfg)), params, batch)
    written = dict(batch, encoder_input_tokens=np.vectorize(dict(zip(MARKERS, words)).get)(
        batch['encoder_input_tokens'], batch['encoder_input_tokens']))
    np.testing.assert_allclose(got, _logits(model(config(None)), base_params(), written), atol=1e-6)


@pytest.mark.parametrize('encoder', ['lstm', 'mlp'])
def test_folded_prompt_encoder_gives_identical_logits(encoder):
    cfg = _cfg(encoder)
    mdl = model(config('p_tuning', peft=cfg))
    params = _params(cfg)
    folded, folded_cfg = peft.fold_prompt_encoder(params, cfg)
    assert folded_cfg.p_tuning.encoder == 'none'
    assert set(folded['encoder']['p_tuning']) == {'embedding'}
    batch = toy_batch()
    want = _logits(mdl, params, batch)
    np.testing.assert_allclose(_logits(model(dataclasses.replace(mdl.config, peft=folded_cfg)), folded, batch), want,
                               atol=1e-6)
    plain = _logits(model(config(None)), base_params(), batch)
    assert np.abs(want - plain).max(axis=(1, 2)).min() > 1e-3  # every toy row has a marker
    with pytest.raises(UserError, match='no P-tuning'):
        peft.fold_prompt_encoder(params, peft.PeftConfig(lora=peft.LoraConfig()))


def _toy_setting_and_problem():
    pm = prompt_model()
    setting = Setting(pm, engine.init_params(pm, seed=0), steps=30, batch_size=8)
    problem = Problem('toy', (Template('{text} It was <extra_id_0>.'),),
                      Verbalizer({'positive': 'great', 'negative': 'terrible'}), ('text',))
    return setting, problem


def test_few_shot_p_tuning_trains_only_the_prompt_encoder_and_lowers_the_loss():
    setting, problem = _toy_setting_and_problem()
    texts, ids = method.virtual_tokens(4, setting.base.vocabulary)
    assert texts == ('<extra_id_99>', '<extra_id_98>', '<extra_id_97>', '<extra_id_96>')
    template = method.mixed_template(problem.templates[0], texts)
    assert template.inputs == '<extra_id_99> <extra_id_98> {text} It was <extra_id_97> <extra_id_96> <extra_id_0>.'
    cfg = peft.PTuningConfig(num_virtual=4, marker_ids=ids, hidden_dim=16)
    task = problem.class_task(toy_examples(16), template)
    pm, params, result = method.train_prompt_encoder(setting, task, cfg, seed=0, learning_rate=3e-2)
    assert result.losses[-5:].mean() < 0.7 * result.losses[:5].mean()
    before, after = flat(setting.base_params), flat(params)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # the base is bitwise frozen
    mask = flat(peft.trainable_mask(params, pm.model.config.peft))
    assert {k for k, m in mask.items() if m} == {k for k in after if k.startswith('encoder/p_tuning/')}
    # The method function: same budget, reports the mixed template and accuracy on the test rows.
    data = FewShotData(tuple(toy_examples(16)), (), (), tuple(toy_examples(8)))
    out = method.p_tuning(setting, problem, data, seed=0, hidden_dim=16, learning_rate=3e-2)
    assert out.details['template'] == template.inputs and 0.0 <= out.accuracy <= 100.0
    assert out.details['final_loss'] == pytest.approx(result.losses[-1], rel=1e-4)


def test_bad_p_tuning_input_is_one_user_error():
    setting, problem = _toy_setting_and_problem()
    data = FewShotData(tuple(toy_examples(4)), (), (), tuple(toy_examples(4)))
    with pytest.raises(UserError, match=r"template '\{text\} It was <extra_id_0>.' has none of the virtual tokens"):
        method.p_tuning(setting, problem, data, 0, template='{text} It was <extra_id_0>.')
    with pytest.raises(UserError, match=r"template '\{text\} <extra_id_99>' has no <extra_id_0>"):
        method.p_tuning(setting, problem, data, 0, template='{text} <extra_id_99>')
    with pytest.raises(UserError, match='room for 1 to 98 virtual tokens'):
        method.virtual_tokens(99, setting.base.vocabulary)
    with pytest.raises(UserError, match='must be 2 distinct token ids'):
        peft.PTuningConfig(num_virtual=2, marker_ids=(5, 5))
    with pytest.raises(UserError, match="encoder='gru'"):
        peft.PTuningConfig(num_virtual=1, marker_ids=(5,), encoder='gru')
