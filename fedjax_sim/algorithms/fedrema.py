"""FedReMa (Liang et al., ECAI 2024; specs/fedrema.md): a global body, personalized heads.

Assembled on `algorithms.split`: each round the cohort trains body + own head locally
(per-client optimizer state, e.g. SGD momentum, persists across rounds, spec §7.11). The server
aggregates ``partition({"body": chain(mean(), server_optimizer(opt)), "head":
relevance_matching(...)})``:
  - the body: sample-weighted mean of the client deltas through the server optimizer (with the
    default ``sgd(1.0)``, the weighted mean of the bodies [C]), broadcast to every client;
  - each participant's head: mixed from its relevant peers (`aggregators.relevance_matching`):
    MDS over a similarity of the freshly trained heads during the Critical Co-learning Period,
    then the CCP's historical selection frequencies [C].
Clients outside the cohort keep their heads. Evaluation uses global body + own head.

Registered variants: ``fedrema`` (ablation from ``fedrema.ablation``), and ``fedrema_no_ccp``,
``fedrema_no_history``, ``fedrema_random_peers`` with the ablation fixed.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from fedjax_sim.aggregators.relevance import (ABLATIONS, SIM_TYPES, class_prototypes,
                                              global_prototypes, probe_similarity, proto_similarity,
                                              relevance_matching, uniform_probes)
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import require_classification
from fedjax_sim.algorithms.split import make_split_algorithm, train_body_and_head
from fedjax_sim.config import check
from fedjax_sim.core.local import make_local_train
from fedjax_sim.errors import ConfigError


@dataclasses.dataclass
class FedReMaConfig:
    """FedReMa's hyper-parameters (specs/fedrema.md).

    delta: CCP end threshold in (0, 1]: the CCP ends when the mean MDS gap < delta * its running max.
    sim_type: ``probe`` (one random uniform feature-space probe per reference client, the code's
      default) or ``proto`` (global class prototypes as probes).
    t_ref / t_peer: softmax temperatures of the reference client and of its peers (probe).
    probe_scale: probes are Uniform[0, probe_scale)^d.
    ablation: none | no_ccp (MDS every round) | no_history (after the CCP, uniform over every peer
      ever chosen) | random_peers (random peer sets of the size MDS chose).
    official_index_bug / official_inplace_mixing: replicate the official code's two bugs (§7.1, §7.2).
    """

    NAME = "fedrema"
    TRACEABLE = ("delta", "t_ref", "t_peer")
    delta: float = 0.5
    sim_type: str = "probe"
    t_ref: float = 0.5
    t_peer: float = 1.0
    probe_scale: float = 0.5
    ablation: str = "none"
    official_index_bug: bool = False
    official_inplace_mixing: bool = False

    def validate(self):
        check(0 < self.delta <= 1, "fedrema.delta", self.delta, "a number in (0, 1]")
        check(self.sim_type in SIM_TYPES, "fedrema.sim_type", self.sim_type, " or ".join(SIM_TYPES))
        for name in ("t_ref", "t_peer", "probe_scale"):
            value = getattr(self, name)
            check(value > 0 and math.isfinite(value), f"fedrema.{name}", value, "a finite number > 0")
        check(self.ablation in ABLATIONS, "fedrema.ablation", self.ablation, "one of " + ", ".join(ABLATIONS))


def _fedrema(ctx: BuildContext, hp: FedReMaConfig, name: str, ablation: str | None = None) -> Algorithm:
    require_classification(ctx.task, name)
    if ablation is not None and hp.ablation not in ("none", ablation):
        raise ConfigError("fedrema.ablation", hp.ablation,
                          f"none or {ablation} with --algorithm {name}, whose ablation is fixed "
                          f"(for another ablation: --algorithm fedrema --set fedrema.ablation={hp.ablation})")
    ablation = ablation or hp.ablation
    if ctx.cohort < 3:
        # a cohort of every client (cohort=0) is limited by the population, so name that field
        field = "cohort" if ctx.cohort < ctx.num_clients else "data.num_clients"
        raise ConfigError(field, ctx.cohort, f"at least 3 clients per round for {name} "
                                             "(MDS needs >= 3 participants)")
    model, k_cohort, num_classes = ctx.model, ctx.cohort, ctx.task.num_classes
    opt = ctx.client_optimizer.transform
    train = make_local_train(ctx.task.loss, opt, ctx.schedule, ctx.max_n)
    aggregator = relevance_matching(ctx.num_clients, hp.delta, ablation, hp.official_index_bug,
                                    hp.official_inplace_mixing)

    def similarity(key, trained, rows, n, idx):
        """S [K, K] of the freshly trained heads, plus the aggregator's key."""
        k_sim, k_agg = jax.random.split(key)
        if hp.sim_type == "probe":
            probes = uniform_probes(k_sim, k_cohort, model.feature_dim, hp.probe_scale)
            sim = probe_similarity(model.head_apply, trained["head"], probes, hp.t_ref, hp.t_peer)
        else:
            protos, counts = jax.vmap(lambda b, x, y, nc: class_prototypes(
                model.body_apply, b, x, y, nc, num_classes))(trained["body"], rows["x"], rows["y"], n)
            g, present = global_prototypes(protos, counts, jnp.ones(idx.shape, bool))
            sim = proto_similarity(model.head_apply, trained["head"], g, present)
        return {"similarity": sim, "key": k_agg}

    def report(state):
        relevance = state.server["head"]
        # G [C, C]: how often each peer was chosen during the CCP (group-structure sanity checks)
        return {"ccp_end_round": relevance.ccp.end_round,
                "ccp_active_at_end": relevance.ccp.is_ccp.astype(jnp.float32),
                "dependency_matrix": relevance.dep}

    return make_split_algorithm(name, ctx, train_body_and_head(train), opt.init, aggregator,
                                similarity, report, {"fedrema_ablation": ablation})


@register("fedrema", "FedReMa: global body (weighted mean), heads mixed from MDS-relevant peers "
                     "during the CCP, then by CCP selection frequency (fedrema.* options)", FedReMaConfig)
def fedrema(ctx: BuildContext, hp: FedReMaConfig) -> Algorithm:
    return _fedrema(ctx, hp, "fedrema")


@register("fedrema_no_ccp", "FedReMa ablation: MDS head weights every round (no CCP / history)",
          FedReMaConfig)
def fedrema_no_ccp(ctx: BuildContext, hp: FedReMaConfig) -> Algorithm:
    return _fedrema(ctx, hp, "fedrema_no_ccp", "no_ccp")


@register("fedrema_no_history", "FedReMa ablation: after the CCP, uniform over every peer chosen "
                                "during it (no frequency weights)", FedReMaConfig)
def fedrema_no_history(ctx: BuildContext, hp: FedReMaConfig) -> Algorithm:
    return _fedrema(ctx, hp, "fedrema_no_history", "no_history")


@register("fedrema_random_peers", "FedReMa ablation: random peer sets of the size MDS chooses",
          FedReMaConfig)
def fedrema_random_peers(ctx: BuildContext, hp: FedReMaConfig) -> Algorithm:
    return _fedrema(ctx, hp, "fedrema_random_peers", "random_peers")
