"""Rounds fused with ``lax.scan`` between evaluation points, compiled once per run.

A block always scans ``block_len`` rounds; rounds past the end of the run are masked with
``lax.cond`` (skipped, state unchanged), so a run whose length is not a multiple of the
evaluation interval still compiles exactly one program.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def make_block(round_fn: Callable, state_example, data, key_example) -> Callable:
    """Returns ``block(state, data, keys [L, 2], active [L] bool) -> (state, metrics [L])``.

    Inactive rounds return zeros for their metrics.
    """
    _, metrics_shape = jax.eval_shape(round_fn, state_example, data, key_example)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)

    def block(state, data, keys, active):
        def body(state, inp):
            key, act = inp
            return jax.lax.cond(act, lambda s: round_fn(s, data, key), lambda s: (s, zeros), state)

        return jax.lax.scan(body, state, (keys, active))

    return block
