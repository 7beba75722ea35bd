"""Hyper-parameter selection on a validation split: which grid point each algorithm keeps.

A sweep trains every grid point on the clients' training rows minus a stratified validation
share (``data.validation_fraction``), evaluates on those validation rows only, and selects the
point with the best final-round validation metric, mean over seeds (a point where any seed
diverged is not eligible). The test split is never evaluated, so a test result reported after
a sweep is not selected on test. The selected config (validation share set back, seeds and run
directory cleared) is written as ``<algorithm>/best_config.json``, ready for
``fedjax-sim run --config ... --seeds N``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

from fedjax_sim import checkpoints, report
from fedjax_sim.errors import ConfigError

DEFAULT_VALIDATION_FRACTION = 0.2
LOWER_IS_BETTER = ("loss", "mse", "mae")


class SweepResult(NamedTuple):
    """One algorithm's sweep: grid point names [P], their summaries [P], the selection
    ``metric``, whether higher is better, the index of the selected point (None when every
    point diverged) and its config for the final run."""

    names: list
    summaries: list
    metric: str
    higher: bool
    best: int | None
    best_config: dict | None


def selectable_metrics(prep) -> list[str]:
    """The final metrics a sweep of ``prep``'s algorithm can select on: ``personalized_<m>``
    and ``pooled_<m>`` for every metric of the task, plus ``global_<m>`` when there is a global
    model (traced with `jax.eval_shape`, nothing compiles)."""
    import jax

    from fedjax_sim.tasks import is_count

    params = jax.eval_shape(prep.model.init, jax.random.PRNGKey(0))
    rows = jax.tree.map(lambda a: a[:, 0], prep.data.test)
    batch = {**rows, "mask": jax.ShapeDtypeStruct(rows["x"].shape[:1], bool)}
    names = [k for k in jax.eval_shape(prep.task.metrics, params, batch) if not is_count(k)]
    if prep.task.target_kind == "multi":  # what `core.evaluate.evaluate_multitask` reports
        spec = prep.data.tasks
        derived = ["delta_m", "personalized_delta_m", "personalized_loss",
                   *(f"delta_m_{d}" for d in spec.domain_names)]
        return derived + [f"personalized_{name}" for name in names]
    scopes = ["personalized", "pooled"] + (["global"] if prep.algorithm.global_params is not None else [])
    return [f"{scope}_{name}" for scope in scopes for name in names]


def check_select(metric: str | None, prep) -> None:
    """ConfigError naming ``--select`` unless ``metric`` is one `selectable_metrics` gives."""
    allowed = selectable_metrics(prep)
    if metric is not None and metric not in allowed:
        raise ConfigError("--select", metric, f"a final metric of {prep.config.algorithm}: one of {', '.join(allowed)}")


def select(names: list, summaries: list, metric: str | None = None) -> SweepResult:
    """Picks the grid point with the best mean final ``metric`` over seeds (ties: first); its
    config for the final run has ``data.validation_fraction`` 0 (train on all training rows,
    evaluate on the test split)."""
    metric = metric or report.metric_name(summaries[0])
    base = metric.split("_", 1)[1] if metric.startswith(("personalized_", "pooled_", "global_")) else metric
    # the task says which way its headline goes; other metrics: losses and errors go down
    higher = (report.higher_is_better(summaries[0]) if base == report.headline(summaries[0])
              else base not in LOWER_IS_BETTER)
    scores = []
    for s in summaries:  # the metric was checked before the sweep ran (`check_select`)
        scores.append(s["final"][metric] if s["status"] == "ok" else None)
    valid = [i for i, v in enumerate(scores) if v is not None]
    best = None
    if valid:
        best = (max if higher else min)(valid, key=lambda i: (scores[i], -i) if higher else (scores[i], i))
    config = None
    if best is not None:
        config = {k: v for k, v in summaries[best]["config"].items() if k not in ("resolved", "out", "seeds")}
        config["data"] = {**config["data"], "validation_fraction": 0.0}
    return SweepResult(names, summaries, metric, higher, best, config)


def _cell(summary: dict, metric: str, which: str) -> str:
    if summary["status"] != "ok":
        return "diverged"
    return report.mean_std_cell(list(report.seed_values(summary, metric, which).values()), metric)


def sweep_table(results: dict, grid: list, seeds: list, fraction: float) -> str:
    """Markdown: per algorithm, one row per grid point with the validation metric (final round
    and best over rounds, mean ± std over seeds); the selected point in bold."""
    lines = []
    for name, res in results.items():
        unit = " (%)" if report._percent(res.metric) else ""
        lines += [f"### {name}", "",
                  f"validation {res.metric}{unit}, mean ± std over {len(seeds)} seed(s) "
                  f"({', '.join(map(str, seeds))}); {'higher' if res.higher else 'lower'} is better; "
                  f"validation = {fraction:g} of each client's training rows", "",
                  "| grid point | final round | best over rounds | selected |", "|---|---|---|---|"]
        for i, (point, s) in enumerate(zip(res.names, res.summaries)):
            chosen = i == res.best
            label = f"**{point}**" if chosen else point
            lines.append(f"| {label} | {_cell(s, res.metric, 'final')} | "
                         f"{_cell(s, res.metric, 'best') if s['status'] == 'ok' and _has_best(s, res.metric) else '-'} | "
                         f"{'yes' if chosen else ''} |")
        if res.best is None:
            lines.append("\nno grid point finished on every seed: nothing selected")
        lines.append("")
    grid_text = "; ".join(f"{k} in {{{', '.join(map(str, v))}}}" for k, v, _ in grid)
    lines.append(f"grid: {grid_text}. Selection: the final-round validation metric, mean over seeds; "
                 "a point where a seed diverged is not eligible. The test split was not evaluated.")
    return "\n".join(lines)


def _has_best(summary: dict, metric: str) -> bool:
    return all(metric in e.get("best", {}) for e in summary.get("per_seed", []))


def to_json(results: dict) -> dict:
    """sweep.json: per algorithm the metric, every point's mean/std and the selection."""
    out = {}
    for name, res in results.items():
        points = []
        for point, s in zip(res.names, res.summaries):
            entry = {"point": point, "out": s["config"]["out"], "status": s["status"]}
            if s["status"] == "ok":
                entry.update(mean=s["final"][res.metric], std=s["final_std"].get(res.metric, 0.0))
            points.append(entry)
        out[name] = {"metric": res.metric, "higher_is_better": res.higher, "points": points,
                     "selected": None if res.best is None else res.names[res.best],
                     "best_config": res.best_config}
    return out


# A sweep's own command line (without --out), written as it starts: ``fedjax-sim sweep --resume
# DIR`` parses it again, so an interrupted sweep continues with the settings it began with.
ARGS_FILE = "sweep_args.json"
CONFIG_COPY = "sweep_config.json"  # the sweep's --config file as it began (its command line names this)


def enclosing_sweep(path) -> Path | None:
    """The sweep directory ``path`` is, or is an algorithm folder or grid point of (``<sweep>/
    <algorithm>/<point>``): the first of it, its parent and grandparent holding `ARGS_FILE`."""
    path = Path(path).resolve()
    return next((d for d in (path, path.parent, path.parent.parent) if (d / ARGS_FILE).is_file()), None)


def point_status(out: Path, cfg) -> str:
    """Where grid point ``cfg``'s run directory ``out`` stands when a sweep resumes: ``new`` (no
    run there), ``done`` (its summary says it finished, trained to the end or diverged),
    ``checkpoint`` (not finished; it holds a checkpoint: a program's state to continue from, or
    the record of a program that finished) or ``restart`` (started, nothing to continue from:
    killed before a checkpoint). Raises ConfigError when the directory holds a run of other
    settings (e.g. a default that a newer fedjax_sim changed; the ``--config`` file is read from the
    sweep's own copy, `CONFIG_COPY`)."""
    from fedjax_sim import config as config_lib
    from fedjax_sim import jsonio

    if not (out / "config.json").is_file():
        return "new"
    sweep_dir = str(out.parent.parent)  # <sweep>/<algorithm>/<point>
    try:
        stored = dict(config_lib._flatten(json.loads((out / "config.json").read_text())))
    except ValueError:
        raise ConfigError("--resume", sweep_dir, f"a sweep whose run directories are intact "
                                                 f"({out / 'config.json'} is not JSON)") from None
    want = dict(config_lib._flatten(json.loads(jsonio.dumps(config_lib.to_dict(cfg)))))
    for key in sorted(set(stored) | set(want)):
        if key == "out" or key.startswith("resolved."):
            continue
        if stored.get(key) != want.get(key):
            raise ConfigError("--resume", sweep_dir, f"a sweep whose settings are unchanged ({out.name} ran with "
                                                     f"{key}={stored.get(key)!r}, the sweep now gives "
                                                     f"{want.get(key)!r}); start it in a new --out")
    try:
        status = json.loads((out / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):  # none yet, or damaged: the point runs again
        status = None
    if status in ("ok", "diverged"):
        return "done"
    return "checkpoint" if checkpoints.in_run(out) else "restart"


def resume_action(outs: list[Path], configs: list) -> str:
    """What a resumed sweep does with a group of grid points (trained together, `trials.plan`):
    ``skip`` (every point finished: its summaries are read back), ``continue`` (a point holds a
    checkpoint, whatever the summaries say: the group's, in its first point's directory, or,
    points and seeds trained one after another, those of the programs that ran; `trials.run_group`
    continues each program from its own, rebuilds those that finished and runs again those
    without) or ``run`` (from the start; what a started point wrote is removed first, by
    `clear`)."""
    states = [point_status(out, cfg) for out, cfg in zip(outs, configs)]  # also refuses changed settings
    if set(states) == {"done"}:
        return "skip"
    return "continue" if any(checkpoints.in_run(out) for out in outs) else "run"


def clear(outs: list[Path]) -> None:
    """Removes the run directories (those holding a config.json) of grid points about to run
    again from the start."""
    for out in outs:
        if (out / "config.json").is_file():
            shutil.rmtree(out)
