"""Personalized baselines with the body/head split (FedReMa's comparison set, specs/fedrema.md),
assembled on `algorithms.split`:

- ``fedper`` (Arivazhagan et al. 2019): body + head trained locally; the body is averaged
  (sample-weighted mean through the server optimizer) and broadcast, every head stays local
  (aggregator `keep`).
- ``fedrep`` (Collins et al. 2021): each round ``fedrep.head_epochs`` epochs on the head (body
  frozen), then ``local.epochs`` epochs on the body (head frozen); the body is averaged, heads local.
- ``head_avg``: like FedReMa without relevance: the body is averaged and every participant's head
  becomes the uniform mean of all participants' heads (`broadcast_mean`, MDS's all-ones relevance).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import optax

from fedjax_sim.aggregators import broadcast_mean, keep
from fedjax_sim.algorithms.base import Algorithm, BuildContext, register
from fedjax_sim.algorithms.common import require_body_head
from fedjax_sim.algorithms.split import make_split_algorithm, train_body_and_head
from fedjax_sim.config import check
from fedjax_sim.core.local import Schedule, make_local_train


@dataclasses.dataclass
class FedRepConfig:
    """FedRep: head epochs per round, run before the ``local.epochs`` body epochs (was
    ``fedrema.head_epochs``)."""

    NAME = "fedrep"
    ALIASES = {"fedrema.head_epochs": "fedrep.head_epochs"}
    head_epochs: int = 1

    def validate(self):
        check(self.head_epochs >= 1, "fedrep.head_epochs", self.head_epochs, "an integer >= 1")


class FedRepOpt(NamedTuple):
    """One client's optimizer states of FedRep's two phases."""

    head: Any
    body: Any


def phase_optimizer(opt: optax.GradientTransformation, params_shape, trained: str):
    """``opt`` on the ``trained`` part ("body" or "head"), zero updates (and no state) on the other."""
    labels = {part: jax.tree.map(lambda _: "train" if part == trained else "freeze", params_shape[part])
              for part in ("body", "head")}
    return optax.multi_transform({"train": opt, "freeze": optax.set_to_zero()}, labels)


def _plain(ctx: BuildContext, name: str, head_aggregator) -> Algorithm:
    opt = ctx.client_optimizer.transform
    train = make_local_train(ctx.task.loss, opt, ctx.schedule, ctx.max_n)
    return make_split_algorithm(name, ctx, train_body_and_head(train), opt.init, head_aggregator)


@register("fedper", "FedPer: body averaged (weighted mean) and broadcast, heads stay local")
def fedper(ctx: BuildContext, hp=None) -> Algorithm:
    return _plain(ctx, "fedper", keep())


@register("head_avg", "Head average: body averaged, every participant's head = mean of all "
                      "participants' heads (FedReMa without relevance)")
def head_avg(ctx: BuildContext, hp=None) -> Algorithm:
    return _plain(ctx, "head_avg", broadcast_mean())


@register("fedrep", "FedRep: head epochs (fedrep.head_epochs) then body epochs each round; "
                    "body averaged, heads local", FedRepConfig)
def fedrep(ctx: BuildContext, hp: FedRepConfig) -> Algorithm:
    shapes = require_body_head(ctx.model, "fedrep")
    base = ctx.client_optimizer.transform
    head_opt, body_opt = phase_optimizer(base, shapes, "head"), phase_optimizer(base, shapes, "body")
    head_schedule = Schedule.make(ctx.max_n, ctx.batch_size, hp.head_epochs, 0, trim=ctx.schedule.trim)
    train_head = make_local_train(ctx.task.loss, head_opt, head_schedule, ctx.max_n)
    train_body = make_local_train(ctx.task.loss, body_opt, ctx.schedule, ctx.max_n)

    def one(body, head, opt_state, rows, n, key):
        k_head, k_body = jax.random.split(key)
        params, o_head, _ = train_head({"body": body, "head": head}, opt_state.head, rows, n, k_head)
        params, o_body, stats = train_body(params, opt_state.body, rows, n, k_body)
        return params, FedRepOpt(o_head, o_body), stats

    def opt_init(params):
        return FedRepOpt(head_opt.init(params), body_opt.init(params))

    return make_split_algorithm("fedrep", ctx, one, opt_init, keep())
