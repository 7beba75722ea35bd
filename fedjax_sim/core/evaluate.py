"""On-device evaluation with a task's metrics: the global model on the global test set, each
client's own model on its own test split.

A task's ``metrics(params, batch)`` returns masked sums with counts (`tasks.divide_metrics`); here
they are summed over batches or clients and divided. Names: ``global_<metric>`` (pooled over the
global test set), ``personalized_<metric>`` (mean over the clients that have rows for it of each
client's own value), ``pooled_<metric>`` (all clients' rows pooled) and
``personalized_<headline>_per_client`` [C] (NaN where a client's value is undefined: no test rows,
or a ratio metric whose denominator is 0 there).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_sim.core.mapping import ClientMapping
from fedjax_sim.tasks import delta_m, denominator, divide_metrics, is_count, task_headlines


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


def client_sums(metrics_fn: Callable, params, rows: dict, n: jax.Array, stacked: bool,
                mapping: ClientMapping = ClientMapping("vmap")) -> dict:
    """{name: [C]} each client's metric sums (and counts) on its own rows (leaves [C, M_max, ...],
    n [C] valid); ``params`` shared (``stacked=False``) or [C, ...]."""
    m_max = jax.tree.leaves(rows)[0].shape[1]
    mask = jnp.arange(m_max)[None, :] < n[:, None]
    one = lambda p, r, mk: metrics_fn(p, {**r, "mask": mk})  # noqa: E731
    return mapping.map(one, (0 if stacked else None, 0, 0))(params, rows, mask)


def task_scores(sums: dict, spec) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-(client, task) values from multi-task `client_sums`: (scores [C, T] of each task's
    Delta_m metric (accuracy or mse, `tasks.task_headlines`), losses [C, T], has [C, T] bool:
    the client holds the task and has test rows for it)."""
    heads = task_headlines(spec)
    count = jnp.stack([sums[f"{t}/count"] for t in spec.task_names], -1)
    has = (count > 0) & jnp.asarray(spec.task_mask)
    per = lambda name: jnp.stack([sums[f"{t}/{name(i)}"] for i, t in enumerate(spec.task_names)], -1)  # noqa: E731
    denom = jnp.maximum(count, 1)
    return per(lambda i: heads[i]) / denom, per(lambda i: "loss") / denom, has


def evaluate_multitask(metrics_fn: Callable, params, ref_params, rows: dict, n: jax.Array, spec,
                       mapping: ClientMapping = ClientMapping("vmap")) -> dict:
    """Each client's multi-task model [C, ...] on its own test rows, and Delta_m against a
    reference (``ref_params`` [C, ...], Local; None: the run *is* the reference, Delta_m = 0).

    Returns scalars ``delta_m`` (= ``personalized_delta_m``, over every (client, task) pair),
    ``delta_m_<domain>`` per input domain, ``personalized_loss`` (mean over clients of
    sum_t w_t loss_t), ``<domain>/<task>/<metric>`` (mean over the domain's clients holding the
    task), ``personalized_<task>/<metric>``; and ``personalized_delta_m_per_client`` [C],
    ``task_scores`` / ``reference_task_scores`` [C, T] (0 where a client does not hold a task).
    """
    sums = client_sums(metrics_fn, params, rows, n, True, mapping)
    scores, losses, has = task_scores(sums, spec)
    ref_scores = scores if ref_params is None else task_scores(
        client_sums(metrics_fn, ref_params, rows, n, True, mapping), spec)[0]
    lower = jnp.asarray(spec.lower_is_better)
    domains = np.asarray(spec.domains)
    total = delta_m(scores, ref_scores, has, lower)
    out = {"delta_m": total, "personalized_delta_m": total,
           "personalized_delta_m_per_client": jax.vmap(lambda s, r, h: delta_m(s[None], r[None], h[None], lower))(
               scores, ref_scores, has),
           "task_scores": jnp.where(has, scores, 0.0), "reference_task_scores": jnp.where(has, ref_scores, 0.0)}
    weights = jnp.asarray(spec.loss_weights, jnp.float32)
    out["personalized_loss"] = jnp.mean(jnp.sum(jnp.where(has, losses, 0.0) * weights, -1))
    heads = task_headlines(spec)
    for d, name in enumerate(spec.domain_names):
        in_domain = jnp.asarray(domains == d)[:, None] & has
        out[f"delta_m_{name}"] = delta_m(scores, ref_scores, in_domain, lower)
        for t, task in enumerate(spec.task_names):
            if not np.any(spec.task_mask[domains == d, t]):
                continue
            w = in_domain[:, t].astype(jnp.float32)
            out[f"{name}/{task}/{heads[t]}"] = jnp.sum(scores[:, t] * w) / jnp.maximum(jnp.sum(w), 1.0)
    for name, value in sums.items():
        if is_count(name):
            continue
        count = denominator(name, sums)
        held = count > 0
        out[f"personalized_{name}"] = jnp.sum(jnp.where(held, value / jnp.maximum(count, 1), 0.0)) / jnp.maximum(
            jnp.sum(held), 1)
    return out


def evaluate_clients(metrics_fn: Callable, params, rows: dict, n: jax.Array, stacked: bool,
                     headline: str, mapping: ClientMapping = ClientMapping("vmap")) -> dict:
    """Each client's model on its own test split.

    Args:
      metrics_fn: a task's ``metrics``.
      params: one model shared by all clients (``stacked=False``) or [C, ...] per-client models.
      rows: leaves [C, M_max, ...]; n: [C] valid test rows.
      headline: the task's headline metric (reported per client).
    """
    return client_summary(client_sums(metrics_fn, params, rows, n, stacked, mapping), headline)


def per_client_in_blocks(fn: Callable, data, block: int):
    """``fn(idx, part)`` -> a pytree of [B] values of the clients ``idx`` [B] (``part``: their
    data, `FederatedData.clients`), for every client, ``block`` clients at a time (`lax.map`):
    leaves [C]. Only one block's intermediates exist at once, which is what lets a per-client store
    in host memory be read without copying it to the device whole. The last block repeats the last
    client to a full block; the repeats are dropped."""
    c = data.num_clients

    def one(j):
        idx = jnp.minimum(j * block + jnp.arange(block), c - 1)
        return fn(idx, data.clients(idx))

    out = jax.lax.map(one, jnp.arange(-(-c // block)))  # leaves [blocks, block]
    return jax.tree.map(lambda a: a.reshape(-1)[:c], out)


def client_sums_in_blocks(metrics_fn: Callable, params_of: Callable, data, block: int,
                          mapping: ClientMapping = ClientMapping("vmap")) -> dict:
    """`client_sums` of every client's own model, built ``block`` clients at a time
    (`per_client_in_blocks`): {name: [C]}. ``params_of(idx, part)`` -> [B, ...] the models of the
    clients ``idx`` [B], ``part`` their data."""
    return per_client_in_blocks(lambda idx, part: client_sums(metrics_fn, params_of(idx, part), part.test,
                                                              part.n_test, True, mapping), data, block)


def client_summary(sums: dict, headline: str) -> dict:
    """`evaluate_clients`'s metrics from each client's sums {name: [C]} (`client_sums`)."""
    out = {}
    for name, value in sums.items():
        if is_count(name):
            continue
        count = denominator(name, sums)
        has = count > 0
        per_client = jnp.where(has, value / jnp.maximum(count, 1), 0.0)
        out[f"personalized_{name}"] = jnp.sum(per_client) / jnp.maximum(jnp.sum(has), 1)
        out[f"pooled_{name}"] = jnp.sum(value) / jnp.maximum(jnp.sum(count), 1)
        if name == headline:  # NaN where undefined (no test rows, or a ratio whose denominator is 0)
            out[f"personalized_{name}_per_client"] = jnp.where(has, per_client, jnp.nan)
    return out
