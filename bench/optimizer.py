"""The Adafactor update alone: text2text.adafactor vs optax.adafactor (jitted) vs transformers' Adafactor (torch).

One update of every parameter of the benchmark model (common.bench_config: 25.9M parameters, T5X's
[embed, vocab] logits kernel and [vocab, embed] embedding), from fixed random gradients, with T5X's settings
(constant LR 1e-3, decay 0.8, clipping 1.0, parameter scale, no momentum). JAX: one jitted
`(grads, state, params) -> (params, state)` with state and params donated, as inside the train step; HF: the same
model's parameters (torch layout) with `.grad` set, timed `optimizer.step()`. Each framework in its own worker
process on the same CPUs; interleaved rounds, medians. The update is bound by memory traffic, not FLOPs, so
besides the GEMM peak it prints the machine's memory bandwidth (a jitted triad `a + 2 b` over as many floats as
the model has parameters, in the same rounds) and each side's rate under a streaming model of an exact
Adafactor update's memory traffic (`STREAMED_PASSES`). Run:
`.venv/bin/python bench/optimizer.py [--threads N] [--rounds R] [--steps S]`.
"""
import numpy as np

from common import (LEARNING_RATE, PEER_ENVIRONMENT, HfTrainer, Worker, bench_config, build_gemm, interleaved,
                    load_note, parse_args, peak_note)


def build_jax() -> dict:
    """Runners 'ours' and 'optax' (one jitted Adafactor update of the benchmark model's params), 'gemm', 'triad'
    (`build_triad` over as many floats as the params) and 'parameters' (not timed: the number of parameters)."""
    import flax
    import jax
    import jax.numpy as jnp
    import optax
    from text2text import adafactor, models, optim
    model = models.EncoderDecoderModel(bench_config())
    params = flax.core.meta.unbox(model.init_variables(jax.random.PRNGKey(0), {'inputs': (8, 128),
                                                                                'targets': (8, 32)})['params'])
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 1e-3, p.shape).astype(np.float32)), params)
    schedule = optim.constant_schedule(LEARNING_RATE)
    runners = {}
    for name, tx in {'ours': adafactor.adafactor(learning_rate=schedule),
                     'optax': optax.adafactor(learning_rate=schedule, factored=True)}.items():
        def update(grads, state, params, tx=tx):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        jitted = jax.jit(update, donate_argnums=(1, 2))
        live = {'state': tx.init(params), 'params': jax.tree.map(jnp.copy, params)}

        def run(jitted=jitted, live=live):
            live['params'], live['state'] = jitted(grads, live['state'], live['params'])
            jax.block_until_ready(live['params'])

        run()
        run()
        runners[name] = run
    elements = sum(p.size for p in jax.tree.leaves(params))
    return {**runners, **build_gemm(), **build_triad(elements), 'parameters': lambda: elements}


# Parameter-sized passes of an exact factored Adafactor update when every leaf streams from memory (the model for
# leaves larger than the caches; the two 33 MB vocabulary leaves hold 64% of the parameters): the gradient three
# times (its second-moment statistics; the RMS of the factored update, for clipping, which needs this step's
# statistics; the update itself), the parameters twice (their RMS, for the parameter scale; the update) and the
# new parameters once. Ours streams the gradient once more (row and column statistics in two passes).
STREAMED_PASSES = 6


def build_triad(elements: int) -> dict:
    """Runner 'triad': a jitted `a + 2 b` over two float32 arrays of `elements` (a donated): 3 x 4 x `elements`
    bytes read or written, the machine's streaming memory bandwidth for arrays of the model's size."""
    import jax
    import jax.numpy as jnp
    triad = jax.jit(lambda a, b: a + 2.0 * b, donate_argnums=0)
    live = {'a': jnp.ones((elements,), jnp.float32), 'b': jnp.ones((elements,), jnp.float32)}

    def run():
        live['a'] = triad(live['a'], live['b'])
        jax.block_until_ready(live['a'])

    run()
    return {'triad': run}


def build_hf() -> dict:
    """Runner 'HF': transformers' Adafactor step on the same model in torch, gradients set once."""
    import torch
    trainer = HfTrainer(bench_config())
    generator = torch.Generator().manual_seed(0)
    for param in trainer.model.parameters():
        param.grad = torch.randn(param.shape, generator=generator) * 1e-3
    trainer.optimizer.step()
    return {'HF': trainer.optimizer.step}


def main() -> None:
    args = parse_args(rounds=5, steps=5)
    jax_worker = Worker(args.threads, build_jax)
    hf_worker = Worker(args.threads, build_hf, environment=PEER_ENVIRONMENT)
    print(f'# {load_note()}, threads {args.threads}; {args.rounds} interleaved rounds x {args.steps} updates',
          flush=True)
    times = interleaved({'ours': (jax_worker, 'ours'), 'optax': (jax_worker, 'optax'), 'HF': (hf_worker, 'HF'),
                         'gemm': (jax_worker, 'gemm'), 'triad': (jax_worker, 'triad')}, args.rounds, args.steps)
    parameter_bytes = 4 * jax_worker.call('parameters')
    jax_worker.close()
    hf_worker.close()
    bandwidth = 3 * parameter_bytes / times['triad']
    print(f'# {load_note()}; {peak_note(times["gemm"])}; memory bandwidth {bandwidth / 1e9:.1f} GB/s (triad over '
          f'{parameter_bytes / 1e6:.0f} MB arrays)')
    ours, reference, hf = times['ours'], times['optax'], times['HF']
    traffic = STREAMED_PASSES * parameter_bytes
    rates = ', '.join(f'{name} {traffic / times[name] / bandwidth:.0%}' for name in ('ours', 'optax', 'HF'))
    print(f'# streaming model of an exact update: {STREAMED_PASSES} x {parameter_bytes / 1e6:.0f} MB, '
          f'{traffic / bandwidth * 1e3:.1f} ms at that bandwidth; the rate of each side under it, as a share of it: {rates}')
    print(f'update: ours {ours * 1e3:.1f} ms, optax {reference * 1e3:.1f} ms, HF {hf * 1e3:.1f} ms; '
          f'ratio ours/HF {ours / hf:.2f}, ours/optax {ours / reference:.2f}')


if __name__ == '__main__':
    main()
