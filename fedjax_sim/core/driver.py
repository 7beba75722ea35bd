"""Rounds fused with ``lax.scan`` between evaluation points, compiled once per run.

The driver scans a `RoundInput` pytree: each round's key, index and activity flag, and for
asynchronous methods the rows of a precomputed event schedule. A block always scans
``block_len`` rounds; rounds past the end of the run are masked with ``lax.cond`` (skipped,
state unchanged), so a run whose length is not a multiple of the evaluation interval still
compiles exactly one program. `count_compiles` counts XLA compilations with JAX's own
monitoring events, so a recompilation in the round loop is measured, not assumed away.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import monitoring

# XLA options for the round block on CPU, measured (docs/performance.md, "XLA options"): region
# analysis lets copy insertion see that a loop-carried buffer (a client's weights, optimizer
# moments) is dead after its last read, so XLA updates it in place instead of copying it every
# local step: 1.1-1.3x on the MLP (factored SGD, Adam) and 1.0-1.15x on the CNN, same numbers.
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def compiler_options(backend: str | None = None) -> dict:
    """The measured XLA options for the round block on ``backend`` (default: JAX's); pass them
    as ``jax.jit(..., compiler_options=...)``."""
    return dict(CPU_COMPILER_OPTIONS) if (backend or jax.default_backend()) == "cpu" else {}


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
COMPILE_EVENTS = (BACKEND_COMPILE_EVENT, "/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration")


class RoundInput(NamedTuple):
    """What one round receives besides state and data (leading [L] axis inside a block).

    key: the round's PRNG key; index: [] int32 0-based round number; active: [] bool (False for
    the padding rounds of the last block); events: the round's rows of a precomputed event
    schedule (any pytree), or None.
    """

    key: jax.Array
    index: jax.Array
    active: jax.Array
    events: Any = None


def round_inputs(keys: jax.Array, start: int, count: int, block_len: int, events=None) -> RoundInput:
    """The [block_len] inputs of the block whose first round is ``start`` (``count`` real rounds).

    ``keys`` [R, 2] are all rounds' keys; ``events`` leaves [R, ...] all rounds' event rows. Padding
    rounds repeat the last real round's key and rows and are inactive.
    """
    pos = jnp.minimum(jnp.arange(block_len) + start, start + count - 1)
    rows = None if events is None else jax.tree.map(lambda e: e[pos], events)
    return RoundInput(keys[pos], (jnp.arange(block_len) + start).astype(jnp.int32),
                      jnp.arange(block_len) < count, rows)


def make_block(round_fn: Callable, state_example, data, input_example: RoundInput) -> Callable:
    """Returns ``block(state, data, inputs: RoundInput [L]) -> (state, metrics [L])``.

    ``input_example`` is one round's input (no leading axis). Inactive rounds leave the state
    unchanged and return zeros for their metrics. Each round sees ``data.at_round(index)`` (a
    staged data schedule such as FedGC's generated-first phase changes only ``n_train``, so any
    algorithm runs on it unchanged and nothing recompiles).
    """
    _, metrics_shape = jax.eval_shape(round_fn, state_example, data, input_example)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)

    def block(state, data, inputs):
        def body(state, rin):
            seen = data.at_round(rin.index) if hasattr(data, "at_round") else data
            return jax.lax.cond(rin.active, lambda s: round_fn(s, seen, rin), lambda s: (s, zeros), state)

        return jax.lax.scan(body, state, inputs)

    return block


class CompileLog:
    """Compilations seen by `count_compiles`: ``compiles`` (XLA backend compiles) and ``seconds``
    (tracing + lowering + backend compile time)."""

    def __init__(self):
        self.compiles = 0
        self.seconds = 0.0
        self.names: list[str] = []


@contextlib.contextmanager
def count_compiles():
    """Counts the XLA compilations (and their time) that happen inside the ``with`` block."""
    log = CompileLog()

    def listener(event, duration, **kwargs):
        if event in COMPILE_EVENTS:
            log.seconds += duration
        if event == BACKEND_COMPILE_EVENT:
            log.compiles += 1
            log.names.append(str(kwargs.get("fun_name", "")))

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield log
    finally:
        monitoring.unregister_event_duration_listener(listener)
