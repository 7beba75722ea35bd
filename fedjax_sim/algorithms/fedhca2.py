"""FedHCA2 (Lu et al., "FedHCA2: Towards Hetero-Client Federated Multi-Task Learning", CVPR 2024;
arXiv 2311.13250) and the baselines and ablations of hetero-client multi-task FL (HC-FMTL).

Spec: specs/fedhca2.md. Every formula follows the official code (innovator-zero/FedHCA2, commit
9e3c9b3), tagged [C] there; the JAX dual solver and HC-FMTL-lite are the spec's own [ours].

Every client holds a personalized multi-task model (`models.multitask`: encoder, decoders
[T, ...], heads [T, ...]) and its own optimizer state, both persistent across rounds [C]. A round
[C, spec section 4]: every client trains its own tasks for its local epochs (per input domain,
``local.epochs_per_domain``), starting from its model after the last aggregation; slots of tasks
it does not hold never change (`core.optim.masked_slots`). The server then aggregates
``partition({"encoder": E, "decoders": D, "heads": apply_deltas()})`` with:

====================  =========================================  ==========================================
algorithm             encoder E                                  decoders D
====================  =========================================  ==========================================
``local``             own update (no communication)              own update
``fedavg_encoder``    mean of all encoders                       own update
``fedavg``            mean of all encoders                       mean per task (clients holding it)
``fedavg_all``        mean of all encoders                       mean of all decoders across tasks [C]
``fedprox``           as fedavg, local loss + mu/2 ||w - w_start||^2
``fedhca2``           hyper conflict-averse, learned alpha       hyper cross-attention, learned beta
``fedhca2_no_ca``     mean of all encoders                       hyper cross-attention, learned beta
``fedhca2_no_xattn``  hyper conflict-averse, learned alpha       mean per task
``fedhca2_local_dec`` hyper conflict-averse, learned alpha       own update
``fedhca2_frozen``    conflict-averse, alpha fixed at init       cross-attention, beta fixed at init
====================  =========================================  ==========================================

Heads are never aggregated. Every mean is unweighted, as the official code. Every client takes
part in every round (the method's hyper-weights are defined per client per round).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_sim.aggregators import partition
from fedjax_sim.aggregators.multitask import (apply_deltas, conflict_averse, cross_attention,
                                              hyper_optimizer, model_mean, slot_mean)
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import client_weights, round_metrics
from fedjax_sim.config import check
from fedjax_sim.core.clients import replicate
from fedjax_sim.core.local import make_local_train
from fedjax_sim.core.optim import masked_slots, proximal, static_zero
from fedjax_sim.core.sampling import select_cohort
from fedjax_sim.errors import ConfigError

GROUPS = {"encoder": "encoder", "decoders": "decoders", "heads": "heads"}
RESCALES = (0, 1, 2)


@dataclasses.dataclass
class FedHCA2Config:
    """FedHCA2's hyper-parameters (defaults: the official CLI and ``Hyperweight`` config).

    ca_c: c, the conflict-averse ball radius factor (radius c ||g0||) [C 0.4]. rescale: 1 = U /
    (1 + c^2) [C default], 0 = none, 2 = U / (1 + c). alpha_init / beta_init: initial hyper
    weights [C 0.1]. hyper_lr, hyper_momentum, hyper_weight_decay: their SGD [C 0.01, 0.9, 1e-4].
    solver_iters: fixed iterations of the JAX dual solver [ours]. uniform_dual: debug flag, use
    uniform dual weights, which is what the official SLSQP returns when updates are tiny (spec 8.1).
    """

    NAME = "fedhca2"
    TRACEABLE = ("ca_c", "hyper_lr")
    ca_c: float = 0.4
    rescale: int = 1
    alpha_init: float = 0.1
    beta_init: float = 0.1
    hyper_lr: float = 0.01
    hyper_momentum: float = 0.9
    hyper_weight_decay: float = 1e-4
    solver_iters: int = 500
    uniform_dual: bool = False

    def validate(self):
        check(0 <= self.ca_c < float("inf"), "fedhca2.ca_c", self.ca_c, "a finite number >= 0")
        check(self.rescale in RESCALES, "fedhca2.rescale", self.rescale,
              "0 (none), 1 (divide by 1 + c^2) or 2 (divide by 1 + c)")
        for name in ("alpha_init", "beta_init"):
            value = getattr(self, name)
            check(0 <= value <= 1, f"fedhca2.{name}", value, "a number in [0, 1] (it is used through clip(., 0, 1))")
        check(0 <= self.hyper_lr < float("inf"), "fedhca2.hyper_lr", self.hyper_lr, "a finite number >= 0")
        check(0 <= self.hyper_momentum < 1, "fedhca2.hyper_momentum", self.hyper_momentum, "a number in [0, 1)")
        check(0 <= self.hyper_weight_decay < float("inf"), "fedhca2.hyper_weight_decay",
              self.hyper_weight_decay, "a finite number >= 0")
        check(isinstance(self.solver_iters, int) and self.solver_iters >= 1, "fedhca2.solver_iters",
              self.solver_iters, "an integer >= 1")


class HCState(NamedTuple):
    """params: [C, ...] every client's model (encoder, decoders [C, T, ...], heads [C, T, ...]);
    opt: [C, ...] its optimizer state (persists across rounds, as the official AdamW);
    server: the partition aggregator's state (hyper weights and their history, or empty)."""

    params: Any
    opt: Any
    server: Any


def _encoder(kind: str, ctx: BuildContext, hp: FedHCA2Config):
    if kind == "own":
        return apply_deltas()
    if kind == "mean":
        return model_mean()
    hyper = None if kind == "ca_frozen" else hyper_optimizer(hp.hyper_lr, hp.hyper_momentum, hp.hyper_weight_decay)
    return conflict_averse(ctx.tasks.group_ids, hp.ca_c, hp.rescale, hp.solver_iters, hp.alpha_init,
                           hyper, hp.uniform_dual)


def _decoders(kind: str, ctx: BuildContext, hp: FedHCA2Config, layers: tuple):
    mask = ctx.tasks.task_mask
    if kind == "own":
        return apply_deltas()
    if kind in ("task_mean", "all_mean"):
        return slot_mean(mask, same_task=kind == "task_mean")
    hyper = None if kind == "xattn_frozen" else hyper_optimizer(hp.hyper_lr, hp.hyper_momentum, hp.hyper_weight_decay)
    return cross_attention(mask, layers, hp.beta_init, hyper)


def _hcfmtl(ctx: BuildContext, hp, name: str, encoder: str, decoders: str, prox_mu=0.0) -> Algorithm:
    """Assembles one HC-FMTL algorithm (module docstring's table)."""
    spec = ctx.tasks
    if spec is None or not hasattr(ctx.model, "decoder_layers"):
        raise ConfigError("data.dataset", "?", f"multi-task data for {name} (--dataset hcfmtl_lite)")
    if ctx.cohort != ctx.num_clients:
        raise ConfigError("cohort", ctx.cohort, f"0 (every client, every round) for {name}: HC-FMTL "
                                                "aggregates every client's model each round")
    hp = hp if isinstance(hp, FedHCA2Config) else FedHCA2Config()
    c = ctx.num_clients
    opt = ctx.client_optimizer.transform
    if not static_zero(prox_mu):
        opt = optax.chain(proximal(prox_mu), opt)
    opt = optax.chain(opt, masked_slots(("decoders", "heads")))  # last: unheld slots never move
    train = make_local_train(ctx.task.loss, opt, ctx.schedule, ctx.max_n)
    slot_mask = jnp.asarray(spec.task_mask)
    epochs_np = np.asarray(ctx.client_epochs if ctx.client_epochs is not None
                           else np.full(c, ctx.schedule.epochs), np.int32)
    epochs = jnp.asarray(epochs_np)

    def client(params, opt_state, rows, n, key, mask, ep):
        return train(params, opt_state, rows, n, key, {"anchor": params, "slot_mask": mask}, ep)

    mapping = ctx.mapping.resolved()
    mapped = mapping.map(client, (0, 0, 0, 0, 0, 0, 0))
    layers = ctx.model.decoder_layers
    aggregator = partition({"encoder": _encoder(encoder, ctx, hp),
                            "decoders": _decoders(decoders, ctx, hp, layers),
                            "heads": apply_deltas()}, GROUPS)

    def init(key, data):
        # encoders start identical, decoders and heads from each client's own draw [C, spec 8.12]
        k_shared, k_clients = jax.random.split(key)
        shared = ctx.model.init(k_shared)
        own = jax.vmap(ctx.model.init)(jax.random.split(k_clients, c))
        params = {"encoder": replicate(shared["encoder"], c), "decoders": own["decoders"], "heads": own["heads"]}
        return HCState(params, jax.vmap(opt.init)(params), aggregator.init(params))

    def round_fn(state, data, rin):
        _, keys, rows, n = select_cohort(rin.key, data, c)  # every client, in order
        trained, opt_state, stats = mapped(state.params, state.opt, rows, n, keys, slot_mask, epochs)
        deltas = jax.tree.map(jnp.subtract, trained, state.params)
        new, server, metrics = aggregator.update(deltas, client_weights(n, ctx.weighting), state.server,
                                                 state.params)
        metrics = {**round_metrics(stats, n), **metrics, **_hyper_metrics(server, spec)}
        return HCState(new, opt_state, server), metrics

    def report(state):
        out = {}
        enc, dec = state.server["encoder"], state.server["decoders"]
        if hasattr(enc, "alpha"):
            out["alpha"] = enc.alpha
        if hasattr(dec, "beta"):
            out["beta"] = dec.beta
            out["attention"] = dec.attention
        return out

    info = {"formulation": "materialized", "client_mapping": mapping.strategy, "chunk_size": mapping.chunk_size,
            "encoder_aggregation": encoder, "decoder_aggregation": decoders,
            "decoders": len(spec.slots()), "groups": spec.group_ids.tolist(),
            "client_epochs": epochs_np.tolist(), "decoder_layers": list(layers)}
    has_report = encoder.startswith("ca") or decoders.startswith("xattn")
    return Algorithm(name, init, round_fn, None, lambda s, d, k: s.params, info,
                     report if has_report else None)


def _hyper_metrics(server, spec) -> dict:
    """Per-round hyper weights as scalars (metrics.jsonl keeps scalars): ``alpha/<client>`` and
    ``beta/<layer index>/<client>.<task>`` for every real decoder slot."""
    out = {}
    enc, dec = server["encoder"], server["decoders"]
    if hasattr(enc, "alpha"):
        out.update({f"alpha/{i}": enc.alpha[i] for i in range(spec.num_clients)})
    if hasattr(dec, "beta"):
        for layer in range(dec.beta.shape[0]):
            out.update({f"beta/{layer}/{ci}.{spec.task_names[t]}": dec.beta[layer, ci, t] for ci, t in spec.slots()})
    return out


def _register(name: str, description: str, encoder: str, decoders: str, section=FedHCA2Config):
    @register(name, description, section, multitask=True)
    def builder(ctx: BuildContext, hp) -> Algorithm:
        return _hcfmtl(ctx, hp, name, encoder, decoders)
    return builder


_register("fedhca2", "FedHCA2: hyper conflict-averse encoders + hyper cross-attention decoders with "
                     "learned alpha/beta, local heads (fedhca2.ca_c)", "ca", "xattn")
_register("fedhca2_no_ca", "FedHCA2 ablation: mean encoder, hyper cross-attention decoders", "mean", "xattn")
_register("fedhca2_no_xattn", "FedHCA2 ablation: hyper conflict-averse encoder, per-task mean decoders",
          "ca", "task_mean")
_register("fedhca2_local_dec", "FedHCA2 ablation: hyper conflict-averse encoder, local decoders", "ca", "own")
_register("fedhca2_frozen", "FedHCA2 ablation: alpha and beta fixed at their initial values", "ca_frozen",
          "xattn_frozen")
_register("local", "Local: every client trains its own encoder, decoders and heads", "own", "own", None)
_register("fedavg_encoder", "FedAvg on the encoder only; decoders and heads local", "mean", "own", None)
_register("fedavg", "FedAvg: mean encoder, per-task mean decoders (clients holding the task), local heads",
          "mean", "task_mean", None)
_register("fedavg_all", "FedAvg as the official FedHCA2 code: mean encoder, mean of all decoders across "
                        "tasks, local heads", "mean", "all_mean", None)


@register("fedprox", "FedProx: fedavg's aggregation, local loss + fedprox.mu/2 ||w - w_start||^2",
          multitask=True)
def fedprox(ctx: BuildContext, hp) -> Algorithm:
    return _hcfmtl(ctx, None, "fedprox", "mean", "task_mean", prox_mu=hp.mu)
