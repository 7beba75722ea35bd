"""FLoRAL (Almansoori, Horvath, Takac; CPAL 2025, arXiv 2410.03497): federated mixtures of
low-rank adaptors, with its variants and the baselines of its main table.

Spec: specs/floral.md; tags say where a behaviour comes from: [code] the official repository
(zeligism/FLoRAL), [infer] this simulator's own reconstruction.

Every client trains jointly (one materialized client program, `core.local.make_local_train`)
a shared part, M stacked components and its own router logits [M]:

=====================  ========================  ===========================  =================
algorithm              shared                    components [M, ...]          router [C, M]
=====================  ========================  ===========================  =================
``floral``             base model (FedAvg)       low-rank adaptors, global,   learned, private,
                                                 ``p_{k|m}``-weighted mean    persists [code]
``floral_oracle``      base model                adaptors (as floral)         fixed true-cluster
                                                                              one-hot [code]
``floral_stateless``   base model                adaptors (as floral)         re-fitted from 0
                                                                              every time [infer]
``local_adaptor``      base model (FedAvg)       one private adaptor (M = 1)  trivial
``ensemble``           none                      M full models, output mix,   learned, private
                                                 ``p_{k|m}``-weighted mean
``ensemble_oracle``    none                      as ensemble                  fixed one-hot
=====================  ========================  ===========================  =================

Round [code, spec section 3]: the cohort receives the shared part and the components, loads
its own logits, trains one round of local epochs on all three with per-group optimizers
(``optax.multi_transform``: shared and components use the client optimizer ``local.*``, the
adaptor gradients preconditioned first (`core.optim.lora_preconditioner`), the router plain SGD
at ``floral.router_lr``; uniform router noise per minibatch), and uploads everything. The server
aggregates ``partition({"shared": chain(mean(), server_optimizer),
"components": chain(mixture_mean(), server_optimizer)})`` with sample weights ``p_k`` and the
clients' raw mixtures ``softmax(logits)``; the logits never enter the aggregator and stay with
their client. Evaluation: each client's model with its own router, no noise.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_sim import tasks as tasks_lib
from fedjax_sim.aggregators import chain, keep, mean, mixture_mean, partition, server_optimizer
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import client_weights, round_metrics
from fedjax_sim.config import check
from fedjax_sim.core.clients import on_device, replicate, update_cohort
from fedjax_sim.core.local import Schedule, make_local_train, size_order
from fedjax_sim.core.optim import lora_preconditioner
from fedjax_sim.core.sampling import select_cohort
from fedjax_sim.errors import ConfigError
from fedjax_sim.models.mixture import (BIAS_INITS, CONV_RANK_RULES, count_floats, ensemble_model,
                                       floral_model, mixture_probs)

GROUPS = ("shared", "components", "router")
ORACLE_LOGIT = -100.0  # [code] "optimal router": -100 everywhere, 0 at the client's cluster
RAND_INDEX_MAX_CLIENTS = 4096  # the router's Rand index is O(C^2); skipped above this


@dataclasses.dataclass
class FloralConfig:
    """FLoRAL and its baselines (one section for all six algorithms).

    num_adaptors: M, adaptors (or ensemble members); the official code sets it to the true
      number of clusters [code]. rho: adaptor budget per layer in (0, 1] (rank rule
      ``floor(rho d_in d_out / (d_in + d_out))``, at least 1; 0.01 = "FLoRAL(1%)", 0.1 =
      "FLoRAL(10%)"). rank: fixed rank >= 1 for every layer; 0 = the rho rule.
    router_lr: SGD learning rate of the router logits. router_noise: sigma of the uniform noise
      U[0, sigma) added to the logits per training minibatch. min_prob: the forward pass's
      clamp ``max(pi, min_prob)`` (0 = off). adaptor_bias: torch_default (U(+-1/sqrt(fan_in)),
      as the code) | zero | none. precondition: ScaledGD preconditioning of adaptor gradients
      (always on in the code). conv_rank_rule: fixed | official_bug (the code's conv
      rank / init fan-in, spec section 8.7). stateless_router_epochs: floral_stateless only,
      router-only epochs from zero logits before each round's joint training and before
      evaluation [infer].
    """

    NAME = "floral"
    TRACEABLE = ("router_lr", "router_noise")
    num_adaptors: int = 4
    rho: float = 0.01
    rank: int = 0
    router_lr: float = 0.1
    router_noise: float = 1.0
    min_prob: float = 0.01
    adaptor_bias: str = "torch_default"
    precondition: bool = True
    conv_rank_rule: str = "fixed"
    stateless_router_epochs: int = 1

    def validate(self):
        check(isinstance(self.num_adaptors, int) and self.num_adaptors >= 1, "floral.num_adaptors",
              self.num_adaptors, "an integer >= 1")
        check(0 < self.rho <= 1, "floral.rho", self.rho, "a number in (0, 1]")
        check(isinstance(self.rank, int) and self.rank >= 0, "floral.rank", self.rank,
              "an integer >= 1, or 0 for the rho rule")
        check(self.router_lr >= 0, "floral.router_lr", self.router_lr, "a number >= 0")
        check(0 <= self.router_noise < float("inf"), "floral.router_noise", self.router_noise,
              "a finite number >= 0")
        check(0 <= self.min_prob < 1, "floral.min_prob", self.min_prob, "a number in [0, 1)")
        check(self.adaptor_bias in BIAS_INITS, "floral.adaptor_bias", self.adaptor_bias,
              "one of " + ", ".join(BIAS_INITS))
        check(self.conv_rank_rule in CONV_RANK_RULES, "floral.conv_rank_rule", self.conv_rank_rule,
              "one of " + ", ".join(CONV_RANK_RULES))
        check(isinstance(self.stateless_router_epochs, int) and self.stateless_router_epochs >= 1,
              "floral.stateless_router_epochs", self.stateless_router_epochs, "an integer >= 1")


class MixtureClients(NamedTuple):
    """Per-client state [C, ...]: router logits [C, M]; components [C, M, ...] when private
    (local_adaptor), else None."""

    router: jax.Array
    components: Any


class MixtureState(NamedTuple):
    """shared: global shared params; components: global [M, ...] (None when private);
    clients: `MixtureClients`; server: the partition aggregator's state."""

    shared: Any
    components: Any
    clients: MixtureClients
    server: Any


def _labels(params):
    return {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}


def oracle_logits(cluster: jax.Array, num_components: int) -> jax.Array:
    """[code] fixed true-cluster router: logits [C, M] = -100 except 0 at ``cluster mod M``."""
    return jnp.where(jax.nn.one_hot(cluster % num_components, num_components) > 0, 0.0, ORACLE_LOGIT)


def rand_index(cluster: jax.Array, logits: jax.Array) -> jax.Array:
    """Rand index between true clusters [C] and each client's top adaptor (argmax of logits
    [C, M]): the fraction of client pairs on which "same cluster" and "same adaptor" agree
    (1 = the routers recover the clusters up to relabelling)."""
    top = jnp.argmax(logits, -1)
    same_c = cluster[:, None] == cluster[None, :]
    same_a = top[:, None] == top[None, :]
    c = cluster.shape[0]
    off = ~jnp.eye(c, dtype=bool)
    return jnp.sum((same_c == same_a) & off) / jnp.maximum(c * (c - 1), 1)


def _mixture_algorithm(ctx: BuildContext, hp: FloralConfig, name: str, kind: str, router: str,
                       private: bool = False) -> Algorithm:
    """Assembles one of the six algorithms; ``kind``: floral | ensemble; ``router``: learned |
    oracle | stateless; ``private``: components are per-client state, never aggregated."""
    if ctx.task.output_loss is None:
        raise ConfigError("task.name", ctx.task.name, f"a single-output task for {name}")
    m = 1 if private else hp.num_adaptors
    if kind == "floral":
        model = floral_model(ctx.model, m, hp.rho, hp.rank, hp.adaptor_bias, hp.conv_rank_rule, hp.min_prob)
    else:
        model = ensemble_model(ctx.model, m)
    noise = hp.router_noise

    def train_loss(params, batch, key):
        probs = mixture_probs(params["router"], key, noise)
        return ctx.task.output_loss(model.apply(params, batch["x"], probs), batch), None

    eval_task = tasks_lib.with_apply(
        ctx.task, lambda params, x: model.apply(params, x, mixture_probs(params["router"])))

    opt = ctx.client_optimizer.transform
    components_opt = opt
    if kind == "floral" and hp.precondition:
        components_opt = optax.chain(lora_preconditioner(), opt)
    router_opt = optax.set_to_zero() if router == "oracle" else optax.sgd(hp.router_lr)
    joint_opt = optax.multi_transform({"shared": opt, "components": components_opt,
                                       "router": router_opt}, _labels)
    train = make_local_train(train_loss, joint_opt, ctx.schedule, ctx.max_n)
    fit_router = None
    if router == "stateless":
        router_only = optax.multi_transform({"shared": optax.set_to_zero(), "components": optax.set_to_zero(),
                                             "router": optax.sgd(hp.router_lr)}, _labels)
        schedule = Schedule.make(ctx.max_n, ctx.batch_size, hp.stateless_router_epochs, 0, trim=ctx.schedule.trim)
        warm = make_local_train(train_loss, router_only, schedule, ctx.max_n)

        def fit_router(shared, components, rows, n, key):
            params = {"shared": shared, "components": components, "router": jnp.zeros((m,), jnp.float32)}
            return warm(params, router_only.init(params), rows, n, key)[0]["router"]

    def client(shared, components, logits, rows, n, key):
        if fit_router is not None:
            key, k_fit = jax.random.split(key)
            logits = fit_router(shared, components, rows, n, k_fit)
        params = {"shared": shared, "components": components, "router": logits}
        trained, _, stats = train(params, joint_opt.init(params), rows, n, key)
        return trained, stats

    mapping = ctx.mapping.resolved()
    comp_axis = 0 if private else None
    mapped = mapping.map(client, (None, comp_axis, 0, 0, 0, 0), size_order(ctx.schedule, 4))
    mapped_fit = None if fit_router is None else mapping.map(fit_router, (None, None, 0, 0, 0))
    srv = ctx.server_optimizer.transform
    components_agg = keep() if private else chain(mixture_mean(), server_optimizer(srv))
    aggregator = partition({"shared": chain(mean(), server_optimizer(srv)), "components": components_agg},
                           {"shared": "shared", "components": "components"})

    def init(key, data):
        params = model.init(key)  # the server's one initialization, sent to every client [code]
        c = data.num_clients
        if router == "oracle":
            cluster = data.cluster if getattr(data, "cluster", None) is not None else jnp.arange(c)
            logits = oracle_logits(cluster, m)
        else:
            logits = jnp.zeros((c, m), jnp.float32)
        comps = replicate(params["components"], c) if private else None
        return MixtureState(params["shared"], None if private else params["components"],
                            MixtureClients(logits, comps), aggregator.init(params))

    def round_fn(state, data, rin):
        idx, keys, rows, n = select_cohort(rin.key, data, ctx.cohort)

        def cohort_step(clients):
            comps = clients.components if private else state.components
            trained, stats = mapped(state.shared, comps, clients.router, rows, n, keys)
            pi = jax.nn.softmax(trained["router"], axis=-1)  # raw mixture: no noise, no clamp [code]
            delta = lambda new, old: jax.tree.map(lambda a, b: a - b, new, old)
            results = {"shared": delta(trained["shared"], state.shared),
                       "components": trained["components"] if private
                       else delta(trained["components"], state.components)}
            new, server, metrics = aggregator.update(
                results, client_weights(n, ctx.weighting), state.server,
                {"shared": state.shared, "components": comps}, mixture=pi)
            entropy = -jnp.mean(jnp.sum(pi * jnp.log(jnp.maximum(pi, 1e-30)), -1))
            out = MixtureClients(trained["router"], new["components"] if private else None)
            return out, (new, server, stats, {**metrics, "router_entropy": entropy})

        clients, (new, server, stats, metrics) = update_cohort(state.clients, idx, cohort_step)
        state = MixtureState(new["shared"], None if private else new["components"], clients, server)
        metrics = {**round_metrics(stats, n), **metrics}
        cluster = getattr(data, "cluster", None)
        if cluster is not None and m > 1 and data.num_clients <= RAND_INDEX_MAX_CLIENTS:
            metrics["router_rand_index"] = rand_index(cluster, on_device(clients.router))
        return state, metrics

    def client_params(state, data, key):
        c = data.num_clients
        comps = state.clients.components if private else replicate(state.components, c)
        logits = state.clients.router
        if mapped_fit is not None:  # stateless clients fit a router before they predict
            keys = data.client_keys(key)  # a client's key whichever clients it is evaluated with
            logits = mapped_fit(state.shared, state.components, data.train_view(), data.n_train, keys)
        return {"shared": replicate(state.shared, c), "components": comps, "router": logits}

    def report(state):
        return {"router_probs": jax.nn.softmax(state.clients.router, axis=-1)}

    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    shared_n, comp_n = count_floats(shapes["shared"]), count_floats(shapes["components"])
    base_n = count_floats(jax.eval_shape(ctx.model.init, jax.random.PRNGKey(0)))
    router_state = 0 if router == "stateless" else m
    floats = {"model": base_n, "shared": shared_n, "components": comp_n,
              "client_state": comp_n + router_state if private else router_state,
              "downlink": shared_n + (0 if private else comp_n),
              "uplink": shared_n + (0 if private else comp_n + m)}
    info = {"formulation": "materialized", "client_mapping": mapping.strategy,
            "chunk_size": mapping.chunk_size, "num_components": m, "floats": floats,
            "needs_clusters": router == "oracle"}
    if kind == "floral":
        info["adaptor_ranks"] = {layer.name: layer.rank for layer in model.layers}
    return Algorithm(name, init, round_fn, None, client_params, info, report, task=eval_task,
                     client_store=("clients",))


@register("floral", "FLoRAL: shared base + M low-rank adaptors mixed by a private per-client "
                    "router (floral.num_adaptors, floral.rho, floral.router_lr)", FloralConfig)
def floral(ctx: BuildContext, hp: FloralConfig) -> Algorithm:
    return _mixture_algorithm(ctx, hp, "floral", "floral", "learned")


@register("floral_oracle", "FLoRAL with the fixed true-cluster router (needs clustered data)",
          FloralConfig)
def floral_oracle(ctx: BuildContext, hp: FloralConfig) -> Algorithm:
    return _mixture_algorithm(ctx, hp, "floral_oracle", "floral", "oracle")


@register("floral_stateless", "FLoRAL whose clients keep no state: the router is re-fitted from "
                              "zero at every participation and before evaluation", FloralConfig)
def floral_stateless(ctx: BuildContext, hp: FloralConfig) -> Algorithm:
    return _mixture_algorithm(ctx, hp, "floral_stateless", "floral", "stateless")


@register("local_adaptor", "Local Adaptor: FedAvg base + one private low-rank adaptor per client "
                           "(floral.rho)", FloralConfig)
def local_adaptor(ctx: BuildContext, hp: FloralConfig) -> Algorithm:
    return _mixture_algorithm(ctx, hp, "local_adaptor", "floral", "learned", private=True)


@register("ensemble", "Ensemble: M full models mixed at the output by a private learned router, "
                      "each averaged with p_{k|m} weights (floral.num_adaptors)", FloralConfig)
def ensemble(ctx: BuildContext, hp: FloralConfig) -> Algorithm:
    return _mixture_algorithm(ctx, hp, "ensemble", "ensemble", "learned")


@register("ensemble_oracle", "Ensemble with the fixed true-cluster router (needs clustered data)",
          FloralConfig)
def ensemble_oracle(ctx: BuildContext, hp: FloralConfig) -> Algorithm:
    return _mixture_algorithm(ctx, hp, "ensemble_oracle", "ensemble", "oracle")
