"""The Aggregator protocol and the weighted mean every aggregator builds on.

Aggregators are pure server-side functions shaped like optax's GradientTransformation:
``init(params) -> state`` and ``update(updates, weights, state, params) -> (new_params, state)``,
where ``updates`` is a pytree of stacked client updates with leading axis K (the cohort) and
``weights`` is [K]. They import nothing from ``core`` or ``algorithms``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

Params = Any
AggState = Any


class Aggregator(NamedTuple):
    """init(params) -> state; update(updates [K, ...], weights [K], state, params) -> (params, state)."""

    init: Callable[[Params], AggState]
    update: Callable[[Any, jax.Array, AggState, Params], tuple[Params, AggState]]


@flax.struct.dataclass
class LowRankDelta:
    """A stack of K rank-R matrix updates kept in factored form: ``delta_k = coef * A_k^T G_k``.

    Local SGD on a dense layer adds one rank-B outer product per step (layer input^T times output
    gradient), so after S steps a client's weight change has rank <= S*B. Keeping the factors
    avoids materializing K full [in, out] matrices; the weighted mean is one large matmul.

    Attributes:
      a: [K, R, in] stacked layer inputs.
      g: [K, R, out] stacked output gradients (already scaled by the step's learning rate and
        any decay, so that delta_k = -(a_k^T g_k)).
    """

    a: jax.Array
    g: jax.Array

    def dense(self) -> jax.Array:
        """Materializes the K updates: [K, in, out]."""
        return -jnp.einsum("kri,kro->kio", self.a, self.g)

    def weighted_mean(self, weights: jax.Array) -> jax.Array:
        """sum_k w_k delta_k / sum_k w_k as one [in, K*R] x [K*R, out] matmul: [in, out]."""
        w = weights / jnp.sum(weights)
        k, r, _ = self.a.shape
        a = (self.a * w[:, None, None]).reshape(k * r, -1)
        return -(a.T @ self.g.reshape(k * r, -1))


def _is_low_rank(x) -> bool:
    return isinstance(x, LowRankDelta)


def weighted_mean(updates, weights: jax.Array):
    """Weighted mean over the leading (client) axis of every leaf.

    Args:
      updates: pytree with [K, ...] leaves (``LowRankDelta`` leaves are reduced in factored form).
      weights: [K] non-negative weights; zero-weight clients do not contribute.

    Returns:
      pytree with the leading axis reduced.
    """
    total = jnp.sum(weights)

    def reduce(u):
        if _is_low_rank(u):
            return u.weighted_mean(weights)
        return jnp.tensordot(weights / total, u, axes=1).astype(u.dtype)

    return jax.tree.map(reduce, updates, is_leaf=_is_low_rank)


def densify(updates):
    """Turns every LowRankDelta leaf into its dense [K, in, out] stack."""
    return jax.tree.map(lambda u: u.dense() if _is_low_rank(u) else u, updates, is_leaf=_is_low_rank)
