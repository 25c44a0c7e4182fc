"""T5 building blocks in Flax linen: RMSNorm, projections, attention with KV cache,
relative position biases, gated MLP and the token embedding (T5X parameter names)."""
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from text2text import backend

Initializer = Callable[..., jax.Array]
NEG_INF = -1e10  # additive bias for masked attention logits (exp underflows to exactly 0 in fp32)

default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
attention_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')


def _param(module: nn.Module, name: str, init: Initializer, shape, axes: tuple[str, ...]) -> jax.Array:
    """Create an fp32 parameter annotated with logical axis names (one per dimension)."""
    assert len(axes) == len(shape), (name, axes, shape)
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _matmul(x: jax.Array, kernel: jax.Array, out_dtype) -> jax.Array:
    """x @ kernel.astype(x.dtype) over the last axis of x, accumulated in fp32 and returned as `out_dtype`.

    The kernel keeps its storage dtype (fp32) at the call, so its gradient comes back in fp32. On CPU a custom
    gradient keeps every product on XLA's fast GEMM paths (see _cpu_matmul_bwd)."""
    if backend.on_cpu():
        return _cpu_matmul(x, kernel, jnp.dtype(out_dtype))
    return jnp.dot(x, kernel.astype(x.dtype), preferred_element_type=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cpu_matmul(x: jax.Array, kernel: jax.Array, out_dtype) -> jax.Array:
    """_matmul's product with the custom gradient below (autodiff's math, with the output gradient rounded to
    the compute dtype as T5X's bf16 layer outputs round it)."""
    return _cpu_matmul_fwd(x, kernel, out_dtype)[0]


def _cpu_matmul_fwd(x, kernel, out_dtype):
    # An fp32-accumulating product of bf16 operands runs at about twice the fp32 GEMM rate on CPUs with
    # AVX512-BF16; a bf16 output would be upcast to an fp32 product by XLA:CPU.
    kernel = kernel.astype(x.dtype)
    return jnp.dot(x, kernel, preferred_element_type=jnp.float32).astype(out_dtype), (x, kernel)


def _cpu_matmul_bwd(out_dtype, residuals, grad):
    # XLA:CPU runs x^T @ grad written as a dot contracting dim 0 of both operands on a ~2x slower generic
    # kernel (and recomputes grad in transposed layout for it), and upcasts a bf16 product whose operand is a
    # transposed layout to fp32. x^T copied out row-major (flattened behind an optimisation barrier, so the
    # transpose is neither folded back into the dot nor left as a layout change) keeps it on the fast GEMM path.
    # The kernel's gradient stays fp32 (a bf16 one would again turn its product into an fp32 one).
    del out_dtype
    x, kernel = residuals
    grad = grad.astype(x.dtype)
    dx = jnp.dot(grad, kernel.T, preferred_element_type=jnp.float32).astype(x.dtype)
    x_t = _row_major_transpose(x.reshape(-1, x.shape[-1]))
    dk = jnp.dot(x_t, grad.reshape(-1, grad.shape[-1]), preferred_element_type=jnp.float32)
    return dx, dk


def _row_major_transpose(matrix: jax.Array) -> jax.Array:
    """matrix.T copied out in row-major order: flattened behind an optimisation barrier, so XLA neither folds
    the transpose into the consuming dot nor leaves it as a layout change."""
    return jax.lax.optimization_barrier(matrix.T.reshape(-1)).reshape(matrix.shape[::-1])


_cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


class RMSNorm(nn.Module):
    """T5 layer norm: scale * x / sqrt(mean(x^2) + eps), no mean subtraction and no bias; fp32 math."""
    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, 'scale', nn.initializers.ones, (x.shape[-1],), ('embed',))
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
        return (x * scale).astype(self.dtype)


class Dense(nn.Module):
    """Bias-free projection of the last axis, kernel stored 2-D [in, out] as T5X's DenseGeneral does."""
    features: int
    kernel_axes: tuple[str, str]
    kernel_init: Initializer = default_kernel_init
    dtype: jnp.dtype = jnp.float32
    output_dtype: jnp.dtype | None = None  # e.g. fp32 logits from bf16 activations; None = dtype
    peft: Any = None  # text2text.peft.PeftConfig: LoRA / BitFit hook on the output (None: plain projection)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = _param(self, 'kernel', self.kernel_init, (x.shape[-1], self.features), self.kernel_axes)
        y = _matmul(x.astype(self.dtype), kernel, self.output_dtype or self.dtype)
        return y if self.peft is None else self.peft.dense(self, x, y)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; lookup by row gather or (one_hot=True) one-hot matmul."""
    num_embeddings: int
    features: int
    one_hot: bool = False
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = _param(self, 'embedding', nn.initializers.normal(stddev=1.0),
                                (self.num_embeddings, self.features), ('vocab', 'embed'))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        table = self.embedding.astype(self.dtype)
        if self.one_hot:
            return jnp.dot(jax.nn.one_hot(tokens, self.num_embeddings, dtype=self.dtype), table)
        return jnp.take(table, tokens, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied output projection x @ embedding.T: [..., embed] -> [..., vocab], accumulated and returned in fp32.

        On CPU with bf16 activations a custom gradient keeps both gradient products on XLA's fast bf16 GEMM path
        (see _cpu_attend_bwd) and returns the table's gradient in fp32; otherwise plain autodiff of the product.
        """
        if backend.on_cpu() and jnp.dtype(self.dtype) != jnp.float32:
            return _cpu_attend(x.astype(self.dtype), self.embedding)
        return jnp.einsum('bld,vd->blv', x.astype(self.dtype), self.embedding.astype(self.dtype),
                          preferred_element_type=jnp.float32)


@jax.custom_vjp
def _cpu_attend(x: jax.Array, table: jax.Array) -> jax.Array:
    """x @ table.astype(x.dtype).T accumulated in fp32, with the gradient below."""
    return _cpu_attend_fwd(x, table)[0]


def _cpu_attend_fwd(x, table):
    table = table.astype(x.dtype)
    return jnp.einsum('...d,vd->...v', x, table, preferred_element_type=jnp.float32), (x, table)


def _cpu_attend_bwd(residuals, grad):
    # Autodiff would contract the output gradient's rows for the table's gradient, a product XLA:CPU upcasts to
    # fp32 operands; the gradient copied out transposed (row-major) keeps it a plain bf16 GEMM, as _cpu_matmul_bwd.
    x, table = residuals
    grad = grad.astype(x.dtype).reshape(-1, grad.shape[-1])
    dx = jnp.dot(grad, table, preferred_element_type=jnp.float32).astype(x.dtype).reshape(x.shape)
    dtable = jnp.dot(_row_major_transpose(grad), x.reshape(-1, x.shape[-1]), preferred_element_type=jnp.float32)
    return dx, dtable


_cpu_attend.defvjp(_cpu_attend_fwd, _cpu_attend_bwd)


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """Map key_pos - query_pos to a bucket id exactly as Mesh-TF T5 / HF T5 do (half exact, half log-spaced)."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        n = jnp.abs(relative_position)
    else:
        n = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_position.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(n < max_exact, n, large)


class RelativePositionBias(nn.Module):
    """Per-head learned bias over relative-position buckets; one table per stack, shared by its layers."""
    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """Bias [1, heads, q, k] (fp32) for integer positions query_positions [q], key_positions [k]."""
        table = _param(self, 'rel_embedding', nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
                       (self.num_heads, self.num_buckets), ('heads', 'relpos_buckets'))
        relative = key_positions[None, :] - query_positions[:, None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        if backend.on_cpu():
            return jnp.take(table, buckets, axis=1)[None]
        return one_hot_bias(table, buckets)[None]


def one_hot_bias(table: jax.Array, buckets: jax.Array) -> jax.Array:
    """table[:, buckets] as a product with one-hot buckets: [heads, num_buckets] fp32 x int [q, k] -> [heads, q, k]
    fp32, exact (precision HIGHEST). Its gradient is a product too, where a gather's is a scatter-add of q * k
    updates into heads * num_buckets cells, which GPUs serialise on atomics; T5X computes the bias this way. The
    one-hot is a [q, k, num_buckets] fp32 temporary: 32 MiB at 512 x 512 with 32 buckets, 512 MiB at 2048 x 2048."""
    one_hot = jax.nn.one_hot(buckets, table.shape[1], dtype=table.dtype)
    return jnp.einsum('hb,qkb->hqk', table, one_hot, precision=jax.lax.Precision.HIGHEST)


class MultiHeadAttention(nn.Module):
    """T5 attention: no 1/sqrt(head_dim) at run time (folded into the query init), fp32 softmax,
    dropout broadcast over queries, optional KV cache (collection 'cache') for one-token decoding.

    `kernel`: 'einsum' (T5X's two products around an fp32 softmax), or 'xla' / 'cudnn' for
    `jax.nn.dot_product_attention` with that implementation ('cudnn': the fused flash-attention kernel of NVIDIA
    GPUs, which takes bf16 or fp16 inputs and a bias in their dtype). The fused kernels have no attention
    dropout: a layer whose dropout is active, and decoding's one-token steps, use 'einsum'."""
    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    peft: Any = None  # text2text.peft.PeftConfig: hooks on the projections and on self-attention K/V
    kernel: str = 'einsum'

    def _project(self, name: str, x: jax.Array, init: Initializer) -> jax.Array:
        y = Dense(self.num_heads * self.head_dim, ('embed', 'joined_kv'), init, self.dtype, peft=self.peft,
                  name=name)(x)
        y = y.reshape(*x.shape[:-1], self.num_heads, self.head_dim)
        return nn.with_logical_constraint(y, ('batch', 'length', 'heads', 'kv'))

    def _query_init(self, key, shape, dtype=jnp.float32):
        return attention_kernel_init(key, shape, dtype) / math.sqrt(self.head_dim)

    @nn.compact
    def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array, bias: jax.Array | None = None,
                 deterministic: bool = True, decode: bool = False, cache_kv_once: bool = False) -> jax.Array:
        """Attend inputs_q [b,q,e] to inputs_kv [b,k,e]; `bias` is additive fp32 [b|1, h|1, q, k].

        decode=True: self-attention appends this step's K/V to the cache (q = 1 token);
        with cache_kv_once the K/V of inputs_kv (encoder output) come from the cache, filled by its creation call.
        """
        query = self._project('query', inputs_q, self._query_init)
        key_axes = 'bkhd'
        if decode and cache_kv_once:
            key, value = self._cached_cross_kv(inputs_kv)
            key_axes = 'bhdk'
        else:
            key, value = self._project_kv(inputs_kv)
            if decode:
                key, value, bias, key_axes = self._update_self_cache(key, value, bias)
        if self.peft is not None:
            key, value, bias = self.peft.attention_kv(self, key, value, bias, key_axes)

        dropout = not deterministic and self.dropout_rate > 0.0
        if self.kernel != 'einsum' and not decode and not dropout:
            if bias is not None and self.kernel == 'cudnn':
                bias = bias.astype(query.dtype)
            out = jax.nn.dot_product_attention(query, key, value, bias, scale=1.0, implementation=self.kernel)
        else:
            out = self._einsum_attention(query, key, value, bias, key_axes, dropout)
        out = out.reshape(*out.shape[:2], self.num_heads * self.head_dim)
        return Dense(inputs_q.shape[-1], ('joined_kv', 'embed'), attention_kernel_init, self.dtype, peft=self.peft,
                     name='out')(out)

    def _einsum_attention(self, query, key, value, bias, key_axes: str, dropout: bool) -> jax.Array:
        """softmax(q k + bias) v for query [b,q,h,d] and key/value in `key_axes` layout -> [b,q,h,d]."""
        logits = jnp.einsum(f'bqhd,{key_axes}->bhqk', query, key, preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias
        weights = jax.nn.softmax(logits, axis=-1)
        if dropout:
            keep = jax.random.bernoulli(self.make_rng('dropout'), 1.0 - self.dropout_rate,
                                        (*weights.shape[:2], 1, weights.shape[-1]))
            weights = jnp.where(keep, weights / (1.0 - self.dropout_rate), 0.0)
        return jnp.einsum(f'bhqk,{key_axes}->bqhd', weights.astype(self.dtype), value,
                          preferred_element_type=jnp.float32).astype(self.dtype)

    def _update_self_cache(self, key, value, bias):
        """Writes this step's K/V [b, 1, h, d] at cache_index; returns the whole cached K/V, the bias with future
        keys masked, and the K/V layout.

        The cache holds [b, heads, head_dim, max length] (layout 'bhdk', as `_cached_cross_kv`): XLA:CPU's per-step
        attention dots read that layout, so with [b, k, h, d] every layer copied both whole arrays into it at every
        step. The cache creation call (full-length inputs, shapes only) returns its own K/V in 'bkhd'.
        """
        initialized = self.has_variable('cache', 'cached_key')
        batch, length, heads, head_dim = key.shape
        cached_key = self.variable('cache', 'cached_key', jnp.zeros, (batch, heads, head_dim, length), key.dtype)
        cached_value = self.variable('cache', 'cached_value', jnp.zeros, (batch, heads, head_dim, length),
                                     value.dtype)
        cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, dtype=jnp.int32))
        if not initialized:
            return key, value, bias, 'bkhd'
        if length != 1:
            raise ValueError(f'decode=True expects one token per call, got length {length}')
        index = cache_index.value
        cached_key.value = jax.lax.dynamic_update_slice_in_dim(cached_key.value, key.reshape(batch, heads, head_dim, 1),
                                                               index, axis=3)
        cached_value.value = jax.lax.dynamic_update_slice_in_dim(cached_value.value,
                                                                 value.reshape(batch, heads, head_dim, 1), index, axis=3)
        cache_index.value = index + 1
        max_length = cached_key.value.shape[-1]
        future = jnp.where(jnp.arange(max_length) > index, NEG_INF, 0.0).astype(jnp.float32)[None, None, None, :]
        bias = future if bias is None else bias + future
        return cached_key.value, cached_value.value, bias, 'bhdk'

    def _cached_cross_kv(self, inputs_kv):
        """Encoder-decoder K/V as [b, heads, head_dim, encoder length], projected once by the cache creation call
        and only read by the decode steps.

        The steps neither recompute nor write them, so a jitted decode loop carries them unchanged, and they are
        stored in the layout XLA:CPU's per-step attention dots read (with [b, k, h, d] it transposed both arrays
        of every layer at every step).
        """
        if self.has_variable('cache', 'cached_key'):
            return self.get_variable('cache', 'cached_key'), self.get_variable('cache', 'cached_value')
        key, value = (jnp.transpose(x, (0, 2, 3, 1)) for x in self._project_kv(inputs_kv))
        self.put_variable('cache', 'cached_key', key)
        self.put_variable('cache', 'cached_value', value)
        return key, value

    def _project_kv(self, inputs_kv):
        return (self._project('key', inputs_kv, attention_kernel_init),
                self._project('value', inputs_kv, attention_kernel_init))


class MlpBlock(nn.Module):
    """T5 feed-forward: wo(dropout(prod_i act_i(x @ wi_i))); one activation uses the name 'wi'."""
    mlp_dim: int
    activations: tuple[str, ...] = ('relu',)
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    peft: Any = None  # text2text.peft.PeftConfig: hooks on the projections

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        hidden = None
        for i, act in enumerate(self.activations):
            name = 'wi' if len(self.activations) == 1 else f'wi_{i}'
            h = _ACTIVATIONS[act](Dense(self.mlp_dim, ('embed', 'mlp'), dtype=self.dtype, peft=self.peft, name=name)(x))
            hidden = h if hidden is None else hidden * h
        hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
        hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(hidden, deterministic=deterministic)
        return Dense(x.shape[-1], ('mlp', 'embed'), dtype=self.dtype, peft=self.peft, name='wo')(hidden)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': jax.nn.relu,
    'gelu': lambda x: jax.nn.gelu(x, approximate=True),  # tanh approximation = HF 'gelu_new'
    'linear': lambda x: x,
}
