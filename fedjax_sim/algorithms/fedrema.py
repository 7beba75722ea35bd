"""FedReMa (Liang et al., ECAI 2024; specs/fedrema.md): a global body, personalized heads.

Each round the cohort trains body + own head locally (per-client optimizer state, e.g. SGD
momentum, persists across rounds, spec §7.11). The server then
  - averages the bodies (sample-weighted mean, `aggregators.weighted_mean`) and broadcasts it;
  - mixes each participant's head from its relevant peers (`aggregators.relevance_matching`):
    MDS over a similarity of the freshly trained heads during the Critical Co-learning Period,
    then the CCP's historical selection frequencies.
Clients outside the cohort keep their heads. Evaluation uses global body + own head.

Registered variants: ``fedrema`` (ablation from ``fedrema.ablation``), and ``fedrema_no_ccp``,
``fedrema_no_history``, ``fedrema_random_peers`` with the ablation fixed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedjax_sim.aggregators import weighted_mean
from fedjax_sim.aggregators.relevance import (RelevanceContext, class_prototypes, global_prototypes,
                                              probe_similarity, proto_similarity, relevance_matching,
                                              uniform_probes)
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import (client_weights, local_opt, require_body_head,
                                          round_metrics, select_cohort)
from fedjax_sim.core.local import make_local_train
from fedjax_sim.core.mapping import map_clients
from fedjax_sim.core.sampling import gather, scatter
from fedjax_sim.errors import ConfigError



def _fedrema(ctx: BuildContext, name: str, ablation: str | None = None) -> Algorithm:
    cfg, model = ctx.config, ctx.model
    fr = cfg.fedrema
    ablation = ablation or fr.ablation
    if not 0 < fr.delta <= 1:
        raise ConfigError("fedrema.delta", fr.delta, "a number in (0, 1]")
    if ctx.cohort < 3:
        field, value = ("cohort", cfg.cohort) if cfg.cohort else ("data.num_clients", ctx.data.num_clients)
        raise ConfigError(field, value, f"at least 3 clients per round for {name} "
                                        "(MDS needs >= 3 participants)")
    require_body_head(ctx, name)
    opt = local_opt(cfg)
    train = make_local_train(model.apply, opt, ctx.local.schedule, ctx.local.max_n,
                             clip_norm=cfg.local.clip_norm)
    mapped = map_clients(lambda b, h, o, x, y, n, k: train({"body": b, "head": h}, o, x, y, n, k),
                         (None, 0, 0, 0, 0, 0, 0), ctx.local.strategy, ctx.local.chunk_size)
    aggregator = relevance_matching(fr.delta, ablation, fr.official_index_bug,
                                    fr.official_inplace_mixing)
    k_cohort, num_classes = ctx.cohort, ctx.data.num_classes

    def similarity(key, trained, x, y, n, part):
        if fr.sim_type == "probe":
            probes = uniform_probes(key, k_cohort, model.feature_dim, fr.probe_scale)
            return probe_similarity(model.head_apply, trained["head"], probes, fr.t_ref, fr.t_peer)
        protos, counts = jax.vmap(lambda b, xc, yc, nc: class_prototypes(
            model.body_apply, b, xc, yc, nc, num_classes))(trained["body"], x, y, n)
        g, present = global_prototypes(protos, counts, part)
        return proto_similarity(model.head_apply, trained["head"], g, present)

    def init(key, data):
        params = model.init(key)  # one initialization replicated to every client
        c = data.num_clients
        stack = lambda t: jax.tree.map(lambda a: jnp.broadcast_to(a, (c, *a.shape)), t)
        return {"body": params["body"], "heads": stack(params["head"]),
                "opt": stack(opt.init(params)), "relevance": aggregator.init(c)}

    def round_fn(state, data, key):
        k_sel, k_sim, k_agg = jax.random.split(key, 3)
        idx, keys, (x, y, n) = select_cohort(k_sel, data, k_cohort)
        heads, opt_state = gather((state["heads"], state["opt"]), idx)
        trained, opt_state, stats = mapped(state["body"], heads, opt_state, x, y, n, keys)
        part = jnp.ones(idx.shape, bool)
        sim = similarity(k_sim, trained, x, y, n, part)
        body = weighted_mean(trained["body"], client_weights(n, cfg.server.weighting))
        (mixed, rel_stats), relevance = aggregator.update(
            trained["head"], sim, state["relevance"], RelevanceContext(idx, part, k_agg))
        heads_all, opt_all = scatter((state["heads"], state["opt"]), idx, (mixed, opt_state))
        metrics = {**round_metrics(stats, n), **rel_stats}
        return {"body": body, "heads": heads_all, "opt": opt_all, "relevance": relevance}, metrics

    def client_params(state, data, key):
        del key
        c = data.num_clients
        body = jax.tree.map(lambda a: jnp.broadcast_to(a, (c, *a.shape)), state["body"])
        return {"body": body, "head": state["heads"]}

    def report(state):
        ccp = state["relevance"].ccp
        # G [C, C]: how often each peer was chosen during the CCP (group-structure sanity checks)
        return {"ccp_end_round": ccp.end_round, "ccp_active_at_end": ccp.is_ccp.astype(jnp.float32),
                "dependency_matrix": state["relevance"].dep}

    return Algorithm(name, init, round_fn, None, client_params,
                     {"formulation": "materialized", "fedrema_ablation": ablation}, report)


@register("fedrema", "FedReMa: global body (weighted mean), heads mixed from MDS-relevant peers "
                     "during the CCP, then by CCP selection frequency (fedrema.* options)")
def fedrema(ctx: BuildContext) -> Algorithm:
    return _fedrema(ctx, "fedrema")


@register("fedrema_no_ccp", "FedReMa ablation: MDS head weights every round (no CCP / history)")
def fedrema_no_ccp(ctx: BuildContext) -> Algorithm:
    return _fedrema(ctx, "fedrema_no_ccp", "no_ccp")


@register("fedrema_no_history", "FedReMa ablation: after the CCP, uniform over every peer chosen "
                                "during it (no frequency weights)")
def fedrema_no_history(ctx: BuildContext) -> Algorithm:
    return _fedrema(ctx, "fedrema_no_history", "no_history")


@register("fedrema_random_peers", "FedReMa ablation: random peer sets of the size MDS chooses")
def fedrema_random_peers(ctx: BuildContext) -> Algorithm:
    return _fedrema(ctx, "fedrema_random_peers", "random_peers")
