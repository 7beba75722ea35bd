"""On-device client sampling and cohort gather/scatter."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_cohort(key: jax.Array, num_clients: int, cohort: int) -> jax.Array:
    """K = ``cohort`` distinct client ids, uniformly without replacement: [K] int32.

    With ``cohort == num_clients`` every client takes part (ids in order, no randomness), so
    full-participation runs do not depend on the sampler.
    """
    if cohort >= num_clients:
        return jnp.arange(num_clients, dtype=jnp.int32)
    return jax.random.choice(key, num_clients, (cohort,), replace=False).astype(jnp.int32)


def gather(tree, idx: jax.Array):
    """Cohort view of stacked state: every [C, ...] leaf -> [K, ...]."""
    return jax.tree.map(lambda a: a[idx], tree)


def scatter(tree, idx: jax.Array, values):
    """Writes cohort values [K, ...] back into stacked state [C, ...]."""
    return jax.tree.map(lambda a, v: a.at[idx].set(v), tree, values)
