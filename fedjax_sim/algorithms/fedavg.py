"""FedAvg (McMahan et al. 2017) with a server optimizer (FedOpt), FedProx (Li et al. 2020), and
FedAvg + local fine-tuning (a personalization baseline)."""
from __future__ import annotations

import jax

from fedjax_sim.aggregators import server_optimizer
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import (client_weights, local_opt, round_metrics, select_cohort,
                                          server_opt)
from fedjax_sim.core.cohort import make_cohort_train
from fedjax_sim.core.local import Schedule, make_local_train
from fedjax_sim.core.mapping import map_clients


def _fedavg_family(ctx: BuildContext, name: str, prox_mu: float, finetune_epochs: int = 0):
    cfg, model = ctx.config, ctx.model
    aggregator = server_optimizer(server_opt(cfg))
    params0 = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    cohort_train, formulation = make_cohort_train(model, ctx.local, params0, prox_mu)

    def init(key, data):
        params = model.init(key)
        return {"params": params, "server": aggregator.init(params)}

    def round_fn(state, data, key):
        idx, keys, (x, y, n) = select_cohort(key, data, ctx.cohort)
        deltas, stats = cohort_train(state["params"], x, y, n, keys)
        params, server = aggregator.update(deltas, client_weights(n, cfg.server.weighting),
                                           state["server"], state["params"])
        return {"params": params, "server": server}, round_metrics(stats, n)

    client_params = None
    if finetune_epochs > 0:
        opt = local_opt(cfg)
        schedule = Schedule.make(ctx.local.max_n, cfg.local.batch_size, finetune_epochs, 0)
        tune = make_local_train(model.apply, opt, schedule, ctx.local.max_n,
                                clip_norm=cfg.local.clip_norm)

        def tune_one(params, x, y, n, key):
            return tune(params, opt.init(params), x, y, n, key)[0]

        mapped = map_clients(tune_one, (None, 0, 0, 0, 0), ctx.local.strategy, ctx.local.chunk_size)

        def client_params(state, data, key):
            keys = jax.random.split(key, data.num_clients)
            return mapped(state["params"], data.x_train, data.y_train, data.n_train, keys)

    return Algorithm(name, init, round_fn, lambda s: s["params"], client_params,
                     {"formulation": formulation})


@register("fedavg", "FedAvg: sample-weighted mean of client models, with a server optimizer")
def fedavg(ctx: BuildContext) -> Algorithm:
    return _fedavg_family(ctx, "fedavg", 0.0)


@register("fedprox", "FedProx: FedAvg with a proximal term mu/2 ||w - w_global||^2 (server.prox_mu)")
def fedprox(ctx: BuildContext) -> Algorithm:
    return _fedavg_family(ctx, "fedprox", ctx.config.server.prox_mu)


@register("fedavg_ft", "FedAvg, then each client fine-tunes the global model locally before evaluation")
def fedavg_ft(ctx: BuildContext) -> Algorithm:
    return _fedavg_family(ctx, "fedavg_ft", 0.0, max(1, ctx.config.local.finetune_epochs))
