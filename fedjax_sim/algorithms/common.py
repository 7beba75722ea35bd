"""Pieces every algorithm module assembles: cohort selection, per-client keys, weights,
round metrics. (Shared code lives here or in core/aggregators, never in another algorithm.)"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_sim.core.local import LocalStats, make_optimizer
from fedjax_sim.core.sampling import gather, sample_cohort
from fedjax_sim.errors import ConfigError


def select_cohort(key, data, cohort: int):
    """(cohort ids [K], per-client keys [K, 2], cohort data (x, y, n))."""
    k_sample, k_train = jax.random.split(key)
    idx = sample_cohort(k_sample, data.num_clients, cohort)
    x, y, n = gather((data.x_train, data.y_train, data.n_train), idx)
    return idx, jax.random.split(k_train, idx.shape[0]), (x, y, n)


def client_weights(n: jax.Array, weighting: str) -> jax.Array:
    """Aggregation weights [K]: training-sample counts (``samples``) or ones (``uniform``)."""
    return n.astype(jnp.float32) if weighting == "samples" else jnp.ones(n.shape, jnp.float32)


def round_metrics(stats: LocalStats, n: jax.Array) -> dict:
    """Sample-weighted mean training loss and the number of trained samples of a cohort."""
    w = n.astype(jnp.float32)
    return {"train_loss": jnp.sum(stats.loss * w) / jnp.maximum(jnp.sum(w), 1.0),
            "samples": jnp.sum(stats.samples).astype(jnp.float32)}


def server_opt(cfg):
    return make_optimizer(cfg.server.optimizer, cfg.server.lr, cfg.server.momentum)


def local_opt(cfg):
    return make_optimizer(cfg.local.optimizer, cfg.local.lr, cfg.local.momentum,
                          cfg.local.weight_decay)


def require_body_head(ctx, name: str):
    """Params shapes of ``ctx.model``; ConfigError (before any compile) unless both its body and its
    head have parameters, which every body/head-split algorithm needs."""
    try:
        params = jax.eval_shape(ctx.model.init, jax.random.PRNGKey(0))
    except (KeyError, ValueError):  # e.g. a body without any layer has no "params" collection
        params = None
    ok = (isinstance(params, dict) and "body" in params and "head" in params
          and len(jax.tree.leaves(params["body"])) > 0 and len(jax.tree.leaves(params["head"])) > 0)
    if not ok:
        raise ConfigError("model.head_layers", ctx.config.model.head_layers,
                          f"a body/head split with parameters in both parts for {name} (model "
                          f"{ctx.model.name!r}: use fewer head layers than the model's dense layers)")
    return params
