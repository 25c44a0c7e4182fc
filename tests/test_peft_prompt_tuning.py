"""Prompt tuning: initialisations, per-example task prompts, packed-segment isolation, cached decoding."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from peft_fixtures import ENC_LEN, base_params, config, model, peft_params, toy_batch, uncached_greedy
from text2text import peft
from text2text.peft import prompt_tuning
from text2text.peft.prompt_tuning import PromptTuningConfig

EMBEDDING = np.random.RandomState(0).normal(size=(64, 8)).astype(np.float32)


def test_initialisations_follow_the_config():
    rng = jax.random.PRNGKey(0)
    vocab = np.asarray(prompt_tuning.initial_prompt(rng, EMBEDDING, PromptTuningConfig(length=6, vocab_sample_size=20)))
    assert vocab.shape == (1, 6, 8)
    rows = [int(np.flatnonzero((EMBEDDING == row).all(axis=1))[0]) for row in vocab[0]]
    assert all(3 <= r < 20 for r in rows)

    labels = PromptTuningConfig(length=5, init='labels', init_token_ids=((4,), (5, 6)))
    got = np.asarray(prompt_tuning.initial_prompt(rng, EMBEDDING, labels))
    np.testing.assert_allclose(got[0, 0], EMBEDDING[4])
    np.testing.assert_allclose(got[0, 1], EMBEDDING[5:7].mean(axis=0), rtol=1e-6)

    text = PromptTuningConfig(length=5, init='text', init_token_ids=(9, 10))
    np.testing.assert_array_equal(prompt_tuning.initial_prompt(rng, EMBEDDING, text)[0], EMBEDDING[[9, 10, 9, 10, 9]])

    uniform = prompt_tuning.initial_prompt(rng, EMBEDDING, PromptTuningConfig(length=50, init='uniform', num_tasks=3))
    assert uniform.shape == (3, 50, 8) and float(jnp.abs(uniform).max()) <= 0.5 and float(uniform.std()) > 0.2


def test_loading_a_base_redraws_the_prompt_from_its_embedding():
    mdl = model(config('prompt_tuning'))
    prompt = np.asarray(peft_params(mdl)['encoder']['prompt_tuning']['prompt'])[0]
    table = np.asarray(base_params()['token_embedder']['embedding'])
    assert all((table == row).all(axis=1).any() for row in prompt)


def test_task_index_selects_each_rows_prompt_inside_the_step():
    multi = dataclasses.replace(config('prompt_tuning').peft, prompt_tuning=PromptTuningConfig(length=4, num_tasks=2))
    mdl = model(config('prompt_tuning', peft=multi))
    params = peft_params(mdl)
    prompts = params['encoder']['prompt_tuning']['prompt']
    assert prompts.shape[0] == 2 and not np.allclose(prompts[0], prompts[1])
    batch = toy_batch()
    task_ids = np.array([1, 0, 1, 0])
    tokens = batch['encoder_input_tokens'].copy()
    tokens[:, 0] = task_ids
    logits = mdl.module.apply({'params': params}, tokens, batch['decoder_input_tokens'], enable_dropout=False)

    single = model(config('prompt_tuning'))
    without_index = tokens.copy()
    without_index[:, 0] = 0  # the index position is masked, exactly like padding
    for task in (0, 1):
        one = {**params, 'encoder': {**params['encoder'], 'prompt_tuning': {'prompt': prompts[task][None]}}}
        want = single.module.apply({'params': one}, without_index, batch['decoder_input_tokens'], enable_dropout=False)
        rows = task_ids == task
        np.testing.assert_allclose(logits[rows], want[rows], atol=1e-5)


def test_packed_segments_see_the_prompt_but_not_each_other():
    mdl = model(config('prompt_tuning'))
    params = peft_params(mdl)
    tokens = np.array([[5, 6, 7, 1, 9, 10, 11, 12, 1, 0]], np.int32)
    segments = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0]], np.int32)
    encode = jax.jit(lambda t: mdl.module.apply({'params': params}, t, segments, enable_dropout=False,
                                                method=mdl.module.encode))
    first = encode(tokens)
    changed = tokens.copy()
    changed[0, 4:8] = [20, 21, 22, 23]
    second = encode(changed)
    length = mdl.config.peft.prompt_tuning.length
    assert first.shape == (1, length + ENC_LEN, mdl.config.emb_dim)
    np.testing.assert_array_equal(first[0, :length + 4], second[0, :length + 4])  # prompt and segment 1
    assert not np.allclose(first[0, length + 4:length + 9], second[0, length + 4:length + 9])
    no_prompt = dataclasses.replace(mdl.config, peft=None)
    plain = model(no_prompt).module.apply({'params': peft.base_params(params, no_prompt)}, tokens, segments,
                                          enable_dropout=False, method=mdl.module.encode)
    assert not np.allclose(first[0, length:length + 4], plain[0, :4], atol=1e-3)  # the prompt is attended to


def test_cached_greedy_decoding_equals_uncached():
    mdl = model(config('prompt_tuning'))
    params = peft_params(mdl)
    tokens = toy_batch()['encoder_input_tokens']
    cached = np.asarray(mdl.predict_batch(params, {'encoder_input_tokens': tokens}, max_decode_length=6))
    np.testing.assert_array_equal(cached, uncached_greedy(mdl, params, tokens, 6))
