"""Training a cohort that starts from one shared model, returning stacked client deltas.

This is where the local-step formulation is chosen (``materialized``: per-client weights,
any optimizer, `core.local`; ``factored``: low-rank deltas for dense nets under plain SGD,
`core.factored`) and where the client mapping is applied. FedAvg-family algorithms call this
and never know which ran.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_sim.core.factored import make_factored_train
from fedjax_sim.core.local import GradCorrection, Schedule, make_local_train, make_optimizer
from fedjax_sim.core.mapping import map_clients
from fedjax_sim.models import Model, dense_chain_layers

FORMULATIONS = ("auto", "materialized", "factored")


class LocalSpec(NamedTuple):
    """Everything static about local training (from ``Config.local`` and the data)."""

    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    clip_norm: float
    schedule: Schedule
    max_n: int
    strategy: str
    chunk_size: int
    formulation: str


def factored_eligible(model: Model, spec: LocalSpec) -> bool:
    """Whether `core.factored` computes exactly what `core.local` would."""
    return (model.dense_chain and spec.optimizer == "sgd" and spec.weight_decay == 0
            and spec.clip_norm == 0)


def choose_formulation(model: Model, spec: LocalSpec, params) -> str:
    """``auto``: factored when eligible and the delta rank S*B is below the first layer's input
    width (there the factored products are cheaper than per-client kernels)."""
    if spec.formulation != "auto":
        return spec.formulation
    if not factored_eligible(model, spec):
        return "materialized"
    rank = spec.schedule.num_steps * spec.schedule.batch_size
    fan_in = dense_chain_layers(params)[0]["kernel"].shape[0]
    return "factored" if rank < fan_in else "materialized"


def make_cohort_train(model: Model, spec: LocalSpec, params_example,
                      prox_mu: float = 0.0) -> tuple[Callable, str]:
    """Returns (train, formulation) with
    ``train(params, x [K, N_max, ...], y [K, N_max], n [K], keys [K, 2]) -> (deltas, stats)``:
    every client starts from the shared ``params`` and trains; ``deltas`` are stacked [K, ...]
    (kernels may be `LowRankDelta`); ``stats`` is a [K] `LocalStats`.
    With ``prox_mu > 0`` the FedProx term mu/2 ||w - params||^2 is added to every local loss.
    """
    formulation = choose_formulation(model, spec, params_example)
    if formulation == "factored":
        one = make_factored_train(spec.schedule, spec.max_n, spec.lr, prox_mu)
        mapped = map_clients(one, (None, 0, 0, 0, 0), spec.strategy, spec.chunk_size)
        return mapped, formulation

    opt = make_optimizer(spec.optimizer, spec.lr, spec.momentum, spec.weight_decay)
    correction = proximal_correction(prox_mu) if prox_mu > 0 else None
    local_train = make_local_train(model.apply, opt, spec.schedule, spec.max_n, correction,
                                   spec.clip_norm)

    def one(params, x, y, n, key):
        new, _, stats = local_train(params, opt.init(params), x, y, n, key, params)
        return jax.tree.map(jnp.subtract, new, params), stats

    return map_clients(one, (None, 0, 0, 0, 0), spec.strategy, spec.chunk_size), formulation


def proximal_correction(mu: float) -> GradCorrection:
    """FedProx: grad of mu/2 ||w - w_start||^2 added to the loss gradient (aux = w_start)."""

    def correct(params, grads, start):
        return jax.tree.map(lambda g, w, w0: g + mu * (w - w0), grads, params, start)

    return correct
