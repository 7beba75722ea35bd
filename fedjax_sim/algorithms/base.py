"""The Algorithm protocol, what builders receive, and the registry of algorithms by name.

An algorithm is a bundle of pure functions; the runner never knows which one it runs:

  init(key, data) -> state                    typed (NamedTuple); per-client leaves [C, ...]
  round(state, data, RoundInput) -> (state, metrics)   jittable; metrics are scalars
  global_params(state) -> params              None when there is no global model
  client_params(state, data, key) -> params [C, ...]   each client's own model; None when every
                                              client uses the global model
  report(state) -> dict                       optional extras for summary.json's ``final``
  events(seed, data, num_rounds) -> pytree [R, ...]  optional precomputed event schedule (host
                                              side, numpy, from the run seed and that seed's
                                              data); the driver hands round r its rows as
                                              ``RoundInput.events``. Asynchronous methods set
                                              it; `with_clock` sets it for synchronous ones
  task                                        optional `tasks.Task` whose metrics read this
                                              algorithm's params (mixture models); None = the
                                              run's task over the run's model
  reference_params(state, data, key) -> [C, ...]  optional: each client's model of a reference
                                              trained alongside (`with_reference`: multi-task
                                              runs carry Local for Delta_m)
  cohort_key(round_key) -> key                optional: the key a round passes to
                                              `core.sampling.select_cohort` (None: the round key)
  client_store                                names of the state's fields whose leaves are
                                              per-client [C, ...] and which a round reads and
                                              writes only through `core.clients.update_cohort`
                                              (whole only through `core.clients.on_device`): the
                                              engine may keep them in host memory
                                              (``state_memory``); () = none

Multi-task data (``task.target_kind == "multi"``) has its own registry (`register` with
``multitask=True``): the same name may mean a single-task algorithm and its multi-task form
(``fedavg``, ``fedprox``, ``local``), and `build` picks the one the data needs.

Builders take objects (`BuildContext`: task, model, client and server optimizers, schedule,
mapping, cohort size) and the algorithm's own hyper-parameters (its registered config section),
never the run config. Every scalar a round returns in ``metrics`` is logged to metrics.jsonl at
evaluation points (the value of the last round of the block, and ``<name>_mean`` over the block).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

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
    events: Callable[[int, Any, int], Any] | None = None
    task: Any = None
    reference_params: Callable[[State, Any, jax.Array], Any] | None = None
    cohort_key: Callable[[jax.Array], jax.Array] | None = None
    client_store: tuple = ()


class BuildContext(NamedTuple):
    """What every builder gets (objects, resolved from the config by the runner).

    task: `tasks.Task`; model: `models.Model`; client_optimizer / server_optimizer:
    `core.optim.OptimizerSpec`; schedule: `core.local.Schedule` of one round's local training;
    max_n: padded client length N_max; batch_size: the requested local batch (for builders that
    make other schedules); mapping: `core.mapping.ClientMapping` (may be ``auto``); formulation:
    the requested local formulation (``auto`` | ``materialized`` | ``factored``); weighting:
    ``samples`` | ``uniform``; cohort: K clients per round; num_clients: C; tasks: the data's
    `types.MultiTaskSpec` or None; client_epochs: [C] local epochs per client or None; clock:
    the run's `config.ClockConfig` (asynchronous methods); rounds: R.
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
    tasks: Any = None
    client_epochs: Any = None
    clock: Any = None
    rounds: int = 0


ALGORITHMS: dict[str, Callable[..., Algorithm]] = {}
DESCRIPTIONS: dict[str, str] = {}
SECTION_OF: dict[str, str] = {}
MULTITASK_ALGORITHMS: dict[str, Callable[..., Algorithm]] = {}
MULTITASK_DESCRIPTIONS: dict[str, str] = {}
MULTITASK_SECTION_OF: dict[str, str] = {}


def register(name: str, description: str, section: type | None = None, multitask: bool = False):
    """Decorator: registers ``builder(ctx: BuildContext, hp) -> Algorithm`` under ``name``.

    ``section``: the algorithm's config dataclass, with class attributes ``NAME`` (the section
    name, e.g. ``fedrema``; several algorithms may share one) and optionally ``ALIASES`` (old
    dotted names -> new ones). ``hp`` is that section's value in the run config (None without).
    ``multitask``: the builder is the name's form for multi-task data (its section, if None,
    is the single-task form's: e.g. multi-task ``fedprox`` reads ``fedprox.mu``).
    """

    def wrap(builder):
        registry, descriptions, sections = ((MULTITASK_ALGORITHMS, MULTITASK_DESCRIPTIONS, MULTITASK_SECTION_OF)
                                            if multitask else (ALGORITHMS, DESCRIPTIONS, SECTION_OF))
        registry[name] = builder
        descriptions[name] = description
        if section is not None:
            config_lib.register_section(section.NAME, section, getattr(section, "ALIASES", None))
            sections[name] = section.NAME
        return builder

    return wrap


def check_name(name: str) -> None:
    if name not in ALGORITHMS and name not in MULTITASK_ALGORITHMS:
        raise ConfigError("algorithm", name, "one of " + ", ".join(sorted({*ALGORITHMS, *MULTITASK_ALGORITHMS})))


def section_of(name: str, multitask: bool = False) -> str | None:
    """The config section algorithm ``name`` reads (its multi-task form's, when ``multitask``)."""
    if multitask and name in MULTITASK_SECTION_OF:
        return MULTITASK_SECTION_OF[name]
    return SECTION_OF.get(name)


def check_data_kind(name: str, multitask: bool, dataset: str) -> None:
    """ConfigError unless ``name`` has a form for the data's kind (multi-task or not)."""
    check_name(name)
    if multitask and name not in MULTITASK_ALGORITHMS:
        raise ConfigError("algorithm", name, f"one of {', '.join(sorted(MULTITASK_ALGORITHMS))} for the "
                                             f"multi-task data of data.dataset={dataset}")
    if not multitask and name not in ALGORITHMS:
        raise ConfigError("algorithm", name, f"one of {', '.join(sorted(ALGORITHMS))} for data.dataset="
                                             f"{dataset} ({name} needs multi-task data: --dataset hcfmtl_lite)")


def build(name: str, ctx: BuildContext, cfg) -> Algorithm:
    """Builds algorithm ``name`` in the form the task needs (multi-task or not); only its own
    section of ``cfg`` reaches the builder."""
    multitask = ctx.task.target_kind == "multi"
    check_data_kind(name, multitask, getattr(getattr(cfg, "data", None), "dataset", "?"))
    section = section_of(name, multitask)
    hp = getattr(cfg, section) if section else None
    # swept values arrive as tracers (fedjax_sim.trials) and were range-checked as numbers before
    for part in [hp, *(getattr(cfg, u) for u in getattr(hp, "USES", ()))]:
        if part is not None and hasattr(part, "validate") and not config_lib.traced(part):
            part.validate()
    if getattr(hp, "USES", ()):  # a section that builds on others' (fedadt on fedbuff / fedasync)
        hp = {section: hp, **{u: getattr(cfg, u) for u in hp.USES}}
    return (MULTITASK_ALGORITHMS if multitask else ALGORITHMS)[name](ctx, hp)


class Referenced(NamedTuple):
    """The state of an algorithm trained alongside a reference (`with_reference`)."""

    main: State
    reference: State


def with_reference(alg: Algorithm, ref: Algorithm) -> Algorithm:
    """``alg`` with ``ref`` trained alongside it on the same keys (``ref``'s numbers equal its own
    run with the same seed): init/round run both, everything else reads ``alg``'s part, and
    ``reference_params`` gives ``ref``'s client models (a multi-task run's Delta_m reference).
    The reference's round metrics are dropped (the evaluation compares the two)."""

    def init(key, data):
        return Referenced(alg.init(key, data), ref.init(key, data))

    def round_fn(state, data, rin):
        main, metrics = alg.round(state.main, data, rin)
        reference, _ = ref.round(state.reference, data, rin)
        return Referenced(main, reference), metrics

    wrap = lambda fn: None if fn is None else (lambda state, *a: fn(state.main, *a))  # noqa: E731
    return alg._replace(init=init, round=round_fn, global_params=wrap(alg.global_params),
                        client_params=wrap(alg.client_params), report=wrap(alg.report),
                        reference_params=lambda state, data, key: ref.client_params(state.reference, data, key),
                        info={**alg.info, "reference": ref.name}, client_store=())


def with_clock(alg: Algorithm, durations: Callable[[int, Any, int], Any], cohort: int,
               server_time: float = 0.0) -> Algorithm:
    """A synchronous ``alg`` on the virtual clock: each round also reports ``round_time``, the
    longest job of its cohort plus ``server_time``. ``durations(seed, data, R)`` gives [R, C]
    per-client job times (`asynchrony.sync_durations`), handed to the rounds as events. The
    cohort is the one `core.sampling.select_cohort` draws from the round key (or from
    ``alg.cohort_key(round key)``), as every synchronous algorithm samples."""
    from fedjax_sim.core.sampling import cohort_ids

    def round_fn(state, data, rin):
        state, metrics = alg.round(state, data, rin._replace(events=None))
        key = rin.key if alg.cohort_key is None else alg.cohort_key(rin.key)
        idx = cohort_ids(key, data.num_clients, cohort)
        return state, {**metrics, "round_time": jnp.max(rin.events[idx]) + server_time}

    return alg._replace(round=round_fn, events=durations, info={**alg.info, "clock": "synchronous"})
