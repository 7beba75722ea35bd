"""SCAFFOLD (Karimireddy et al. 2020), option II control-variate update.

Local step: w <- w - lr (g + c - c_i), the correction being the gradient transformation
`core.optim.control_variates` in front of plain SGD. After the client's s_i local steps:
c_i+ = c_i - c + (w_global - w_i) / (s_i * lr). Server: w <- chain(mean, server_optimizer) of
the deltas; c <- c + (K / C) * mean_k (c_k+ - c_k) (uniform mean, as in the paper).
Per-client control variates are stacked [C, ...] device state (`core.clients`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_sim.aggregators import chain, mean, server_optimizer, weighted_mean
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import client_weights, round_metrics
from fedjax_sim.core.clients import update_cohort
from fedjax_sim.core.local import make_local_train, size_order
from fedjax_sim.core.optim import control_variates
from fedjax_sim.core.sampling import select_cohort
from fedjax_sim.errors import ConfigError


class ScaffoldState(NamedTuple):
    """params: global model; server: aggregator state; control: c; client_control: c_i [C, ...]."""

    params: Any
    server: Any
    control: Any
    client_control: Any


@register("scaffold", "SCAFFOLD: control variates correct client drift (option II), plain local SGD")
def scaffold(ctx: BuildContext, hp=None) -> Algorithm:
    opt = ctx.client_optimizer
    if not opt.plain_sgd:  # its control-variate update assumes w <- w - lr g exactly
        field, value = ("local.optimizer", opt.name)
        if opt.name == "sgd":
            field, value = next((f, v) for f, v, bad in (
                ("local.optimizer_args", f"momentum={opt.hyperparams.get('momentum')}", bool(opt.hyperparams.get("momentum"))),
                ("local.clip_norm", opt.clip_norm, opt.clip_norm > 0),
                ("local.weight_decay", opt.weight_decay, opt.weight_decay > 0)) if bad)
        raise ConfigError(field, value, "plain SGD for scaffold (optimizer sgd, no momentum, clipping "
                                        "or weight decay: its control-variate update assumes it)")
    lr = opt.learning_rate
    transform = optax.chain(control_variates(), opt.transform)
    aggregator = chain(mean(), server_optimizer(ctx.server_optimizer.transform))
    train = make_local_train(ctx.task.loss, transform, ctx.schedule, ctx.max_n)
    mapping = ctx.mapping.resolved()

    def one(params, c, c_i, rows, n, key):
        new, _, stats = train(params, transform.init(params), rows, n, key,
                              {"control": c, "client_control": c_i})
        scale = 1.0 / (jnp.maximum(stats.steps, 1) * lr)
        c_new = jax.tree.map(lambda ci, cs, w0, w1: ci - cs + (w0 - w1) * scale, c_i, c, params, new)
        return jax.tree.map(jnp.subtract, new, params), c_new, stats

    mapped = mapping.map(one, (None, None, 0, 0, 0, 0), size_order(ctx.schedule, 4))

    def init(key, data):
        params = ctx.model.init(key)
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaffoldState(params, aggregator.init(params), zeros,
                             jax.tree.map(lambda a: jnp.zeros((data.num_clients, *a.shape), a.dtype), params))

    def round_fn(state, data, rin):
        idx, keys, rows, n = select_cohort(rin.key, data, ctx.cohort)

        def cohort_step(c_i):
            deltas, c_new, stats = mapped(state.params, state.control, c_i, rows, n, keys)
            dc = jax.tree.map(jnp.subtract, c_new, c_i)
            return c_new, (deltas, dc, stats)

        client_control, (deltas, dc, stats) = update_cohort(state.client_control, idx, cohort_step)
        params, server, agg_metrics = aggregator.update(deltas, client_weights(n, ctx.weighting),
                                                        state.server, state.params)
        frac = idx.shape[0] / data.num_clients
        mean_dc = weighted_mean(dc, jnp.ones(idx.shape[0]))
        control = jax.tree.map(lambda a, d: a + frac * d, state.control, mean_dc)
        return (ScaffoldState(params, server, control, client_control),
                {**round_metrics(stats, n), **agg_metrics})

    info = {"formulation": "materialized", "client_mapping": mapping.strategy,
            "chunk_size": mapping.chunk_size}
    return Algorithm("scaffold", init, round_fn, lambda s: s.params, None, info,
                     client_store=("client_control",))
