"""Asynchronous FL on the virtual clock: FedAsync (Xie et al. 2019), FedBuff (Nguyen et al.,
AISTATS 2022) and FedADT (Lu et al., arXiv 2504.04081; its correction is a reconstruction,
specs/async_kd.md section 2).

A round is one server update (version r -> r + 1) over the next K arrivals of the seed's event
schedule (`fedjax_sim.asynchrony`; K = 1 for FedAsync, ``fedbuff.buffer_size`` for FedBuff). Each
arrival trained from the global version current when it was dispatched; those versions live in a
ring ``[S, ...]`` on device (S = concurrency + 1 planned slots + a scratch row; version r + 1 is written at the end of round r),
read by the arrivals' slots, so the K arrivals train together under one vmap from their own
bases. The
aggregators are pure (`aggregators.asynchronous`):

* fedasync: ``chain(rebase(), staleness_weighted(f), mean(), server_optimizer(sgd(alpha)))``,
  i.e. ``w <- w + alpha * f(s) * (w_new - w)``; optional proximal pull ``fedasync.rho``;
* fedbuff: ``chain(staleness_weighted(f), mean(), server_optimizer(server opt))``, i.e. ``w <- w +
  eta_g * sum_k f(s_k) u_k / K`` with ``server.optimizer=sgd`` and ``server.lr`` = eta_g;
* fedadt: ``distillation_correction(...)`` first, on the base method ``fedadt.base`` (fedbuff or
  fedasync, with that method's section). ``fedadt.lambda_max=0`` reproduces the base bit for bit.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_sim import asynchrony
from fedjax_sim.aggregators import chain, distillation_correction, mean, rebase, server_optimizer
from fedjax_sim.aggregators import staleness_weighted
from fedjax_sim.aggregators.asynchronous import GATES, SCHEDULES, STALENESS
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import job_work, require_classification, round_metrics
from fedjax_sim.config import check
from fedjax_sim.core.cohort import make_cohort_train
from fedjax_sim.errors import ConfigError


class AsyncState(NamedTuple):
    """params: the global model (version r at the start of round r); server: the aggregator's
    state; ring: [S, ...] global versions still needed by jobs in flight (version r + 1 is
    written at the end of round r, version 0 at init); job_key: the root of
    every job's PRNG stream (job j trains with ``fold_in(job_key, j)`` however jobs are batched).
    ``ring`` has S + 1 rows: row S is scratch (written when no arrival needs the version)."""

    params: Any
    server: Any
    ring: Any
    job_key: jax.Array


def _check_staleness(section: str, kind: str, a: float, b: float) -> None:
    check(kind in STALENESS, f"{section}.staleness", kind, "one of " + ", ".join(STALENESS))
    check(a >= 0 and np.isfinite(a), f"{section}.a", a, "a finite number >= 0")
    check(b >= 0 and np.isfinite(b), f"{section}.b", b, "a finite number >= 0 (hinge: staleness "
                                                         "without discount)")


@dataclasses.dataclass
class FedAsyncConfig:
    """FedAsync: mixing ``alpha``, staleness function (constant | polynomial (s+1)^-a | hinge:
    1 if s <= b else 1/(a(s-b)+1)), and the proximal pull ``rho`` of its local objective
    (0 = plain SGD). Defaults [code]: alpha 0.6, a 0.5, b 10."""

    NAME = "fedasync"
    TRACEABLE = ("alpha", "rho")
    alpha: float = 0.6
    staleness: str = "polynomial"
    a: float = 0.5
    b: float = 10.0
    rho: float = 0.0

    def validate(self):
        check(0 < self.alpha <= 1, "fedasync.alpha", self.alpha, "a number in (0, 1]")
        check(self.rho >= 0 and np.isfinite(self.rho), "fedasync.rho", self.rho, "a finite number >= 0")
        _check_staleness("fedasync", self.staleness, self.a, self.b)


@dataclasses.dataclass
class FedBuffConfig:
    """FedBuff: the server updates after ``buffer_size`` arrivals with ``server.optimizer`` at
    ``server.lr`` (eta_g) on the staleness-weighted mean delta; weights as FedAsync's (the paper:
    polynomial, a = 1/2)."""

    NAME = "fedbuff"
    buffer_size: int = 10
    staleness: str = "polynomial"
    a: float = 0.5
    b: float = 10.0

    def validate(self):
        check(self.buffer_size >= 1, "fedbuff.buffer_size", self.buffer_size, "an integer >= 1")
        _check_staleness("fedbuff", self.staleness, self.a, self.b)


@dataclasses.dataclass
class FedADTConfig:
    """FedADT-R [reconstruction, specs/async_kd.md section 2]: the base method (fedbuff | fedasync,
    configured by its own section) plus server-side distillation of every stale update toward the
    latest global model on the proxy set (``data.proxy_fraction``).

    lambda_i = lambda(progress) * g(s_i), progress = virtual time / clock.time_budget when a budget
    is set, else round / rounds: schedule constant | linear | sigmoid (k, p0) | maturity
    (the global model's proxy confidence between c0 and c1) up to ``lambda_max``; gate one |
    stale (1[s > 0]) | sqrt (1 - (1+s)^-1/2). ``kd_steps`` SGD steps at ``kd_lr`` (0 = local.lr)
    on proxy batches of ``kd_batch`` at ``temperature``."""

    NAME = "fedadt"
    USES = ("fedasync", "fedbuff")
    TRACEABLE = ("lambda_max", "temperature")  # kd_lr: its 0 means local.lr, decided statically
    base: str = "fedbuff"
    lambda_max: float = 0.5
    schedule: str = "sigmoid"
    k: float = 10.0
    p0: float = 0.3
    c0: float = 0.3
    c1: float = 0.8
    gate: str = "stale"
    temperature: float = 2.0
    kd_steps: int = 10
    kd_batch: int = 256
    kd_lr: float = 0.0

    def validate(self):
        check(self.base in ("fedbuff", "fedasync"), "fedadt.base", self.base, "fedbuff or fedasync")
        check(0 <= self.lambda_max <= 1, "fedadt.lambda_max", self.lambda_max, "a number in [0, 1]")
        check(self.schedule in SCHEDULES, "fedadt.schedule", self.schedule, "one of " + ", ".join(SCHEDULES))
        check(self.gate in GATES, "fedadt.gate", self.gate, "one of " + ", ".join(GATES))
        check(np.isfinite(self.k) and self.k > 0, "fedadt.k", self.k, "a finite number > 0")
        check(0 <= self.p0 <= 1, "fedadt.p0", self.p0, "a number in [0, 1]")
        check(0 <= self.c0 < self.c1 <= 1, "fedadt.c1", self.c1, f"a number in (fedadt.c0={self.c0}, 1]")
        check(0 < self.temperature <= 100, "fedadt.temperature", self.temperature, "a number in (0, 100]")
        check(self.kd_steps >= 1, "fedadt.kd_steps", self.kd_steps, "an integer >= 1")
        check(self.kd_batch >= 1, "fedadt.kd_batch", self.kd_batch, "an integer >= 1")
        check(self.kd_lr >= 0 and np.isfinite(self.kd_lr), "fedadt.kd_lr", self.kd_lr,
              "a finite number >= 0 (0 = local.lr)")


def concurrency_of(ctx: BuildContext) -> int:
    """Jobs in flight: ``clock.concurrency``, or the cohort when it is 0."""
    return int(ctx.clock.concurrency) or ctx.cohort


def schedule_events(ctx: BuildContext, buffer_size: int):
    """``events(seed, data, R)``: the seed's replayed schedule (`asynchrony.replay_events`)."""
    clock, concurrency = ctx.clock, concurrency_of(ctx)
    epochs, steps = job_work(ctx)

    def events(seed, data, rounds):
        speed, work, rng = asynchrony.seed_clock(clock, seed, np.asarray(data.n_train), ctx.batch_size,
                                                 epochs, steps)
        trace = asynchrony.build_trace(speed, work, concurrency, buffer_size * rounds, clock.noise, rng)
        return asynchrony.replay_events(trace, buffer_size, rounds, asynchrony.ring_size(concurrency),
                                        clock.server_time, clock.time_budget)

    return events


def _async_algorithm(ctx: BuildContext, name: str, buffer_size: int, aggregator, prox_mu=0.0,
                     needs_proxy: bool = False, info: dict | None = None) -> Algorithm:
    if ctx.task.target_kind == "multi":
        raise ConfigError("algorithm", name, "a single-task dataset (asynchronous methods train one model)")
    concurrency = concurrency_of(ctx)
    if concurrency > ctx.num_clients:
        raise ConfigError("clock.concurrency", concurrency,
                          f"at most the number of clients ({ctx.num_clients}): jobs in flight are distinct clients")
    params0 = jax.eval_shape(ctx.model.init, jax.random.PRNGKey(0))
    train, train_info = make_cohort_train(ctx.task, None, ctx.client_optimizer, ctx.schedule, ctx.max_n,
                                          ctx.mapping, params0, ctx.formulation, prox_mu, shared_base=False)
    ring = asynchrony.ring_size(concurrency)

    def init(key, data):
        k_model, k_jobs = jax.random.split(key)
        params = ctx.model.init(k_model)
        # version 0 in slot 0; one row more than the planned slots: a scratch row that receives
        # a version no arrival needs, so the write is always a plain dynamic-update-slice (a
        # dropped out-of-bounds scatter lowers to a select that copies the whole ring)
        ring_state = jax.tree.map(lambda p: jnp.zeros((ring + 1, *p.shape), p.dtype).at[0].set(p), params)
        return AsyncState(params, aggregator.init(params), ring_state, k_jobs)

    def round_fn(state, data, rin):
        ev = rin.events
        bases = jax.tree.map(lambda r: r[ev["slot"]], state.ring)  # [K, ...]
        rows, n = data.cohort(ev["client"])
        keys = jax.vmap(lambda j: jax.random.fold_in(state.job_key, j))(ev["job"])
        deltas, stats = train(bases, rows, n, keys)
        extras = dict(bases=bases, staleness=ev["staleness"], progress=ev["progress"],
                      key=jax.random.fold_in(rin.key, 0xAD7))
        if needs_proxy:
            extras["proxy"] = data.proxy["x"]
        k = ev["client"].shape[0]
        params, server, agg_metrics = aggregator.update(deltas, jnp.ones((k,), jnp.float32), state.server,
                                                        state.params, **extras)
        # the new version goes into its slot at the end of the round: every read of the ring
        # precedes the write in the dataflow, so XLA updates it in place (writing it at the start
        # and reading it in the same round copied the whole ring every round: measured 10x slower
        # at concurrency 200, scripts/bench_async.py)
        ring_state = jax.tree.map(lambda r, p: jax.lax.dynamic_update_index_in_dim(r, p, ev["store_next"], 0),
                                  state.ring, params)
        s = ev["staleness"].astype(jnp.float32)
        metrics = {**round_metrics(stats, n), **agg_metrics, "staleness_mean": jnp.mean(s),
                   "staleness_max": jnp.max(s), "round_time": ev["round_time"]}
        return AsyncState(params, server, ring_state, state.job_key), metrics

    info = {**train_info, "clock": "asynchronous", "buffer_size": buffer_size, "concurrency": concurrency,
            "ring_size": ring, "needs_proxy": needs_proxy, **(info or {})}
    return Algorithm(name, init, round_fn, lambda s: s.params, None, info,
                     events=schedule_events(ctx, buffer_size))


def _fedasync_parts(ctx: BuildContext, hp: FedAsyncConfig):
    return [rebase(), staleness_weighted(hp.staleness, hp.a, hp.b), mean(),
            server_optimizer(optax.sgd(hp.alpha))]


def _fedbuff_parts(ctx: BuildContext, hp: FedBuffConfig):
    return [staleness_weighted(hp.staleness, hp.a, hp.b), mean(), server_optimizer(ctx.server_optimizer.transform)]


@register("fedasync", "FedAsync: every arrival is mixed in, w <- w + alpha s(staleness) (w_new - w) "
                      "(fedasync.*; clock.* shapes the event schedule)", FedAsyncConfig)
def fedasync(ctx: BuildContext, hp: FedAsyncConfig) -> Algorithm:
    return _async_algorithm(ctx, "fedasync", 1, chain(*_fedasync_parts(ctx, hp)), prox_mu=hp.rho)


@register("fedbuff", "FedBuff: the server steps after fedbuff.buffer_size arrivals on their "
                     "staleness-weighted mean delta (server.lr = eta_g)", FedBuffConfig)
def fedbuff(ctx: BuildContext, hp: FedBuffConfig) -> Algorithm:
    return _async_algorithm(ctx, "fedbuff", hp.buffer_size, chain(*_fedbuff_parts(ctx, hp)))


@register("fedadt", "FedADT [reconstruction]: FedBuff (or FedAsync, fedadt.base) whose stale updates "
                    "the server distills toward the latest global model on the proxy set "
                    "(data.proxy_fraction), with a weight that grows with training (fedadt.*)",
          FedADTConfig)
def fedadt(ctx: BuildContext, hp: dict) -> Algorithm:
    require_classification(ctx.task, "fedadt", "it distills softmax outputs and gates on their maximum")
    own = hp["fedadt"]
    base = hp[own.base]
    kd_lr = own.kd_lr if not (isinstance(own.kd_lr, (int, float)) and own.kd_lr == 0) else ctx.client_optimizer.learning_rate
    correction = distillation_correction(
        ctx.model.apply, lam_max=own.lambda_max, schedule=own.schedule, k=own.k, p0=own.p0, gate=own.gate,
        temperature=own.temperature, steps=own.kd_steps, batch=own.kd_batch, lr=kd_lr, c0=own.c0, c1=own.c1)
    if own.base == "fedasync":
        parts, buffer_size, prox = _fedasync_parts(ctx, base), 1, base.rho
    else:
        parts, buffer_size, prox = _fedbuff_parts(ctx, base), base.buffer_size, 0.0
    return _async_algorithm(ctx, "fedadt", buffer_size, chain(correction, *parts), prox_mu=prox,
                            needs_proxy=True, info={"base": own.base})
