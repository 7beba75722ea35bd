"""Small types shared by every floor (imports nothing from fedjax_sim).

``LowRankDelta`` lives here because both the client program (`core.factored`, which produces it)
and the aggregators (which reduce it) use it, and neither may import the other.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

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


@dataclasses.dataclass(frozen=True)
class MultiTaskSpec:
    """The static structure of a multi-task federated dataset (hashable: it is part of compiled
    programs' structure, never traced).

    Attributes:
      task_names: [T] task names, e.g. ("T1", ..., "T5").
      task_kinds: [T] "class" (int class ids) or "real" (real-valued targets).
      task_outputs: [T] output width of each task's head (classes, or 1 for scalar regression).
      task_sets: [C][T] bools, which tasks client c holds (its y_mask rows are False elsewhere).
      domains: [C] input domain of each client (index into ``domain_names``).
      domain_names: [D] names of the input domains, e.g. ("A", "B").
      loss_weights: [T] weight of each task's loss in a client's objective.
    """

    task_names: tuple
    task_kinds: tuple
    task_outputs: tuple
    task_sets: tuple
    domains: tuple
    domain_names: tuple
    loss_weights: tuple

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def num_clients(self) -> int:
        return len(self.task_sets)

    @property
    def task_mask(self) -> np.ndarray:
        """[C, T] bool."""
        return np.asarray(self.task_sets, bool).reshape(self.num_clients, self.num_tasks)

    @property
    def lower_is_better(self) -> np.ndarray:
        """[T] bool: True for regression tasks (MSE), False for classification (accuracy)."""
        return np.asarray([k == "real" for k in self.task_kinds], bool)

    @property
    def group_ids(self) -> np.ndarray:
        """[C] int: FedHCA2's homogeneous groups [C, official code]: runs of *consecutive*
        clients with the same domain and the identical task set share a group id."""
        ids, g = [], -1
        for c in range(self.num_clients):
            same = c > 0 and (self.domains[c], self.task_sets[c]) == (self.domains[c - 1], self.task_sets[c - 1])
            g += 0 if same else 1
            ids.append(g)
        return np.asarray(ids, np.int32)

    def slots(self) -> list:
        """The real decoder slots (client, task) in the official code's order: single-task
        clients' decoders in client order, then each multi-task client's decoders with its tasks
        sorted by name [C]."""
        mask = self.task_mask
        single = [(c, int(np.flatnonzero(mask[c])[0])) for c in range(self.num_clients) if mask[c].sum() == 1]
        multi = [(c, t) for c in range(self.num_clients) if mask[c].sum() > 1
                 for t in sorted(np.flatnonzero(mask[c]), key=lambda t: self.task_names[t])]
        return single + [(c, int(t)) for c, t in multi]
