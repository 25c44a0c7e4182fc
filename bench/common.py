"""Shared benchmark machinery: CPU/thread set-up, the benchmark model, both trainers, and worker processes.

Each framework runs in its own spawned worker process (`Worker`): JAX's and torch's thread pools in one process
steal each other's cores (we measured HF steps 5-15x slower next to a live JAX runtime). The parent imports
neither framework; it interleaves timing rounds between the workers. Every worker is pinned to the same
`--threads` CPUs: XLA sizes its intra-op pool from the CPU affinity, torch gets set_num_threads(threads).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
import traceback
from typing import Any, Callable, Mapping

LEARNING_RATE = 1e-3
# transformers: errors only (not its 'tied weights' note on our untied exports) and no 'Loading weights' bar.
ENVIRONMENT = {'JAX_PLATFORMS': 'cpu', 'CUDA_VISIBLE_DEVICES': '', 'TF_CPP_MIN_LOG_LEVEL': '2',
               'TOKENIZERS_PARALLELISM': 'false', 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1',
               'TRANSFORMERS_VERBOSITY': 'error', 'HF_HUB_DISABLE_PROGRESS_BARS': '1'}
# The peer runs with the C library's malloc defaults, as its users get them (importing text2text, e.g. for the
# weight conversion, would otherwise apply text2text.host_memory's settings to its process too).
PEER_ENVIRONMENT = {'TEXT2TEXT_MALLOC': 'system'}


def parse_args(dtype: bool = False, **defaults: int | str) -> argparse.Namespace:
    """--threads (default: all allowed CPUs), --rounds, --steps, the int or str options given in `defaults` and,
    with `dtype`, --dtype (the model's activation dtype: float32, or bfloat16 as T5X's T5.1.1 configs train)."""
    parser = argparse.ArgumentParser()
    if dtype:
        parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
    parser.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument('--rounds', type=int, default=defaults.pop('rounds', 5))
    parser.add_argument('--steps', type=int, default=defaults.pop('steps', 5), help='timed calls per round')
    parser.add_argument('--parts', action='store_true', help='also time forward and forward+backward')
    for name, value in defaults.items():
        parser.add_argument(f'--{name}', type=type(value), default=value)
    return parser.parse_args()


def configure(threads: int) -> None:
    """Pins this process to `threads` CPUs and sets torch's intra-op threads to match (before jax is imported)."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    for key, value in {**ENVIRONMENT, 'OMP_NUM_THREADS': str(threads)}.items():
        os.environ.setdefault(key, value)
    import torch
    torch.set_num_threads(threads)


def bench_config(**overrides):
    """The benchmark model: T5.1.1-style, d_model 256, 4 heads x 64, d_ff 1024 gated-gelu, 4+4 layers, untied."""
    from text2text.config import get_config
    settings = dict(vocab_size=32128, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024,
                    num_encoder_layers=4, num_decoder_layers=4, dropout_rate=0.0)
    settings.update(overrides)
    return get_config('t5_1_1_small', **settings)


def hf_model(config, train: bool):
    """transformers T5ForConditionalGeneration with the shape of our `config` (fresh random weights)."""
    import torch
    import transformers
    from text2text.convert.hf import config_to_hf
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**config_to_hf(config)))
    return model.train() if train else model.eval()


class OurTrainer:
    """Our jitted train step (EncoderDecoderModel.loss_fn + T5X-default Adafactor), state donated each step."""

    def __init__(self, config, example_batch: Mapping[str, Any]):
        import flax
        import jax
        from text2text import models, optim, train_state
        self.model = models.EncoderDecoderModel(config)
        params = flax.core.meta.unbox(self.model.init_variables(jax.random.PRNGKey(0), example_batch)['params'])
        tx = optim.adafactor(learning_rate=optim.constant_schedule(LEARNING_RATE))
        self.state = train_state.TrainState.create(params, tx)
        self._step = jax.jit(train_state.make_train_step(self.model.loss_fn, tx), donate_argnums=0)
        self._loss = jax.jit(lambda p, b: self.model.loss_fn(p, b, None)[0])
        self._grad = jax.jit(jax.grad(lambda p, b: self.model.loss_fn(p, b, None)[0]))
        self._rng = jax.random.PRNGKey(1)

    @staticmethod
    def prepare(batch: Mapping[str, Any]):
        import jax
        return jax.device_put(dict(batch))

    def step(self, batch) -> None:
        import jax
        self.state, metrics = self._step(self.state, batch, self._rng)
        jax.block_until_ready(metrics['loss'])

    def forward(self, batch) -> None:
        import jax
        jax.block_until_ready(self._loss(self.state.params, batch))

    def forward_backward(self, batch) -> None:
        import jax
        jax.block_until_ready(self._grad(self.state.params, batch))


class HfTrainer:
    """HF T5ForConditionalGeneration train step (torch eager) with transformers' Adafactor set like T5X's:
    fixed lr, scale_parameter (relative step size), no relative_step schedule, decay -0.8, clip 1.0, no momentum.
    With `autocast`, the forward runs under torch.autocast(device, bfloat16), torch's mixed precision (fp32
    weights and optimizer, bf16 matmuls). `device` is a torch device type ('cpu' or 'cuda'); on 'cuda' every
    timed call waits for the GPU (torch.cuda.synchronize)."""

    def __init__(self, config, autocast: bool = False, device: str = 'cpu'):
        import transformers
        self.model = hf_model(config, train=True).to(device)
        self.optimizer = transformers.optimization.Adafactor(
            self.model.parameters(), lr=LEARNING_RATE, scale_parameter=True, relative_step=False,
            warmup_init=False, clip_threshold=1.0, decay_rate=-0.8, beta1=None)
        self.autocast = autocast
        self.device = device

    def prepare(self, batch: Mapping[str, Any]) -> dict:
        """Our feature batch (unpacked) as HF tensors on the device; padded target positions get label -100."""
        import torch
        inputs = torch.from_numpy(batch['encoder_input_tokens']).long()
        targets = torch.from_numpy(batch['decoder_target_tokens']).long()
        tensors = {'input_ids': inputs, 'attention_mask': (inputs > 0).long(),
                   'decoder_input_ids': torch.from_numpy(batch['decoder_input_tokens']).long(),
                   'labels': torch.where(targets > 0, targets, torch.full_like(targets, -100))}
        return {key: value.to(self.device) for key, value in tensors.items()}

    def _loss(self, batch):
        import torch
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(**batch).loss

    def _wait(self) -> None:
        if self.device == 'cuda':
            import torch
            torch.cuda.synchronize()

    def step(self, batch) -> None:
        self._loss(batch).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._wait()

    def forward(self, batch) -> None:
        import torch
        with torch.no_grad():
            self._loss(batch)
        self._wait()

    def forward_backward(self, batch) -> None:
        self._loss(batch).backward()
        self.model.zero_grad(set_to_none=True)
        self._wait()


def _serve(connection, threads: int, builder: Callable[..., dict], args: tuple,
           environment: Mapping[str, str]) -> None:
    """Worker loop: build the named runners, then answer ('time', name, calls) and ('call', name) requests."""
    try:
        os.environ.update(environment)
        configure(threads)
        from text2text.console import configure_logging, quiet_native_stderr
        configure_logging(verbose=False)  # seqio's notes (uncached dataset, evaluator without logger) as in run.py
        with quiet_native_stderr():  # TensorFlow's start-up lines (cuInit on a CPU-only machine); errors still show
            runners = builder(*args)
        connection.send(('ok', sorted(runners)))
        while True:
            request = connection.recv()
            if request[0] == 'stop':
                return
            run = runners[request[1]]
            if request[0] == 'call':
                connection.send(('ok', run()))
                continue
            times = []
            for _ in range(request[2]):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            connection.send(('ok', times))
    except Exception:  # the parent re-raises it with the worker's traceback
        connection.send(('error', traceback.format_exc()))


class Worker:
    """Runners from `builder(*args)` (a module-level function returning {name: callable}) in a spawned process
    whose environment variables are updated with `environment` before anything is imported (PEER_ENVIRONMENT
    for the peer's workers)."""

    def __init__(self, threads: int, builder: Callable[..., dict], *args, environment: Mapping[str, str] = None):
        context = multiprocessing.get_context('spawn')
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, threads, builder, args, dict(environment or {})),
                                        daemon=True)
        self._process.start()
        self.names = self._reply()

    def _reply(self):
        status, value = self._connection.recv()
        if status == 'error':
            raise RuntimeError(f'benchmark worker failed:\n{value}')
        return value

    def call(self, name: str):
        """Result of one call of runner `name` (e.g. tokens or counts to check)."""
        self._connection.send(('call', name))
        return self._reply()

    def time(self, name: str, calls: int) -> list[float]:
        """Seconds of each of `calls` consecutive calls of runner `name`."""
        self._connection.send(('time', name, calls))
        return self._reply()

    def close(self) -> None:
        self._connection.send(('stop',))
        self._process.join()


def interleaved(runners: dict[str, tuple[Worker, str]], rounds: int, calls: int,
                per_round: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median seconds per call of each (worker, runner name), timed in `rounds` interleaved rounds of `calls`.
    `per_round`, when given, receives each label's median of every round (for `round_ratios`)."""
    times: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(rounds):
        for label, (worker, name) in runners.items():
            seconds = worker.time(name, calls)
            times[label].extend(seconds)
            if per_round is not None:
                per_round.setdefault(label, []).append(statistics.median(seconds))
    return {label: statistics.median(values) for label, values in times.items()}


def round_ratios(per_round: dict[Any, list[float]], numerator: Any, denominator: Any) -> str:
    """'# A / B in each round: ...': per round of `interleaved`, the median seconds of label `numerator` over those
    of `denominator` (labels: strings or tuples of them). The machine's speed drifts between rounds, so this shows
    how far each round's ratio strays from the ratio of the overall medians."""
    ratios = [a / b for a, b in zip(per_round[numerator], per_round[denominator])]
    name = lambda label: ' '.join(label) if isinstance(label, tuple) else label  # noqa: E731
    return f'# {name(numerator)} / {name(denominator)} in each round: {", ".join(f"{r:.2f}" for r in ratios)}'


GEMM_SIZE = 1024
# matmuls per 'gemm' call, dispatched back to back: one ~10 ms call timed alone after other work (e.g. once per
# round in eval.py) includes waking XLA's idle threads and read 30-50% below the peak at 2 threads
GEMM_REPEATS = 8


def build_gemm(size: int = GEMM_SIZE, dtype: str = 'float32') -> dict:
    """Runner 'gemm' (fp32) or 'gemm_bfloat16' (bf16 operands, fp32 accumulation, the product the model's bf16
    layers run): GEMM_REPEATS jitted [size, size] @ [size, size] matmuls in JAX, blocking on the last (the
    machine's GEMM peak in that precision)."""
    import functools

    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32).astype(dtype)
    matmul = jax.jit(functools.partial(jnp.matmul, preferred_element_type=jnp.float32))
    jax.block_until_ready(matmul(a, b))

    def gemm():
        products = [matmul(a, b) for _ in range(GEMM_REPEATS)]
        jax.block_until_ready(products)

    return {'gemm' if dtype == 'float32' else f'gemm_{dtype}': gemm}


def gemm_gflops(seconds: float, size: int = GEMM_SIZE) -> float:
    """GFLOP/s of one `build_gemm` call that took `seconds` (GEMM_REPEATS x 2 size^3 FLOPs)."""
    return GEMM_REPEATS * 2 * size ** 3 / seconds / 1e9


def peak_note(gemm_seconds: float, flops: float | None = None, seconds: float | None = None,
              precision: str = 'fp32') -> str:
    """'<precision> GEMM peak P GFLOP/s' (median of interleaved `build_gemm` calls), and '; X GFLOP/s = Y% of it'
    for a computation of `flops` FLOPs that took `seconds`."""
    peak = gemm_gflops(gemm_seconds)
    note = f'{precision} GEMM peak {peak:.1f} GFLOP/s (jax, {GEMM_SIZE}^3)'
    if flops is not None and seconds is not None:
        rate = flops / seconds / 1e9
        note += f'; {rate:.1f} GFLOP/s = {rate / peak:.0%} of it'
    return note


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('unknown CPU' elsewhere)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as info:
            return next(line.split(':', 1)[1].strip() for line in info if line.startswith('model name'))
    except (OSError, StopIteration):
        return 'unknown CPU'


def load_note() -> str:
    """1-minute load average, CPU count and threads used, printed next to timings (other processes skew them)."""
    return f'load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs ({cpu_model()})'
