"""The Algorithm protocol and the registry of algorithms by name.

An algorithm is a bundle of pure functions; the runner never knows which one it runs:

  init(key, data) -> state                              server + stacked [C, ...] client state
  round(state, data, key) -> (state, metrics)           jittable; metrics are scalars
  global_params(state) -> params                        None when there is no global model
  client_params(state, data, key) -> params [C, ...]    each client's own model; None when every
                                                        client uses the global model
  report(state) -> dict                                 optional algorithm-specific scalars for
                                                        summary.json's ``final`` (e.g. FedReMa's
                                                        CCP end round); None when there are none
Every scalar a round returns in ``metrics`` is logged to metrics.jsonl at evaluation points
(the value of the last round of the block, and ``<name>_mean`` over the block).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from fedjax_sim.errors import ConfigError

State = Any
Metrics = dict


class Algorithm(NamedTuple):
    name: str
    init: Callable[[jax.Array, Any], State]
    round: Callable[[State, Any, jax.Array], tuple[State, Metrics]]
    global_params: Callable[[State], Any] | None
    client_params: Callable[[State, Any, jax.Array], Any] | None
    info: dict
    report: Callable[[State], dict] | None = None


class BuildContext(NamedTuple):
    """What an algorithm builder gets: the resolved config, model, data and local-training spec."""

    config: Any  # fedjax_sim.config.Config
    model: Any  # fedjax_sim.models.Model
    data: Any  # fedjax_sim.data.FederatedData
    local: Any  # fedjax_sim.core.cohort.LocalSpec
    cohort: int  # K, clients per round


ALGORITHMS: dict[str, Callable[[BuildContext], Algorithm]] = {}
DESCRIPTIONS: dict[str, str] = {}


def register(name: str, description: str):
    """Decorator: registers ``builder(ctx: BuildContext) -> Algorithm`` under ``name``."""

    def wrap(builder):
        ALGORITHMS[name] = builder
        DESCRIPTIONS[name] = description
        return builder

    return wrap


def build(name: str, ctx: BuildContext) -> Algorithm:
    if name not in ALGORITHMS:
        raise ConfigError("algorithm", name, "one of " + ", ".join(sorted(ALGORITHMS)))
    return ALGORITHMS[name](ctx)
