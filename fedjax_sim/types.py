"""Small types shared by every floor (imports nothing from fedjax_sim).

``LowRankDelta`` lives here because both the client program (`core.factored`, which produces it)
and the aggregators (which reduce it) use it, and neither may import the other.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

Params = Any
PRNGKey = jax.Array
Metrics = dict


@flax.struct.dataclass
class LowRankDelta:
    """A stack of K rank-R matrix updates kept in factored form: ``delta_k = -(A_k^T G_k)``.

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


def is_low_rank(x) -> bool:
    return isinstance(x, LowRankDelta)
