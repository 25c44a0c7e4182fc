"""Shared helpers for the PEFT tests: a tiny T5 per method, a fixed toy batch, a short masked training run."""
import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from text2text import optim, peft
from text2text.config import get_config
from text2text.models import EncoderDecoderModel
from text2text.train_state import TrainState, make_train_step

BASE = get_config('tiny', vocab_size=64)
ENC_LEN, DEC_LEN = 10, 6
METHOD_CONFIGS = {
    'prompt_tuning': peft.PeftConfig(prompt_tuning=peft.PromptTuningConfig(length=4)),
    # Markers: ids that every row of toy_batch holds.
    'p_tuning': peft.PeftConfig(p_tuning=peft.PTuningConfig(num_virtual=3, marker_ids=(42, 50, 26), hidden_dim=8)),
    'prefix_tuning': peft.PeftConfig(prefix_tuning=peft.PrefixTuningConfig(length=3)),
    'adapters': peft.PeftConfig(adapters=peft.AdapterConfig(bottleneck=4)),
    'lora': peft.PeftConfig(lora=peft.LoraConfig(rank=2, alpha=4.0)),
    'bitfit': peft.PeftConfig(bitfit=peft.BitFitConfig()),
    'linear_probe': peft.PeftConfig(linear_probe=peft.LinearProbeConfig(label_token_ids=((5,), (6,), (7, 8)))),
}


def config(method: str, **overrides):
    """The tiny T5 config with one PEFT method (None: the plain base)."""
    peft_config = None if method is None else overrides.pop('peft', METHOD_CONFIGS[method])
    return dataclasses.replace(BASE, peft=peft_config, **overrides)


def model(cfg):
    return peft.LinearProbeModel(cfg) if cfg.peft is not None and cfg.peft.linear_probe else EncoderDecoderModel(cfg)


def init_params(mdl, seed: int = 0):
    variables = mdl.init_variables(jax.random.PRNGKey(seed), {'inputs': (1, ENC_LEN), 'targets': (1, DEC_LEN)})
    return flax.core.meta.unbox(variables)['params']


@functools.lru_cache(maxsize=None)
def base_params():
    """Params of the plain tiny T5: the 'pretrained' checkpoint the PEFT models start from."""
    return init_params(EncoderDecoderModel(BASE), seed=0)


def peft_params(mdl, seed: int = 1):
    """A PEFT model's params: its own fresh PEFT leaves on top of base_params()."""
    return peft.with_base_params(init_params(mdl, seed), peft.base_params(base_params(), BASE), mdl.config)


def toy_batch(seed: int = 0, rows: int = 4, classify: bool = False):
    """Rows of random inputs; targets copy the inputs' first tokens (or, classify=True, one class per row)."""
    rng = np.random.RandomState(seed)
    enc = rng.randint(3, BASE.vocab_size, (rows, ENC_LEN)).astype(np.int32)
    enc[1, 6:] = 0
    enc[2, 4:] = 0
    tgt = np.zeros((rows, DEC_LEN), np.int32)
    if classify:
        labels = [(5,), (6,), (7, 8), (5,)]
        for r in range(rows):
            ids = (*labels[r % 4], 1)
            tgt[r, :len(ids)] = ids
    else:
        tgt[:, :4] = enc[:, :4]
        tgt[:, 4] = 1
    dec_in = np.pad(tgt[:, :-1], ((0, 0), (1, 0)))
    return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in, 'decoder_target_tokens': tgt,
            'decoder_loss_weights': (tgt > 0).astype(np.float32)}


def train(mdl, params, batch, steps: int, learning_rate: float, param_scale: bool = False):
    """`steps` masked Adafactor steps on one batch: (final params, final opt_state, [loss per step]).

    param_scale=False: updates of size ~learning_rate even for zero- or tiny-initialised PEFT weights.
    """
    tx = optim.adafactor(learning_rate=optim.constant_schedule(learning_rate), multiply_by_parameter_scale=param_scale)
    tx = peft.peft_optimizer(tx, mdl.config.peft)
    step = jax.jit(make_train_step(mdl.loss_fn, tx))
    state = TrainState.create(params, tx)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch, jax.random.PRNGKey(0))
        losses.append(float(metrics['loss']))
    return state.params, state.opt_state, losses


def flat(params):
    return {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(jax.device_get(params)).items()}


def uncached_greedy(mdl, params, encoder_tokens, length: int):
    """Greedy decoding by re-running the full teacher-forced model at every step (no KV cache): [b, length]
    tokens with EOS then 0 padding, the format of EncoderDecoderModel.predict_batch."""
    run = jax.jit(lambda p, enc, dec: mdl.module.apply({'params': p}, enc, dec, enable_dropout=False))
    tokens = np.zeros((encoder_tokens.shape[0], length), np.int32)
    done = np.zeros(encoder_tokens.shape[0], bool)
    for t in range(length):
        dec_in = np.pad(tokens[:, :-1], ((0, 0), (1, 0)))
        step = np.asarray(jnp.argmax(run(params, encoder_tokens, dec_in)[:, t], axis=-1))
        tokens[:, t] = np.where(done, 0, step)
        done |= step == 1
    return tokens


def randomized(params, mask, scale: float = 0.5, seed: int = 0):
    """params with every leaf where `mask` is True replaced by random normals (a stand-in for trained values)."""
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(mask)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    new = [scale * jax.random.normal(k, x.shape, x.dtype) if f else x for k, x, f in zip(keys, leaves, flags)]
    return jax.tree.unflatten(treedef, new)
