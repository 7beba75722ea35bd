"""The comparison protocol of the experiments: tune every method the same way on a validation
split, then run the selected settings on fresh seeds (DESIGN: "a claim is a paired 95% interval
over at least 10 seeds against baselines tuned the same way on a validation split").

A `Method` is a row of a results table: a registered algorithm plus fixed config values (e.g.
``floral_10`` = ``floral`` with ``floral.rho=0.1``). Each method is tuned by its own
``fedjax-sim sweep`` (one vmapped program over grid points x tuning seeds) in
``<runs>/tune/<method>``, selected by `sweep.select` (best mean final-round validation metric),
optionally extended past an edge of the grid (``tune_ext<k>/<method>``), and run on the final
seeds with ``fedjax-sim run --seeds`` in ``<runs>/final/<method>``. Every step is skipped when its
result exists, so an interrupted experiment resumes.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, NamedTuple


class Method(NamedTuple):
    """name: the row label; algorithm: registered algorithm; values: dotted field -> value."""

    name: str
    algorithm: str
    values: dict

    @staticmethod
    def parse(entry: Any) -> "Method":
        """``"fedavg"`` or ``{"name": "floral_10", "algorithm": "floral", "set": {...}}``."""
        if isinstance(entry, str):
            return Method(entry, entry, {})
        return Method(entry["name"], entry.get("algorithm", entry["name"]), dict(entry.get("set", {})))


def _merge(a: dict, b: dict) -> dict:
    import copy

    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def base_config(setting: dict) -> dict:
    """An experiment setting's full config dict: defaults < its ``preset`` < its ``base`` values
    (nested dicts merged field by field)."""
    import fedjax_sim.algorithms  # noqa: F401  (registers the algorithm sections)
    from fedjax_sim import config as config_lib
    from fedjax_sim import presets

    cfg = config_lib.Config()
    if setting.get("preset"):
        cfg = presets.apply_preset(cfg, setting["preset"])
    return _merge(config_lib.to_dict(cfg), setting.get("base", {}))


def load(path) -> dict:
    return json.loads(Path(path).read_text())


def cli(args: list[str], ok: tuple = (0,)) -> int:
    """Runs ``fedjax-sim <args>`` in this process; SystemExit unless its exit code is in ``ok``."""
    from fedjax_sim.cli import main

    print("fedjax-sim " + " ".join(args), flush=True)
    code = main(args)
    if code in (130, 143):  # interrupted (Ctrl-C / SIGTERM): stop with its code; a rerun resumes
        raise SystemExit(code)
    if code not in ok:
        raise SystemExit(f"fedjax-sim {' '.join(args)} exited with {code}")
    return code


def _fresh(out: Path, done: str) -> None:
    """Removes ``out`` when an interrupted step left it without its ``done`` file, so the step
    can run again (a run never writes into a directory holding another run's results)."""
    import shutil

    if out.exists() and not (out / done).exists():
        print(f"removing {out} (interrupted: no {done})", flush=True)
        shutil.rmtree(out)


def seed_args(seeds) -> list[str]:
    """The flags that run exactly ``seeds`` (ids): ``--seeds a,b,...``; one seed as ``--seed S
    --seeds 1``, since ``--seeds S`` alone would be a count of S seeds."""
    seeds = list(seeds)
    if len(seeds) == 1:
        return ["--seed", str(seeds[0]), "--seeds", "1"]
    return ["--seeds", ",".join(map(str, seeds))]


def _sets(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        out += ["--set", f"{key}={text}"]
    return out


def sweep(base: dict, method: Method, tune: dict, grid: dict, out: Path, progress: bool) -> None:
    """``fedjax-sim sweep`` of one method over ``grid`` on the tuning seeds and validation split
    (``tune["select"]``, optional: the selection metric, default the headline's).
    A sweep whose every point diverged (exit 3) still wrote its tables; it selects nothing. An
    interrupted sweep of the same settings is resumed (``sweep --resume``: its finished groups
    are kept); one of other settings is removed and run again."""
    from fedjax_sim import sweep as sweep_lib

    args = ["--algorithm", method.algorithm, *_sets(method.values), *seed_args(tune["seeds"]),
            "--validation-fraction", str(tune["validation_fraction"])]
    for key, values in grid.items():
        args += ["--grid", f"{key}={','.join(map(str, values))}"]
    if tune.get("select"):
        args += ["--select", tune["select"]]
    quiet = [] if progress else ["--no-progress"]
    stored = out / sweep_lib.ARGS_FILE
    if (stored.exists() and not (out / "sweep.json").exists() and (out / sweep_lib.CONFIG_COPY).exists()
            and load(stored)["argv"] == ["--config", sweep_lib.CONFIG_COPY, *args]
            and load(out / sweep_lib.CONFIG_COPY) == json.loads(json.dumps(base))):
        if cli(["sweep", "--resume", str(out), *quiet], ok=(0, 2, 3)) != 2:
            return
        print(f"{out}: the interrupted sweep cannot be resumed (above); starting it again", flush=True)
    _fresh(out, "sweep.json")  # an interrupted sweep not resumed: removed, run again
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(base, f)
    cli(["sweep", "--config", f.name, *args, *quiet, "--out", str(out)], ok=(0, 3))


def _tune_dirs(runs_dir: Path, method: Method) -> list[Path]:
    ext = sorted(runs_dir.glob("tune_ext*"), key=lambda p: int(p.name[len("tune_ext"):] or 0))
    return [d / method.name for d in [runs_dir / "tune", *ext] if (d / method.name / "sweep.json").exists()]


def selection(methods: list[Method], runs_dir: Path, metric: str | None = None) -> dict:
    """method name -> `sweep.SweepResult` over every tuning point it ran (grid and extensions;
    ties go to the earlier point), selected on ``metric`` (default: the headline's)."""
    from fedjax_sim import sweep as sweep_lib

    out = {}
    for method in methods:
        names, summaries = [], []
        for d in _tune_dirs(runs_dir, method):
            for point in load(d / "sweep.json").get(method.algorithm, {}).get("points", []):
                names.append(point["point"])
                summaries.append(load(Path(point["out"]) / "summary.json"))
        if summaries:
            out[method.name] = sweep_lib.select(names, summaries, metric)
    return out


def point_values(name: str, fields: list[str]) -> dict:
    """A grid point's values from its name (``local.lr=0.1_floral.router_lr=0.3``; field names
    may hold underscores, values do not)."""
    import re

    out = {}
    for field in fields:
        m = re.search(re.escape(field) + r"=([^_]+)", name)
        if m:
            out[field] = float(m.group(1))
    return out


def tune(base: dict, methods: list[Method], spec: dict, runs_dir: Path, progress: bool,
         grid_of=None) -> None:
    """Each method's grid sweep, then edge extensions (``spec["extend"]``: ``factor``, ``max``)
    along the grid's first field: a method whose choice is the largest (smallest) value it tried
    there gets the next value up (down), its other fields held at the chosen point, so no method
    is left at the edge of its grid. ``grid_of(method) -> grid`` (default: ``spec["grid"]``)
    gives methods their own axes (e.g. a router learning rate only for methods with a router)."""
    grid_of = grid_of or (lambda method: spec["grid"])
    for method in methods:
        if not (runs_dir / "tune" / method.name / "sweep.json").exists():
            sweep(base, method, spec, grid_of(method), runs_dir / "tune" / method.name, progress)
    ext = spec.get("extend", {"factor": 3.0, "max": 0})
    for k in range(1, ext.get("max", 0) + 1):
        for method in methods:
            grid = grid_of(method)
            field = next(iter(grid))
            res = selection([method], runs_dir, spec.get("select")).get(method.name)
            out = runs_dir / f"tune_ext{k}" / method.name
            if res is None or res.best is None or (out / "sweep.json").exists():
                continue
            chosen = point_values(res.names[res.best], list(grid))
            tried = [point_values(n, [field])[field] for n in res.names]
            if chosen[field] not in (max(tried), min(tried)) or len(set(tried)) == 1:
                continue
            up = chosen[field] == max(tried)
            value = chosen[field] * ext["factor"] if up else chosen[field] / ext["factor"]
            point = {f: [chosen[f]] for f in grid}
            point[field] = [float(f"{value:.3g}")]
            sweep(base, method, spec, point, out, progress)


def final(methods: list[Method], seeds: list[int], runs_dir: Path, progress: bool,
          select: str | None = None) -> None:
    """Each method's selected config (on ``select``, default the headline) on the final seeds
    (skipped when its summary exists)."""
    chosen = selection(methods, runs_dir, select)
    for method in methods:
        out = runs_dir / "final" / method.name
        if (out / "summary.json").exists():
            continue
        res = chosen.get(method.name)
        if res is None or res.best is None:
            raise SystemExit(f"tuning selected nothing for {method.name} (see {runs_dir}/tune*/{method.name})")
        _fresh(out, "summary.json")
        config = runs_dir / "final" / f"{method.name}.config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(res.best_config, indent=2))
        cli(["run", "--config", str(config), *seed_args(seeds), "--out", str(out)]
            + ([] if progress else ["--no-progress"]), ok=(0, 3))  # 3: seeds diverged, reported


def ablations(spec: dict) -> dict:
    """method name -> the tuned method it ablates (``ablation_of`` in an experiment's methods):
    its config is that method's selected config with the ablation's fields changed; it is not
    tuned itself (an ablation holds the tuned method fixed and varies one component)."""
    return {m["name"]: m["ablation_of"] for m in spec["methods"] if isinstance(m, dict) and "ablation_of" in m}


def run_setting(spec: dict, setting: dict, runs_dir: Path, progress: bool) -> None:
    """One experiment setting end to end: `tune` and `final` for every method that is not an
    ablation, then each ablation (`ablations`) on the final seeds from its tuned method's
    selected config with its own ``set`` values applied (dotted fields, or top-level ones such as
    ``generative``). Every step is skipped when its result exists."""
    abl = ablations(spec)
    every = [Method.parse(m) for m in spec["methods"]]
    methods = [m for m in every if m.name not in abl]
    tune(base_config(setting), methods, {**spec["tune"], "grid": spec["grid"]}, runs_dir, progress)
    select = spec["tune"].get("select")
    final(methods, spec["seeds"], runs_dir, progress, select)
    chosen = selection(methods, runs_dir, select)
    for method in every:
        out = runs_dir / "final" / method.name
        if method.name not in abl or (out / "summary.json").exists():
            continue
        cfg = json.loads(json.dumps(chosen[abl[method.name]].best_config))
        for key, value in method.values.items():
            if "." in key:
                section, field = key.split(".", 1)
                cfg[section][field] = value
            else:
                cfg[key] = value
        path = runs_dir / "final" / f"{method.name}.config.json"
        path.write_text(json.dumps(cfg, indent=2))
        _fresh(out, "summary.json")
        cli(["run", "--config", str(path), *seed_args(spec["seeds"]), "--out", str(out)]
            + ([] if progress else ["--no-progress"]), ok=(0, 3))


def collect(methods: list[Method], runs_dir: Path) -> dict:
    """method name -> its final summary, relabelled (``algorithm`` = the method's name, so tables
    name rows by method); only finished methods."""
    out = {}
    for method in methods:
        path = runs_dir / "final" / method.name / "summary.json"
        if path.exists():
            out[method.name] = {**load(path), "algorithm": method.name}
    return out


def main(argv, doc: str, config_path, run_setting, report) -> int:
    """An experiment driver's command line: ``--config`` (default ``config_path``),
    ``--settings a,b`` (default all), ``--report-only``, ``--progress``. Runs
    ``run_setting(spec, name, progress)`` for each chosen setting, then ``report(spec, names)``
    over every setting (tables and plots from whatever run directories exist)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(config_path))
    p.add_argument("--settings", help="comma-separated settings (default: all in config.json)")
    p.add_argument("--report-only", action="store_true", help="regenerate tables and plots only")
    p.add_argument("--progress", action="store_true", help="progress bars")
    a = p.parse_args(argv)
    spec = load(a.config)
    names = [s.strip() for s in a.settings.split(",")] if a.settings else list(spec["settings"])
    unknown = [n for n in names if n not in spec["settings"]]
    if unknown:
        print(f"--settings: unknown {unknown}; expected some of {list(spec['settings'])}", file=sys.stderr)
        return 2
    if not a.report_only:
        for name in names:
            run_setting(spec, name, a.progress)
    report(spec, list(spec["settings"]))
    return 0


__all__ = ["Method", "ablations", "base_config", "cli", "collect", "final", "load", "point_values", "run_setting",
           "selection", "sweep", "tune"]
