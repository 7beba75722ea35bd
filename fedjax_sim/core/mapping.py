"""The one place that decides how a per-client function is mapped over the client axis.

Strategies:
  vmap:       one vectorized program over all K clients (best on accelerators).
  chunked:    ``lax.map`` over blocks of ``chunk_size`` vmapped clients; memory grows with the
              chunk, not the cohort, and on CPU small blocks keep per-client weights in cache.
  sequential: ``lax.map`` one client at a time (chunk 1), the lowest-memory option.
  sharded:    the cohort split over the devices of a one-axis `jax.sharding.Mesh` (axis
              ``clients``, `fedjax_sim.parallel`); each device maps its own clients with the
              backend's measured default (``chunk_size``: 0 = vmap, 1 = one at a time, k = chunks
              of k). A cohort the devices do not divide is padded with copies of its first client,
              whose outputs are dropped. Aggregating the mapped outputs (a mean over clients)
              becomes a cross-device reduction chosen by XLA. Where the programs' data and
              per-client state live is decided by the runner (`parallel.put_clients`).
The default per backend and client-program kind (``dense``: an MLP's materialized steps;
``conv``: a convolutional model's) is measured (docs/performance.md, scripts/mapping_sweep.py),
not guessed.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from fedjax_sim import parallel
from fedjax_sim.errors import ConfigError

STRATEGIES = ("vmap", "chunked", "sequential", "sharded")


class ClientMapping(NamedTuple):
    """How per-client functions are mapped: ``strategy`` (``auto`` or one of `STRATEGIES`) and
    ``chunk_size`` (0 = default). ``auto`` is resolved by the code that maps (`resolve`), because
    the best mapping depends on what is mapped (the factored client program has its own measured
    preference, `factored_mapping`);
    ``kind`` (`KINDS`) says what the clients train, which picks the measured default."""

    strategy: str = "auto"
    chunk_size: int = 0
    kind: str = "dense"
    mesh: Any = None  # sharded: the `jax.sharding.Mesh` (one axis, `parallel.AXIS`)
    inner: str = ""  # sharded, once resolved: each device's own strategy ("" = not resolved yet)

    def resolved(self, prefer: str | tuple[str, int] | None = None) -> "ClientMapping":
        """``auto`` -> ``prefer`` (a strategy, or (strategy, chunk)) when given, else the measured
        default for the backend and kind; a chunk_size set in the config wins over the preferred
        one. ``sharded`` stays sharded; ``prefer`` / the default then picks each device's own
        mapping, recorded as ``chunk_size`` (0 = vmap)."""
        if isinstance(prefer, str):
            prefer = (prefer, 0)
        strategy, chunk = prefer if prefer is not None else ("auto", 0)
        chunk = self.chunk_size or chunk
        if self.strategy == "sharded":
            if self.inner:  # resolved already: chunk_size 0 now means vmap, not "the default"
                return self
            inner, chunk = resolve(strategy, chunk, kind=self.kind)
            return self._replace(chunk_size=0 if inner == "vmap" else chunk, inner=inner)
        if self.strategy == "auto" and prefer is not None:
            return self._replace(strategy=strategy, chunk_size=resolve(strategy, chunk)[1])
        return self._replace(**dict(zip(("strategy", "chunk_size"),
                                         resolve(self.strategy, self.chunk_size, kind=self.kind))))

    def map(self, fn: Callable, in_axes: Sequence[int | None], sort_by: int | None = None) -> Callable:
        """`map_clients` with this mapping (resolved first)."""
        m = self.resolved()
        return map_clients(fn, in_axes, m.strategy, m.chunk_size, m.mesh, sort_by)

# Measured defaults (docs/performance.md, scripts/mapping_sweep.py).
KINDS = ("dense", "conv")
DEFAULT_STRATEGY = {"cpu": "chunked", "gpu": "vmap", "tpu": "vmap"}
DEFAULT_CHUNK = {"cpu": 10, "gpu": 0, "tpu": 0}
# Convolutional clients on CPU: one client at a time keeps a client's patch matrices (about
# 10 MB per step for the peers' CNN) in cache; vmapping 10 clients ran 1.4x slower
# (docs/bench/mapping-cpu.md).
KIND_STRATEGY = {("cpu", "conv"): "sequential"}
# The factored client program shares its GEMMs across the clients of one vmapped block: one block
# on accelerators; on CPU blocks of 10 like the materialized program, whose factors stay in cache
# (a cohort of 1,000 as one block ran 1.6x slower, blocks of 100 1.15x slower; at 100 clients
# they tie: docs/bench/scale-cpu.md, "Cohort").
FACTORED_CHUNK = {"cpu": 10}


def factored_mapping(backend: str | None = None) -> tuple[str, int]:
    """The measured (strategy, chunk) preference of the factored client program on ``backend``."""
    chunk = FACTORED_CHUNK.get(backend or jax.default_backend(), 0)
    return ("chunked", chunk) if chunk else ("vmap", 0)


def client_mapping(strategy: str, chunk_size: int = 0, kind: str = "dense",
                   mesh_devices: int = 0) -> ClientMapping:
    """A run's mapping, with its mesh when sharded. ``auto`` is ``sharded`` over every device
    when JAX sees several (a multi-process run, several GPUs, or forced host devices: measured in
    docs/performance.md); a multi-process run must shard (each process holds only its own devices).
    ConfigError naming the field for a mesh that cannot be built."""
    if strategy == "auto" and jax.device_count() > 1:
        strategy = "sharded"
    if jax.process_count() > 1 and strategy != "sharded":
        raise ConfigError("client_mapping", strategy, f"auto or sharded in a {jax.process_count()}-process run "
                                                      "(the cohort is split over every process's devices)")
    if mesh_devices and strategy != "sharded":
        raise ConfigError("mesh_devices", mesh_devices, f"0 with client_mapping={strategy} (only the sharded "
                                                        "mapping uses a mesh)")
    mesh = parallel.client_mesh(mesh_devices) if strategy == "sharded" else None
    return ClientMapping(strategy, chunk_size, kind, mesh)


def trial_chunk(num_trials: int, backend: str | None = None) -> int:
    """The default client chunk when ``num_trials`` seeds/grid points are vmapped around the
    client mapping: each chunk step then trains ``num_trials x chunk`` client models, so the chunk
    shrinks to keep that near the measured per-backend optimum (CPU: 16 seeds at chunk 10 trained
    2.3x slower than at chunk 2, docs/performance.md); at least 2. 0 (the default: no chunk) where
    the backend does not chunk."""
    backend = backend or jax.default_backend()
    best = DEFAULT_CHUNK.get(backend, 0)
    return max(2, best // max(num_trials, 1)) if best else 0


def resolve(strategy: str, chunk_size: int, backend: str | None = None,
            kind: str = "dense") -> tuple[str, int]:
    """Turns ``auto`` / ``0`` into the measured default for ``backend`` (default: JAX's) and the
    client program's ``kind``."""
    backend = backend or jax.default_backend()
    if strategy == "auto":
        strategy = KIND_STRATEGY.get((backend, kind)) or DEFAULT_STRATEGY.get(backend, "vmap")
    if strategy == "chunked" and chunk_size <= 0:
        chunk_size = DEFAULT_CHUNK.get(backend) or 10
    if strategy == "sequential":
        chunk_size = 1
    return strategy, chunk_size


def map_clients(fn: Callable, in_axes: Sequence[int | None], strategy: str = "vmap",
                chunk_size: int = 0, mesh=None, sort_by: int | None = None) -> Callable:
    """Maps ``fn`` over axis 0 of the arguments whose ``in_axes`` entry is 0.

    Arguments with ``None`` are shared by every client (e.g. the global model). Outputs are
    stacked on a new leading client axis in every strategy, so callers never know which ran.
    ``sharded`` needs ``mesh``; its ``chunk_size`` is each device's (0 = vmap).

    ``sort_by``: the position of a per-client [K] argument (e.g. the row counts ``n``) by which
    ``chunked`` groups clients: they are mapped in ascending order of it and the outputs put back
    in the callers' order, so a chunk holds clients of similar size and a loop whose trip count
    depends on it (`core.local.Schedule.trim`) runs near each member's own count. Only the
    grouping changes, not what any client computes.
    """
    in_axes = tuple(in_axes)
    if strategy == "sharded":
        if mesh is None:
            raise ValueError("the sharded client mapping needs a mesh (fedjax_sim.parallel.client_mesh)")
        inner = "vmap" if chunk_size == 0 else ("sequential" if chunk_size == 1 else "chunked")
        return _sharded(map_clients(fn, in_axes, inner, chunk_size, sort_by=sort_by), in_axes, mesh)
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if strategy not in ("chunked", "sequential"):
        raise ValueError(f"unknown client mapping {strategy!r}; expected one of {STRATEGIES}")
    batch = 1 if strategy == "sequential" else max(1, chunk_size)

    def mapped(*args):
        per_client = tuple(a for a, ax in zip(args, in_axes) if ax == 0)
        if batch > 1 and jax.tree.leaves(per_client)[0].shape[0] <= batch:
            return jax.vmap(fn, in_axes=in_axes)(*args)  # one block: lax.map would only add a loop

        def one(client_args):
            it = iter(client_args)
            full = [next(it) if ax == 0 else a for a, ax in zip(args, in_axes)]
            return fn(*full)

        if sort_by is None or batch == 1:
            return jax.lax.map(one, per_client, batch_size=None if batch == 1 else batch)
        order = jnp.argsort(args[sort_by], stable=True)
        out = jax.lax.map(one, jax.tree.map(lambda a: a[order], per_client), batch_size=batch)
        return jax.tree.map(lambda a: a[jnp.argsort(order)], out)

    return mapped


def _sharded(mapped: Callable, in_axes: tuple, mesh) -> Callable:
    """``mapped`` (any client mapping of [K, ...] arguments) run on every device of ``mesh`` over
    its own [K_pad / D] clients: the per-client arguments are padded to a multiple of the D
    devices (copies of client 0: real data, so nothing in the padding can be non-finite), laid out
    [D, K_pad / D, ...] with the device axis sharded, and the outputs put back to [K, ...]."""
    devices = mesh.shape[parallel.AXIS]
    split = parallel.client_sharding(mesh)

    def mapped_sharded(*args):
        per_client = [a for a, ax in zip(args, in_axes) if ax == 0]
        k = jax.tree.leaves(per_client)[0].shape[0]
        pad = -k % devices

        def lay_out(a):
            if pad:
                a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad, *a.shape[1:]))])
            a = a.reshape(devices, (k + pad) // devices, *a.shape[1:])
            return jax.lax.with_sharding_constraint(a, split)

        laid = iter(jax.tree.map(lay_out, per_client))
        full = [next(laid) if ax == 0 else a for a, ax in zip(args, in_axes)]
        out = jax.vmap(mapped, in_axes=in_axes)(*full)

        def put_back(a):
            a = jax.lax.with_sharding_constraint(a, split)
            return a.reshape(k + pad, *a.shape[2:])[:k]

        return jax.tree.map(put_back, out)

    return mapped_sharded
