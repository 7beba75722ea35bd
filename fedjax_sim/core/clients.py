"""Per-client state: pytrees whose leaves are stacked [C, ...] on device.

The one place that does what every stateful algorithm needs each round: gather the cohort's
slice, run the (mapped) client program on it, scatter the result back. Clients outside the
cohort keep their state untouched.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from fedjax_sim.core.sampling import gather, scatter


def replicate(tree, num_clients: int):
    """Every leaf [...] -> [C, ...] (the same value for every client, e.g. one initialization)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_clients, *jnp.shape(a))), tree)


def update_cohort(store, idx: jax.Array, fn: Callable[[Any], tuple[Any, Any]]):
    """Gathers ``store[idx]`` ([C, ...] -> [K, ...]), runs ``fn(cohort_state) -> (new_cohort_state,
    outputs)`` and scatters the new state back. Returns (store', outputs)."""
    new, out = fn(gather(store, idx))
    return scatter(store, idx, new), out
