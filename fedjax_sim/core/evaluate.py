"""On-device evaluation with a task's metrics: the global model on the global test set, each
client's own model on its own test split.

A task's ``metrics(params, batch)`` returns masked sums with counts (`tasks.divide_metrics`); here
they are summed over batches or clients and divided. Names: ``global_<metric>`` (pooled over the
global test set), ``personalized_<metric>`` (mean over the clients that have rows for it of each
client's own value), ``pooled_<metric>`` (all clients' rows pooled) and
``personalized_<headline>_per_client`` [C] (0 where a client has no test rows).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fedjax_sim.core.mapping import ClientMapping
from fedjax_sim.tasks import count_key, divide_metrics, is_count


def evaluate_global(metrics_fn: Callable, params, rows: dict, batch_size: int = 512) -> dict:
    """``global_<metric>`` of one model on rows (leaves [T, ...]), in fixed-size batches.

    ``rows["mask"]`` [T] bool, when present, marks the valid rows (data of several seeds stacked
    to a common T, `data.stack_trials`); without it every row counts.
    """
    rows = dict(rows)
    valid = rows.pop("mask", None)
    t = jax.tree.leaves(rows)[0].shape[0]
    nb = -(-t // batch_size)
    pad = nb * batch_size - t
    valid = jnp.ones(t, bool) if valid is None else valid

    def batched(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(nb, batch_size, *a.shape[1:])

    batches = {**jax.tree.map(batched, rows), "mask": batched(valid)}
    sums = jax.tree.map(lambda v: jnp.sum(v, 0), jax.lax.map(lambda b: metrics_fn(params, b), batches))
    return {f"global_{k}": v for k, v in divide_metrics(sums).items()}


def evaluate_clients(metrics_fn: Callable, params, rows: dict, n: jax.Array, stacked: bool,
                     headline: str, mapping: ClientMapping = ClientMapping("vmap")) -> dict:
    """Each client's model on its own test split.

    Args:
      metrics_fn: a task's ``metrics``.
      params: one model shared by all clients (``stacked=False``) or [C, ...] per-client models.
      rows: leaves [C, M_max, ...]; n: [C] valid test rows.
      headline: the task's headline metric (reported per client).
    """
    m_max = jax.tree.leaves(rows)[0].shape[1]
    mask = jnp.arange(m_max)[None, :] < n[:, None]
    one = lambda p, r, mk: metrics_fn(p, {**r, "mask": mk})
    sums = mapping.map(one, (0 if stacked else None, 0, 0))(params, rows, mask)  # {name: [C]}
    out = {}
    for name, value in sums.items():
        if is_count(name):
            continue
        count = sums[count_key(name)]
        has = count > 0
        per_client = jnp.where(has, value / jnp.maximum(count, 1), 0.0)
        out[f"personalized_{name}"] = jnp.sum(per_client) / jnp.maximum(jnp.sum(has), 1)
        out[f"pooled_{name}"] = jnp.sum(value) / jnp.maximum(jnp.sum(count), 1)
        if name == headline:
            out[f"personalized_{name}_per_client"] = per_client
    return out
