"""The `fedjax-sim` command: run, list, bench.

Bad input exits with code 2 and one line naming the field, the value and what is allowed, before
anything compiles; a diverged run exits with code 3 after keeping what it wrote.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from fedjax_sim import checkpoints, jsonio
from fedjax_sim.errors import ConfigError, DataUnavailableError, DivergedError, is_out_of_memory

# The default experiment: FedAvg vs Local on the embedded digits, Dirichlet(0.3) over 20 clients.
DEFAULT_ALGORITHMS = "fedavg,local"

RUN_FLAGS = {  # flag -> config field
    "algorithm": "algorithm", "dataset": "data.dataset", "partition": "data.partition",
    "clients": "data.num_clients", "rounds": "rounds", "seed": "seed", "cohort": "cohort",
    "trials": "trials", "generative": "generative", "checkpoint_every": "checkpoint_every",
    "tensorboard": "tensorboard",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same shape and exit code as ours
        sub = " ".join(self.prog.split()[1:])  # "" for the top-level parser
        print(f"fedjax-sim: error: {message} (see fedjax-sim {sub + ' ' if sub else ''}--help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fedjax-sim", description="JAX-vectorized federated learning simulator")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="run an experiment (default: FedAvg vs Local on digits)")
    r.add_argument("--algorithm", default=None,
                   help=f"registered algorithm, or several separated by commas (default {DEFAULT_ALGORITHMS})")
    r.add_argument("--baselines", help="algorithms of the comparison to pair every other one with in "
                                       "results.md (default: all of them)")
    _common_run_args(r)
    r.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its checkpoint (its "
                                                   "config.json decides everything; no other option)")
    r.add_argument("--tensorboard", action="store_const", const=True, default=None,
                   help="also write TensorBoard event files (<run>/tensorboard; needs tensorboardX)")
    d = r.add_argument_group("multi-process (docs/scale.md)")
    d.add_argument("--distributed", action="store_true",
                   help="join JAX's distributed runtime: every process runs this same command, the cohort "
                        "is sharded over all processes' devices, and process 0 writes the run directory")
    d.add_argument("--coordinator-address", metavar="HOST:PORT",
                   help="process 0's address (default: $JAX_COORDINATOR_ADDRESS, or SLURM / Open MPI's)")
    d.add_argument("--num-processes", metavar="N", help="processes in the run (default: $JAX_NUM_PROCESSES, "
                                                        "or SLURM / Open MPI's)")
    d.add_argument("--process-id", metavar="I", help="this process's index in [0, N) (default: $JAX_PROCESS_ID, "
                                                     "or SLURM / Open MPI's)")
    w = sub.add_parser("sweep", allow_abbrev=False,  # --conf would escape _stored_argv's config copy
                       help="a grid of hyper-parameters over seeds, selected on a validation split carved "
                            "from each client's training rows (test rows unseen)")
    w.add_argument("--algorithm", default=None, help="algorithm(s) to tune, separated by commas "
                                                     "(each gets the whole grid; default fedavg)")
    w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a config field and its values, repeatable (the grid is their product), "
                        "e.g. --grid local.lr=0.01,0.03,0.1")
    w.add_argument("--validation-fraction", type=float, default=None,
                   help="share of each client's training rows held out for selection (default "
                        "data.validation_fraction, else 0.2)")
    w.add_argument("--out", help="sweep directory (default runs/<time>-sweep-<algorithms>-<dataset>)")
    w.add_argument("--select", default=None, help="metric to select on (default personalized_<headline>, "
                                                  "else global_<headline>), final round, mean over seeds")
    w.add_argument("--resume", metavar="DIR", help="continue an interrupted sweep: its command line is read "
                                                   "back; finished grid points are kept, the others continue "
                                                   "from their checkpoint or run again (no other option but "
                                                   "--no-progress)")
    _common_run_args(w, out=False)
    ls = sub.add_parser("list", help="registered algorithms, datasets, partitions, presets and config fields")
    ls.add_argument("--fields", action="store_true", help="every config field with its type, default and "
                                                           "description (allowed values where named)")
    ls.add_argument("--markdown", action="store_true", help="with --fields: as the markdown of docs/config.md")
    b = sub.add_parser("bench", help="FedAvg (or --algorithm) throughput vs centralized training, one JSON line")
    b.add_argument("--algorithm", default="fedavg", help="fedavg | scaffold | local (stateful: per-client state)")
    b.add_argument("--state-memory", default="device",
                   help="device | host: where a stateful algorithm's per-client state lives (state_memory)")
    b.add_argument("--model", default="mlp",
                   help="mlp | cnn (the peers' CNN: emnist_cnn without dropout) | emnist_cnn | simple_cnn | "
                        "cifar_cnn | fedavg_cnn (the built-in cnn)")
    b.add_argument("--features", type=int, default=None, help="mlp input width (default 784)")
    b.add_argument("--image-shape", default=None,
                   help="conv models: H,W,C of the inputs (default 28,28,1: the peers' features as images)")
    b.add_argument("--conv", default="auto", help="conv models: auto | xla | patches (model.conv)")
    b.add_argument("--hidden", default="200,200")
    b.add_argument("--classes", type=int, default=10)
    b.add_argument("--clients", type=int, default=1000)
    b.add_argument("--cohort", type=int, default=None, help="clients per round (default 100, at most --clients)")
    b.add_argument("--examples-per-client", type=int, default=64)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--local-epochs", type=int, default=1)
    b.add_argument("--lr", type=float, default=0.05)
    b.add_argument("--rounds", type=int, default=5)
    b.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    b.add_argument("--client-mapping", default="auto", help="auto | vmap | chunked | sequential | sharded")
    b.add_argument("--chunk-size", type=int, default=0)
    b.add_argument("--mesh-devices", type=int, default=0, help="sharded: devices in the client mesh (0 = all)")
    b.add_argument("--formulation", default="auto", help="auto | materialized | factored")
    b.add_argument("--optimizer", default="sgd", help="client optimizer (fedjax-sim list)")
    b.add_argument("--momentum", type=float, default=0.9, help="with --optimizer momentum")
    b.add_argument("--no-centralized", action="store_true",
                   help="skip timing centralized training (efficiency is then null)")
    b.add_argument("--json", action="store_true", help="print only the JSON line")
    return p


def _common_run_args(r, out: bool = True) -> None:
    r.add_argument("--dataset", help="data source (default digits, embedded)")
    r.add_argument("--partition", help="partitioner (default auto: dirichlet_label, alpha 0.3)")
    r.add_argument("--clients", help="number of clients C (default 20)")
    r.add_argument("--cohort", help="clients per round K (default all)")
    r.add_argument("--rounds", help="communication rounds (default 100)")
    r.add_argument("--seed", help="run seed (default 0)")
    r.add_argument("--seeds", help="several seeds: a count N (seeds SEED..SEED+N-1) or a list, e.g. "
                                   "10 or 0,3,7; each varies the partition, initialization and every "
                                   "sampled key, and they run as one vmapped program where shapes allow")
    r.add_argument("--generative", help="a data stage before training: none (default) or fedgc "
                                        "(clients augment their data once with a generator fitted on "
                                        "data.public_fraction; any algorithm then trains on it)")
    r.add_argument("--trials", help="how seeds and grid points run: auto (default), vmap, sequential")
    r.add_argument("--checkpoint-every", metavar="N", help="checkpoint the round loop every N rounds so "
                                                           "--resume can continue a killed run or sweep "
                                                           "(default: only when interrupted by Ctrl-C / SIGTERM; "
                                                           "each checkpoint writes the whole state to disk)")
    r.add_argument("--preset", help="a paper's setting, applied before --config, flags and --set "
                                    "(fedjax-sim list names them)")
    if out:
        r.add_argument("--out", help="run directory (default runs/<time>-<algorithm>-<dataset>)")
    r.add_argument("--config", help="JSON config file (a config.json of an earlier run works)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, repeatable, e.g. --set local.lr=0.05 --set data.alpha=0.1")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_seeds(text: str, first: int) -> tuple[int, ...]:
    """``--seeds``: a count N (``first``..``first``+N-1) or a comma-separated list of seeds."""
    allowed = "a count >= 1 or a comma-separated list of distinct seeds >= 0, e.g. 10 or 0,3,7"
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError("--seeds", text, allowed) from None
    from fedjax_sim.config import MAX_SEEDS

    if len(values) == 1 and "," not in str(text):
        if not 1 <= values[0] <= MAX_SEEDS:
            raise ConfigError("--seeds", text, f"a count in [1, {MAX_SEEDS}] or a comma-separated list "
                                               "of distinct seeds >= 0, e.g. 10 or 0,3,7")
        if first + values[0] > 2 ** 31:
            raise ConfigError("--seeds", text, f"a count that keeps the seeds below 2^31 (from --seed {first})")
        return tuple(range(first, first + values[0]))
    if min(values) < 0 or len(set(values)) != len(values):
        raise ConfigError("--seeds", text, allowed)
    return tuple(values)


def config_from_args(a) -> "Config":
    from fedjax_sim import algorithms  # noqa: F401  (registers the algorithms' config sections)
    from fedjax_sim import config as config_lib

    cfg = config_lib.Config()
    if getattr(a, "preset", None):
        from fedjax_sim.presets import apply_preset
        apply_preset(cfg, a.preset)
    if a.config:
        # an earlier run's directory is not this run's: without --out a new one is made
        config_lib.apply_dict(cfg, config_lib.read_config_file(a.config))
    for flag, field in RUN_FLAGS.items():
        value = getattr(a, flag, None)
        if value is not None and flag != "algorithm":
            config_lib.set_field(cfg, field, value)
    set_keys = [item.split("=", 1)[0].strip() for item in a.set]
    if "preset" in set_keys:
        raise ConfigError("--set", next(i for i in a.set if i.split("=", 1)[0].strip() == "preset"),
                          "--preset NAME to apply a preset (the preset field records the one applied)")
    seeds_flag = getattr(a, "seeds", None)
    if seeds_flag is not None and "seeds" in set_keys:
        raise ConfigError("--seeds", seeds_flag, "either --seeds or --set seeds=..., not both")
    config_lib.apply_overrides(cfg, a.set)
    if seeds_flag is not None:
        cfg.seeds = parse_seeds(seeds_flag, cfg.seed)
    elif getattr(a, "seed", None) is not None and "seeds" not in set_keys:
        cfg.seeds = ()  # --seed K re-runs a stored config with that one seed, not its seed list
    if getattr(a, "preset", None):
        cfg.preset = a.preset  # recorded even when --config or --set overrode some of its values
    elif cfg.preset:
        from fedjax_sim.presets import PRESETS
        if cfg.preset not in PRESETS:
            raise ConfigError("preset", cfg.preset, "one of " + ", ".join(PRESETS) + " (or empty)")
    return cfg


def _algorithm_given(a) -> bool:
    """Whether --set or --config chose the algorithm (then the default comparison is not run)."""
    if any(item.split("=", 1)[0].strip() == "algorithm" for item in a.set):
        return True
    if a.config:
        try:
            return "algorithm" in json.loads(Path(a.config).read_text())
        except (OSError, ValueError):
            return False
    return False


def _algorithm_list(a, cfg, default: str) -> list[str]:
    if a.algorithm is not None:
        algorithms = [x.strip() for x in a.algorithm.split(",") if x.strip()]
    elif _algorithm_given(a):
        algorithms = [cfg.algorithm]
    else:
        algorithms = default.split(",")
    if not algorithms:
        raise ConfigError("--algorithm", a.algorithm, "one or more registered names separated by commas")
    dupes = sorted({n for n in algorithms if algorithms.count(n) > 1})
    if dupes:
        raise ConfigError("--algorithm", a.algorithm, f"each name once (repeated: {', '.join(dupes)})")
    from fedjax_sim.algorithms import check_name
    for name in algorithms:
        check_name(name)
    return algorithms


class _DataCache:
    """Every seed's data built once per data config, shared by the runs that use it."""

    def __init__(self, progress: bool = False):
        self.built: dict[str, tuple] = {}
        self.progress = progress  # the data stage's own bars (FedGC's VAE training)

    def prepare(self, group):
        from fedjax_sim import config as config_lib
        from fedjax_sim import trials

        first = config_lib.to_dict(group.configs[0])
        stage = [first["generative"], first["fedgc"], first["rounds"]] if first["generative"] != "none" else []
        key = json.dumps([first["data"], stage, group.seeds])
        datas, stats = self.built.get(key, (None, None))
        pg = trials.prepare_group(group, datas, stats=stats, progress=self.progress)
        # vmap mode pads every seed to the set's lengths: harmless to reuse (padding-invariant)
        self.built.setdefault(key, ([row[0].data for row in pg.preps], [row[0].data_stats for row in pg.preps]))
        return pg


def cmd_run(a) -> int:
    from fedjax_sim import config as config_lib
    from fedjax_sim import parallel, runner, trials

    given = [f for f in ("coordinator_address", "num_processes", "process_id") if getattr(a, f) is not None]
    if given and not a.distributed:
        raise ConfigError("--" + given[0].replace("_", "-"), getattr(a, given[0]), "given only with --distributed")
    if a.distributed and a.resume is not None:
        raise ConfigError("--resume", a.resume, "a single-process run: resume without --distributed (a "
                                                "checkpoint holds whole arrays; resuming on several processes "
                                                "is not supported yet)")
    if a.resume is not None:
        return cmd_resume(a)

    cfg = config_from_args(a)
    algorithms = _algorithm_list(a, cfg, DEFAULT_ALGORITHMS)
    if a.distributed:
        _join(a, cfg, algorithms)
    baselines = algorithms
    if a.baselines is not None:
        baselines = [x.strip() for x in a.baselines.split(",") if x.strip()]
        unknown = [b for b in baselines if b not in algorithms]
        if not baselines or unknown or len(set(baselines)) != len(baselines):
            raise ConfigError("--baselines", a.baselines,
                              f"distinct algorithms of this comparison separated by commas: {', '.join(algorithms)}")
    named = config_lib.copy_config(cfg)
    named.algorithm = "-".join(algorithms)
    base_out = a.out or cfg.out or runner._default_out(named)
    worker = a.distributed and not parallel.is_main_process()
    if worker:
        # every process runs the same programs in the same order (each holds a copy of every
        # replicated output); only process 0 keeps what they write
        import atexit
        import shutil
        import tempfile
        scratch = tempfile.mkdtemp(prefix="fedjax-sim-worker-")
        atexit.register(shutil.rmtree, scratch, True)
        shown_out, base_out = base_out, os.path.join(scratch, "run")
    seeds = trials.run_seeds(cfg)
    groups = []
    for name in algorithms:  # validate every run before running (and compiling) any
        out = base_out if len(algorithms) == 1 else os.path.join(base_out, name)
        c = config_lib.copy_config(cfg)
        c.algorithm, c.out = name, out
        if len(algorithms) > 1:
            runner.check_out_dir(base_out)
        runner.check_out_dir(out)
        config_lib.validate(c)
        groups.append(trials.Group([c], [out], seeds, ()))
    if len(algorithms) > 1 and any(Path(base_out, f).exists() for f in ("results.md", "comparison.png")):
        raise ConfigError("--out", base_out, "a new directory (it holds an earlier comparison's results.md)")
    cache = _DataCache(progress=not a.no_progress)
    prepared = [cache.prepare(g) for g in groups]
    summaries = []
    with _interruptible():
        for pg in prepared:
            summaries += trials.run_group(pg, progress=not a.no_progress)
            if checkpoints.Interrupt.requested():
                return _interrupted(summaries, algorithms[len(summaries):])
    from fedjax_sim.report import comparison_plot, comparison_table, seed_points_plot, summary_table
    table = summary_table(summaries)
    if len(seeds) > 1:  # with one seed there is no spread and nothing to pair
        table += "\n\n" + comparison_table(summaries, baselines if len(summaries) > 1 else [])
    print(table)
    if len(summaries) > 1:
        Path(base_out, "results.md").write_text(table + "\n")
        comparison_plot([Path(s["config"]["out"]) for s in summaries], Path(base_out, "comparison.png"))
    elif len(seeds) > 1:
        Path(base_out, "results.md").write_text(table + "\n")
    if len(seeds) > 1:
        seed_points_plot(summaries, Path(base_out, "seeds.png"))
    if worker:
        import jax

        print(f"\nprocess {jax.process_index()} of {jax.process_count()}: process 0 writes the run directory "
              f"({shown_out if a.out or cfg.out else 'its default name'})")
    else:
        print(f"\nrun directory: {base_out}")
    trials.raise_if_diverged(summaries)
    return 0


def _join(a, cfg, algorithms: list[str]) -> None:
    """--distributed: validates every algorithm's config and the process settings (exit 2 before
    any process waits for the others), then joins the distributed runtime; the sharded client
    mapping then spans every process's devices."""
    from fedjax_sim import config as config_lib
    from fedjax_sim import parallel

    for name in algorithms:
        c = config_lib.copy_config(cfg)
        c.algorithm = name
        config_lib.validate(c)
    if cfg.checkpoint_every:
        raise ConfigError("checkpoint_every", cfg.checkpoint_every, "0 with --distributed (resumable checkpoints "
                                                                    "of a multi-process run are not supported yet; "
                                                                    "checkpoint=true still writes the final state)")
    if cfg.client_mapping not in ("auto", "sharded"):
        raise ConfigError("client_mapping", cfg.client_mapping, "auto or sharded with --distributed (the cohort "
                                                                "is split over every process's devices)")
    parallel.initialize(parallel.DistributedConfig(a.coordinator_address, a.num_processes, a.process_id))


@contextlib.contextmanager
def _interruptible():
    """SIGINT / SIGTERM stop the run after its current block (`checkpoints.Interrupt`)."""
    checkpoints.Interrupt.install()
    try:
        yield
    finally:
        checkpoints.Interrupt.uninstall()


def _interrupted(summaries: list[dict], not_started: list[str]) -> int:
    """One line on how to resume; the exit code of the signal (130 SIGINT, 143 SIGTERM)."""
    s = summaries[-1]
    out = s["config"]["out"]
    rest = f"; not started: {', '.join(not_started)}" if not_started else ""
    print(f"fedjax-sim: interrupted after round {s['rounds_completed']} of {s['config']['rounds']}: "
          f"checkpoint, partial summary.json and plots are in {out}; resume with: "
          f"fedjax-sim run --resume {out}{rest}", file=sys.stderr)
    return checkpoints.Interrupt.exit_code()


def cmd_resume(a) -> int:
    """``fedjax-sim run --resume DIR``: continue an interrupted run from its checkpoint."""
    from fedjax_sim import algorithms  # noqa: F401  (registers the algorithms' config sections)
    from fedjax_sim import config as config_lib
    from fedjax_sim import trials

    path = Path(a.resume)
    given = [f"--{k.replace('_', '-')}" for k in (*RUN_FLAGS, "out", "config", "seeds", "preset", "baselines")
             if getattr(a, k, None) is not None] + (["--set"] if a.set else [])
    if given:
        raise ConfigError("--resume", a.resume, f"alone (the run's config.json decides everything; also given: "
                                                f"{', '.join(given)})")
    from fedjax_sim.sweep import enclosing_sweep

    sweep_dir = enclosing_sweep(path)
    if not (path / "config.json").is_file():
        subs = sorted(p.name for p in path.glob("*/config.json")) if path.is_dir() else []
        hint = f" (a comparison: resume one of its runs, e.g. {path / Path(subs[0]).parent})" if subs else ""
        if sweep_dir is not None:
            hint = f" (it belongs to a sweep: fedjax-sim sweep --resume {sweep_dir})"
        elif not path.exists():
            hint = " (no such directory)"
        raise ConfigError("--resume", a.resume, f"a run directory holding config.json{hint}")
    if (path / "summary.json").is_file():
        status = json.loads((path / "summary.json").read_text()).get("status")
        if status != "interrupted":
            raise ConfigError("--resume", a.resume, f"an interrupted run (its summary.json says status {status}: "
                                                    "it finished)")
    if sweep_dir is not None:  # a grid point: its checkpoint may be its group's, its results the sweep's
        raise ConfigError("--resume", a.resume, f"a run directory, not a sweep's grid point (a sweep resumes "
                                                f"whole: fedjax-sim sweep --resume {sweep_dir})")
    if not checkpoints.in_run(path):
        raise ConfigError("--resume", a.resume, "a run directory with a checkpoint (resume/progress.json: "
                                                "written every --checkpoint-every N rounds and on Ctrl-C)")
    cfg = config_lib.apply_dict(config_lib.Config(), config_lib.read_config_file(path / "config.json"))
    cfg.out = str(path)
    config_lib.validate(cfg)
    group = trials.Group([cfg], [str(path)], trials.run_seeds(cfg), ())
    pg = trials.prepare_group(group, progress=not a.no_progress)
    with _interruptible():
        summaries = trials.run_group(pg, progress=not a.no_progress, resume=True)
        if checkpoints.Interrupt.requested() and summaries[0]["status"] == "interrupted":
            return _interrupted(summaries, [])
    from fedjax_sim.report import summary_table
    print(summary_table(summaries))
    print(f"\nrun directory: {path}")
    trials.raise_if_diverged(summaries)
    return 0


def _reads(algorithm: str, key: str) -> bool:
    """Whether ``algorithm`` reads grid field ``key`` (an algorithm section belongs to the
    algorithms registered with it; everything else is read by every algorithm)."""
    from fedjax_sim import config as config_lib
    from fedjax_sim.algorithms import section_of

    section = key.split(".", 1)[0]
    return section not in config_lib.SECTIONS or section in (section_of(algorithm), section_of(algorithm, True))


def grid_for(algorithms: list, cfg, grid) -> dict:
    """algorithm -> the grid axes it reads. An axis no algorithm reads, or a momentum the
    optimizer ignores, would give identical points: refused."""
    from fedjax_sim.algorithms import MULTITASK_SECTION_OF, SECTION_OF

    for key, _, item in grid:
        if not any(_reads(a, key) for a in algorithms):
            section = key.split(".", 1)[0]
            owners = ", ".join(sorted({a for a, s in [*SECTION_OF.items(), *MULTITASK_SECTION_OF.items()]
                                       if s == section}))
            raise ConfigError("--grid", item, f"fields that {', '.join(algorithms)} read ({section}.* "
                                              f"belongs to {owners})")
        for part in ("local", "server"):
            if key == f"{part}.momentum" and getattr(cfg, part).optimizer != "momentum":
                raise ConfigError("--grid", item, f"{part}.momentum only with {part}.optimizer=momentum "
                                                  f"(it is {getattr(cfg, part).optimizer})")
    return {a: [axis for axis in grid if _reads(a, axis.field)] for a in algorithms}


def _sweep_resume_args(a) -> argparse.Namespace:
    """``fedjax-sim sweep --resume DIR``: the arguments the sweep in DIR began with (its
    `sweep.ARGS_FILE`), with ``--out DIR``."""
    from fedjax_sim import sweep

    path = Path(a.resume)
    others = [x for x in a.argv[1:] if x != "--no-progress"]  # after "sweep"
    if others not in (["--resume", a.resume], [f"--resume={a.resume}"]):
        extra = [x for x in others if x not in ("--resume", a.resume, f"--resume={a.resume}")]
        raise ConfigError("--resume", a.resume, "alone (the sweep's own command line decides everything; "
                                                f"also given: {' '.join(extra)})")
    if not (path / sweep.ARGS_FILE).is_file():
        inside = sweep.enclosing_sweep(path)
        hint = (" (no such directory)" if not path.exists()
                else f" (it is inside the sweep {inside}: fedjax-sim sweep --resume {inside})" if inside
                else " (it holds a run: fedjax-sim run --resume)" if (path / "config.json").is_file() else "")
        raise ConfigError("--resume", a.resume, f"a sweep directory holding {sweep.ARGS_FILE} (written when a "
                                                f"sweep starts){hint}")
    if (path / "sweep.json").exists():  # written last
        raise ConfigError("--resume", a.resume, "an interrupted sweep (it holds sweep.json: it finished)")
    try:
        stored = json.loads((path / sweep.ARGS_FILE).read_text())["argv"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError("--resume", a.resume, f"a sweep directory whose {sweep.ARGS_FILE} is readable JSON "
                                                "with its argv (it is damaged)") from None
    # the sweep's copy of its --config file is named relative to the sweep directory
    argv = ["sweep", *(str(path / x) if i and stored[i - 1] == "--config" else x for i, x in enumerate(stored)),
            "--out", str(path)]
    b = build_parser().parse_args(argv + (["--no-progress"] if a.no_progress else []))
    b.argv, b.resuming = argv, True
    return b


def _stored_argv(argv: list[str], base_out: str) -> list[str]:
    """A sweep's arguments (after ``sweep``) as `sweep.ARGS_FILE` keeps them: without ``--out``
    and ``--no-progress`` (the resuming command's choice), and with a ``--config`` file copied into
    the sweep directory (`sweep.CONFIG_COPY`, named relative to it), so a resume reads the
    settings the sweep began with even if the file was temporary or has been edited since."""
    from fedjax_sim import sweep

    out, it = [], iter(argv)
    for x in it:
        flag, eq, value = x.partition("=")
        if flag in ("--out", "--config") and not eq:
            value = next(it, "")
        if flag == "--config":
            shutil.copyfile(value, Path(base_out, sweep.CONFIG_COPY))
            out += ["--config", sweep.CONFIG_COPY]
        elif flag not in ("--out", "--no-progress"):
            out.append(x)
    return out


def cmd_sweep(a) -> int:
    from fedjax_sim import config as config_lib
    from fedjax_sim import runner, sweep, trials

    if a.resume is not None:
        a = _sweep_resume_args(a)
    resuming = getattr(a, "resuming", False)
    cfg = config_from_args(a)
    algorithms = _algorithm_list(a, cfg, "fedavg")
    if not a.grid:
        raise ConfigError("--grid", "", "at least one --grid KEY=V1,V2,..., e.g. --grid local.lr=0.01,0.05,0.1")
    grid = config_lib.parse_grid(a.grid)
    fraction = a.validation_fraction if a.validation_fraction is not None else (
        cfg.data.validation_fraction or sweep.DEFAULT_VALIDATION_FRACTION)
    if not 0 < fraction < 1:
        raise ConfigError("--validation-fraction", fraction, "a number in (0, 1)")
    cfg.data.validation_fraction = fraction
    named = config_lib.copy_config(cfg)
    named.algorithm = "sweep-" + "-".join(algorithms)
    # absolute: sweep.json's paths then hold from any working directory (and across a resume
    # started elsewhere)
    base_out = os.path.abspath(a.out or cfg.out or runner._default_out(named))
    if not resuming:  # a resumed sweep's directory was checked by _sweep_resume_args
        runner.check_out_dir(base_out)
    if not resuming and Path(base_out, "sweep.md").exists():
        raise ConfigError("--out", base_out, "a new directory (it holds an earlier sweep)")
    if not resuming and Path(base_out, sweep.ARGS_FILE).exists():
        raise ConfigError("--out", base_out, f"a new directory (it holds an interrupted sweep: continue it with "
                                             f"fedjax-sim sweep --resume {base_out})")
    seeds = trials.run_seeds(cfg)
    plans = {}
    grids = grid_for(algorithms, cfg, grid)
    for name in algorithms:  # every point of every algorithm validated before anything compiles
        c = config_lib.copy_config(cfg)
        c.algorithm = name
        points = config_lib.grid_points(c, grids[name])
        outs = [os.path.join(base_out, name, p) for p, _ in points]
        for (_, pc), out in zip(points, outs):
            if not resuming:
                runner.check_out_dir(out)
            config_lib.validate(pc)
        plans[name] = ([p for p, _ in points], trials.plan([pc for _, pc in points], outs, seeds))
    cache = _DataCache(progress=not a.no_progress)
    prepared = {name: [cache.prepare(g) for g in groups] for name, (_, groups) in plans.items()}
    for pgs in prepared.values():
        sweep.check_select(a.select, pgs[0].preps[0][0])
    # resuming: what each group does, decided (and a changed setting refused) before anything
    # compiles, against the configs as prepared (what config.json holds)
    actions = {name: [sweep.resume_action([Path(o) for o in pg.group.outs], pg.group.configs) if resuming
                      else "run" for pg in pgs] for name, pgs in prepared.items()}
    if resuming:
        counts = [(n, sum(acts.count(n) for acts in actions.values())) for n in ("skip", "continue", "run")]
        words = {"skip": "finished (kept)", "continue": "continued from a checkpoint", "run": "run from the start"}
        total = sum(c for _, c in counts)
        print(f"resuming {base_out}: of {total} group(s) of grid points trained together, "
              + ", ".join(f"{c} {words[n]}" for n, c in counts if c), file=sys.stderr)
    else:  # valid: the command line that --resume will read back
        Path(base_out).mkdir(parents=True, exist_ok=True)
        jsonio.write_json(Path(base_out, sweep.ARGS_FILE), {"argv": _stored_argv(a.argv[1:], base_out)})
    results = {}
    with _interruptible():
        for name, pgs in prepared.items():
            by_out = {}
            for pg, action in zip(pgs, actions[name]):
                outs = [Path(o) for o in pg.group.outs]
                if action == "skip":  # read back, with the directory where they are now (a moved sweep)
                    summaries = [json.loads((o / "summary.json").read_text()) for o in outs]
                    for o, s in zip(outs, summaries):
                        s["config"]["out"] = str(o)
                else:
                    if action == "run":
                        sweep.clear(outs)
                    summaries = trials.run_group(pg, progress=not a.no_progress, resume=action == "continue",
                                                 resume_command=f"fedjax-sim sweep --resume {base_out}")
                    if checkpoints.Interrupt.requested():
                        print(f"fedjax-sim: sweep interrupted; finished grid points and a checkpoint are kept, resume with: "
                              f"fedjax-sim sweep --resume {base_out}", file=sys.stderr)
                        return checkpoints.Interrupt.exit_code()
                by_out.update(zip(outs, summaries))
            names = plans[name][0]
            ordered = [by_out[Path(base_out, name, p)] for p in names]
            results[name] = sweep.select(names, ordered, a.select)
    text = sweep.sweep_table(results, grid, seeds, fraction)
    for name, res in results.items():
        if res.best is not None:
            jsonio.write_json(Path(base_out, name, "best_config.json"), res.best_config)
    Path(base_out, "sweep.md").write_text(text + "\n")
    jsonio.write_json(Path(base_out, "sweep.json"), sweep.to_json(results))  # last: the sweep finished
    print(text)
    print(f"\nsweep directory: {base_out}")
    diverged = [f"{name}/{p}" for name, res in results.items()
                for p, s in zip(res.names, res.summaries) if s["status"] != "ok"]
    unselected = [name for name, res in results.items() if res.best is None]
    if unselected:
        raise DivergedError(f"every grid point of {', '.join(unselected)} diverged on some seed: "
                            f"nothing selected (see {Path(base_out, 'sweep.md')}; try smaller learning rates)")
    if diverged:
        print(f"fedjax-sim: note: {len(diverged)} grid point(s) diverged on some seed and were not "
              f"eligible: {', '.join(diverged)}", file=sys.stderr)
    return 0


def cmd_list(a) -> int:
    from fedjax_sim import config as config_lib
    from fedjax_sim.algorithms import DESCRIPTIONS, MULTITASK_DESCRIPTIONS, SECTION_OF, section_of

    if getattr(a, "markdown", False) and not a.fields:
        raise ConfigError("--markdown", "without --fields", "--fields --markdown (the field table as markdown)")
    if getattr(a, "fields", False):
        print(config_lib.field_reference(markdown=a.markdown), end="\n" if not a.markdown else "")
        return 0
    from fedjax_sim.core.optim import OPTIMIZERS, OWN, signature_text
    from fedjax_sim.data import MULTITASK_SOURCES, all_partitions, all_sources
    from fedjax_sim.tasks import TASKS

    print("algorithms (config section in brackets):")
    for name in sorted(DESCRIPTIONS):
        section = f" [{SECTION_OF[name]}.*]" if name in SECTION_OF else ""
        print(f"  {name:20s} {DESCRIPTIONS[name]}{section}")
    print("algorithms on multi-task data (--dataset hcfmtl_lite):")
    for name in sorted(MULTITASK_DESCRIPTIONS):
        section = section_of(name, True)
        print(f"  {name:20s} {MULTITASK_DESCRIPTIONS[name]}" + (f" [{section}.*]" if section else ""))
    print("datasets:\n  " + ", ".join(all_sources()) + "\nmulti-task datasets (data.scenario):\n  "
          + ", ".join(MULTITASK_SOURCES))
    print("partitions:\n  " + ", ".join(all_partitions()))
    from fedjax_sim.models.classifiers import DROPOUT_MODELS, MODEL_DESCRIPTIONS
    from fedjax_sim.models.bow import DESCRIPTION as BOW_DESCRIPTION
    from fedjax_sim.models.sequence import DESCRIPTION as SEQUENCE_DESCRIPTION
    print("models (model.name; auto: cnn for grayscale images >= 16x16, cifar_cnn for colour, char_lstm for "
          "token sequences, bow_logreg for bags of words, mlp otherwise; [model.dropout]: has optional dropouts):")
    for name, text in {**MODEL_DESCRIPTIONS, "char_lstm": SEQUENCE_DESCRIPTION, "bow_logreg": BOW_DESCRIPTION}.items():
        print(f"  {name:20s} {text}" + (" [model.dropout]" if name in DROPOUT_MODELS else ""))
    print("tasks (task.name):\n  " + ", ".join(TASKS))
    print("optimizers (local.optimizer, server.optimizer; extra optax hyper-parameters with "
          "*.optimizer_args=k=v,...; fedadagrad, fedadam, fedyogi: FedOpt's server optimizers as its "
          "code computes them, eps added to the root of the uncorrected second moment):\n  " + ", ".join(OPTIMIZERS))
    for name, factory in OWN.items():
        print(f"  {name}({signature_text(factory)})")
    from fedjax_sim.presets import describe_presets
    print("presets (--preset NAME; applied before --config, flags and --set):")
    for line in describe_presets():
        print(f"  {line}")
    print("config fields (--set KEY=VALUE; types, defaults and descriptions: fedjax-sim list --fields):\n  "
          + ", ".join(config_lib.field_names()))
    print("fields a sweep runs as one vmapped program (--grid; other fields run as separate "
          "programs):\n  " + ", ".join(sorted(config_lib.TRACEABLE)))
    return 0


def cmd_bench(a) -> int:
    from fedjax_sim import bench

    try:
        hidden = tuple(int(h) for h in a.hidden.split(",") if h.strip())
    except ValueError:
        raise ConfigError("--hidden", a.hidden, "comma-separated integers, e.g. 200,200") from None
    if not hidden or min(hidden) < 1:
        raise ConfigError("--hidden", a.hidden, "comma-separated integers >= 1, e.g. 200,200")
    image_shape = None
    if a.image_shape is not None:
        try:
            image_shape = tuple(int(v) for v in a.image_shape.split(","))
        except ValueError:
            raise ConfigError("--image-shape", a.image_shape, "H,W,C integers, e.g. 28,28,1") from None
    result = bench.bench(model=a.model, features=a.features, image_shape=image_shape, conv=a.conv,
                         hidden=hidden, classes=a.classes,
                         clients=a.clients, cohort=a.cohort, examples_per_client=a.examples_per_client,
                         batch_size=a.batch_size, local_epochs=a.local_epochs, lr=a.lr,
                         rounds=a.rounds, repeats=a.repeats, client_mapping=a.client_mapping,
                         chunk_size=a.chunk_size, mesh_devices=a.mesh_devices, formulation=a.formulation,
                         optimizer=a.optimizer, momentum=a.momentum, centralized=not a.no_centralized,
                         algorithm=a.algorithm, state_memory=a.state_memory)
    if not a.json:
        print(bench.format_human(result))
    print(bench.to_json(result))
    return 0


def _preset_note(a, field: str) -> str:
    """" (set by --preset NAME)" when the offending field got its value from the preset."""
    name = getattr(a, "preset", None)
    if not name:
        return ""
    from fedjax_sim import config as config_lib
    from fedjax_sim.presets import PRESETS

    preset = PRESETS.get(name)
    fields = {config_lib.ALIASES.get(k, k) for k in (preset.values if preset else ())}
    given = {item.split("=", 1)[0].strip() for item in getattr(a, "set", [])}
    return f" (set by --preset {name})" if field in fields and field not in given else ""


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)  # a sweep keeps its own, to --resume
    if a.command is None:
        parser.print_help()
        return 2
    try:
        return {"run": cmd_run, "sweep": cmd_sweep, "list": cmd_list, "bench": cmd_bench}[a.command](a)
    except ConfigError as e:
        print(f"fedjax-sim: error: {e}{_preset_note(a, e.field)}", file=sys.stderr)
        return 2
    except DataUnavailableError as e:
        print(f"fedjax-sim: error: {e}", file=sys.stderr)
        return 2
    except DivergedError as e:
        print(f"fedjax-sim: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("fedjax-sim: interrupted; what each run wrote so far (config.json, metrics.jsonl) is "
              "kept in its run directory", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - only XLA's out-of-memory is turned into advice
        if not is_out_of_memory(e):
            raise
        print(f"fedjax-sim: error: {out_of_memory(e)}", file=sys.stderr)
        return 4


def out_of_memory(error: Exception) -> str:
    """One line for an allocation XLA could not make while compiling or running: what it said
    and the settings that bound a round's memory (the up-front check counts only the arrays a run
    holds, not a round's activations)."""
    said = next((line.strip() for line in str(error).splitlines() if "RESOURCE_EXHAUSTED" in line), "")
    return (f"the device ran out of memory ({said[:200]}); a round's memory grows with the clients trained "
            "at once: lower cohort, or set client_mapping=chunked with a smaller chunk_size, or run seeds "
            "and grid points one after another (trials=sequential); what the run wrote so far is kept")


if __name__ == "__main__":
    sys.exit(main())
