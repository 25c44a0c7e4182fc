"""Which XLA backend the computations being traced will run on, for the few places that pick a formulation per
backend (XLA:CPU's fast paths differ from a GPU's or TPU's)."""
from __future__ import annotations

import jax


def on_cpu() -> bool:
    """True when JAX's default backend is XLA:CPU (read at trace time; tests patch it to trace another
    backend's formulation on a CPU machine)."""
    return jax.default_backend() == 'cpu'
