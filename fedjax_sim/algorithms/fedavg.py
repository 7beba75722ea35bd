"""FedAvg (McMahan et al. 2017) with a server optimizer (FedOpt), FedProx (Li et al. 2020), and
FedAvg + local fine-tuning (a personalization baseline).

Aggregator: ``chain(mean(), server_optimizer(opt))`` on client deltas; with ``sgd(1.0)`` the new
model is the (sample-weighted) mean of the client models. Client training goes through
`core.cohort.make_cohort_train`, which picks the factored or materialized formulation.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from fedjax_sim.aggregators import chain, mean, server_optimizer
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import client_weights, round_metrics
from fedjax_sim.config import check
from fedjax_sim.core.cohort import DenseLayout, make_cohort_train
from fedjax_sim.core.local import Schedule, make_local_train
from fedjax_sim.core.sampling import select_cohort


class FedAvgState(NamedTuple):
    """params: the global model; server: the aggregator's state (server optimizer)."""

    params: Any
    server: Any


@dataclasses.dataclass
class FedProxConfig:
    """FedProx: mu of the proximal term mu/2 ||w - w_global||^2 (was ``server.prox_mu``)."""

    NAME = "fedprox"
    ALIASES = {"server.prox_mu": "fedprox.mu"}
    TRACEABLE = ("mu",)
    mu: float = 0.01

    def validate(self):
        check(self.mu >= 0, "fedprox.mu", self.mu, "a number >= 0")


@dataclasses.dataclass
class FedAvgFTConfig:
    """FedAvg + fine-tuning: local epochs each client fine-tunes the global model before
    evaluation (was ``local.finetune_epochs``)."""

    NAME = "fedavg_ft"
    ALIASES = {"local.finetune_epochs": "fedavg_ft.finetune_epochs"}
    finetune_epochs: int = 1

    def validate(self):
        check(self.finetune_epochs >= 1, "fedavg_ft.finetune_epochs", self.finetune_epochs,
              "an integer >= 1")


def _fedavg_family(ctx: BuildContext, name: str, prox_mu: float = 0.0, finetune_epochs: int = 0):
    task, model = ctx.task, ctx.model
    aggregator = chain(mean(), server_optimizer(ctx.server_optimizer.transform))
    params0 = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    layout = DenseLayout(model.layers_of, model.with_layers) if model.dense_chain else None
    cohort_train, info = make_cohort_train(task, layout, ctx.client_optimizer, ctx.schedule,
                                           ctx.max_n, ctx.mapping, params0, ctx.formulation, prox_mu)

    def init(key, data):
        params = model.init(key)
        return FedAvgState(params, aggregator.init(params))

    def round_fn(state, data, rin):
        idx, keys, rows, n = select_cohort(rin.key, data, ctx.cohort)
        deltas, stats = cohort_train(state.params, rows, n, keys)
        params, server, agg_metrics = aggregator.update(deltas, client_weights(n, ctx.weighting),
                                                        state.server, state.params)
        return FedAvgState(params, server), {**round_metrics(stats, n), **agg_metrics}

    client_params = None
    if finetune_epochs > 0:
        opt = ctx.client_optimizer.transform
        schedule = Schedule.make(ctx.max_n, ctx.batch_size, finetune_epochs, 0, trim=ctx.schedule.trim)
        tune = make_local_train(task.loss, opt, schedule, ctx.max_n)
        mapping = ctx.mapping.resolved()
        mapped = mapping.map(lambda p, r, n, k: tune(p, opt.init(p), r, n, k)[0], (None, 0, 0, 0))

        def client_params(state, data, key):
            keys = data.client_keys(key)
            return mapped(state.params, data.train_view(), data.n_train, keys)

    return Algorithm(name, init, round_fn, lambda s: s.params, client_params, info)


@register("fedavg", "FedAvg: sample-weighted mean of client models, with a server optimizer")
def fedavg(ctx: BuildContext, hp=None) -> Algorithm:
    return _fedavg_family(ctx, "fedavg")


@register("fedprox", "FedProx: FedAvg with a proximal term mu/2 ||w - w_global||^2 (fedprox.mu)",
          FedProxConfig)
def fedprox(ctx: BuildContext, hp: FedProxConfig) -> Algorithm:
    return _fedavg_family(ctx, "fedprox", prox_mu=hp.mu)


@register("fedavg_ft", "FedAvg, then each client fine-tunes the global model locally before "
                       "evaluation (fedavg_ft.finetune_epochs)", FedAvgFTConfig)
def fedavg_ft(ctx: BuildContext, hp: FedAvgFTConfig) -> Algorithm:
    return _fedavg_family(ctx, "fedavg_ft", finetune_epochs=hp.finetune_epochs)
