"""Parity of the HF T5 importer/exporter with transformers' T5ForConditionalGeneration (random, tiny, offline)."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from safetensors.numpy import load_file, save_file  # noqa: E402

from text2text.config import get_config  # noqa: E402
from text2text.convert import (config_from_hf, config_to_hf, load_hf_checkpoint, load_hf_params,  # noqa: E402
                               save_hf_checkpoint)
from text2text.errors import UserError  # noqa: E402
from text2text.models import EncoderDecoderModel  # noqa: E402
from text2text.network import Transformer  # noqa: E402

VOCAB, DECODE_STEPS, TOL = 96, 20, 1e-4
torch.set_num_threads(1)  # tiny ops: extra threads only contend on the shared test machine
transformers.logging.set_verbosity_error()  # the expected 'will NOT tie them' notice for the untied model
STYLES = {
    'v1_0': dict(feed_forward_proj='relu', tie_word_embeddings=True),
    'v1_1': dict(feed_forward_proj='gated-gelu', tie_word_embeddings=False),
}


def _hf_model(style: str):
    """A random HF T5 with every weight (layer norms included) perturbed; v1_1 gets a distinct lm_head."""
    torch.manual_seed(0 if style == 'v1_0' else 1)
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
                                num_decoder_layers=3, relative_attention_num_buckets=8,
                                relative_attention_max_distance=20, dropout_rate=0.0,
                                decoder_start_token_id=0, **STYLES[style])
    model = transformers.T5ForConditionalGeneration(cfg)
    if style == 'v1_1':
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'layer_norm' in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope='module', params=sorted(STYLES))
def hf_dir(request, tmp_path_factory):
    """(style, HF model, directory it was saved to with save_pretrained)."""
    model = _hf_model(request.param)
    path = str(tmp_path_factory.mktemp(request.param) / 'hf')
    model.save_pretrained(path, safe_serialization=True)
    return request.param, model, path


def _batch():
    rng = np.random.default_rng(0)
    enc = np.zeros((3, 11), np.int32)
    targets = np.zeros((3, 9), np.int32)
    for row, (n_enc, n_dec) in enumerate([(11, 9), (7, 5), (4, 3)]):
        enc[row, :n_enc] = rng.integers(2, VOCAB, n_enc)
        targets[row, :n_dec] = rng.integers(2, VOCAB, n_dec)
    dec_in = np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
    return enc, dec_in, targets


def _hf_forward(model, enc, dec_in):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=torch.tensor(enc > 0),
                    decoder_input_ids=torch.tensor(dec_in, dtype=torch.long))
    return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


def _our_run(module):
    """One jitted function (params, encoder tokens, decoder inputs) -> (encoder output, logits)."""
    def run(module, enc, dec):
        return module.encode(enc, enable_dropout=False), module(enc, dec, enable_dropout=False)
    return jax.jit(lambda p, e, d: module.apply({'params': p}, e, d, method=run))


def _our_greedy(run, params, enc):
    """Greedy decode of DECODE_STEPS tokens with EOS suppressed (HF's min_new_tokens does the same)."""
    tokens = jnp.zeros((enc.shape[0], DECODE_STEPS + 1), jnp.int32)
    for t in range(DECODE_STEPS):
        logits = run(params, enc, tokens)[1][:, t].at[:, 1].set(-jnp.inf)
        tokens = tokens.at[:, t + 1].set(jnp.argmax(logits, axis=-1))
    return np.asarray(tokens)


def test_saved_untied_model_keeps_distinct_lm_head(hf_dir):
    style, model, path = hf_dir
    weights = load_file(os.path.join(path, 'model.safetensors'))
    if style == 'v1_1':
        assert not np.array_equal(weights['lm_head.weight'], weights['shared.weight'])
        np.testing.assert_array_equal(weights['lm_head.weight'], model.lm_head.weight.detach().numpy())
    else:
        assert model.lm_head.weight is model.shared.weight


def test_import_matches_hf_outputs_and_greedy_decode(hf_dir):
    style, model, path = hf_dir
    config, params = load_hf_checkpoint(path)
    assert config.mlp_activations == (('relu',) if style == 'v1_0' else ('gelu', 'linear'))
    assert config.logits_via_embedding == (style == 'v1_0')
    assert (config.num_encoder_layers, config.num_decoder_layers, config.vocab_size) == (2, 3, VOCAB)
    enc, dec_in, targets = _batch()
    run = _our_run(Transformer(config))
    # Same decoder length as the greedy loop (one compile); trailing zeros are causally invisible.
    padded = np.pad(dec_in, ((0, 0), (0, DECODE_STEPS + 1 - dec_in.shape[1])))
    ours_enc, ours_logits = run(params, enc, padded)
    ours_logits = ours_logits[:, :dec_in.shape[1]]
    hf_enc, hf_logits = _hf_forward(model, enc, dec_in)
    enc_diff = np.abs(np.asarray(ours_enc) - hf_enc)[enc > 0].max()
    logit_diff = np.abs(np.asarray(ours_logits) - hf_logits)[targets > 0].max()
    print(f'{style}: encoder max|diff|={enc_diff:.3g} logits max|diff|={logit_diff:.3g}')
    assert enc_diff <= TOL and logit_diff <= TOL
    assert np.abs(hf_logits).max() > 0.1  # the comparison is not between near-zero tensors

    # use_cache=False: transformers sizes its KV cache by num_layers, which breaks when the decoder is deeper.
    with torch.no_grad():
        hf_tokens = model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                                   attention_mask=torch.tensor(enc > 0), do_sample=False, num_beams=1,
                                   max_new_tokens=DECODE_STEPS, min_new_tokens=DECODE_STEPS,
                                   decoder_start_token_id=0, use_cache=False).numpy()
    ours_tokens = _our_greedy(run, params, enc)
    assert hf_tokens.shape == ours_tokens.shape == (3, DECODE_STEPS + 1)
    np.testing.assert_array_equal(ours_tokens, hf_tokens)


def test_cached_predict_batch_matches_hf_generate(hf_dir):
    _, model, path = hf_dir
    config, params = load_hf_checkpoint(path)
    enc, _, _ = _batch()
    ours = np.asarray(EncoderDecoderModel(config).predict_batch(
        params, {'encoder_input_tokens': enc}, method='greedy', max_decode_length=DECODE_STEPS))
    with torch.no_grad():
        hf_tokens = model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                                   attention_mask=torch.tensor(enc > 0), do_sample=False, num_beams=1,
                                   max_new_tokens=DECODE_STEPS, decoder_start_token_id=0, use_cache=False).numpy()
    hf_tokens = np.pad(hf_tokens[:, 1:], ((0, 0), (0, DECODE_STEPS + 1 - hf_tokens.shape[1])))
    np.testing.assert_array_equal(ours, hf_tokens)


def test_export_round_trips_through_transformers(hf_dir, tmp_path):
    style, model, path = hf_dir
    config, params = load_hf_checkpoint(path)
    save_hf_checkpoint(config, params, str(tmp_path / 'export'))
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / 'export')).eval()
    assert (reloaded.lm_head.weight is reloaded.shared.weight) == (style == 'v1_0')
    enc, dec_in, targets = _batch()
    _, want = _hf_forward(model, enc, dec_in)
    _, got = _hf_forward(reloaded, enc, dec_in)
    diff = np.abs(got - want).max()
    print(f'{style}: export round trip logits max|diff|={diff:.3g}')
    assert diff <= 1e-6
    _, params_again = load_hf_checkpoint(str(tmp_path / 'export'))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_again, params)


def test_missing_weights_file_names_directory_and_expected_files(hf_dir, tmp_path):
    _, _, path = hf_dir
    empty = tmp_path / 'only_config'
    empty.mkdir()
    (empty / 'config.json').write_text(open(os.path.join(path, 'config.json')).read())
    with pytest.raises(UserError, match=r'only_config.*model\.safetensors.*pytorch_model\.bin'):
        load_hf_checkpoint(str(empty))


def test_shape_mismatch_names_parameter_and_both_shapes(hf_dir, tmp_path):
    _, _, path = hf_dir
    config, _ = load_hf_checkpoint(path)
    weights = load_file(os.path.join(path, 'model.safetensors'))
    key = 'encoder.block.1.layer.1.DenseReluDense.wo.weight'
    weights[key] = np.zeros((32, 40), np.float32)
    broken = tmp_path / 'broken'
    broken.mkdir()
    save_file(weights, str(broken / 'model.safetensors'), metadata={'format': 'pt'})
    with pytest.raises(UserError, match=rf'encoder/layers_1/mlp/wo/kernel.*{key}.*\(40, 32\).*\(48, 32\)'):
        load_hf_params(str(broken), config)


def test_architecture_mismatch_names_field(hf_dir):
    _, _, path = hf_dir
    config, _ = load_hf_checkpoint(path)
    with pytest.raises(UserError, match=r'num_heads: checkpoint 4 vs config 8'):
        load_hf_params(path, dataclasses.replace(config, num_heads=8))


def test_vocab_mismatch_is_named(hf_dir, tmp_path):
    _, _, path = hf_dir
    config, _ = load_hf_checkpoint(path)
    small = dataclasses.replace(config, vocab_size=64)
    with pytest.raises(UserError, match=r'vocabulary size mismatch.*96.*64'):
        load_hf_params(path, small)
    no_config = tmp_path / 'weights_only'
    no_config.mkdir()
    os.link(os.path.join(path, 'model.safetensors'), no_config / 'model.safetensors')
    with pytest.raises(UserError, match=r'vocabulary size mismatch: shared\.weight has shape \(96, 32\)'):
        load_hf_params(str(no_config), small)


def test_config_json_round_trip_keeps_untied_scaling(hf_dir, tmp_path):
    style, _, path = hf_dir
    config, params = load_hf_checkpoint(path)
    save_hf_checkpoint(config, params, str(tmp_path / 'export'))
    hf = json.loads((tmp_path / 'export' / 'config.json').read_text())
    loaded = transformers.T5Config.from_pretrained(str(tmp_path / 'export'))
    assert hf['tie_word_embeddings'] == (style == 'v1_0')
    assert loaded.scale_decoder_outputs == (style == 'v1_0')


def test_torch_bin_and_sharded_safetensors_load_like_single_file(hf_dir, tmp_path):
    _, model, path = hf_dir
    config, params = load_hf_checkpoint(path)
    config_json = open(os.path.join(path, 'config.json')).read()
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'bin' / 'config.json').write_text(config_json)
    torch.save(model.state_dict(), str(tmp_path / 'bin' / 'pytorch_model.bin'))
    model.save_pretrained(str(tmp_path / 'sharded'), safe_serialization=True, max_shard_size='20KB')
    assert (tmp_path / 'sharded' / 'model.safetensors.index.json').is_file()
    for name in ('bin', 'sharded'):
        _, got = load_hf_checkpoint(str(tmp_path / name))
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, params)


def test_extra_checkpoint_layers_are_reported(hf_dir, tmp_path):
    _, _, path = hf_dir
    config, _ = load_hf_checkpoint(path)
    (tmp_path / 'w').mkdir()
    os.link(os.path.join(path, 'model.safetensors'), tmp_path / 'w' / 'model.safetensors')
    with pytest.raises(UserError, match=r'no place in the model for this config: decoder\.block\.2\.'):
        load_hf_params(str(tmp_path / 'w'), dataclasses.replace(config, num_decoder_layers=2))


def test_unsupported_hf_configs_are_named():
    hf = config_to_hf(get_config('t5_1_1_small'))
    assert config_from_hf(hf) == get_config('t5_1_1_small')
    with pytest.raises(UserError, match=r"my/config.json: feed_forward_proj 'gelu' is not supported"):
        config_from_hf({**hf, 'feed_forward_proj': 'gelu'}, 'my/config.json')
    with pytest.raises(UserError, match=r'config.json: missing key\(s\) d_kv'):
        config_from_hf({k: v for k, v in hf.items() if k != 'd_kv'})
    with pytest.raises(UserError, match=r"mlp_activations \('gelu', 'gelu'\) have no HF T5 equivalent"):
        config_to_hf(get_config('tiny', mlp_activations=('gelu', 'gelu')))
