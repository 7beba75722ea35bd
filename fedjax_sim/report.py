"""Tables and plots generated from run directories (never typed by hand).

Run summaries (summary.json) carry a seed axis: ``seeds`` [S], ``final`` (mean over seeds),
``final_std`` (sample std over seeds) and ``per_seed`` [S] of ``{"seed", "final", "best"}``.
Older and hand-made summaries lack those keys; they read as one seed whose final is
``summary["final"]``. Comparisons between methods are paired by seed id (same seed = same
partition, initialization and sampled keys), never by position in a list.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedjax_sim import jsonio
from fedjax_sim.experiments import BOOTSTRAP_SEED, paired_bootstrap

# Bootstrap draws for every interval in this module; named once so the caption states what ran.
RESAMPLES = 10_000
FEW_SEEDS = 5  # below this many paired seeds the table warns that the interval is too narrow
SCOPES = ("personalized", "global")
WHICH = ("final", "best")


def _fmt(v, digits=4):
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def headline(summary: dict) -> str:
    """The metric a run is judged by (``summary["task"]["headline"]``; older summaries and
    hand-made ones without it: the first of accuracy / mse / mae present in ``final``)."""
    if "task" in summary:
        return summary["task"]["headline"]
    final = summary.get("final", {})
    for name in ("accuracy", "mse", "mae"):
        if f"personalized_{name}" in final or f"global_{name}" in final:
            return name
    return "accuracy"


def _value_cell(summary: dict, key: str) -> str:
    """``final[key]``, or "mean ± std" when the summary averages more than one seed."""
    v = summary["final"].get(key)
    std = summary.get("final_std", {}).get(key)
    if v is None or std is None or len(summary.get("seeds", ())) < 2:
        return _fmt(v)
    return f"{_fmt(v)} ± {_fmt(std)}"


def summary_table(summaries: list[dict]) -> str:
    """Markdown table of final headline metrics and timing, one row per run summary (multi-seed
    summaries: mean ± sample std over seeds in the metric cells). A run with diverged seeds is
    marked in its algorithm cell; its values are from its last finite evaluation."""
    names = sorted({headline(s) for s in summaries})
    cols = [f"{scope} {name}" for name in names for scope in ("global", "personalized")]
    rows = ["| algorithm | dataset | rounds | " + " | ".join(cols) + " | compile s | train s | samples/s |",
            "|---|---|---|" + "---|" * len(cols) + "---|---|---|"]
    for s in summaries:
        t = s["timing"]
        values = " | ".join(_value_cell(s, f"{scope}_{name}") for name in names
                            for scope in ("global", "personalized"))
        name = s["algorithm"]
        bad = [e for e in s.get("per_seed", []) if e.get("status", "ok") != "ok"]
        if bad:  # the values are the last finite evaluation's (up to rounds_completed)
            name += f" (**diverged**: {len(bad)}/{len(s['per_seed'])} seeds)"
        rows.append(f"| {name} | {s['dataset']} | {s['rounds_completed']} | {values} | "
                    f"{t['compile_seconds']:.1f} | {t['train_seconds']:.1f} | {t['samples_per_second']:,.0f} |")
    return "\n".join(rows)


def load_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def step_at(times, values, grid) -> np.ndarray:
    """The value of the last evaluation at or before each time of ``grid`` (the model a user holds
    at that time; the first evaluation before it): times, values [E] sorted by time -> [len(grid)]."""
    times, values = np.asarray(times, np.float64), np.asarray(values, np.float64)
    idx = np.searchsorted(times, np.asarray(grid, np.float64), side="right") - 1
    return values[np.maximum(idx, 0)]


STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("x", "--"), ("P", "-."), ("*", ":")]


def comparison_plot(run_dirs: list[Path], path: Path, key: str | None = None) -> None:
    """Writes `comparison_figure` to ``path``."""
    jsonio.write_figure(comparison_figure(run_dirs, key), path, dpi=120)


def comparison_figure(run_dirs: list[Path], key: str | None = None):
    """A matplotlib Figure (no pyplot state, so it works in scripts and notebooks alike) with one
    curve per run of ``key`` against round (default: ``personalized_<headline>`` of the first
    run). With several seeds: the mean over the seeds that finished, and a band from their min to
    max (a diverged seed's records are left out)."""
    if key is None:
        key = "personalized_" + headline(json.loads((Path(run_dirs[0]) / "summary.json").read_text()))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    seeds_shown = 1
    histories = []
    for d in run_dirs:
        summary = json.loads((Path(d) / "summary.json").read_text())
        finished = {r["seed"] for r in _per_seed(summary)}
        histories.append((summary, [h for h in load_metrics(d) if key in h and ("seed" not in h or h["seed"] in finished)]))
    clocked = all(h and all("virtual_time" in r for r in h) for _, h in histories)
    for summary, hist in histories:
        if clocked:  # runs on a virtual clock: rounds of different methods are not comparable
            seeds = sorted({h.get("seed", 0) for h in hist})
            curves = [([h["virtual_time"] for h in hist if h.get("seed", 0) == s],
                       [h[key] for h in hist if h.get("seed", 0) == s]) for s in seeds]
            grid = np.linspace(0.0, min(t[-1] for t, _ in curves), 200)
            values = np.array([step_at(t, v, grid) for t, v in curves])
            seeds_shown = max(seeds_shown, len(curves))
            line, = ax.plot(grid, values.mean(0), label=summary["algorithm"])
            if len(curves) > 1:
                ax.fill_between(grid, values.min(0), values.max(0), color=line.get_color(), alpha=0.15, lw=0)
            continue
        rounds = sorted({h["round"] for h in hist})
        per_round = [[h[key] for h in hist if h["round"] == r] for r in rounds]
        seeds_shown = max(seeds_shown, max((len(v) for v in per_round), default=1))
        # a marker and dash pattern per run, so curves that coincide stay distinguishable
        style = STYLES[len(ax.lines) % len(STYLES)]
        line, = ax.plot(rounds, [np.mean(v) for v in per_round], marker=style[0], ls=style[1], ms=4,
                        mfc="none", label=summary["algorithm"])
        if seeds_shown > 1:
            ax.fill_between(rounds, [min(v) for v in per_round], [max(v) for v in per_round],
                            color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("virtual time" if clocked else "round")
    if not clocked:  # rounds are integers: no fractional ticks
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(key.replace("_", " ") + (" (mean over seeds, band: min-max)" if seeds_shown > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Seeds: per-seed values, paired comparison tables and strip plots.
# ---------------------------------------------------------------------------------------------

def higher_is_better(summary: dict) -> bool:
    """``summary["task"]["higher_is_better"]``; without it, from the headline (errors such as
    mse / mae are lower-is-better, everything else higher)."""
    task = summary.get("task", {})
    if "higher_is_better" in task:
        return bool(task["higher_is_better"])
    return headline(summary) not in ("mse", "mae", "loss")


def metric_name(summary: dict, scope: str | None = None) -> str:
    """The metric a comparison is judged by: ``personalized_<headline>`` when ``final`` has it,
    else ``global_<headline>``; ``scope`` ("personalized" / "global") forces one (present or
    not: `seed_values` reports a missing one)."""
    name = headline(summary)
    if scope is not None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES} or None, got {scope!r}")
        return f"{scope}_{name}"
    return f"personalized_{name}" if f"personalized_{name}" in summary.get("final", {}) else f"global_{name}"


def _per_seed(summary: dict) -> list[dict]:
    """[S] records ``{"seed": int, "final": dict, "best": dict (optional)}`` of the seeds that
    finished (a diverged seed's last scores are from before it diverged: they are not results);
    an old summary without ``per_seed`` is one seed (its config's seed, default 0), no "best"."""
    if "per_seed" in summary:
        return [r for r in summary["per_seed"] if r.get("status", "ok") == "ok"]
    return [{"seed": int(summary.get("config", {}).get("seed", 0)), "final": summary["final"]}]


def seed_values(summary: dict, metric: str, which: str = "final") -> dict[int, float]:
    """seed id -> value of ``metric`` in that seed's ``which`` ("final": after the last round;
    "best": best over the evaluated rounds after round 0). Raises ValueError naming the algorithm
    and metric when any seed lacks it, so a table never silently averages fewer seeds than the run
    has."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    out = {}
    for rec in _per_seed(summary):
        v = rec.get(which, {}).get(metric)
        if v is None:
            raise ValueError(f"{summary.get('algorithm', '?')}: no {which} {metric!r} for seed "
                             f"{rec.get('seed')} (has: {sorted(rec.get(which, {}))})")
        out[int(rec["seed"])] = float(v)
    return out


def _percent(metric: str) -> bool:
    """Accuracy-like metrics (in [0, 1]) are shown in percent; everything else as given."""
    return "accuracy" in metric


def _mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0.0 for one value) of [S] values, as in ``final_std``."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def mean_std_cell(values: list, metric: str) -> str:
    """"mean ± sample std" of per-seed values in the metric's display units (percent for
    accuracies, 2 decimals; raw values to 4 significant digits, so an MSE of 1e-4 is not shown
    as 0.0001 ± 0.0000); "(one seed)" instead of a std a single value does not have; "no seed
    finished" for none."""
    if not values:
        return "no seed finished"
    spec = ".2f" if _percent(metric) else ".4g"
    scale = 100.0 if _percent(metric) else 1.0
    m, sd = _mean_std(values)
    if len(values) == 1:  # a sample std of one value is undefined, not 0
        return f"{scale * m:{spec}} (one seed)"
    return f"{scale * m:{spec}} ± {scale * sd:{spec}}"


def _pick_metric(summaries: list[dict]) -> str:
    """`metric_name` shared by all summaries; if they disagree (one run has no personalized
    model), the scope every summary has, personalized first."""
    heads = sorted({headline(s) for s in summaries})
    if len(heads) != 1:
        raise ValueError(f"summaries judge different headline metrics {heads}; pass metric=")
    # runs where every seed diverged have no final metrics: they do not decide the metric
    live = [s for s in summaries if _per_seed(s)] or summaries
    names = {metric_name(s) for s in live}
    if len(names) == 1:
        return names.pop()
    for scope in SCOPES:
        name = f"{scope}_{heads[0]}"
        if all(name in s.get("final", {}) for s in live):
            return name
    raise ValueError(f"no {heads[0]} metric is present in every summary; pass metric=")


def _by_algorithm(summaries: list[dict]) -> dict[str, dict]:
    """algorithm -> summary; rows and baselines are named by algorithm, so names must be unique."""
    names = [s["algorithm"] for s in summaries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"one summary per algorithm expected, repeated: {dupes}")
    return dict(zip(names, summaries))


def _delta_cell(a: dict[int, float], b: dict[int, float], level: float, scale: float, digits: int) -> str:
    """"mean [lo, hi] (wins/n)" of a - b over the seed ids both have (paired by id)."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return f"n/a ({len(shared)} shared seeds)"
    r = paired_bootstrap([a[s] for s in shared], [b[s] for s in shared], level=level,
                         resamples=RESAMPLES, seed=BOOTSTRAP_SEED)
    return (f"{scale * r.mean:+.{digits}f} [{scale * r.lo:+.{digits}f}, {scale * r.hi:+.{digits}f}] "
            f"({r.wins}/{r.n})")


def comparison_table(summaries: list[dict], baselines: list[str], metric: str | None = None,
                     secondary: str | None = "best", level: float = 0.95) -> str:
    """Markdown caption + table comparing runs over seeds, one row per algorithm.

    Args:
      summaries: run summaries (new or old format), one per algorithm.
      baselines: algorithm names; each adds a column "Δ vs <name>" with the paired bootstrap
        interval of (row - baseline) over the seeds both share.
      metric: key in each seed's final (default: `metric_name`, agreed across summaries).
      secondary: "best" adds a best-over-rounds column when any summary has per-seed "best"
        values ("—" where one does not); None leaves it out.
      level: interval coverage.

    Returns:
      A units line, the table, and notes (interval method, seeds, final vs best) as one string.

    Raises:
      ValueError: a baseline that is not one of the summaries' algorithms, repeated algorithms,
        a metric missing from a run, or an unknown ``secondary``.
    """
    runs = _by_algorithm(summaries)
    unknown = [b for b in baselines if b not in runs]
    if unknown:
        raise ValueError(f"unknown baseline {', '.join(map(repr, unknown))}: "
                         f"allowed names are {', '.join(runs)}")
    if secondary not in (None, "best"):
        raise ValueError(f"secondary must be 'best' or None, got {secondary!r}")
    metric = metric or _pick_metric(summaries)
    scale, digits, unit = (100.0, 2, "percent (Δ in percentage points)") if _percent(metric) \
        else (1.0, 4, "raw units")
    finals = {name: seed_values(s, metric) for name, s in runs.items()}
    # best-over-rounds is optional per run (old summaries have none): a missing one is a "—" cell
    bests = {}
    if secondary is not None:
        for name, s in runs.items():
            try:
                bests[name] = seed_values(s, metric, secondary)
            except ValueError:
                pass

    def pm(values: dict[int, float]) -> str:
        return mean_std_cell(list(values.values()), metric)

    header = ["algorithm", "seeds", f"{metric} (final)"]
    if bests:
        header.append(f"{metric} (best)")
    header += [f"Δ vs {b}" for b in baselines]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in runs:
        total = len(runs[name].get("per_seed", [None]))
        n = str(len(finals[name])) + (f" of {total} (the rest diverged)" if len(finals[name]) < total else "")
        cells = [name, n, pm(finals[name])]
        if bests:
            cells.append(pm(bests[name]) if name in bests else "—")
        cells += ["—" if b == name else _delta_cell(finals[name], finals[b], level, scale, digits)
                  for b in baselines]
        rows.append("| " + " | ".join(cells) + " |")

    better = "higher" if higher_is_better(summaries[0]) else "lower"
    counts = sorted({len(v) for v in finals.values()})
    seeds_line = (f"Seeds: {counts[0]} per run" if len(counts) == 1
                  else f"Seeds: {counts[0]}–{counts[-1]} per run (column *seeds*)")
    seeds_line += (f", ids {sorted(set().union(*finals.values()))}. Δ pairs runs by seed id and "
                   "uses only the seeds both runs finished; fewer than 2 shared seeds give n/a.")
    if baselines and counts[0] < FEW_SEEDS:
        seeds_line += (f" With fewer than {FEW_SEEDS} seeds a percentile bootstrap interval is too "
                       "narrow (with 3 or fewer it spans little more than the per-seed differences "
                       "themselves): read it as a range, not a 95% interval.")
    lines = [
        f"`{metric}` in {unit}, mean ± sample std (ddof=1) over seeds; {better} is better.",
        "",
        *rows,
        "",
        f"Δ vs *b* = row − *b* (so {'positive' if better == 'higher' else 'negative'} favours the "
        f"row): mean of the per-seed differences [{100 * level:g}% paired percentile bootstrap "
        f"interval over seeds, {RESAMPLES} resamples, fixed bootstrap seed {BOOTSTRAP_SEED}] "
        f"(k/n = seeds where the row's value is higher than *b*'s, of n shared seeds).",
        seeds_line,
        "*final* = value after the last round (the Δ columns compare it)"
        + (f"; *best* = {'max' if better == 'higher' else 'min'} over evaluated rounds per seed "
           "(optimistic: it picks the round on the test split)." if bests else "."),
    ]
    return "\n".join(lines)


def bootstrap_mean_interval(values, level: float = 0.95, resamples: int = RESAMPLES,
                            seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of [S] values (S >= 1; one value: a point)."""
    v = np.asarray(values, np.float64)
    means = v[np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _jitter(seed_ids: list[int], width: float = 0.24) -> dict[int, float]:
    """seed id -> horizontal offset in [-width/2, width/2], by rank: deterministic, and the same
    seed sits at the same offset in every column so pairing lines stay readable."""
    ids = sorted(seed_ids)
    if len(ids) == 1:
        return {ids[0]: 0.0}
    return {s: width * (i / (len(ids) - 1) - 0.5) for i, s in enumerate(ids)}


def seed_points_plot(summaries: list[dict], path, metric: str | None = None,
                     level: float = 0.95) -> None:
    """Strip plot of final values per seed: one column per algorithm (in summary order), one
    point per seed, the mean with its ``level`` bootstrap interval as an error bar, and light
    grey lines joining the same seed id across columns (the pairing the Δ columns use)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    runs = _by_algorithm(summaries)
    metric = metric or _pick_metric(summaries)
    scale = 100.0 if _percent(metric) else 1.0
    values = {name: seed_values(s, metric) for name, s in runs.items()}
    values = {name: v for name, v in values.items() if v}  # every seed diverged: no column
    runs = {name: runs[name] for name in values}
    if not values:
        return
    offset = _jitter(list(set().union(*values.values())))

    fig = Figure(figsize=(max(3.5, 1.3 * len(runs) + 1.5), 3.8))
    ax = fig.subplots()
    for seed in offset:  # pairing lines first, so points and means draw on top
        xs = [(i + offset[seed], scale * v[seed]) for i, v in enumerate(values.values()) if seed in v]
        if len(xs) > 1:
            ax.plot(*zip(*xs), color="0.8", lw=0.8, zorder=1)
    for i, (name, v) in enumerate(values.items()):
        ys = scale * np.array([v[s] for s in sorted(v)])
        ax.scatter([i + offset[s] for s in sorted(v)], ys, s=18, zorder=2, label=None)
        mean = float(ys.mean())
        lo, hi = bootstrap_mean_interval(ys, level)
        ax.errorbar([i], [mean], yerr=[[mean - lo], [hi - mean]], fmt="_", color="k", ms=22,
                    mew=2, capsize=4, zorder=3)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels(list(runs), rotation=20, ha="right", fontsize=8)
    better = "higher" if higher_is_better(summaries[0]) else "lower"
    ax.set_ylabel(f"final {metric.replace('_', ' ')}{' (%)' if scale != 1.0 else ''}\n"
                  f"({better} is better)", fontsize=8)
    ax.set_title(f"per seed; bar: mean, {100 * level:g}% bootstrap interval", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    jsonio.write_figure(fig, path, dpi=120)
