"""Personalized baselines with the body/head split (FedReMa's comparison set, specs/fedrema.md):

- ``fedper`` (Arivazhagan et al. 2019): body + head trained locally; the body is averaged
  (sample-weighted mean) and broadcast, every head stays local.
- ``fedrep`` (Collins et al. 2021): each round ``fedrema.head_epochs`` epochs on the head (body
  frozen), then ``local.epochs`` epochs on the body (head frozen); the body is averaged, heads local.
- ``head_avg``: like FedReMa without relevance: the body is averaged and every participant's head
  becomes the uniform mean of all participants' heads (ablation of MDS: the all-ones relevance).

Per-client optimizer state (momentum) persists across rounds; clients start from one shared
initialization; clients outside the cohort keep their head. Evaluation: global body + own head.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_sim.aggregators import weighted_mean
from fedjax_sim.aggregators.relevance import mix_heads
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import (client_weights, local_opt, require_body_head,
                                          round_metrics, select_cohort)
from fedjax_sim.core.local import Schedule, make_local_train
from fedjax_sim.core.mapping import map_clients
from fedjax_sim.core.sampling import gather, scatter



def _phase_optimizer(opt, params_shape, trained: str) -> optax.GradientTransformation:
    """``opt`` on the ``trained`` part ("body" or "head"), zero updates (and no state) on the other."""
    labels = {part: jax.tree.map(lambda _: "train" if part == trained else "freeze", params_shape[part])
              for part in ("body", "head")}
    return optax.multi_transform({"train": opt, "freeze": optax.set_to_zero()}, labels)


def _split_family(ctx: BuildContext, name: str, head_rule: str) -> Algorithm:
    """head_rule: ``local`` (FedPer), ``mean`` (head_avg) or ``fedrep`` (two-phase, heads local)."""
    cfg, model = ctx.config, ctx.model
    shapes = require_body_head(ctx, name)
    base_opt = local_opt(cfg)
    strategy, chunk = ctx.local.strategy, ctx.local.chunk_size
    if head_rule == "fedrep":
        head_opt = _phase_optimizer(base_opt, shapes, "head")
        body_opt = _phase_optimizer(base_opt, shapes, "body")
        head_sched = Schedule.make(ctx.local.max_n, cfg.local.batch_size, cfg.fedrema.head_epochs, 0)
        train_head = make_local_train(model.apply, head_opt, head_sched, ctx.local.max_n,
                                      clip_norm=cfg.local.clip_norm)
        train_body = make_local_train(model.apply, body_opt, ctx.local.schedule, ctx.local.max_n,
                                      clip_norm=cfg.local.clip_norm)

        def one(b, h, o, x, y, n, k):
            k_head, k_body = jax.random.split(k)
            p, o_head, _ = train_head({"body": b, "head": h}, o["head"], x, y, n, k_head)
            p, o_body, stats = train_body(p, o["body"], x, y, n, k_body)
            return p, {"head": o_head, "body": o_body}, stats

        def opt_init(params):
            return {"head": head_opt.init(params), "body": body_opt.init(params)}
    else:
        train = make_local_train(model.apply, base_opt, ctx.local.schedule, ctx.local.max_n,
                                 clip_norm=cfg.local.clip_norm)

        def one(b, h, o, x, y, n, k):
            return train({"body": b, "head": h}, o, x, y, n, k)

        opt_init = base_opt.init
    mapped = map_clients(one, (None, 0, 0, 0, 0, 0, 0), strategy, chunk)

    def init(key, data):
        params = model.init(key)
        c = data.num_clients
        stack = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (c, *a.shape)), t)
        return {"body": params["body"], "heads": stack(params["head"]), "opt": stack(opt_init(params))}

    def round_fn(state, data, key):
        idx, keys, (x, y, n) = select_cohort(key, data, ctx.cohort)
        heads, opt_state = gather((state["heads"], state["opt"]), idx)
        trained, opt_state, stats = mapped(state["body"], heads, opt_state, x, y, n, keys)
        body = weighted_mean(trained["body"], client_weights(n, cfg.server.weighting))
        new_heads = trained["head"]
        if head_rule == "mean":
            k = idx.shape[0]
            new_heads = mix_heads(jnp.full((k, k), 1.0 / k), new_heads, jnp.ones((k,), bool))
        heads_all, opt_all = scatter((state["heads"], state["opt"]), idx, (new_heads, opt_state))
        return {"body": body, "heads": heads_all, "opt": opt_all}, round_metrics(stats, n)

    def client_params(state, data, key):
        del key
        c = data.num_clients
        body = jax.tree.map(lambda a: jnp.broadcast_to(a, (c, *a.shape)), state["body"])
        return {"body": body, "head": state["heads"]}

    return Algorithm(name, init, round_fn, None, client_params, {"formulation": "materialized"})


@register("fedper", "FedPer: body averaged (weighted mean) and broadcast, heads stay local")
def fedper(ctx: BuildContext) -> Algorithm:
    return _split_family(ctx, "fedper", "local")


@register("fedrep", "FedRep: head epochs (fedrema.head_epochs) then body epochs each round; "
                    "body averaged, heads local")
def fedrep(ctx: BuildContext) -> Algorithm:
    return _split_family(ctx, "fedrep", "fedrep")


@register("head_avg", "Head average: body averaged, every participant's head = mean of all "
                      "participants' heads (FedReMa without relevance)")
def head_avg(ctx: BuildContext) -> Algorithm:
    return _split_family(ctx, "head_avg", "mean")
