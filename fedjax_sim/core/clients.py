"""Per-client state: pytrees whose leaves are stacked [C, ...], in device or host memory.

The one place that does what every stateful algorithm needs each round: gather the cohort's
slice, run the (mapped) client program on it, scatter the result back. Clients outside the
cohort keep their state untouched.

The stacked store may live in host memory (``state_memory=host``, placed by the engine with a
``pinned_host`` sharding): an accelerator then holds only the cohort's slice [K, ...]. XLA does
not gather from host memory by index ("memory_space of all inputs passed to gather must be the
same"), so a host store is read and written one client row at a time (`lax.fori_loop` of
``dynamic_slice`` + a copy to device, and back), which XLA lowers to K row transfers. Device
stores keep the one-op gather and scatter. Per-client evaluation and the membership attack read a
host store one block of clients at a time (`cohort_view`, `core.evaluate.per_client_in_blocks`);
code that reads a store whole (`report`, a multi-task evaluation, a diagnostic over all clients)
goes through `on_device`.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_sim.core.sampling import gather, scatter


def replicate(tree, num_clients: int):
    """Every leaf [...] -> [C, ...] (the same value for every client, e.g. one initialization)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_clients, *jnp.shape(a))), tree)


def in_host_memory(a) -> bool:
    """Whether array (or tracer) ``a`` lives in host memory (a ``pinned_host`` placement)."""
    return getattr(jax.typeof(a), "memory_space", None) == jax.memory.Space.Host


def _row_loop(idx: jax.Array, rank: int, body: Callable, init):
    """``fori_loop`` over every cohort row of ``idx`` [*B, K] (B: trial axes, leading): ``body(
    store_start, cohort_start, carry)`` with the row's start in a store [*B, C, ...] and in the
    cohort [*B, K, ...] (both of ``rank`` dims)."""
    shape = idx.shape

    def row(j, carry):
        pos = jnp.unravel_index(j, shape)  # (*b, k): scalars
        tail = (0,) * (rank - len(shape))
        return body((*pos[:-1], idx[pos], *tail), (*pos, *tail), carry)

    return lax.fori_loop(0, math.prod(shape), row, init)


@jax.custom_batching.custom_vmap
def _gather_rows(a: jax.Array, idx: jax.Array) -> jax.Array:
    """``a[idx]`` per trial for a host-memory store [*B, C, ...] -> device [*B, K, ...], one row
    at a time. Vmapped, the trial axis joins B (a batched index would make XLA gather)."""
    size = (1,) * idx.ndim + a.shape[idx.ndim:]

    def body(src, dst, out):
        one = jax.device_put(lax.dynamic_slice(a, src, size), jax.memory.Space.Device)
        return lax.dynamic_update_slice(out, one, dst)

    return _row_loop(idx, a.ndim, body, jnp.zeros(idx.shape + a.shape[idx.ndim:], a.dtype))


@jax.custom_batching.custom_vmap
def _scatter_rows(a: jax.Array, idx: jax.Array, values: jax.Array) -> jax.Array:
    """``a.at[idx].set(values)`` per trial for a host-memory store [*B, C, ...], one row at a time."""
    size = (1,) * idx.ndim + a.shape[idx.ndim:]

    def body(src, dst, store):
        one = jax.device_put(lax.dynamic_slice(values, dst, size), jax.memory.Space.Host)
        return lax.dynamic_update_slice(store, one, src)

    return _row_loop(idx, a.ndim, body, a)


def _trial_axis(axis_size: int, batched, *args):
    """Batching rule helper: every argument gets the trial axis, the unbatched ones by
    broadcasting (the index and values: device arrays of the cohort's size; a store shared by
    the trials: a copy per trial, which is what writing to it per trial means)."""
    return [a if b else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, b in zip(args, batched)]


@_gather_rows.def_vmap
def _gather_rows_vmap(axis_size, in_batched, a, idx):
    if not in_batched[0]:  # one store read by every trial: its rows for all trials' indices at once
        ids = jnp.moveaxis(idx, 0, -2)  # [*B, T, K]
        flat = _gather_rows(a, ids.reshape(*ids.shape[:-2], -1))  # [*B, T*K, ...]
        rows = flat.reshape(*ids.shape, *flat.shape[ids.ndim - 1:])  # [*B, T, K, ...]
        return jnp.moveaxis(rows, ids.ndim - 2, 0), True
    return _gather_rows(*_trial_axis(axis_size, in_batched, a, idx)), True


@_scatter_rows.def_vmap
def _scatter_rows_vmap(axis_size, in_batched, a, idx, values):
    return _scatter_rows(*_trial_axis(axis_size, in_batched, a, idx, values)), True


def gather_cohort(store, idx: jax.Array):
    """The cohort's slice of per-client state: every [C, ...] leaf -> device [K, ...]."""
    return jax.tree.map(lambda a: _gather_rows(a, idx) if in_host_memory(a) else gather(a, idx), store)


def scatter_cohort(store, idx: jax.Array, values):
    """Writes the cohort's new state [K, ...] back into ``store`` [C, ...] (in its memory)."""
    return jax.tree.map(lambda a, v: _scatter_rows(a, idx, v) if in_host_memory(a) else scatter(a, idx, v),
                        store, values)


def on_device(tree):
    """``tree`` with its host-memory leaves copied whole to device memory (others as they are):
    for code that reads every client's state at once, e.g. evaluation."""
    return jax.tree.map(lambda a: jax.device_put(a, jax.memory.Space.Device) if in_host_memory(a) else a, tree)


def holds_host_memory(state, fields: tuple) -> bool:
    """Whether any leaf under ``fields`` of ``state`` (a NamedTuple) lives in host memory."""
    return any(in_host_memory(a) for f in fields for a in jax.tree.leaves(getattr(state, f)))


def cohort_view(state, fields: tuple, idx: jax.Array):
    """``state`` with each field of ``fields`` (stores [C, ...]) replaced by the rows ``idx`` [K]
    in device memory (`gather_cohort`): what the clients ``idx`` see of it."""
    return state._replace(**{f: gather_cohort(getattr(state, f), idx) for f in fields})


def to_host_memory(state, fields: tuple):
    """``state`` (a NamedTuple) with the leaves under ``fields`` moved to host memory (in a traced
    program: so its outputs' types say host, which a jit's host out-sharding alone does not)."""
    if not fields:  # nothing to move (any state, NamedTuple or not)
        return state
    host = lambda tree: jax.tree.map(lambda a: jax.device_put(a, jax.memory.Space.Host), tree)  # noqa: E731
    return state._replace(**{f: host(getattr(state, f)) for f in fields})


def update_cohort(store, idx: jax.Array, fn: Callable[[Any], tuple[Any, Any]]):
    """Gathers ``store[idx]`` ([C, ...] -> [K, ...]), runs ``fn(cohort_state) -> (new_cohort_state,
    outputs)`` and scatters the new state back. Returns (store', outputs). ``store`` may be in
    device or host memory (`gather_cohort`)."""
    new, out = fn(gather_cohort(store, idx))
    return scatter_cohort(store, idx, new), out
