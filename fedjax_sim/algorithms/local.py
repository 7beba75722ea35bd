"""Local: every client trains only its own model; no communication (a personalization floor)."""
from __future__ import annotations

import jax

from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import local_opt, round_metrics, select_cohort
from fedjax_sim.core.local import make_local_train
from fedjax_sim.core.mapping import map_clients
from fedjax_sim.core.sampling import gather, scatter


@register("local", "Local: each client trains its own model on its own data, no communication")
def local(ctx: BuildContext) -> Algorithm:
    cfg, model = ctx.config, ctx.model
    opt = local_opt(cfg)
    train = make_local_train(model.apply, opt, ctx.local.schedule, ctx.local.max_n,
                             clip_norm=cfg.local.clip_norm)
    mapped = map_clients(lambda p, o, x, y, n, k: train(p, o, x, y, n, k),
                         (0, 0, 0, 0, 0, 0), ctx.local.strategy, ctx.local.chunk_size)

    def init(key, data):
        # one initialization replicated to every client, as personalized-FL codebases do
        params = model.init(key)
        stack = lambda t: jax.tree.map(lambda a: jax.numpy.broadcast_to(a, (data.num_clients, *a.shape)), t)
        return {"params": stack(params), "opt": stack(opt.init(params))}

    def round_fn(state, data, key):
        idx, keys, (x, y, n) = select_cohort(key, data, ctx.cohort)
        params, opt_state = gather((state["params"], state["opt"]), idx)
        params, opt_state, stats = mapped(params, opt_state, x, y, n, keys)
        new = scatter((state["params"], state["opt"]), idx, (params, opt_state))
        return {"params": new[0], "opt": new[1]}, round_metrics(stats, n)

    return Algorithm("local", init, round_fn, None, lambda s, d, k: s["params"],
                     {"formulation": "materialized"})
