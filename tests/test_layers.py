"""The projection, tied output projection and attention layers: the CPU gradient equals autodiff in fp32; bf16
runs on XLA:CPU's bf16 GEMM; the relative position bias of other backends (one-hot product) equals XLA:CPU's
(gather)."""
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from text2text import backend
from text2text.layers import Dense, Embed, MultiHeadAttention, RelativePositionBias, one_hot_bias


def _dense(dtype, output_dtype=None, features=96):
    return Dense(features=features, kernel_axes=('embed', 'mlp'), dtype=dtype, output_dtype=output_dtype)


def _inputs(shape=(4, 24, 64)):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def _params(layer, x):
    return flax.core.meta.unbox(layer.init(jax.random.PRNGKey(0), x)['params'])


def _grads(layer, params, x):
    """Gradients of _loss(layer(x)) w.r.t. (params, x)."""
    return jax.grad(lambda params, x: _loss(layer.apply({'params': params}, x)), argnums=(0, 1))(params, x)


def _loss(y):
    """sum(y^2 * w) in fp32 with fixed weights: its gradient needs the forward product too."""
    y = y.astype(jnp.float32)
    return jnp.sum(jnp.square(y) * jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))


def test_fp32_gradient_matches_autodiff_of_the_plain_product():
    layer, x = _dense(jnp.float32), _inputs()
    params = _params(layer, x)
    d_params, dx = _grads(layer, params, x)
    d_kernel_ref, dx_ref = jax.grad(lambda kernel, x: _loss(jnp.dot(x, kernel)), argnums=(0, 1))(params['kernel'], x)
    np.testing.assert_allclose(d_params['kernel'], d_kernel_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('output_dtype', [None, jnp.float32])
def test_bf16_product_and_gradients(output_dtype):
    x = _inputs()
    fp32, bf16 = _dense(jnp.float32), _dense(jnp.bfloat16, output_dtype)
    params = _params(fp32, x)
    y = bf16.apply({'params': params}, x)
    assert y.dtype == (output_dtype or jnp.bfloat16)
    expected = jnp.dot(x.astype(jnp.bfloat16), params['kernel'].astype(jnp.bfloat16),
                       preferred_element_type=jnp.float32).astype(y.dtype)
    np.testing.assert_array_equal(y, expected)  # bf16 operands, fp32 accumulation, one rounding at the end

    (d_params, dx), (d_params_ref, dx_ref) = _grads(bf16, params, x), _grads(fp32, params, x)
    assert d_params['kernel'].dtype == jnp.float32 and dx.dtype == jnp.float32
    scale = float(jnp.abs(d_params_ref['kernel']).max())
    assert float(jnp.abs(d_params['kernel'] - d_params_ref['kernel']).max()) < 2e-2 * scale
    assert float(jnp.abs(dx - dx_ref).max()) < 2e-2 * float(jnp.abs(dx_ref).max())


def _dot_operand_dtypes(hlo: str) -> list[tuple[str, str]]:
    """(lhs, rhs) element types of every dot in optimised HLO text (operands resolved to their definitions)."""
    types = dict(re.findall(r'%([\w.-]+) = (\w+)\[', hlo))
    return [(types[lhs], types[rhs]) for lhs, rhs in re.findall(r' dot\(%([\w.-]+), %([\w.-]+)\)', hlo)]


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='checks XLA:CPU code generation')
def test_bf16_forward_and_backward_products_keep_bf16_operands_on_cpu():
    """XLA:CPU upcasts a bf16 product to fp32 (half the GEMM rate on AVX512-BF16) when it would produce bf16 or
    when an operand is a transposed layout; the layer's forward and custom gradient avoid both."""
    x = _inputs((8, 64, 256))
    layer = _dense(jnp.bfloat16, features=512)
    params = _params(layer, x)
    hlo = jax.jit(lambda p, x: _grads(layer, p, x)).lower(params, x.astype(jnp.bfloat16)).compile().as_text()
    assert _dot_operand_dtypes(hlo) == [('bf16', 'bf16')] * 3  # forward, input gradient, kernel gradient


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='checks XLA:CPU code generation')
def test_bf16_attention_forward_products_keep_bf16_operands_on_cpu():
    """The four projections and both attention products (logits, weighted values) of a bf16 attention layer."""
    x = _inputs((4, 64, 128)).astype(jnp.bfloat16)
    layer = MultiHeadAttention(num_heads=4, head_dim=32, dtype=jnp.bfloat16)
    variables = layer.init(jax.random.PRNGKey(0), x, x)
    hlo = jax.jit(lambda v, x: layer.apply(v, x, x)).lower(variables, x).compile().as_text()
    assert _dot_operand_dtypes(hlo) == [('bf16', 'bf16')] * 6


def _attend_grads(dtype, variables, x):
    """Output and gradients (w.r.t. the table and x) of _loss(Embed.attend(x))."""
    embed = Embed(num_embeddings=384, features=x.shape[-1], dtype=dtype)

    def loss(variables, x):
        y = embed.apply(variables, x, method=Embed.attend)
        return _loss(y), y

    (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables, x)
    return y, grads


def test_bf16_tied_output_projection_values_and_gradients():
    x = _inputs((4, 24, 64))
    variables = flax.core.meta.unbox(Embed(num_embeddings=384, features=64).init(jax.random.PRNGKey(0),
                                                                                  jnp.zeros((1, 1), jnp.int32)))
    table = variables['params']['embedding']
    y, (d_vars, dx) = _attend_grads(jnp.bfloat16, variables, x)
    y_ref, (d_vars_ref, dx_ref) = _attend_grads(jnp.float32, variables, x)
    assert y.dtype == jnp.float32 and d_vars['params']['embedding'].dtype == jnp.float32
    bf16_product = jnp.einsum('bld,vd->blv', x.astype(jnp.bfloat16), table.astype(jnp.bfloat16),
                              preferred_element_type=jnp.float32)
    np.testing.assert_array_equal(y, bf16_product)  # bf16 operands, fp32 accumulation
    scale = float(jnp.abs(d_vars_ref['params']['embedding']).max())
    assert float(jnp.abs(d_vars['params']['embedding'] - d_vars_ref['params']['embedding']).max()) < 2e-2 * scale
    assert float(jnp.abs(dx - dx_ref).max()) < 2e-2 * float(jnp.abs(dx_ref).max())


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='checks XLA:CPU code generation')
def test_bf16_tied_output_projection_products_keep_bf16_operands_on_cpu():
    """Autodiff of Embed.attend contracts the output gradient's rows for the table's gradient, which XLA:CPU
    upcasts to fp32; the custom gradient multiplies by a row-major copy of the transposed output gradient."""
    x = _inputs((8, 64, 256)).astype(jnp.bfloat16)
    embed = Embed(num_embeddings=1024, features=256, dtype=jnp.bfloat16)
    variables = flax.core.meta.unbox(embed.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
    grads = jax.grad(lambda v, x: _loss(embed.apply(v, x, method=Embed.attend)), argnums=(0, 1))
    hlo = jax.jit(grads).lower(variables, x).compile().as_text()
    assert _dot_operand_dtypes(hlo) == [('bf16', 'bf16')] * 3  # forward, input gradient, table gradient


def test_one_hot_bias_equals_the_gather_and_its_gradient():
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(size=(6, 32)), jnp.float32)
    buckets = jnp.asarray(rng.integers(0, 32, (40, 56)), jnp.int32)
    np.testing.assert_array_equal(one_hot_bias(table, buckets), jnp.take(table, buckets, axis=1))
    weights = jnp.asarray(rng.normal(size=(6, 40, 56)), jnp.float32)
    grads = [jax.grad(lambda t, f=f: jnp.sum(f(t) * weights))(table)
             for f in (lambda t: one_hot_bias(t, buckets), lambda t: jnp.take(t, buckets, axis=1))]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('bidirectional', [True, False])
def test_relative_position_bias_is_the_same_on_every_backend_and_gathers_only_on_cpu(bidirectional, monkeypatch):
    layer = RelativePositionBias(num_buckets=32, max_distance=128, num_heads=4, bidirectional=bidirectional)
    positions = jnp.arange(300)
    params = flax.core.meta.unbox(layer.init(jax.random.PRNGKey(0), positions, positions)['params'])

    def bias_and_lowered():
        apply = jax.jit(lambda p: layer.apply({'params': p}, positions, positions))
        grad = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply({'params': p}, positions, positions) ** 2)))
        return np.asarray(apply(params)), grad.lower(params).as_text()

    monkeypatch.setattr(backend, 'on_cpu', lambda: True)
    cpu_bias, cpu_text = bias_and_lowered()
    monkeypatch.setattr(backend, 'on_cpu', lambda: False)
    other_bias, other_text = bias_and_lowered()
    assert cpu_bias.shape == (1, 4, 300, 300)
    np.testing.assert_array_equal(other_bias, cpu_bias)
    assert 'scatter' in cpu_text and 'scatter' not in other_text
