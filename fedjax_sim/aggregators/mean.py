"""Mean aggregators: plain weighted averaging and FedOpt-style server optimizers."""
from __future__ import annotations

import jax
import optax

from fedjax_sim.aggregators.base import Aggregator, weighted_mean


def mean_of_models() -> Aggregator:
    """Updates are client *models* [K, ...]; the new server model is their weighted mean."""

    def init(params):
        del params
        return ()

    def update(updates, weights, state, params):
        del params
        return weighted_mean(updates, weights), state

    return Aggregator(init, update)


def server_optimizer(opt: optax.GradientTransformation) -> Aggregator:
    """FedOpt (Reddi et al. 2021): updates are client *deltas* [K, ...] (local - global).

    The weighted mean delta is treated as a negative pseudo-gradient for ``opt``; with
    ``optax.sgd(1.0)`` this is exactly FedAvg (new model = weighted mean of client models).
    """

    def init(params):
        return opt.init(params)

    def update(updates, weights, state, params):
        mean_delta = weighted_mean(updates, weights)
        pseudo_grad = jax.tree.map(lambda d: -d, mean_delta)
        steps, state = opt.update(pseudo_grad, state, params)
        return optax.apply_updates(params, steps), state

    return Aggregator(init, update)
