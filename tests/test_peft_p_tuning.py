"""P-tuning: virtual tokens at their markers only, folding the prompt encoder, training only it (PEFT and few-shot)."""
import dataclasses
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from peft_fixtures import flat
from prompting_fixtures import CONFIG, prompt_model, toy_examples
from tasks.prompting import Template, Verbalizer, engine
from tasks.prompting import p_tuning as method
from tasks.prompting.problem import FewShotData, Problem, Setting
from text2text import peft
from text2text.errors import UserError
from text2text.models import EncoderDecoderModel
from text2text.peft import p_tuning

TEXTS = ["<extra_id_99> the food was good <extra_id_98> It was <extra_id_97> <extra_id_0>.",
         "the game was bad <extra_id_98> <extra_id_0> <extra_id_98>", "the song was good <extra_id_0>"]


@functools.lru_cache(maxsize=None)
def _base():
    """The tiny T5 of the prompting fixtures (one init for the whole file) and its marker ids."""
    pm = prompt_model()
    return engine.init_params(pm, seed=0), method.virtual_token_ids(3, pm.vocabulary)


def _batch():
    pm = prompt_model()
    return pm.pair_batch(pm.tokens(TEXTS, pm.feature_lengths['inputs']), pm.tokens(['<extra_id_0> great'] * 3, 6))


def _cfg(encoder='lstm', **kw):
    return peft.PeftConfig(p_tuning=peft.PTuningConfig(num_virtual=3, marker_ids=_base()[1], encoder=encoder,
                                                       hidden_dim=8, **kw))


def _params(cfg):
    """The base T5 with a fresh prompt encoder (only the small module is initialised)."""
    return p_tuning.init_prompt_encoder(_base()[0], cfg.p_tuning, jax.random.PRNGKey(1))


@functools.lru_cache(maxsize=None)
def _apply(peft_config):
    """jit logits [b, l, vocab] of the tiny T5 with `peft_config` (compiled once per config in this file)."""
    module = EncoderDecoderModel(dataclasses.replace(CONFIG, peft=peft_config)).module
    return jax.jit(lambda p, enc, dec: module.apply({'params': p}, enc, dec, enable_dropout=False))


def _logits(peft_config, params, batch):
    return np.asarray(_apply(peft_config)(params, batch['encoder_input_tokens'], batch['decoder_input_tokens']))


class _InputHook(nn.Module):
    peft_config: peft.PeftConfig

    @nn.compact
    def __call__(self, x, tokens, mask, embedding):
        return self.peft_config.encoder_inputs(x, tokens, None, mask, embedding)


def test_virtual_tokens_land_exactly_at_their_markers():
    cfg = _cfg('mlp')
    params = _params(cfg)
    tokens, markers = _batch()['encoder_input_tokens'], _base()[1]
    table = params['token_embedder']['embedding']
    x, mask = np.asarray(table)[tokens], np.random.RandomState(0).randn(3, 1, 24, 24).astype(np.float32)
    out, out_mask = _InputHook(cfg).apply({'params': {'p_tuning': params['encoder']['p_tuning']}}, x, tokens, mask,
                                          table)
    virtual = np.asarray(p_tuning.virtual_embeddings(params, cfg.p_tuning))
    out = np.asarray(out)
    assert np.array_equal(np.asarray(out_mask), mask)  # markers are real tokens: the mask stays
    placed = 0
    for b, l in np.ndindex(tokens.shape):
        if tokens[b, l] in markers:
            np.testing.assert_array_equal(out[b, l], virtual[markers.index(tokens[b, l])])
            placed += 1
        else:
            np.testing.assert_array_equal(out[b, l], x[b, l])
    assert placed == 5 and np.abs(virtual - np.asarray(table)[list(markers)]).min() > 1e-3


def test_plain_virtual_tokens_equal_real_tokens_in_their_place():
    """Encoder 'none' with e_j = embedding of token t_j gives the plain T5's logits on the input with t_j written in."""
    words = (7, 8, 9)
    cfg = _cfg('none')
    table = _base()[0]['token_embedder']['embedding'][np.asarray(words)]
    np.testing.assert_array_equal(p_tuning.initial_embeddings(None, _base()[0]['token_embedder']['embedding'],
                                                              _cfg('none', init_token_ids=words).p_tuning), table)
    params = p_tuning.with_prompt_encoder(_base()[0], {'embedding': table})
    batch = _batch()
    got = _logits(cfg, params, batch)
    written = dict(batch, encoder_input_tokens=np.vectorize(dict(zip(_base()[1], words)).get)(
        batch['encoder_input_tokens'], batch['encoder_input_tokens']))
    np.testing.assert_allclose(got, _logits(None, _base()[0], written), atol=1e-6)


@pytest.mark.parametrize('encoder', ['lstm', 'mlp'])
def test_folded_prompt_encoder_gives_identical_logits(encoder):
    cfg = _cfg(encoder)
    params = _params(cfg)
    folded, folded_cfg = peft.fold_prompt_encoder(params, cfg)
    assert folded_cfg.p_tuning.encoder == 'none'
    assert set(folded['encoder']['p_tuning']) == {'embedding'}
    batch = _batch()
    want = _logits(cfg, params, batch)
    np.testing.assert_allclose(_logits(folded_cfg, folded, batch), want, atol=1e-6)
    plain = _logits(None, _base()[0], batch)
    assert np.abs(want - plain)[:2].max() > 1e-3 and np.array_equal(want[2], plain[2])  # row 2 has no marker
    with pytest.raises(UserError, match='no P-tuning'):
        peft.fold_prompt_encoder(params, peft.PeftConfig(lora=peft.LoraConfig()))


def _toy_setting_and_problem():
    setting = Setting(prompt_model(), _base()[0], steps=30, batch_size=8)
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


def test_mixed_templates_put_virtual_tokens_before_the_text_and_before_the_answer():
    markers = ["<extra_id_99>", "<extra_id_98>", "<extra_id_97>"]
    cloze = method.mixed_template(Template("{text} It was <extra_id_0>."), markers)
    assert cloze.inputs == "<extra_id_99> <extra_id_98> {text} It was <extra_id_97> <extra_id_0>."
    instruction = method.mixed_template(Template("Positive or negative? {text}", targets="{label}"), markers)
    assert instruction.inputs == "<extra_id_99> <extra_id_98> Positive or negative? {text} <extra_id_97>"
    assert instruction.targets == "{label}"
