"""Mean aggregators: the weighted mean, FedOpt-style server optimizers, and the per-client
outputs of personalized parts (keep each client's own value, or give every client the mean)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_sim.aggregators.base import Aggregator, weighted_mean


def _stateless(update) -> Aggregator:
    return Aggregator(lambda params: optax.EmptyState(), update)


def mean() -> Aggregator:
    """Client results [K, ...] -> their weighted mean [...] (weights [K], e.g. sample counts).

    Alone on client *models* it is FedAvg's new model; chained before `server_optimizer` on
    client *deltas* it is the pseudo-gradient."""
    return _stateless(lambda results, weights, state, params, **extras: (weighted_mean(results, weights), state, {}))


def server_optimizer(opt: optax.GradientTransformation) -> Aggregator:
    """FedOpt (Reddi et al. 2021): input is the aggregated client *delta* (local - global); its
    negation is a pseudo-gradient for ``opt``, and the output is the new server model. With
    ``optax.sgd(1.0)`` this is exactly FedAvg (new model = mean of client models). State: ``opt``'s."""

    def update(mean_delta, weights, state, params, **extras):
        del weights, extras
        pseudo_grad = jax.tree.map(lambda d: -d, mean_delta)
        steps, state = opt.update(pseudo_grad, state, params)
        return optax.apply_updates(params, steps), state, {}

    return Aggregator(opt.init, update)


def keep() -> Aggregator:
    """Per-client results [K, ...] returned unchanged (FedPer's and FedRep's local heads)."""
    return _stateless(lambda results, weights, state, params, **extras: (results, state, {}))


def broadcast_mean() -> Aggregator:
    """Per-client results [K, ...] -> every participant gets the uniform mean of all
    participants' values, still [K, ...] (a head average; MDS's all-ones relevance)."""

    def update(results, weights, state, params, **extras):
        k = weights.shape[0]
        avg = weighted_mean(results, jnp.ones((k,), jnp.float32))
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (k, *a.shape)), avg), state, {}

    return _stateless(update)
