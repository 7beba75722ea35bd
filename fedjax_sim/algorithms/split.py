"""The body/head split skeleton shared by FedReMa and its personalized baselines (no algorithm
is registered here).

State: a global body, per-client heads and per-client optimizer state ([C, ...], persisting
across rounds, so SGD momentum carries over as in the official FedReMa code). Each round the
cohort trains body + own head from the global body (``client_train``); the server aggregates
``partition({"body": chain(mean(), server_optimizer(opt)), "head": head_aggregator})`` over the
client results ``{"body": body deltas, "head": trained heads}``; the cohort's heads become the
head aggregator's per-client output, the body the new global body. Clients outside the cohort
keep their head. Evaluation uses global body + own head.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from fedjax_sim.aggregators import Aggregator, chain, mean, partition, server_optimizer
from fedjax_sim.algorithms.base import Algorithm, BuildContext
from fedjax_sim.algorithms.common import client_weights, require_body_head, round_metrics
from fedjax_sim.core.clients import replicate, update_cohort
from fedjax_sim.core.local import size_order
from fedjax_sim.core.sampling import select_cohort

SPLIT_LABELS = {"body": "body", "head": "head"}


class SplitClients(NamedTuple):
    """Per-client state [C, ...]: head parameters and optimizer state."""

    head: Any
    opt: Any


class SplitState(NamedTuple):
    """body: global body; clients: `SplitClients` [C, ...]; server: the partition's state."""

    body: Any
    clients: SplitClients
    server: Any


def make_split_algorithm(name: str, ctx: BuildContext, client_train: Callable, opt_init: Callable,
                         head_aggregator: Aggregator, extras: Callable | None = None,
                         report: Callable | None = None, info: dict | None = None) -> Algorithm:
    """Assembles a body/head algorithm.

    Args:
      client_train: one client, ``(body, head, opt_state, rows, n, key) -> (params, opt_state,
        LocalStats)`` with ``params = {"body", "head"}`` after local training.
      opt_init: ``params -> opt_state`` of one client.
      head_aggregator: maps the cohort's trained heads [K, ...] to their new heads [K, ...].
      extras: ``(key, trained [K, ...], rows, n, idx) -> dict`` of keyword extras for the
        aggregators (e.g. FedReMa's similarity matrix), or None.
      report: optional ``state -> dict`` for summary.json.
    """
    require_body_head(ctx.model, name)
    aggregator = partition({"body": chain(mean(), server_optimizer(ctx.server_optimizer.transform)),
                            "head": head_aggregator}, SPLIT_LABELS)
    mapping = ctx.mapping.resolved()
    mapped = mapping.map(client_train, (None, 0, 0, 0, 0, 0), size_order(ctx.schedule, 4))

    def init(key, data):
        params = ctx.model.init(key)  # one initialization replicated to every client
        c = data.num_clients
        return SplitState(params["body"], SplitClients(replicate(params["head"], c),
                                                       replicate(opt_init(params), c)),
                          aggregator.init(params))

    def round_fn(state, data, rin):
        k_sel, k_extra = jax.random.split(rin.key)
        idx, keys, rows, n = select_cohort(k_sel, data, ctx.cohort)

        def cohort_step(clients):
            trained, opt_state, stats = mapped(state.body, clients.head, clients.opt, rows, n, keys)
            results = {"body": jax.tree.map(lambda t, b: t - b, trained["body"], state.body),
                       "head": trained["head"]}
            kw = extras(k_extra, trained, rows, n, idx) if extras is not None else {}
            new, server, metrics = aggregator.update(
                results, client_weights(n, ctx.weighting), state.server,
                {"body": state.body, "head": clients.head}, cohort_idx=idx, **kw)
            return SplitClients(new["head"], opt_state), (new["body"], server, stats, metrics)

        clients, (body, server, stats, metrics) = update_cohort(state.clients, idx, cohort_step)
        return SplitState(body, clients, server), {**round_metrics(stats, n), **metrics}

    def client_params(state, data, key):
        del key
        return {"body": replicate(state.body, data.num_clients), "head": state.clients.head}

    info = {"formulation": "materialized", "client_mapping": mapping.strategy,
            "chunk_size": mapping.chunk_size, **(info or {})}
    return Algorithm(name, init, round_fn, None, client_params, info, report,
                     cohort_key=lambda key: jax.random.split(key)[0], client_store=("clients",))


def train_body_and_head(local_train: Callable) -> Callable:
    """``client_train`` for `make_split_algorithm` from a one-client program on full params."""

    def one(body, head, opt_state, rows, n, key):
        return local_train({"body": body, "head": head}, opt_state, rows, n, key)

    return one


__all__ = ["SPLIT_LABELS", "SplitClients", "SplitState", "make_split_algorithm", "train_body_and_head"]
