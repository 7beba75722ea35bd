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


def cohort_ids(key: jax.Array, num_clients: int, cohort: int) -> jax.Array:
    """The ids [K] `select_cohort` draws from round key ``key`` (e.g. to time the round)."""
    return sample_cohort(jax.random.split(key)[0], num_clients, cohort)


def select_cohort(key: jax.Array, data, cohort: int):
    """One round's cohort: (ids [K] int32, per-client keys [K, 2], cohort data (leaves
    [K, N_max, ...]), n [K]). ``data`` is a `FederatedData` (`FederatedData.cohort`: padded or
    packed training rows)."""
    k_sample, k_train = jax.random.split(key)
    idx = sample_cohort(k_sample, data.num_clients, cohort)
    rows, n = data.cohort(idx)
    return idx, jax.random.split(k_train, idx.shape[0]), rows, n
