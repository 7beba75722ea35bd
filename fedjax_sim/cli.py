"""The `fedjax-sim` command: run, list, bench.

Bad input exits with code 2 and one line naming the field, the value and what is allowed, before
anything compiles; a diverged run exits with code 3 after keeping what it wrote.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fedjax_sim.errors import ConfigError, DataUnavailableError, DivergedError

# The default experiment: FedAvg vs Local on the embedded digits, Dirichlet(0.3) over 20 clients.
DEFAULT_ALGORITHMS = "fedavg,local"

RUN_FLAGS = {  # flag -> config field
    "algorithm": "algorithm", "dataset": "data.dataset", "partition": "data.partition",
    "clients": "data.num_clients", "rounds": "rounds", "seed": "seed", "cohort": "cohort",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: same shape and exit code as ours
        print(f"fedjax-sim: error: {message} (see fedjax-sim {self.prog.split()[-1]} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fedjax-sim", description="JAX-vectorized federated learning simulator")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    r = sub.add_parser("run", help="run an experiment (default: FedAvg vs Local on digits)")
    r.add_argument("--algorithm", default=None,
                   help=f"registered algorithm, or several separated by commas (default {DEFAULT_ALGORITHMS})")
    r.add_argument("--dataset", help="data source (default digits, embedded)")
    r.add_argument("--partition", help="partitioner (default auto: dirichlet_label, alpha 0.3)")
    r.add_argument("--clients", help="number of clients C (default 20)")
    r.add_argument("--cohort", help="clients per round K (default all)")
    r.add_argument("--rounds", help="communication rounds (default 100)")
    r.add_argument("--seed", help="run seed (default 0)")
    r.add_argument("--out", help="run directory (default runs/<time>-<algorithm>-<dataset>)")
    r.add_argument("--config", help="JSON config file (a config.json of an earlier run works)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, repeatable, e.g. --set local.lr=0.05 --set data.alpha=0.1")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("list", help="registered algorithms, datasets, partitions and config fields")
    b = sub.add_parser("bench", help="FedAvg throughput vs centralized training, one JSON line")
    b.add_argument("--model", default="mlp")
    b.add_argument("--features", type=int, default=784)
    b.add_argument("--hidden", default="200,200")
    b.add_argument("--classes", type=int, default=10)
    b.add_argument("--clients", type=int, default=1000)
    b.add_argument("--cohort", type=int, default=100)
    b.add_argument("--examples-per-client", type=int, default=64)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--local-epochs", type=int, default=1)
    b.add_argument("--lr", type=float, default=0.05)
    b.add_argument("--rounds", type=int, default=5)
    b.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    b.add_argument("--client-mapping", default="auto", help="auto | vmap | chunked | sequential")
    b.add_argument("--chunk-size", type=int, default=0)
    b.add_argument("--formulation", default="auto", help="auto | materialized | factored")
    b.add_argument("--optimizer", default="sgd", help="client optimizer (fedjax-sim list)")
    b.add_argument("--momentum", type=float, default=0.9, help="with --optimizer momentum")
    b.add_argument("--json", action="store_true", help="print only the JSON line")
    return p


def config_from_args(a) -> "Config":
    from fedjax_sim import algorithms  # noqa: F401  (registers the algorithms' config sections)
    from fedjax_sim import config as config_lib

    if a.config:
        try:
            raw = json.loads(Path(a.config).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError("--config", a.config, f"a readable JSON config file ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError("--config", a.config, "a JSON object of config fields, e.g. "
                                                    '{"rounds": 50, "local": {"lr": 0.05}}')
        # an earlier run's directory is not this run's: without --out a new one is made
        raw = {k: v for k, v in raw.items() if k not in ("resolved", "out")}
        cfg = config_lib.from_dict(raw)
    else:
        cfg = config_lib.Config()
    for flag, field in RUN_FLAGS.items():
        value = getattr(a, flag)
        if value is not None and flag != "algorithm":
            config_lib.set_field(cfg, field, value)
    config_lib.apply_overrides(cfg, a.set)
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


def cmd_run(a) -> int:
    from fedjax_sim import config as config_lib
    from fedjax_sim import runner

    cfg = config_from_args(a)
    if a.algorithm is not None:
        algorithms = [s.strip() for s in a.algorithm.split(",") if s.strip()]
    elif _algorithm_given(a):
        algorithms = [cfg.algorithm]
    else:
        algorithms = DEFAULT_ALGORITHMS.split(",")
    if not algorithms:
        raise ConfigError("--algorithm", a.algorithm, "one or more registered names separated by commas")
    dupes = sorted({n for n in algorithms if algorithms.count(n) > 1})
    if dupes:
        raise ConfigError("--algorithm", a.algorithm, f"each name once (repeated: {', '.join(dupes)})")
    named = config_lib.copy_config(cfg)
    named.algorithm = "-".join(algorithms)
    base_out = a.out or cfg.out or runner._default_out(named)
    preps = []
    for name in algorithms:  # validate every run before running (and compiling) any
        out = base_out if len(algorithms) == 1 else os.path.join(base_out, name)
        c = config_lib.copy_config(cfg)
        c.algorithm, c.out = name, out
        if len(algorithms) > 1:
            runner.check_out_dir(base_out)
        runner.check_out_dir(out)
        data = preps[0].data if preps and c.data == preps[0].config.data else None
        preps.append(runner.prepare(c, data))
    if len(algorithms) > 1 and any(Path(base_out, f).exists() for f in ("results.md", "comparison.png")):
        raise ConfigError("--out", base_out, "a new directory (it holds an earlier comparison's results.md)")
    summaries = []
    for prep in preps:
        summaries.append(runner.run(prep.config, progress=not a.no_progress, prep=prep))
    from fedjax_sim.report import comparison_plot, summary_table
    table = summary_table(summaries)
    print(table)
    if len(summaries) > 1:
        Path(base_out, "results.md").write_text(table + "\n")
        comparison_plot([Path(s["config"]["out"]) for s in summaries], Path(base_out, "comparison.png"))
    print(f"\nrun directory: {base_out}")
    return 0


def cmd_list(_a) -> int:
    from fedjax_sim import config as config_lib
    from fedjax_sim.algorithms import DESCRIPTIONS, SECTION_OF
    from fedjax_sim.core.optim import OPTIMIZERS
    from fedjax_sim.data import DATASETS, PARTITIONS
    from fedjax_sim.tasks import TASKS

    print("algorithms (config section in brackets):")
    for name in sorted(DESCRIPTIONS):
        section = f" [{SECTION_OF[name]}.*]" if name in SECTION_OF else ""
        print(f"  {name:20s} {DESCRIPTIONS[name]}{section}")
    print("datasets:\n  " + ", ".join(DATASETS))
    print("partitions:\n  " + ", ".join(PARTITIONS))
    print("tasks (task.name):\n  " + ", ".join(TASKS))
    print("optimizers (local.optimizer, server.optimizer; extra optax hyper-parameters with "
          "*.optimizer_args=k=v,...):\n  " + ", ".join(OPTIMIZERS))
    print("config fields (--set KEY=VALUE):\n  " + ", ".join(config_lib.field_names()))
    return 0


def cmd_bench(a) -> int:
    from fedjax_sim import bench

    try:
        hidden = tuple(int(h) for h in a.hidden.split(",") if h.strip())
    except ValueError:
        raise ConfigError("--hidden", a.hidden, "comma-separated integers, e.g. 200,200") from None
    if not hidden or min(hidden) < 1:
        raise ConfigError("--hidden", a.hidden, "comma-separated integers >= 1, e.g. 200,200")
    result = bench.bench(model=a.model, features=a.features, hidden=hidden, classes=a.classes,
                         clients=a.clients, cohort=a.cohort, examples_per_client=a.examples_per_client,
                         batch_size=a.batch_size, local_epochs=a.local_epochs, lr=a.lr,
                         rounds=a.rounds, repeats=a.repeats, client_mapping=a.client_mapping,
                         chunk_size=a.chunk_size, formulation=a.formulation,
                         optimizer=a.optimizer, momentum=a.momentum)
    if not a.json:
        print(bench.format_human(result))
    print(bench.to_json(result))
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.command is None:
        parser.print_help()
        return 2
    try:
        return {"run": cmd_run, "list": cmd_list, "bench": cmd_bench}[a.command](a)
    except ConfigError as e:
        print(f"fedjax-sim: error: {e}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
