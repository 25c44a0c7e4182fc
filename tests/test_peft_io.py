"""PEFT files hold only the method's params and reload onto the base exactly; base checkpoints init PEFT models."""
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from peft_fixtures import (BASE, METHOD_CONFIGS, base_params, config, flat, init_params, model, peft_params, randomized,
                           toy_batch)
from text2text import peft, pretrained
from text2text.convert import save_hf_checkpoint
from text2text.errors import UserError


def _eval(mdl, params, batch):
    """Eval metrics of one batch (summed loss, token accuracy, ...) as numpy."""
    return jax.tree.map(np.asarray, jax.jit(lambda p: mdl.loss_fn(p, batch, None)[1])(params))


@pytest.mark.parametrize('method', sorted(METHOD_CONFIGS))
def test_saved_file_holds_only_the_method_and_restores_it_exactly(method, tmp_path):
    mdl = model(config(method))
    params = peft_params(mdl)
    mask = peft.trainable_mask(params, mdl.config.peft)
    trained = randomized(params, mask, scale=0.2)
    path = str(tmp_path / f'{method}.safetensors')
    names = peft.save_peft_params(path, trained, mdl.config.peft)

    trainable = {k for k, m in flat(mask).items() if m}
    assert set(load_file(path)) == set(names) == trainable
    if method != 'bitfit':  # BitFit trains the base's RMSNorm scales; every other method only new leaves
        assert not trainable & set(flat(base_params()))
    _, methods = peft.read_peft_file(path)
    assert methods == (method,)

    restored = flat(peft.load_peft_params(path, base_params()))
    want = flat(trained)
    assert set(restored) == set(want)
    assert all(restored[k].tobytes() == want[k].tobytes() for k in want)


@pytest.mark.parametrize('method', ['lora', 'prompt_tuning'])
def test_loading_onto_the_base_reproduces_eval_metrics(method, tmp_path):
    mdl = model(config(method))
    params = peft_params(mdl)
    trained = randomized(params, peft.trainable_mask(params, mdl.config.peft), scale=0.2)
    path = str(tmp_path / 'peft.safetensors')
    peft.save_peft_params(path, trained, mdl.config.peft)
    batch = toy_batch()
    want = _eval(mdl, trained, batch)
    got = _eval(mdl, peft.load_peft_params(path, base_params()), batch)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert float(_eval(mdl, params, batch)['loss']) != float(want['loss'])


def test_shape_mismatch_on_load_is_named(tmp_path):
    mdl = model(config('lora'))
    path = str(tmp_path / 'lora.safetensors')
    peft.save_peft_params(path, peft_params(mdl), mdl.config.peft)
    bigger = model(config('lora', peft=peft.PeftConfig(lora=peft.LoraConfig(rank=3))))
    with pytest.raises(UserError, match=r'lora\.safetensors: parameter \S+/lora_a has shape \(32, 2\), '
                                         r'the model has \(32, 3\)'):
        peft.load_peft_params(path, peft_params(bigger))
    with pytest.raises(UserError, match='not found'):
        peft.load_peft_params(str(tmp_path / 'missing.safetensors'), {})


def test_hf_base_checkpoint_initialises_a_peft_model(tmp_path):
    save_hf_checkpoint(BASE, base_params(), str(tmp_path / 'base'))
    for method in ('lora', 'prompt_tuning'):
        mdl = model(config(method))
        current = jax.device_put(init_params(mdl, seed=3))
        fresh = flat(current)
        loaded = flat(pretrained.load_params(str(tmp_path / 'base'), mdl.config, current))
        base = flat(base_params())
        assert set(loaded) == set(fresh)
        for name, value in loaded.items():
            if name in base:
                np.testing.assert_array_equal(value, base[name])
            elif 'prompt_tuning' not in name:
                np.testing.assert_array_equal(value, fresh[name])
        if method == 'prompt_tuning':  # re-drawn from the loaded (not the random) vocabulary embedding
            prompt = loaded['encoder/prompt_tuning/prompt'][0]
            assert all((base['token_embedder/embedding'] == row).all(axis=1).any() for row in prompt)

