"""The one place that decides how a per-client function is mapped over the client axis.

Strategies:
  vmap:       one vectorized program over all K clients (best on accelerators).
  chunked:    ``lax.map`` over blocks of ``chunk_size`` vmapped clients; memory grows with the
              chunk, not the cohort, and on CPU small blocks keep per-client weights in cache.
  sequential: ``lax.map`` one client at a time (chunk 1), the lowest-memory option.
The default per backend and client-program kind (``dense``: an MLP's materialized steps;
``conv``: a convolutional model's) is measured (docs/performance.md, scripts/mapping_sweep.py),
not guessed.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax

STRATEGIES = ("vmap", "chunked", "sequential")


class ClientMapping(NamedTuple):
    """How per-client functions are mapped: ``strategy`` (``auto`` or one of `STRATEGIES`) and
    ``chunk_size`` (0 = default). ``auto`` is resolved by the code that maps (`resolve`), because
    the best mapping depends on what is mapped (the factored client program prefers plain vmap);
    ``kind`` (`KINDS`) says what the clients train, which picks the measured default."""

    strategy: str = "auto"
    chunk_size: int = 0
    kind: str = "dense"

    def resolved(self, prefer: str | None = None) -> "ClientMapping":
        """``auto`` -> ``prefer`` when given, else the measured default for the backend and kind."""
        if self.strategy == "auto" and prefer is not None:
            return ClientMapping(*resolve(prefer, self.chunk_size), self.kind)
        return ClientMapping(*resolve(self.strategy, self.chunk_size, kind=self.kind), self.kind)

    def map(self, fn: Callable, in_axes: Sequence[int | None]) -> Callable:
        """`map_clients` with this mapping (resolved first)."""
        m = self.resolved()
        return map_clients(fn, in_axes, m.strategy, m.chunk_size)

# Measured defaults (docs/performance.md, scripts/mapping_sweep.py).
KINDS = ("dense", "conv")
DEFAULT_STRATEGY = {"cpu": "chunked", "gpu": "vmap", "tpu": "vmap"}
DEFAULT_CHUNK = {"cpu": 10, "gpu": 0, "tpu": 0}
# Convolutional clients on CPU: one client at a time keeps a client's patch matrices (about
# 10 MB per step for the peers' CNN) in cache; vmapping 10 clients ran 1.4x slower
# (docs/bench/mapping-cpu.md).
KIND_STRATEGY = {("cpu", "conv"): "sequential"}


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
                chunk_size: int = 0) -> Callable:
    """Maps ``fn`` over axis 0 of the arguments whose ``in_axes`` entry is 0.

    Arguments with ``None`` are shared by every client (e.g. the global model). Outputs are
    stacked on a new leading client axis in every strategy, so callers never know which ran.
    """
    in_axes = tuple(in_axes)
    if strategy == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if strategy not in ("chunked", "sequential"):
        raise ValueError(f"unknown client mapping {strategy!r}; expected one of {STRATEGIES}")
    batch = 1 if strategy == "sequential" else max(1, chunk_size)

    def mapped(*args):
        per_client = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

        def one(client_args):
            it = iter(client_args)
            full = [next(it) if ax == 0 else a for a, ax in zip(args, in_axes)]
            return fn(*full)

        return jax.lax.map(one, per_client, batch_size=None if batch == 1 else batch)

    return mapped
