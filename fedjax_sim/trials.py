"""Seeds and grid points as leading array axes: a set of runs as one compiled program.

A *trial* is one (grid point, seed). Trials whose configs agree on everything static (all but
the seed and the swept fields of `config.TRACEABLE`, whose values the program reads as arrays)
form a `Group` and, in ``vmap`` mode, run as one program:

* the data of every seed is built on the host, padded to the set's common lengths and stacked
  [S, ...] (`data.stack_trials`); local training is padding-invariant, so seed s trains exactly
  as it does alone;
* swept hyper-parameters are arrays [G] that reach the algorithm's build as tracers
  (`config.with_values` -> `runner.make_algorithm`: optax.inject_hyperparams, array-valued
  algorithm hyper-parameters);
* init, the scanned round blocks and evaluation are `vmap`ped over grid points (inner; the data
  is shared, not copied) and seeds (outer), so state leaves are [S, G, ...].

``sequential`` mode runs the same trials one at a time (one compile each): the reference that
tests compare against, and the fallback when stacked data would not fit (`choose_mode`, the one
place that decides). Each grid point gets its own run directory; its summary.json holds per-seed
finals (``per_seed``), their mean (``final``) and sample std (``final_std``).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_sim import checkpoints, jsonio, parallel
from fedjax_sim import config as config_lib
from fedjax_sim.core.clients import on_device, to_host_memory
from fedjax_sim.core.driver import RoundInput, compiler_options, count_compiles, make_block, round_inputs
from fedjax_sim.core.mapping import trial_chunk
from fedjax_sim.data.federated import padded
from fedjax_sim.errors import ConfigError, DivergedError, is_out_of_memory

MODES = ("auto", "vmap", "sequential")
# auto: stacked data above this many bytes runs sequentially (S copies of the data on device)
VMAP_DATA_BUDGET = 2 << 30


class Group(NamedTuple):
    """Grid points that share one program: ``configs`` [G] (concrete, validated), their run
    directories ``outs`` [G], the ``seeds`` [S] every point runs, and the ``swept`` fields that
    differ across the points (traced in vmap mode)."""

    configs: list
    outs: list
    seeds: list
    swept: tuple


class PreparedGroup(NamedTuple):
    """A group after host-side preparation (nothing compiled): ``mode`` (``vmap`` or
    ``sequential``) and why; ``preps`` [S][G] `runner.Prepared` (vmap mode: every seed's
    config prepared on the stacked data's common padding); ``data``: the stacked data (vmap)
    or None; ``state_memory``: where per-client state lives, and why."""

    group: Group
    mode: str
    reason: str
    preps: list
    data: Any
    state_memory: tuple = ("device", "default")  # (device | host, why): `choose_state_memory`


def static_key(cfg: config_lib.Config) -> str:
    """What must agree for trials to share a program: the config minus seed, seeds, out and the
    traceable fields."""
    flat = dict(config_lib._flatten(config_lib.to_dict(cfg)))
    for name in ("seed", "seeds", "out", *config_lib.TRACEABLE):
        flat.pop(name, None)
    return json.dumps(flat, sort_keys=True)


def swept_fields(configs: list) -> tuple:
    """The traceable fields whose values differ across ``configs`` (the rest stay numbers)."""
    return tuple(sorted(f for f in config_lib.TRACEABLE
                        if len({repr(config_lib.get_field(c, f)) for c in configs}) > 1))


def plan(configs: list, outs: list, seeds: list) -> list[Group]:
    """Groups grid points (in order of first appearance) by `static_key`."""
    keys: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        keys.setdefault(static_key(c), []).append(i)
    return [Group([configs[i] for i in idx], [outs[i] for i in idx], list(seeds),
                  swept_fields([configs[i] for i in idx])) for idx in keys.values()]


def run_seeds(cfg: config_lib.Config) -> list[int]:
    """The seeds a config runs: ``seeds`` when set, else ``[seed]``."""
    return list(cfg.seeds) if cfg.seeds else [cfg.seed]


def _data_bytes(datas) -> int:
    return sum(int(np.asarray(a).nbytes) for d in datas for a in jax.tree.leaves(d))


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def placement_of(prep) -> tuple[str, bool]:
    """(how the data lies over the run's devices, whether packed training rows are padded for it):
    ``device`` without a mesh, else `parallel.data_placement`. Only whole clients split over a
    mesh, so packed rows (``data.layout`` auto) are padded where it splits the data; packed rows
    the user asked for stay packed and are replicated."""
    mesh = prep.mapping.mesh
    if mesh is None:
        return "device", False
    placement = parallel.data_placement(prep.data.num_clients, mesh)
    if not prep.data.packed or placement != "split":
        return placement, False
    if prep.config.data.layout == "auto":
        return "split (packed rows padded to split by client)", True
    return "replicated (data.layout=packed)", False


def memory_estimate(prep, data, trials_in_program: int) -> dict:
    """Bytes a program holds for its whole run (host-side shapes only, nothing compiles): the
    device data (``data``, stacked when trials share it), the algorithm state of every trial
    (``client state``: its per-client store, `Algorithm.client_store`; ``state``: the rest), and
    every round's PRNG key. Activations of a round come on top and are not counted, so a run this
    refuses could never fit; one it admits may still be tight."""
    alg, cfg = prep.algorithm, prep.config
    data_shape = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype),
                              prep.data)
    state = jax.eval_shape(alg.init, jax.ShapeDtypeStruct((2,), jnp.uint32), data_shape)
    store = sum(_tree_bytes(getattr(state, f)) for f in alg.client_store)
    return {"data": _data_bytes([data]), "state": (_tree_bytes(state) - store) * trials_in_program,
            "client state": store * trials_in_program, "round keys": cfg.rounds * 8 * trials_in_program}


def host_memory() -> int | None:
    """The host's available RAM in bytes (None when psutil is missing)."""
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def available_memory() -> int | None:
    """Bytes free for a run on the default device: the accelerator's free memory, or the host's
    available RAM on CPU (None when it cannot be read)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
        return None
    return host_memory()


MEMORY_FIELDS = {"data": "data.num_clients", "state": "data.num_clients", "client state": "data.num_clients",
                 "round keys": "rounds"}


def choose_state_memory(requested: str, alg, parts: dict, platform: str | None = None,
                        device_free: int | None = None, host_free: int | None = None) -> tuple[str, str]:
    """The one place that decides where a run's per-client store (`Algorithm.client_store`)
    lives: (``device`` | ``host``, why). ``parts``: `memory_estimate`.

    ``device`` and ``host`` are honoured where the algorithm has a store (without one there is
    nothing to place: ``device``). ``auto`` is ``host`` only on an accelerator whose free memory
    the data and state together exceed while the rest fits it and the store fits the host's
    available RAM; on CPU host and device memory are the same RAM, so ``auto`` is ``device``.
    """
    if not alg.client_store:
        return "device", "no per-client store"
    if requested != "auto":
        return requested, "requested"
    platform = platform or jax.devices()[0].platform
    if platform == "cpu":
        return "device", "host and device memory are the same RAM on CPU"
    device_free = available_memory() if device_free is None else device_free
    host_free = host_memory() if host_free is None else host_free
    total, store = sum(parts.values()), parts.get("client state", 0)
    if device_free is None or total <= device_free:
        return "device", "fits device memory"
    if total - store <= device_free and host_free is not None and store <= host_free:
        gib = store / 2**30
        return "host", f"client state {gib:.1f} GiB does not fit device memory beside the data; it fits the host's"
    return "device", "does not fit host memory either"


def check_state_memory(parts: dict, memory: str) -> None:
    """`check_memory` of a run whose per-client store lives in ``memory``: a host store is
    counted against the host's RAM and the rest against the device (on CPU, one RAM: the sum)."""
    if memory != "host" or jax.devices()[0].platform == "cpu":
        return check_memory(parts)
    check_memory({k: v for k, v in parts.items() if k != "client state"})
    check_memory({"client state": parts.get("client state", 0)}, host_memory())


def check_memory(parts: dict, available: int | None = None) -> None:
    """ConfigError, before anything compiles, when the run's persistent arrays alone exceed the
    memory available; it names the largest part and the field that scales it."""
    available = available_memory() if available is None else available
    total = sum(parts.values())
    if available is None or total <= available:
        return
    big = max(parts, key=parts.get)
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    detail = ", ".join(f"{k} {gib(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
    raise ConfigError(MEMORY_FIELDS[big], "too large", f"a run that fits in the {gib(available)} available: "
                                                       f"it needs at least {gib(total)} ({detail}); shrink "
                                                       f"{MEMORY_FIELDS[big]}, or run fewer seeds at once "
                                                       "(--trials sequential)")


def choose_mode(requested: str, num_trials: int, datas) -> tuple[str, str]:
    """The one place that decides how a group's trials run: (mode, reason).

    ``vmap`` and ``sequential`` are honoured; ``auto`` is ``sequential`` for a single trial
    (nothing to stack) or when the stacked data of every seed exceeds `VMAP_DATA_BUDGET`, and
    ``vmap`` otherwise (one compile, every trial in each step's kernels).
    """
    if requested not in MODES:
        raise ConfigError("trials", requested, "one of " + ", ".join(MODES))
    if requested != "auto":
        return requested, "requested"
    if num_trials == 1:
        return "sequential", "one trial"
    size = _data_bytes(datas)
    if size > VMAP_DATA_BUDGET:
        return "sequential", f"stacked data {size / 2**30:.1f} GiB > {VMAP_DATA_BUDGET / 2**30:.0f} GiB"
    return "vmap", f"{num_trials} trials share one program"


def prepare_group(group: Group, datas: list | None = None, preps: list | None = None,
                  stats: list | None = None, progress: bool = False) -> PreparedGroup:
    """Builds every seed's data (`runner.build_data`, the data stage included) and validates every
    trial's config (host side, nothing compiles).

    ``datas`` [S] may be given (one `FederatedData` per seed) to skip building them, with their
    data-stage ``stats`` [S]; ``preps`` ([S][G] `runner.Prepared`) to skip preparing (a single
    run's own `Prepared`). ``progress``: the data stage may show a progress bar.
    """
    from fedjax_sim import runner
    from fedjax_sim.data import stack_trials, validate_data_config
    from fedjax_sim.data.federated import trial

    first = group.configs[0]
    config_lib.validate(first)
    stats = list(stats) if stats is not None else [None] * len(group.seeds)
    if datas is None:
        validate_data_config(first.data)
        built = [runner.build_data(first, s, progress) for s in group.seeds]
        datas, stats = [b[0] for b in built], [b[1] for b in built]
    mode, reason = choose_mode(first.trials, len(group.seeds) * len(group.configs), datas)

    def seeded(cfg, s):
        c = config_lib.copy_config(cfg)
        c.seed = s
        return c

    if mode == "vmap":
        stacked = stack_trials(datas)
        chunk = trial_chunk(len(group.seeds) * len(group.configs))
        for c in group.configs:  # the trial axis multiplies every client chunk: shrink the default
            if c.chunk_size == 0 and chunk:
                c.chunk_size = chunk
        preps = [[runner.prepare(seeded(c, s), trial(stacked, i))._replace(data_stats=stats[i])
                  for c in group.configs] for i, s in enumerate(group.seeds)]
        parts = memory_estimate(preps[0][0], stacked, len(group.seeds) * len(group.configs))
        memory = choose_state_memory(first.state_memory, preps[0][0].algorithm, parts)
        check_state_memory(parts, memory[0])
        return PreparedGroup(group, mode, reason, preps, stacked, memory)
    if preps is None:
        preps = [[runner.prepare(seeded(c, s), d)._replace(data_stats=st) for c in group.configs]
                 for s, d, st in zip(group.seeds, datas, stats)]
    parts = memory_estimate(preps[0][0], max(datas, key=lambda d: _data_bytes([d])), 1)
    memory = choose_state_memory(first.state_memory, preps[0][0].algorithm, parts)
    check_state_memory(parts, memory[0])
    return PreparedGroup(group, mode, reason, preps, None, memory)


# ---------------------------------------------------------------------------------------------
# execution


class _Axes(NamedTuple):
    """Which leading axes the program maps: seeds (outer) and grid points (inner)."""

    seeds: bool
    grid: bool


# a block's RoundInput over seeds: keys and event rows per seed; the round index and the active
# mask are the same for every trial and stay unmapped, so the block's `lax.cond` over inactive
# rounds stays a cond (mapped, it becomes a select over the state, which XLA refuses for a store
# in host memory, and which computes both branches)
ROUNDS_AXES = RoundInput(key=0, index=None, active=None, events=0)


def _wrap(fn, kinds: tuple, axes: _Axes):
    """vmaps ``fn`` over the grid axis (args of kind ``hp``/``trial``), then the seed axis
    (``seed``/``trial``; ``rounds``: a block's inputs, `ROUNDS_AXES`); ``shared`` args are not
    mapped."""
    if axes.grid:
        fn = jax.vmap(fn, in_axes=tuple(0 if k in ("hp", "trial") else None for k in kinds))
    if axes.seeds:
        seed_axis = {"seed": 0, "trial": 0, "rounds": ROUNDS_AXES}
        fn = jax.vmap(fn, in_axes=tuple(seed_axis.get(k) for k in kinds))
    return fn


class _Program(NamedTuple):
    init: Any
    block: Any
    evaluate: Any
    report: Any
    hp: dict
    privacy: Any = None


def _program(prep, swept: tuple, configs: list, axes: _Axes, mesh=None, state_sharding=None,
             host_store: tuple = ()) -> _Program:
    """The jitted functions of one unit: ``init(hp, key, data)``, ``block(hp, state, data,
    inputs)``, ``evaluate(hp, state, data, key)``, ``report(hp, state)`` mapped over ``axes``.
    ``host_store``: the state fields init puts in host memory (``state_sharding`` says so too);
    they stay there through the blocks; per-client evaluation and the membership attack read them
    a cohort-sized block of clients at a time (`runner.make_evaluator`, `runner.make_attack`);
    report copies them to device first (`on_device`; XLA drops the copies of leaves it does not
    read).

    With a client ``mesh`` (the sharded client mapping) the state is laid out as
    ``state_sharding`` says (per-client leaves split over the devices like the data, the rest
    replicated; default: all replicated) and every other output is replicated, so the host (every
    process of a multi-process run) reads metrics whole. Left to propagation, XLA may split a
    small output unevenly, which JAX cannot represent."""
    from fedjax_sim import runner

    hp = {f: jnp.asarray([config_lib.get_field(c, f) for c in configs], jnp.float32) for f in swept}

    def assemble(h):
        if not h:
            return prep.algorithm
        return runner.make_algorithm(prep, config_lib.with_values(prep.config, h))

    def init(h, key, data):
        return to_host_memory(assemble(h).init(key, data), host_store)

    def block(h, state, data, inputs):
        alg = assemble(h)
        example = jax.tree.map(lambda a: a[0], inputs)
        return make_block(alg.round, state, data, example)(state, data, inputs)

    def evaluate(h, state, data, key):
        alg = assemble(h)
        return runner.make_evaluator(prep, alg)(state, data, key)  # reads a host store by blocks

    def report(h, state):
        return assemble(h).report(on_device(state))

    def privacy(h, state, data, key):
        return runner.make_attack(prep, assemble(h))(state, data, key)  # reads a host store by blocks

    attack = prep.task.target_kind != "multi"
    whole = {} if mesh is None else {"out_shardings": parallel.replicated(mesh)}
    state_out = whole if state_sharding is None else {"out_shardings": state_sharding}
    metrics_sharding = parallel.replicated(mesh) if mesh is not None else parallel.one_device()
    block_out = whole if state_sharding is None else {"out_shardings": (state_sharding, metrics_sharding)}
    return _Program(
        jax.jit(_wrap(init, ("hp", "seed", "seed"), axes), **state_out),
        jax.jit(_wrap(block, ("hp", "trial", "seed", "rounds"), axes), donate_argnums=1,
                compiler_options=compiler_options(), **block_out),
        jax.jit(_wrap(evaluate, ("hp", "trial", "seed", "seed"), axes), **whole),
        None if prep.algorithm.report is None else jax.jit(_wrap(report, ("hp", "trial"), axes), **whole),
        hp, jax.jit(_wrap(privacy, ("hp", "trial", "seed", "seed"), axes), **whole) if attack else None)


def _seed_keys(seed: int):
    return jax.random.split(jax.random.PRNGKey(seed), 4)  # init, rounds, eval, events


class _Trial:
    """Host-side bookkeeping of one (seed, grid point)."""

    def __init__(self, seed: int, point: int):
        self.seed, self.point = seed, point
        self.status, self.message, self.done = "ok", "", 0
        self.stopped = False  # reached clock.time_budget: no more rounds are recorded
        self.history: list[dict] = []
        self.per_client: list = []
        self.report: dict = {}
        self.diverged_at: int | None = None  # the round whose loss or model was first non-finite


class UnitResult(NamedTuple):
    trials: list  # [_Trial]
    timing: dict
    interrupted: bool = False  # stopped after a block by `checkpoints.Interrupt`


def _lead(tree, axes: _Axes):
    """Normalizes mapped outputs to leading [S, G] axes."""
    def norm(a):
        a = np.asarray(a)
        if not axes.seeds:
            a = a[None]
        if not axes.grid:
            a = a[:, None]
        return a
    return jax.tree.map(norm, tree)


def run_unit(preps_by_seed: list, data, seeds: list, points: list, configs: list, swept: tuple,
             axes: _Axes, writers: list, progress: bool, multi_seed: bool = False,
             resume_dir: Path | None = None, resume: bool = False, state_memory: str = "device") -> UnitResult:
    """Runs the trials ``seeds`` x ``points`` as one program (``axes`` mapped) and streams each
    trial's evaluations to ``writers[point]``; returns the per-trial records and the timing.
    ``multi_seed``: the points run more seeds than this unit's (checkpoints are named per seed:
    ``checkpoint_seed<s>.npz``; a single-seed run keeps ``checkpoint.npz``).

    ``resume_dir`` (`checkpoints.directory`): where this unit checkpoints its round loop, every
    ``checkpoint_every`` rounds and when `checkpoints.Interrupt` is raised (then it stops after
    the current block: ``UnitResult.interrupted``); None = no checkpoints. ``resume``: continue
    from the checkpoint there (metrics.jsonl records after it are dropped); when the unit had
    finished, rebuild its trials without running; with no checkpoint (killed before its first),
    drop these seeds' records and run from the start. ``state_memory``: ``host`` keeps the
    algorithm's per-client store (`Algorithm.client_store`) in pinned host memory."""
    from fedjax_sim import runner

    prep = preps_by_seed[0][0]  # the program's template (its static structure is the group's)
    cfg, alg = prep.config, prep.algorithm
    S, G = len(seeds), len(points)
    trials = [[_Trial(s, p) for p in points] for s in seeds]
    g_key, p_key, per_client_key = runner.headline_keys(prep.task)
    block_len = min(cfg.eval_every, cfg.rounds)
    saved = None
    if resume and resume_dir is not None and checkpoints.exists(resume_dir):
        saved = json.loads((resume_dir / checkpoints.PROGRESS).read_text())
        _restore_trials(trials, saved, configs, seeds)
        if saved.get("complete"):  # this unit had finished before the interruption
            return UnitResult([t for row in trials for t in row], saved["timing"])
    elif resume:  # killed before its first checkpoint: it starts again, without what it wrote
        _trim_metrics(configs, seeds, -1)
    mesh = prep.mapping.mesh
    # on a mesh, every program input is a global array replicated over it (each process fills its
    # own devices with the same host values); on one device, JAX places inputs itself
    put = (lambda tree: parallel.put_replicated(tree, mesh)) if mesh is not None else (lambda tree: tree)
    with count_compiles() as all_compiles:
        if mesh is None:
            data = jax.device_put(data)
        else:  # split over the devices by client where they divide the population
            if placement_of(prep)[1]:
                data = padded(data, stacked=axes.seeds)
            data = parallel.put_clients(data, mesh, prep.data.num_clients, axis=1 if axes.seeds else 0)
        keys = jnp.stack([_seed_keys(s) for s in seeds])  # [S, 4, 2]
        if not axes.seeds:
            keys = keys[0]
        k_init, k_rounds, k_eval = (keys[..., i, :] for i in range(3))  # [3]: unused (was events)
        split_rounds = lambda k: jax.random.split(k, cfg.rounds)
        round_keys = jax.vmap(split_rounds)(k_rounds) if axes.seeds else split_rounds(k_rounds)
        events = None
        if alg.events is not None:  # host-side, per seed (each seed's own data and clock stream)
            rows = [alg.events(s, preps_by_seed[i][0].data, cfg.rounds) for i, s in enumerate(seeds)]
            stack = (lambda *a: jnp.asarray(np.stack(a))) if axes.seeds else (lambda a: jnp.asarray(a))
            events = jax.tree.map(stack, *rows) if axes.seeds else jax.tree.map(stack, rows[0])
        clocked = alg.info.get("clock") is not None  # rounds report round_time: log the clock
        budget = cfg.clock.time_budget if clocked else 0.0
        virtual_time = np.zeros((S, G))
        program = _program(prep, swept, configs, axes, mesh)
        state_sharding = None
        if mesh is not None or state_memory == "host":
            shapes = jax.eval_shape(program.init, put(program.hp), put(k_init), data)
            if mesh is not None:  # per-client state [.., C, ...] split over the devices like the data
                state_sharding = parallel.population_shardings(shapes, mesh, prep.data.num_clients,
                                                               axis=int(axes.seeds) + int(axes.grid))
            else:
                state_sharding = jax.tree.map(lambda _: parallel.one_device(), shapes)
            host_store = alg.client_store if state_memory == "host" else ()
            if host_store:
                state_sharding = parallel.host_store_shardings(state_sharding, host_store)
            program = _program(prep, swept, configs, axes, mesh, state_sharding, host_store)
        program = program._replace(hp=put(program.hp))
        state = program.init(program.hp, put(k_init), data)
        train_s, samples, block_compiles, first_block = 0.0, 0.0, 0, 0
        if saved is not None:  # continue from the checkpoint: same keys, restored state
            state, saved = checkpoints.load(resume_dir, jax.eval_shape(lambda: state))
            if state_sharding is not None:
                state = parallel.place(state, state_sharding)
            virtual_time = np.asarray(saved["virtual_time"], np.float64)
            train_s, samples, block_compiles = saved["train_seconds"], saved["samples"], saved["block_compiles"]
            first_block = saved["block"] + 1

        def inputs_for(lo, count):
            make = lambda k, e: round_inputs(k, lo, count, block_len, e)
            return jax.vmap(make, out_axes=ROUNDS_AXES)(round_keys, events) if axes.seeds else make(round_keys, events)

        def log_eval(rnd: int, logged):
            fold = lambda k: jax.random.fold_in(k, rnd)
            key = jax.vmap(fold)(k_eval) if axes.seeds else fold(k_eval)
            m = _lead(program.evaluate(program.hp, state, data, put(key)), axes)
            for i in range(S):
                for j in range(G):
                    t = trials[i][j]
                    if t.status != "ok" or t.stopped:
                        continue
                    rec = {k: (v[i, j].tolist() if v[i, j].ndim else float(v[i, j])) for k, v in m.items()}
                    t.per_client = [None if math.isnan(v) else v for v in rec.pop(per_client_key)]  # NaN: undefined
                    _null_unheld(rec, prep.data.tasks)
                    rec = {"round": rnd, "seed": t.seed, **{k: v[i][j] for k, v in logged.items()}, **rec}
                    bad = [k for k, v in rec.items() if isinstance(v, float) and not math.isfinite(v)]
                    if bad and rnd > 0:  # finite training, non-finite model: the server step blew up
                        t.status = "diverged"
                        t.message = (f"seed {t.seed} diverged at round {rnd}: the model's {bad[0]} is "
                                     f"{rec[bad[0]]} after the server update ({_hint(configs[j], 'server')})")
                        rec["status"] = "diverged"
                        t.diverged_at = rnd
                        writers[t.point](rec)
                        t.done = t.history[-1]["round"] if t.history else 0  # the last finite model
                        continue
                    t.history.append(rec)
                    writers[t.point](rec)

        if saved is None:
            log_eval(0, {"virtual_time": virtual_time.tolist()} if clocked else {})
        bar = runner._progress(cfg.rounds, progress, cfg.algorithm + (f" x{S * G}" if S * G > 1 else ""))
        if bar is not None and first_block:
            bar.update(min(first_block * block_len, cfg.rounds))
        interrupted = False
        every = cfg.checkpoint_every

        def save_progress(b: int, rnd: int, complete: bool = False):
            checkpoints.save(resume_dir, state, {
                "round": rnd, "block": b, "complete": complete, "virtual_time": virtual_time.tolist(),
                "train_seconds": train_s, "samples": samples, "block_compiles": block_compiles,
                "seeds": list(seeds), "trials": [[_trial_record(t) for t in row] for row in trials]})

        for b in range(first_block, math.ceil(cfg.rounds / block_len)):
            lo = b * block_len
            count = min(block_len, cfg.rounds - lo)
            inputs = put(inputs_for(lo, count))
            jax.block_until_ready(inputs)
            t0 = time.perf_counter()
            with count_compiles() as compiles:
                state, metrics = program.block(program.hp, state, data, inputs)
                metrics = _lead(metrics, axes)  # leaves [S, G, L]
            train_s += time.perf_counter() - t0 - compiles.seconds
            block_compiles += compiles.compiles
            if b > first_block and compiles.compiles:
                print(f"fedjax-sim: warning: the round block recompiled in block {b + 1} (a state or "
                      f"input changed shape or dtype); see timing.round_block_compiles", file=sys.stderr)
            losses = metrics["train_loss"][..., :count]
            live = np.array([[t.status == "ok" and not t.stopped for t in row] for row in trials])
            samples += float(np.sum(metrics["samples"][..., :count] * live[..., None]))
            for i in range(S):
                for j in range(G):
                    t = trials[i][j]
                    if t.status == "ok" and not t.stopped and not np.all(np.isfinite(losses[i, j])):
                        bad = lo + int(np.argmin(np.isfinite(losses[i, j]))) + 1
                        t.status = "diverged"
                        t.diverged_at = bad
                        t.message = (f"seed {t.seed} diverged at round {bad}: the training loss is "
                                     f"{losses[i, j, bad - lo - 1]} ({_hint(configs[j], 'local')})")
                        # the rounds of this block before the divergence finished: keep their
                        # training losses (the model after them was overwritten, so no evaluation)
                        for r in range(lo + 1, bad):
                            writers[t.point]({"round": r, "seed": t.seed, "train_loss": float(losses[i, j, r - lo - 1]),
                                              "evaluated": False})
                        t.done = bad - 1
                        writers[t.point]({"round": bad, "seed": t.seed, "train_loss": None, "status": "diverged"})
            if not any(t.status == "ok" and not t.stopped for row in trials for t in row):
                break
            for row in trials:
                for t in row:
                    if t.status == "ok" and not t.stopped:
                        t.done = lo + count
            logged = {}
            if clocked:  # float64 on the host: a long run's clock does not lose precision
                virtual_time += np.asarray(metrics.pop("round_time")[..., :count], np.float64).sum(-1)
                logged["virtual_time"] = virtual_time.tolist()
            for name, values in metrics.items():
                values = values[..., :count]
                if name != "samples" and values.ndim == 3:
                    logged[name] = values[..., -1].tolist()
                    logged[f"{name}_mean"] = values.mean(-1).tolist()
            log_eval(lo + count, logged)
            if budget > 0:  # a trial stops at its first evaluation at or past the time budget
                for i in range(S):
                    for j in range(G):
                        trials[i][j].stopped |= bool(virtual_time[i, j] >= budget)
                if all(t.stopped or t.status != "ok" for row in trials for t in row):
                    break
            if bar is not None:
                bar.update(count)
                ok = [t.history[-1] for row in trials for t in row if t.status == "ok"]
                if ok:
                    shown = np.mean([h.get(g_key, h.get(p_key)) for h in ok])
                    bar.set_postfix({prep.task.headline[:12]: f"{shown:.3f}"})
            for hook in BLOCK_HOOKS:  # tests: e.g. raise the interrupt after a given round
                hook(lo + count, state)
            done_all = lo + count >= cfg.rounds
            if resume_dir is not None and not done_all and (
                    checkpoints.Interrupt.requested() or (every and (lo + count) // every > lo // every)):
                save_progress(b, lo + count)
            if checkpoints.Interrupt.requested() and not done_all:
                interrupted = True
                break
        if bar is not None:
            bar.close()
        short = [(t.seed, virtual_time[i, j]) for i, row in enumerate(trials) for j, t in enumerate(row)
                 if budget > 0 and t.status == "ok" and not t.stopped]
        if short:
            print(f"fedjax-sim: warning: seed {short[0][0]} reached virtual time {short[0][1]:.4g} < "
                  f"clock.time_budget={budget:g} in {cfg.rounds} rounds"
                  + (f" (and {len(short) - 1} more trial(s))" if len(short) > 1 else "")
                  + "; raise --rounds to run until the budget", file=sys.stderr)
        if program.report is not None:
            rep = _lead(program.report(program.hp, state), axes)
            for i in range(S):
                for j in range(G):
                    trials[i][j].report = {k: (v[i, j].tolist() if v[i, j].ndim else float(v[i, j]))
                                           for k, v in rep.items()}
        if program.privacy is not None:
            fold = lambda k: jax.random.fold_in(k, cfg.rounds + 1)  # noqa: E731
            key = jax.vmap(fold)(k_eval) if axes.seeds else fold(k_eval)
            try:
                mia = _lead(program.privacy(program.hp, state, data, put(key)), axes)
            except Exception as e:  # noqa: BLE001 - only XLA's out-of-memory is survived
                if not is_out_of_memory(e):
                    raise
                # an extra measurement must not cost the trained run its summary and plots
                print("fedjax-sim: warning: the membership attack on the final models ran out of device "
                      "memory; the results are kept without its mia_* values", file=sys.stderr)
                mia = {}
            for i in range(S):
                for j in range(G):
                    if trials[i][j].status == "ok":
                        trials[i][j].report.update({k: float(v[i, j]) for k, v in mia.items()})
        for i in range(S):  # the data stage's per-seed statistics (FedGC: fidelity, diversity, ...)
            stats = getattr(preps_by_seed[i][0], "data_stats", None) or {}
            for j in range(G):
                trials[i][j].report.update({f"fedgc_{k}": v for k, v in stats.items()
                                            if isinstance(v, (int, float))})
        if cfg.checkpoint and not interrupted:
            st = _lead(parallel.to_host(state), axes)
            for i, s in enumerate(seeds):
                for j in range(G):
                    name = f"checkpoint_seed{s}.npz" if multi_seed else "checkpoint.npz"
                    runner.save_checkpoint(jax.tree.map(lambda a: a[i, j], st), Path(configs[j].out) / name)
    timing = {"compile_seconds": all_compiles.seconds, "train_seconds": train_s,
              "samples_per_second": samples / train_s if train_s > 0 else 0.0,
              "compiles": all_compiles.compiles, "round_block_compiles": block_compiles,
              "trials_in_program": S * G}
    if resume_dir is not None and not interrupted:
        # a finished unit: its trials, so a resume of the run (interrupted in a later unit) keeps them
        resume_dir.mkdir(parents=True, exist_ok=True)
        jsonio.write_json(resume_dir / checkpoints.PROGRESS, {
            "round": cfg.rounds, "complete": True, "timing": timing, "seeds": list(seeds),
            "trials": [[_trial_record(t) for t in row] for row in trials]})
        for old in resume_dir.glob("state-*"):
            checkpoints.remove(old)
    return UnitResult([t for row in trials for t in row], timing, interrupted)


def _tensorboard(boards: dict, j: int, out: Path, rec: dict) -> None:
    """A metrics line as TensorBoard scalars (tag ``<metric>/seed<s>``, step = round); lists
    (per-client values) and non-finite numbers are left to metrics.jsonl."""
    if j not in boards:
        from tensorboardX import SummaryWriter

        boards[j] = SummaryWriter(logdir=str(out / "tensorboard"))
    step, seed = int(rec["round"]), rec.get("seed", 0)
    for key, value in rec.items():
        if key in ("round", "seed") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            boards[j].add_scalar(f"{key}/seed{seed}", value, step)


BLOCK_HOOKS: list = []  # callables of (the round just finished, the state), after each block (tests)


def _trial_record(t: "_Trial") -> dict:
    """What a checkpoint keeps of a trial besides its metrics.jsonl records."""
    return {"seed": t.seed, "point": t.point, "status": t.status, "message": t.message, "done": t.done,
            "stopped": t.stopped, "per_client": t.per_client, "report": t.report, "diverged_at": t.diverged_at}


def _trim_metrics(configs: list, seeds: list, rnd: int) -> list[list[dict]]:
    """Drops from each point's metrics.jsonl the records of ``seeds`` after round ``rnd`` (a
    killed run may have written them after its last checkpoint; ``rnd`` -1: all of them, a unit
    killed before its first checkpoint); returns what each file keeps."""
    kept = []
    for cfg in configs:
        path = Path(cfg.out) / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        keep = [r for r in records if r.get("seed") not in seeds or r["round"] <= rnd]
        if len(keep) != len(records):
            jsonio.write_text(path, "".join(jsonio.dumps(r) + "\n" for r in keep))
        kept.append(keep)
    return kept


def _restore_trials(trials: list, saved: dict, configs: list, seeds: list) -> None:
    """Trials from a checkpoint's records, their history from metrics.jsonl (`_trim_metrics`:
    the records after the checkpoint's round are dropped)."""
    rnd = int(saved["round"])
    for j, keep in enumerate(_trim_metrics(configs, seeds, rnd)):
        for row, rec_row in zip(trials, saved["trials"]):
            t, rec = row[j], rec_row[j]
            t.status, t.message, t.done, t.stopped = rec["status"], rec["message"], rec["done"], rec["stopped"]
            t.per_client, t.report, t.diverged_at = rec["per_client"], rec["report"], rec.get("diverged_at")
            t.history = [r for r in keep if r.get("seed") == t.seed and "status" not in r
                         and r.get("evaluated", True) and r["round"] <= rnd]


# ---------------------------------------------------------------------------------------------
# results


def _null_unheld(rec: dict, spec) -> None:
    """Multi-task records: the [C, T] score tables get null where a client does not hold the
    task (a 0 would read as a perfect MSE)."""
    if spec is None:
        return
    held = spec.task_mask
    for key in ("task_scores", "reference_task_scores"):
        if key in rec:
            rec[key] = [[v if h else None for v, h in zip(row, hrow)] for row, hrow in zip(rec[key], held)]


def _best(history: list[dict], keys: tuple, higher: bool) -> dict:
    """Best value of each of ``keys`` over the evaluated rounds after round 0: the untrained model
    is not a result of training (with few classes it can score well by chance); round 0 counts
    only when it is the one evaluation."""
    trained = [h for h in history if h.get("round", 0) > 0] or history
    out = {}
    for k in keys:
        values = [h[k] for h in trained if k in h]
        if values:
            out[k] = float(max(values) if higher else min(values))
    return out


def _final(t: _Trial, prep) -> dict:
    from fedjax_sim import runner

    _, _, per_client_key = runner.headline_keys(prep.task)
    rec = t.history[-1]
    final = {k: v for k, v in rec.items() if k not in ("round", "seed")}
    # a client without test rows (or whose ratio is undefined) has no score: null, not a 0 that
    # reads as perfect MSE
    has_test = np.asarray(prep.data.n_test) > 0
    final[per_client_key] = [v if h else None for v, h in zip(t.per_client, has_test)]
    final["loss"] = rec.get("global_loss", rec.get("personalized_loss"))
    final.update(t.report)
    target = prep.config.target_accuracy
    if target > 0:
        final.update(time_to_target(t.history, target))
    return final


def time_to_target(history: list[dict], target: float) -> dict:
    """When the headline accuracy (global, else personalized) first reached ``target`` at an
    evaluation point: ``rounds_to_target`` and, on a clock, ``time_to_target`` (virtual time);
    null when it never did (its resolution is ``eval_every``)."""
    key = "global_accuracy" if any("global_accuracy" in h for h in history) else "personalized_accuracy"
    hit = next((h for h in history if h.get(key) is not None and h[key] >= target), None)
    out = {"rounds_to_target": None if hit is None else hit["round"]}
    if any("virtual_time" in h for h in history):
        out["time_to_target"] = None if hit is None else hit["virtual_time"]
    return out


def point_summary(prep, seeds_trials: list, timing: dict, resolved: dict, data_desc: dict) -> dict:
    """summary.json of one grid point from its trials (one per seed)."""
    from fedjax_sim import runner

    cfg, task = prep.config, prep.task
    heads = runner.headline_keys(task)[:2]
    per_seed = []
    for t in seeds_trials:
        entry = {"seed": t.seed, "status": t.status, "rounds_completed": t.done,
                 "final": _final(t, prep), "best": _best(t.history, heads, task.higher_is_better)}
        if t.status != "ok":
            entry["message"] = t.message
        per_seed.append(entry)
    ok = [e for e in per_seed if e["status"] == "ok"]
    scalars = sorted({k for e in ok for k, v in e["final"].items() if isinstance(v, (int, float)) or v is None})
    # a value that is null in some seed (a target never reached) has no mean: null
    complete = {k for k in scalars if all(isinstance(e["final"].get(k), (int, float)) for e in ok)}
    values = lambda k: [e["final"][k] for e in ok]  # noqa: E731
    if len(per_seed) == 1:
        final = dict(per_seed[0]["final"])
    else:
        final = {k: float(np.mean(values(k))) if k in complete else None for k in scalars}
    # a sample std needs two seeds: null (undefined) for one, not a 0 that reads as "no spread"
    final_std = {k: (float(np.std(values(k), ddof=1)) if len(ok) > 1 and k in complete else None)
                 for k in scalars}
    return {
        "algorithm": cfg.algorithm,
        "dataset": cfg.data.dataset,
        "task": {"name": task.name, "headline": task.headline, "higher_is_better": task.higher_is_better},
        "evaluated_on": "validation" if cfg.data.validation_fraction > 0 else "test",
        "config": resolved,
        "rounds_completed": min(e["rounds_completed"] for e in per_seed),
        "data": data_desc,
        "seeds": [e["seed"] for e in per_seed],
        "final": final,
        "final_std": final_std,
        "per_seed": per_seed,
        "timing": timing,
        "status": "ok" if len(ok) == len(per_seed) else "diverged",
    }


def resolved_config(prep, pg: PreparedGroup, cfg: config_lib.Config) -> dict:
    """config.json of a grid point: the config as run, plus what was resolved from it."""
    from fedjax_sim import runner
    from fedjax_sim.data import MULTITASK_SOURCES, resolve_partition

    resolved = config_lib.to_dict(cfg)
    partition = None if cfg.data.dataset in MULTITASK_SOURCES else resolve_partition(cfg.data)
    resolved["resolved"] = {"partition": partition, "local_steps": prep.schedule.num_steps,
                            "batch_size": prep.schedule.batch_size,
                            "cohort": cfg.cohort or prep.data.num_clients,
                            "model": prep.model.name, "task": prep.task.name, **prep.algorithm.info,
                            "backend": jax.default_backend(),
                            "devices": 1 if prep.mapping.mesh is None else prep.mapping.mesh.size,
                            "data_placement": placement_of(prep)[0],
                            "processes": jax.process_count(),
                            "local_padding": runner.padding_summary(prep),
                            "state_memory": {"memory": pg.state_memory[0], "reason": pg.state_memory[1]},
                            "trials": {"mode": pg.mode, "reason": pg.reason, "seeds": list(pg.group.seeds),
                                       "grid_points_in_program": len(pg.group.configs),
                                       "swept": list(pg.group.swept)}}
    return resolved


def run_group(pg: PreparedGroup, progress: bool = True, resume: bool = False,
              resume_command: str | None = None) -> list[dict]:
    """Runs a prepared group and writes one run directory per grid point; returns their
    summaries [G] (fewer when interrupted: a point that had not started has no summary). Raises
    nothing on divergence: each summary's ``status`` says.

    Every program checkpoints its round loop (`checkpoints`): a group of grid points trained as
    one program in its first point's directory, a program of one point and seed (``--trials
    sequential``) in that point's. On `checkpoints.Interrupt` it stops after the current block,
    and every point not trained to the end gets ``status: "interrupted"`` and, where a checkpoint
    was kept, ``resume_command`` (default: ``fedjax-sim run --resume <out>``) in its summary.
    ``resume``: continue each program from its checkpoint, rebuild those that had finished, run
    again those killed before their first (config.json files are kept)."""
    from fedjax_sim import runner
    from fedjax_sim.data import describe

    group = pg.group
    outs = [Path(o) for o in group.outs]
    if not resume:
        for out in outs:
            runner.check_out_dir(str(out))
    resolved = []
    for j, (cfg, out) in enumerate(zip(group.configs, outs)):
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # e.g. /proc: passes the access check, refuses the directory
            raise ConfigError("--out", str(out), f"a directory this user can create ({e.strerror})") from None
        c = config_lib.copy_config(cfg)
        c.out = str(out)
        group.configs[j] = c
        r = resolved_config(pg.preps[0][j], pg, c)
        resolved.append(r)
        if not resume or not (out / "config.json").is_file():
            jsonio.write_json(out / "config.json", r)

    boards: dict = {}

    def writer(j):
        path = outs[j] / "metrics.jsonl"

        def write(rec):
            with open(path, "a") as f:
                f.write(jsonio.dumps(rec) + "\n")
            if group.configs[j].tensorboard:
                _tensorboard(boards, j, outs[j], rec)
        return write

    writers = [writer(j) for j in range(len(outs))]
    points = list(range(len(group.configs)))
    results: list[list] = [[] for _ in points]
    timings: list[list] = [[] for _ in points]
    # not across processes, whose orbax checkpoint would need one directory that every process
    # writes (process 0's is the only one)
    checkpointed = jax.process_count() == 1
    interrupted = [False] * len(points)
    multi = len(group.seeds) > 1
    if pg.mode == "vmap":
        axes = _Axes(True, bool(group.swept))
        unit = run_unit(pg.preps, pg.data, group.seeds, points, group.configs, group.swept, axes,
                        writers, progress, multi_seed=multi,
                        resume_dir=checkpoints.directory(outs[0]) if checkpointed else None, resume=resume,
                        state_memory=pg.state_memory[0])
        for t in unit.trials:
            results[t.point].append(t)
        timings = [[unit.timing] for _ in points]
        interrupted = [unit.interrupted] * len(points)
    else:
        for i, s in enumerate(group.seeds):
            for j in points:
                prep = pg.preps[i][j]
                if any(interrupted) or checkpoints.Interrupt.requested():  # stopped: these did not start
                    continue
                where = checkpoints.directory(outs[j], s if multi else None) if checkpointed else None
                unit = run_unit([[prep]], prep.data, [s], [j], [group.configs[j]], (), _Axes(False, False),
                                writers, progress, multi_seed=multi, resume_dir=where, resume=resume,
                                state_memory=pg.state_memory[0])
                results[j] += unit.trials
                timings[j].append(unit.timing)
                interrupted[j] = interrupted[j] or unit.interrupted
    for board in boards.values():
        board.close()
    # a sequential group stopped in a later seed: its points hold fewer seeds than they run
    unfinished = [interrupted[j] or len(results[j]) < len(group.seeds) for j in points]
    resumable = any(checkpoints.in_run(out) for out in outs)
    summaries = []
    for j in points:
        if not results[j]:  # interrupted before it started (a sequential group): its config.json only
            continue
        timing = _sum_timing(timings[j])
        data_desc = describe(pg.preps[0][j].data)
        summary = point_summary(pg.preps[0][j], results[j], timing, resolved[j], data_desc)
        if unfinished[j]:
            summary["status"] = "interrupted"
            if resumable:
                summary["resume"] = resume_command or f"fedjax-sim run --resume {outs[j]}"
        jsonio.write_json(outs[j] / "summary.json", summary)
        runner.plot_history([h for t in results[j] for h in t.history], outs[j] / "accuracy.png",
                            group.configs[j].algorithm, pg.preps[0][j].task.headline,
                            diverged=[(t.seed, t.diverged_at) for t in results[j] if t.diverged_at])
        summaries.append(summary)
    if not any(unfinished):  # finished: the resume checkpoints are spent
        for out in outs:
            for d in [checkpoints.directory(out)] + [checkpoints.directory(out, s) for s in group.seeds]:
                checkpoints.remove(d)
    return summaries


def _sum_timing(timings: list[dict]) -> dict:
    """One timing record from the units that ran a point's trials (sequential: one per seed)."""
    if len(timings) == 1:
        return dict(timings[0])
    out = {k: float(sum(t[k] for t in timings)) for k in ("compile_seconds", "train_seconds")}
    out["compiles"] = int(sum(t["compiles"] for t in timings))
    out["round_block_compiles"] = int(sum(t["round_block_compiles"] for t in timings))
    samples = sum(t["samples_per_second"] * t["train_seconds"] for t in timings)
    out["samples_per_second"] = samples / out["train_seconds"] if out["train_seconds"] > 0 else 0.0
    out["trials_in_program"] = 1
    return out


def diverged_message(summaries: list[dict]) -> str | None:
    """One line naming the diverged trials (None when every trial finished)."""
    bad = [(s["config"]["out"], e) for s in summaries for e in s["per_seed"] if e["status"] != "ok"]
    if not bad:
        return None
    out, first = bad[0]
    more = f" (and {len(bad) - 1} more trial(s))" if len(bad) > 1 else ""
    return (f"training diverged: {first['message']}{more}; stopped those trials, results up to "
            f"round {first['rounds_completed']} are in {out}")


def _hint(cfg, where: str) -> str:
    """What to try when a trial diverges: the learning rate of the step that produced the first
    non-finite value (``local``: the training loss; ``server``: the model after aggregation)."""
    server = f"server.lr, now {cfg.server.lr:g}"
    local = f"local.lr, now {cfg.local.lr:g}"
    if where == "server":
        return f"try a smaller {server}, or {local}"
    # the round's training loss: a non-finite model from the previous server step shows here
    # first, unless the server step is plain averaging (sgd at lr 1)
    plain = cfg.server.optimizer == "sgd" and cfg.server.lr == 1.0
    return f"try a smaller {local}" + ("" if plain else f", or {server}")


def raise_if_diverged(summaries: list[dict]) -> None:
    message = diverged_message(summaries)
    if message:
        raise DivergedError(message)
