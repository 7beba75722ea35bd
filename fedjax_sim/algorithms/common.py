"""Pieces every algorithm module assembles: aggregation weights, round metrics, the body/head
check. (Shared code lives here or in core/aggregators, never in another algorithm.)"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_sim.core.local import LocalStats
from fedjax_sim.errors import ConfigError


def client_weights(n: jax.Array, weighting: str) -> jax.Array:
    """Aggregation weights [K]: training-sample counts (``samples``) or ones (``uniform``)."""
    return n.astype(jnp.float32) if weighting == "samples" else jnp.ones(n.shape, jnp.float32)


def round_metrics(stats: LocalStats, n: jax.Array) -> dict:
    """Sample-weighted mean training loss and the number of trained samples of a cohort."""
    w = n.astype(jnp.float32)
    return {"train_loss": jnp.sum(stats.loss * w) / jnp.maximum(jnp.sum(w), 1.0),
            "samples": jnp.sum(stats.samples).astype(jnp.float32)}


def require_body_head(model, name: str):
    """Params shapes of ``model``; ConfigError (before any compile) unless both its body and its
    head have parameters, which every body/head-split algorithm needs."""
    try:
        params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    except (KeyError, ValueError):  # e.g. a body without any layer has no "params" collection
        params = None
    ok = (isinstance(params, dict) and "body" in params and "head" in params
          and len(jax.tree.leaves(params["body"])) > 0 and len(jax.tree.leaves(params["head"])) > 0)
    if not ok:
        head = params.get("head", {}).get("mlp", {}) if isinstance(params, dict) else {}
        if len(head) <= 1:  # one layer in all (bow_logreg, a linear mlp): no head_layers can split it
            raise ConfigError("algorithm", name, f"an algorithm without a body/head split for model {model.name!r} "
                                                 "(its parameters are one layer, all of it head)")
        raise ConfigError("model.head_layers", len(head),
                          f"a body/head split with parameters in both parts for {name} (model "
                          f"{model.name!r}: use fewer head layers than the model's dense layers)")
    return params


def require_classification(task, name: str, why: str = "it compares class probabilities of classifier heads"):
    if task.target_kind != "class":
        raise ConfigError("task.name", task.name, f"classification for {name} ({why})")


def job_work(ctx) -> tuple:
    """(epochs, steps) that `asynchrony.client_work` needs from a `BuildContext`: per-client
    epochs when set, else the schedule's epochs; fixed steps when the schedule has them."""
    epochs = ctx.client_epochs if ctx.client_epochs is not None else max(ctx.schedule.epochs, 1)
    return epochs, (ctx.schedule.num_steps if ctx.schedule.epochs == 0 else 0)
