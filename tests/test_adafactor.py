"""text2text.adafactor equals optax.adafactor (updates and state) over several steps, and keeps its state layout."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from text2text import adafactor, backend, optim

RTOL = 1e-6


def _params(rng):
    """T5X layouts: [embed, vocab] logits kernel, [vocab, embed] embedding, a square kernel, an unfactored
    [64, 128] kernel (64 < 128), a scale vector and a scanned [layers, embed, mlp] kernel."""
    shapes = {'logits_dense': (128, 2048), 'embedding': (2048, 128), 'query': (128, 128), 'small': (64, 128),
              'scale': (128,), 'scanned': (2, 128, 256)}
    return {name: jnp.asarray(rng.normal(0.0, 0.05, shape), jnp.float32) for name, shape in shapes.items()}


def _grads(rng, params, step):
    grads = {name: jnp.asarray(rng.normal(0.0, 10.0 ** -(1 + step % 3), p.shape), jnp.float32)
             for name, p in params.items()}
    grads['embedding'] = grads['embedding'].at[::3].set(0.0)  # tokens absent from the batch: zero rows
    return grads


def _assert_close(ours, reference):
    """Each element within RTOL of optax's, or within RTOL of the leaf's largest magnitude (float32 sums in another
    order differ by ~1e-7; momentum and weight decay add terms that cancel in a few elements)."""
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(reference)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.isfinite(a).all() and np.isfinite(b).all(), jax.tree_util.keystr(path)
        scale = float(np.abs(b).max()) if b.size else 0.0
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * scale, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(params=['cpu', 'other'])
def traced_backend(request, monkeypatch):
    """Trace XLA:CPU's formulation ('cpu': row-block loops) or every other backend's (optax's reductions)."""
    monkeypatch.setattr(backend, 'on_cpu', lambda: request.param == 'cpu')
    return request.param


@pytest.mark.parametrize('settings', [
    dict(learning_rate=optim.constant_schedule(1e-2)),  # T5X's defaults
    dict(learning_rate=0.5, clipping_threshold=None, multiply_by_parameter_scale=False, decay_offset=-3),
    dict(learning_rate=None, momentum=0.9, weight_decay_rate=1e-3, min_dim_size_to_factor=64),
])
def test_equals_optax_over_steps(settings, traced_backend):
    rng = np.random.default_rng(0)
    params = _params(rng)
    ours, reference = adafactor.adafactor(**settings), optax.adafactor(factored=True, **settings)
    state, reference_state = ours.init(params), reference.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(reference_state)
    ours_params, reference_params = params, params
    update, reference_update = jax.jit(ours.update), jax.jit(reference.update)
    for step in range(4):
        grads = _grads(rng, params, step)
        updates, state = update(grads, state, ours_params)
        reference_updates, reference_state = reference_update(grads, reference_state, reference_params)
        _assert_close(updates, reference_updates)
        _assert_close(state, reference_state)
        ours_params = optax.apply_updates(ours_params, updates)
        reference_params = optax.apply_updates(reference_params, reference_updates)
    _assert_close(ours_params, reference_params)
    assert float(jnp.abs(ours_params['logits_dense'] - params['logits_dense']).max()) > 0


def test_factored_dims_follow_optax():
    state = adafactor.adafactor(learning_rate=1e-3).init(_params(np.random.default_rng(0)))[0]
    assert state.v_row['logits_dense'].shape == (128,) and state.v_col['logits_dense'].shape == (2048,)
    assert state.v_row['embedding'].shape == (128,) and state.v_col['embedding'].shape == (2048,)
    assert state.v['small'].shape == (64, 128) and state.v['scale'].shape == (128,)
    assert adafactor.factored_dims((2, 128, 256), 128) == (1, 2)
    assert adafactor.factored_dims((64, 128), 128) is None


def test_needs_params():
    tx = adafactor.adafactor(learning_rate=1e-3)
    params = {'w': jnp.ones((4,))}
    with pytest.raises(ValueError, match='needs params'):
        tx.update(params, tx.init(params))


def test_only_xla_cpu_gets_the_row_block_loops(traced_backend):
    """A GPU runs each loop iteration as separate launches: other backends' update must hold no while loop."""
    params = _params(np.random.default_rng(0))
    tx = adafactor.adafactor(learning_rate=1e-3)
    text = jax.jit(tx.update).lower(params, tx.init(params), params).as_text()
    assert ('stablehlo.while' in text) == (traced_backend == 'cpu')
