"""SCAFFOLD (Karimireddy et al. 2020), option II control-variate update.

Local step: w <- w - lr (g + c - c_i). After the client's s_i local steps:
c_i+ = c_i - c + (w_global - w_i) / (s_i * lr). Server: w <- server_opt(mean delta);
c <- c + (K / C) * mean_k (c_k+ - c_k) (uniform mean, as in the paper).
Per-client control variates are stacked [C, ...] device state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_sim.aggregators import server_optimizer, weighted_mean
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import (client_weights, local_opt, round_metrics, select_cohort,
                                          server_opt)
from fedjax_sim.core.local import make_local_train
from fedjax_sim.core.mapping import map_clients
from fedjax_sim.core.sampling import gather, scatter
from fedjax_sim.errors import ConfigError


def control_variate_correction(params, grads, aux):
    """g + c - c_i, with aux = (c, c_i)."""
    c, c_i = aux
    return jax.tree.map(lambda g, a, b: g + a - b, grads, c, c_i)


@register("scaffold", "SCAFFOLD: control variates correct client drift (option II), plain local SGD")
def scaffold(ctx: BuildContext) -> Algorithm:
    cfg, model = ctx.config, ctx.model
    if cfg.local.optimizer != "sgd":
        raise ConfigError("local.optimizer", cfg.local.optimizer,
                          "sgd for scaffold (its control-variate update assumes plain SGD)")
    lr = cfg.local.lr
    opt = local_opt(cfg)
    aggregator = server_optimizer(server_opt(cfg))
    train = make_local_train(model.apply, opt, ctx.local.schedule, ctx.local.max_n,
                             control_variate_correction, cfg.local.clip_norm)

    def one(params, c, c_i, x, y, n, key):
        new, _, stats = train(params, opt.init(params), x, y, n, key, (c, c_i))
        scale = 1.0 / (jnp.maximum(stats.steps, 1) * lr)
        c_new = jax.tree.map(lambda ci, cs, w0, w1: ci - cs + (w0 - w1) * scale, c_i, c, params, new)
        return jax.tree.map(jnp.subtract, new, params), jax.tree.map(jnp.subtract, c_new, c_i), stats

    mapped = map_clients(one, (None, None, 0, 0, 0, 0, 0), ctx.local.strategy, ctx.local.chunk_size)

    def init(key, data):
        params = model.init(key)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return {"params": params, "server": aggregator.init(params), "c": zeros,
                "c_clients": jax.tree.map(lambda a: jnp.zeros((data.num_clients, *a.shape), a.dtype), params)}

    def round_fn(state, data, key):
        idx, keys, (x, y, n) = select_cohort(key, data, ctx.cohort)
        c_i = gather(state["c_clients"], idx)
        deltas, dc, stats = mapped(state["params"], state["c"], c_i, x, y, n, keys)
        params, server = aggregator.update(deltas, client_weights(n, cfg.server.weighting),
                                           state["server"], state["params"])
        frac = idx.shape[0] / data.num_clients
        mean_dc = weighted_mean(dc, jnp.ones(idx.shape[0]))
        c = jax.tree.map(lambda a, d: a + frac * d, state["c"], mean_dc)
        c_clients = scatter(state["c_clients"], idx, jax.tree.map(jnp.add, c_i, dc))
        return ({"params": params, "server": server, "c": c, "c_clients": c_clients},
                round_metrics(stats, n))

    return Algorithm("scaffold", init, round_fn, lambda s: s["params"], None,
                     {"formulation": "materialized"})
