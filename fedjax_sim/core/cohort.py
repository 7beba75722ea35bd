"""Training a cohort that starts from one shared model, returning stacked client deltas.

This is where the local-step formulation is chosen (``materialized``: per-client weights, any
optax optimizer, `core.local`; ``factored``: low-rank deltas for dense nets under SGD with or
without momentum, `core.factored`) and, with it, how clients are mapped: the choice belongs to
the code that uses it, so the runner never knows which ran. FedAvg-family algorithms call this.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_sim.core.factored import make_factored_train
from fedjax_sim.core.local import Schedule, make_local_train, size_order
from fedjax_sim.core.mapping import ClientMapping, factored_mapping
from fedjax_sim.core.optim import OptimizerSpec, proximal, static_zero
from fedjax_sim.errors import ConfigError

FORMULATIONS = ("auto", "materialized", "factored")


class DenseLayout(NamedTuple):
    """A dense chain's layer accessors (a model's, passed as functions so core imports no model):
    ``layers_of(params) -> [{"kernel" [in, out], "bias" [out]}, ...]`` and
    ``with_layers(params, layers) -> params``."""

    layers_of: Callable
    with_layers: Callable


def factored_eligible(task, layout: DenseLayout | None, optimizer: OptimizerSpec) -> bool:
    """Whether `core.factored` computes exactly what `core.local` would."""
    return layout is not None and task.output_loss is not None and optimizer.linear_sgd


def choose_formulation(requested: str, task, layout: DenseLayout | None, optimizer: OptimizerSpec,
                       schedule: Schedule, params_example) -> str:
    """``auto``: factored when eligible and the delta rank S*B is below the first layer's input
    width (there the factored products are cheaper than per-client kernels).
    ConfigError for ``factored`` when it is not eligible."""
    eligible = factored_eligible(task, layout, optimizer)
    if requested == "factored" and not eligible:
        raise ConfigError("local.formulation", "factored",
                          "auto or materialized unless the model is an mlp trained with sgd or momentum "
                          "(no weight decay or clipping) on a single-output task")
    if requested != "auto":
        return requested
    if not eligible:
        return "materialized"
    rank = schedule.num_steps * schedule.batch_size
    fan_in = layout.layers_of(params_example)[0]["kernel"].shape[0]
    return "factored" if rank < fan_in else "materialized"


def make_cohort_train(task, layout: DenseLayout | None, optimizer: OptimizerSpec,
                      schedule: Schedule, max_n: int, mapping: ClientMapping, params_example,
                      formulation: str = "auto", prox_mu: float = 0.0,
                      shared_base: bool = True) -> tuple[Callable, dict]:
    """Returns (train, info) with ``train(params, data, n [K], keys [K]) -> (deltas, stats)``:
    every client starts from the shared ``params`` and trains on its rows of ``data`` (leaves
    [K, N_max, ...]); ``deltas`` are stacked [K, ...] (kernels may be `LowRankDelta`) and ``stats``
    a [K] `LocalStats`. With ``prox_mu > 0`` the FedProx term mu/2 ||w - params||^2 is added to
    every local loss. ``info``: the formulation and client mapping that were chosen.

    ``shared_base=False``: ``params`` are [K, ...], one starting model per client (asynchronous
    replay: each arrival trained from its own stale version), always materialized, and each
    client's deltas and proximal anchor are relative to its own start.
    """
    if not shared_base and formulation == "factored":
        raise ConfigError("local.formulation", "factored",
                          "auto or materialized for clients that start from different models")
    form = ("materialized" if not shared_base else
            choose_formulation(formulation, task, layout, optimizer, schedule, params_example))
    if form == "factored":
        # measured: the whole cohort as one vmapped block on accelerators (the shared GEMMs see
        # every client), blocks of 10 on CPU (`factored_mapping`)
        mapping = mapping.resolved(prefer=factored_mapping())
        one = make_factored_train(task.output_loss, layout.layers_of, layout.with_layers, schedule,
                                  max_n, optimizer.learning_rate, prox_mu, optimizer.momentum,
                                  optimizer.nesterov)
    else:
        mapping = mapping.resolved()
        transform = optimizer.transform
        if not static_zero(prox_mu):
            transform = optax.chain(proximal(prox_mu), transform)
        local_train = make_local_train(task.loss, transform, schedule, max_n)

        def one(params, data, n, key):
            new, _, stats = local_train(params, transform.init(params), data, n, key, {"anchor": params})
            return jax.tree.map(jnp.subtract, new, params), stats

    info = {"formulation": form, "client_mapping": mapping.strategy, "chunk_size": mapping.chunk_size}
    sort_by = None if form == "factored" else size_order(schedule, 2)
    return mapping.map(one, (None if shared_base else 0, 0, 0, 0), sort_by), info
