"""The Algorithm protocol, what builders receive, and the registry of algorithms by name.

An algorithm is a bundle of pure functions; the runner never knows which one it runs:

  init(key, data) -> state                    typed (NamedTuple); per-client leaves [C, ...]
  round(state, data, RoundInput) -> (state, metrics)   jittable; metrics are scalars
  global_params(state) -> params              None when there is no global model
  client_params(state, data, key) -> params [C, ...]   each client's own model; None when every
                                              client uses the global model
  report(state) -> dict                       optional extras for summary.json's ``final``
  events(key, num_rounds) -> pytree [R, ...]  optional precomputed event schedule; the driver
                                              hands round r its rows as ``RoundInput.events``
  task                                        optional `tasks.Task` whose metrics read this
                                              algorithm's params (mixture models); None = the
                                              run's task over the run's model

Builders take objects (`BuildContext`: task, model, client and server optimizers, schedule,
mapping, cohort size) and the algorithm's own hyper-parameters (its registered config section),
never the run config. Every scalar a round returns in ``metrics`` is logged to metrics.jsonl at
evaluation points (the value of the last round of the block, and ``<name>_mean`` over the block).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

from fedjax_sim import config as config_lib
from fedjax_sim.errors import ConfigError

State = Any
Metrics = dict


class Algorithm(NamedTuple):
    name: str
    init: Callable[[jax.Array, Any], State]
    round: Callable[[State, Any, Any], tuple[State, Metrics]]
    global_params: Callable[[State], Any] | None
    client_params: Callable[[State, Any, jax.Array], Any] | None
    info: dict
    report: Callable[[State], dict] | None = None
    events: Callable[[jax.Array, int], Any] | None = None
    task: Any = None


class BuildContext(NamedTuple):
    """What every builder gets (objects, resolved from the config by the runner).

    task: `tasks.Task`; model: `models.Model`; client_optimizer / server_optimizer:
    `core.optim.OptimizerSpec`; schedule: `core.local.Schedule` of one round's local training;
    max_n: padded client length N_max; batch_size: the requested local batch (for builders that
    make other schedules); mapping: `core.mapping.ClientMapping` (may be ``auto``); formulation:
    the requested local formulation (``auto`` | ``materialized`` | ``factored``); weighting:
    ``samples`` | ``uniform``; cohort: K clients per round; num_clients: C.
    """

    task: Any
    model: Any
    client_optimizer: Any
    server_optimizer: Any
    schedule: Any
    max_n: int
    batch_size: int
    mapping: Any
    formulation: str
    weighting: str
    cohort: int
    num_clients: int


ALGORITHMS: dict[str, Callable[..., Algorithm]] = {}
DESCRIPTIONS: dict[str, str] = {}
SECTION_OF: dict[str, str] = {}


def register(name: str, description: str, section: type | None = None):
    """Decorator: registers ``builder(ctx: BuildContext, hp) -> Algorithm`` under ``name``.

    ``section``: the algorithm's config dataclass, with class attributes ``NAME`` (the section
    name, e.g. ``fedrema``; several algorithms may share one) and optionally ``ALIASES`` (old
    dotted names -> new ones). ``hp`` is that section's value in the run config (None without).
    """

    def wrap(builder):
        ALGORITHMS[name] = builder
        DESCRIPTIONS[name] = description
        if section is not None:
            config_lib.register_section(section.NAME, section, getattr(section, "ALIASES", None))
            SECTION_OF[name] = section.NAME
        return builder

    return wrap


def check_name(name: str) -> None:
    if name not in ALGORITHMS:
        raise ConfigError("algorithm", name, "one of " + ", ".join(sorted(ALGORITHMS)))


def build(name: str, ctx: BuildContext, cfg) -> Algorithm:
    """Builds algorithm ``name``; only its own section of ``cfg`` reaches the builder."""
    check_name(name)
    section = SECTION_OF.get(name)
    hp = getattr(cfg, section) if section else None
    # swept values arrive as tracers (fedjax_sim.trials) and were range-checked as numbers before
    if hp is not None and hasattr(hp, "validate") and not config_lib.traced(hp):
        hp.validate()
    return ALGORITHMS[name](ctx, hp)
