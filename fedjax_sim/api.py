"""The Python API for notebooks and scripts: the command line's contract, as functions.

  import fedjax_sim as fs
  res = fs.run({"algorithm": "fedprox", "rounds": 50, "fedprox": {"mu": 0.1}}, seeds=3)
  res.final["global_accuracy"], res.status, res.out          # what summary.json says
  res.plot()                                                 # a matplotlib Figure
  fs.compare([res, fs.load_run("runs/earlier")], baselines=["fedprox"])   # paired intervals

`run` takes a `config.Config`, a dict (nested sections or dotted keys, e.g. ``{"local.lr":
0.1}``), a path to a JSON config (a run's config.json works) or a run directory, plus keyword
overrides (``local__lr=0.1`` for ``local.lr``). Bad input raises `ConfigError` (the CLI's exit 2)
before anything compiles; a diverged seed does not raise: the run directory is written (as the
CLI's exit 3) and the result's ``status`` is ``diverged``, with a warning. Every function that
reads results takes run directories (or `Result`s), so a notebook can pick up runs made by the
command line.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterable

from fedjax_sim.errors import ConfigError, DivergedError


class Result:
    """A finished run directory: its ``summary`` (summary.json), ``config`` (config.json) and
    ``metrics`` (metrics.jsonl records, one per evaluation and seed), read when first used."""

    def __init__(self, out):
        self.out = Path(out)
        self._cache: dict[str, Any] = {}

    def _json(self, name: str):
        if name not in self._cache:
            self._cache[name] = json.loads((self.out / name).read_text())
        return self._cache[name]

    @property
    def summary(self) -> dict:
        return self._json("summary.json")

    @property
    def config(self) -> dict:
        return self._json("config.json")

    @property
    def metrics(self) -> list[dict]:
        if "metrics" not in self._cache:
            self._cache["metrics"] = [json.loads(line) for line in
                                      (self.out / "metrics.jsonl").read_text().splitlines() if line]
        return self._cache["metrics"]

    @property
    def final(self) -> dict:
        """summary.json ``final``: the last evaluation (mean over seeds with several)."""
        return self.summary["final"]

    @property
    def status(self) -> str:
        return self.summary.get("status", "ok")

    @property
    def seeds(self) -> list[int]:
        return self.summary.get("seeds", [self.config.get("seed", 0)])

    def history(self, key: str, seed: int | None = None) -> tuple[list, list]:
        """(rounds, values) of metric ``key`` at every evaluation of ``seed`` (default: the first)."""
        seed = self.seeds[0] if seed is None else seed
        rows = [r for r in self.metrics if r.get("seed", seed) == seed and r.get(key) is not None]
        return [r["round"] for r in rows], [r[key] for r in rows]

    def plot(self, key: str | None = None):
        """A matplotlib Figure of ``key`` (default: the headline metric) against round."""
        return plot([self], key)

    def __repr__(self) -> str:
        s = self.summary
        from fedjax_sim.report import headline

        head = headline(s)
        value = s["final"].get(f"global_{head}", s["final"].get(f"personalized_{head}"))
        shown = "-" if value is None else f"{value:.4f}"
        return (f"Result({s['algorithm']} on {s['dataset']}, {s['rounds_completed']} rounds, "
                f"{len(self.seeds)} seed(s), {head} {shown}, status {self.status}, out={str(self.out)!r})")


def _to_config(config, overrides: dict):
    from fedjax_sim import algorithms  # noqa: F401  (registers the algorithms' config sections)
    from fedjax_sim import config as config_lib

    if isinstance(config, config_lib.Config):
        cfg = config_lib.copy_config(config)
    else:
        cfg = config_lib.Config()
        if isinstance(config, dict):
            raw = dict(config)
            raw.pop("resolved", None)
            config_lib.apply_dict(cfg, raw)
        elif isinstance(config, (str, Path)):
            path = Path(config)
            path = path / "config.json" if path.is_dir() else path
            config_lib.apply_dict(cfg, config_lib.read_config_file(path, "config"))
        elif config is not None:
            raise ConfigError("config", type(config).__name__, "a Config, a dict of config fields, or a path "
                                                               "to a JSON config or a run directory")
    config_lib.apply_dict(cfg, {k.replace("__", "."): v for k, v in overrides.items()})
    if "," in cfg.algorithm:
        raise ConfigError("algorithm", cfg.algorithm, "one algorithm per run (run each, then compare them)")
    return cfg


def run(config=None, *, out: str | None = None, seeds: int | Iterable[int] | None = None,
        progress: bool = False, **overrides) -> Result:
    """Runs one experiment and returns its `Result` (see the module docstring).

    Args:
      config: a `Config`, a dict of fields, a JSON config path or a run directory, or None (defaults).
      out: the run directory (default runs/<time>-<algorithm>-<dataset>, as the CLI); it must be new.
      seeds: a count N (seeds seed..seed+N-1, as ``--seeds N``) or a list of seeds.
      progress: show the progress bar.
      overrides: fields, ``section__field=value`` for ``section.field``.
    """
    from fedjax_sim import runner
    from fedjax_sim.cli import parse_seeds
    from fedjax_sim import config as config_lib

    cfg = _to_config(config, overrides)
    if seeds is not None:
        cfg.seeds = parse_seeds(str(seeds), cfg.seed) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    if out is not None:
        cfg.out = str(out)
    cfg.out = cfg.out or runner._default_out(cfg)
    config_lib.validate(cfg)
    try:
        runner.run(cfg, progress=progress)
    except DivergedError as e:
        warnings.warn(str(e), RuntimeWarning, stacklevel=2)
    return Result(cfg.out)


def load_run(path) -> Result:
    """The `Result` of a finished run directory (its summary.json must exist)."""
    path = Path(path)
    if not (path / "summary.json").is_file():
        raise ConfigError("path", str(path), "a run directory holding summary.json (written when a run "
                                             "finishes; a comparison's directory holds one per algorithm)")
    return Result(path)


def _results(runs) -> list[Result]:
    return [r if isinstance(r, Result) else load_run(r) for r in runs]


class Comparison:
    """Runs side by side: ``table`` (markdown: mean ± std, paired intervals against ``baselines``)
    and the runs' ``results``; shown as markdown in a notebook."""

    def __init__(self, results: list[Result], table: str):
        self.results, self.table = results, table

    def _repr_markdown_(self) -> str:
        return self.table

    def __str__(self) -> str:
        return self.table


def compare(runs, baselines: list[str] | None = None, metric: str | None = None,
            names: list[str] | None = None) -> Comparison:
    """`report.comparison_table` of several runs (run directories or `Result`s), one row per
    run named by its algorithm or by ``names`` (needed when runs share an algorithm, e.g. a
    budget sweep), paired by seed against ``baselines`` (row names; default: the first run)."""
    from fedjax_sim.report import comparison_table

    results = _results(runs)
    if names is not None and len(names) != len(results):
        raise ConfigError("names", ",".join(map(str, names)), f"{len(results)} names, one per run")
    summaries = [r.summary if names is None else {**r.summary, "algorithm": n} for r, n in
                 zip(results, names or [None] * len(results))]
    names = [s["algorithm"] for s in summaries]
    if len(set(names)) != len(names):
        raise ConfigError("names", ",".join(names), "distinct row names (runs of one algorithm need names=)")
    base = list(baselines) if baselines is not None else names[:1]
    unknown = [b for b in base if b not in names]
    if unknown:
        raise ConfigError("baselines", ",".join(unknown), "algorithms of these runs: " + ", ".join(names))
    return Comparison(results, comparison_table(summaries, base, metric))


def plot(runs, key: str | None = None):
    """A matplotlib Figure of ``key`` (default: the first run's personalized headline) against
    round (or virtual time), one curve per run: the mean over seeds and their min-max band."""
    from fedjax_sim.report import comparison_figure

    return comparison_figure([r.out for r in _results(runs)], key)


__all__ = ["Comparison", "Result", "compare", "load_run", "plot", "run"]
