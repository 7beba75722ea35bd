"""Local: every client trains only its own model; no communication (a personalization floor)."""
from __future__ import annotations

from typing import Any, NamedTuple

from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import round_metrics
from fedjax_sim.core.clients import replicate, update_cohort
from fedjax_sim.core.local import make_local_train, size_order
from fedjax_sim.core.sampling import select_cohort


class LocalState(NamedTuple):
    """params: [C, ...] each client's model; opt: [C, ...] its optimizer state (persists)."""

    params: Any
    opt: Any


@register("local", "Local: each client trains its own model on its own data, no communication")
def local(ctx: BuildContext, hp=None) -> Algorithm:
    opt = ctx.client_optimizer.transform
    train = make_local_train(ctx.task.loss, opt, ctx.schedule, ctx.max_n)
    mapping = ctx.mapping.resolved()
    mapped = mapping.map(train, (0, 0, 0, 0, 0), size_order(ctx.schedule, 3))

    def init(key, data):
        # one initialization replicated to every client, as personalized-FL codebases do
        params = ctx.model.init(key)
        return LocalState(replicate(params, data.num_clients), replicate(opt.init(params), data.num_clients))

    def round_fn(state, data, rin):
        idx, keys, rows, n = select_cohort(rin.key, data, ctx.cohort)

        def cohort_step(cohort):
            params, opt_state, stats = mapped(cohort.params, cohort.opt, rows, n, keys)
            return LocalState(params, opt_state), stats

        state, stats = update_cohort(state, idx, cohort_step)
        return state, round_metrics(stats, n)

    info = {"formulation": "materialized", "client_mapping": mapping.strategy,
            "chunk_size": mapping.chunk_size}
    return Algorithm("local", init, round_fn, None, lambda s, d, k: s.params, info,
                     client_store=("params", "opt"))
