"""The sharded train step equals the single-device one: meshes (8,1), (2,4), (4,2) on 8 fake CPU devices,
every partitioning mode, and gradient accumulation over microbatches."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax.core import meta

from text2text import config, models
from text2text.train_state import accumulate_gradients

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (data, model, partitioning mode, num_microbatches): all four modes, three mesh shapes, one accumulating run.
MESH_RUNS = [(8, 1, "dp", 1), (8, 1, "fsdp", 1), (2, 4, "tp", 1), (4, 2, "tp+fsdp", 2)]
TOLERANCE = 1e-5


def tiny_model():
    """One layer per stack and 4 heads, so every mode's 'model' axis (up to 4) divides heads, mlp and vocab."""
    return models.EncoderDecoderModel(config.get_config(
        "tiny", vocab_size=128, num_heads=4, head_dim=8, num_encoder_layers=1, num_decoder_layers=1))


def packed_batch(batch_size=8, inputs_length=32, targets_length=8, seed=0):
    """A packed EncDecFeatureConverter-style batch: two segments per row, then padding."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, 128, (batch_size, inputs_length)).astype(np.int32)
    tgt = rng.integers(2, 128, (batch_size, targets_length)).astype(np.int32)
    enc_seg = np.zeros_like(enc)
    enc_seg[:, :16], enc_seg[:, 16:28] = 1, 2
    tgt_seg = np.zeros_like(tgt)
    tgt_seg[:, :4], tgt_seg[:, 4:7] = 1, 2
    enc[enc_seg == 0], tgt[tgt_seg == 0] = 0, 0
    tgt[:, 3], tgt[:, 6] = 1, 1  # EOS ends each target segment

    def positions(seg):
        pos = np.zeros_like(seg)
        for row in range(seg.shape[0]):
            for s in (1, 2):
                idx = np.flatnonzero(seg[row] == s)
                pos[row, idx] = np.arange(len(idx))
        return pos

    dec_pos = positions(tgt_seg)
    dec_in = np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
    dec_in[dec_pos == 0] = 0  # each segment's decoder input starts with 0
    return dict(encoder_input_tokens=enc, encoder_segment_ids=enc_seg, encoder_positions=positions(enc_seg),
                decoder_input_tokens=dec_in, decoder_target_tokens=tgt, decoder_segment_ids=tgt_seg,
                decoder_positions=dec_pos, decoder_loss_weights=(tgt_seg > 0).astype(np.int32))


SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    from test_mesh_training import MESH_RUNS, packed_batch, tiny_model
    from text2text import optim, partitioning, trainer
    from text2text.train_state import TrainState, make_train_step

    model, batch = tiny_model(), packed_batch()
    lengths = {"inputs": 32, "targets": 8}
    tx = optim.adafactor(learning_rate=optim.constant_schedule(1e-2))

    def train_two_steps(state, mesh, rules, microbatches):
        shardings = jax.tree.map(lambda x: x.sharding, state)
        step = make_train_step(model.loss_fn, tx, microbatches, None)
        losses = []
        with partitioning.mesh_context(mesh, rules):
            step_fn = jax.jit(step, in_shardings=(shardings, partitioning.batch_sharding(mesh), None),
                              out_shardings=(shardings, None))
            for _ in range(2):
                state, metrics = step_fn(state, partitioning.shard_batch(batch, mesh), jax.random.PRNGKey(1))
                losses.append(float(metrics["loss_sum"]) / float(metrics["weight_sum"]))
        return state, losses

    def max_diff(a, b):
        return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    assert jax.device_count() == 8, jax.devices()
    one_device = partitioning.create_mesh(1, 1, devices=jax.devices()[:1])
    dp = partitioning.logical_axis_rules("dp")
    state = trainer.init_train_state(model, tx, one_device, dp, lengths, seed=0)
    init = jax.device_get(state.params)
    state, ref_losses = train_two_steps(state, one_device, dp, 1)
    ref_params = jax.device_get(state.params)
    results = []
    for data, model_axis, mode, microbatches in MESH_RUNS:
        mesh = partitioning.create_mesh(data, model_axis)
        rules = partitioning.logical_axis_rules(mode)
        with partitioning.mesh_context(mesh, rules):  # the trainer's shardings, filled with the reference init
            boxed = jax.eval_shape(trainer.params_init_fn(model, lengths), jax.random.PRNGKey(0))
            params = jax.device_put(init, partitioning.params_shardings(boxed, mesh, rules))
            state = jax.jit(lambda p: TrainState.create(p, tx))(params)
        state, losses = train_two_steps(state, mesh, rules, microbatches)
        spec = list(state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].sharding.spec)
        while spec and spec[-1] is None:
            spec.pop()
        results.append(dict(mesh=[data, model_axis], mode=mode, microbatches=microbatches, wi_spec=spec,
                            params_diff=max_diff(ref_params, jax.device_get(state.params)),
                            loss_diff=float(np.max(np.abs(np.subtract(ref_losses, losses)))),
                            params_moved=max_diff(init, ref_params)))
    print("RESULTS " + json.dumps(results))
""")


@pytest.fixture(scope="module")
def mesh_results(tmp_path_factory):
    """Runs every MESH_RUNS entry and the single-device reference in one 8-device subprocess."""
    script = tmp_path_factory.mktemp("mesh") / "mesh_runs.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(script), REPO], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    return {(tuple(r["mesh"]), r["mode"]): r for r in json.loads(line[len("RESULTS "):])}


@pytest.mark.parametrize("data,model_axis,mode,microbatches", MESH_RUNS)
def test_sharded_step_matches_single_device(mesh_results, data, model_axis, mode, microbatches):
    result = mesh_results[((data, model_axis), mode)]
    assert result["microbatches"] == microbatches
    assert result["params_moved"] > 1e-3  # the two steps changed the params, so equality below means something
    assert result["loss_diff"] <= TOLERANCE
    assert result["params_diff"] <= TOLERANCE


def test_modes_really_partition_the_params(mesh_results):
    """The MLP input kernel ('embed', 'mlp') is laid out as each mode's rules say."""
    specs = {key: r["wi_spec"] for key, r in mesh_results.items()}
    assert specs[((8, 1), "dp")] == []
    assert specs[((8, 1), "fsdp")] == ["data"]
    assert specs[((2, 4), "tp")] == [None, "model"]
    assert specs[((4, 2), "tp+fsdp")] == ["data", "model"]


def test_gradient_accumulation_matches_one_batch():
    """With a summed loss (loss_normalizing_factor=None), 2 microbatches give the grads and sums of 1 batch.

    (The updated params of a 2-microbatch step are compared with a 1-microbatch one in the mesh runs above.)
    """
    model, batch = tiny_model(), packed_batch(batch_size=4)
    params = jax.jit(lambda rng: meta.unbox(model.init_variables(rng, {"inputs": (1, 32), "targets": (1, 8)})))(
        jax.random.PRNGKey(0))["params"]
    results = {n: jax.jit(lambda p, b, r, n=n: accumulate_gradients(model.loss_fn, p, b, r, n, False))(
        params, batch, jax.random.PRNGKey(3)) for n in (1, 2)}
    (g1, m1), (g2, m2) = results[1], results[2]
    assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(g1)) > 1e-2
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=TOLERANCE, atol=TOLERANCE)
    for key in ("loss", "loss_sum", "weight_sum", "num_correct"):
        assert float(m2[key]) == pytest.approx(float(m1[key]), rel=TOLERANCE)
