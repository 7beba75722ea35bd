"""FedReMa and its baselines, each tuned on a validation split, then compared over seeds.

  python experiments/fedrema/run.py                      # digits, config.json as is
  python experiments/fedrema/run.py --dataset cifar10    # same code path, TFDS cifar10
  python experiments/fedrema/run.py --report-only        # regenerate table/plot from run dirs

Protocol (fixed in config.json before any run):
  1. tune: ``fedjax-sim sweep`` of every method over the same grid (config.json ``tune.grid``) on
     the tuning seeds, selected on a validation split carved from each client's training rows by
     the final-round personalized accuracy (mean over tuning seeds); the test split is not seen.
  2. final: ``fedjax-sim run`` of each method's selected config on the final seeds (disjoint from
     the tuning seeds), all trained on full training rows, evaluated on the test split. Seeds are
     one vmapped program per method.
  3. report: final-round personalized accuracy is the metric (best over rounds secondary); paired
     95% bootstrap intervals over seeds against each baseline and of each ablation against
     FedReMa (`fedjax_sim.report.comparison_table`).

Run directories go to runs/fedrema/<dataset>/{tune,final/<method>} (git-ignored); the generated
results (never typed by hand) go next to this file: results.md and personalized_accuracy.png,
seed_points.png (suffixed _<dataset> for other datasets).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _cli(args: list[str]) -> None:
    from fedjax_sim.cli import main

    print("fedjax-sim " + " ".join(args), flush=True)
    code = main(args)
    if code != 0:
        raise SystemExit(f"fedjax-sim {' '.join(args)} exited with {code}")


def _sweep(spec: dict, methods: list, grid: dict, out: Path, progress: bool) -> None:
    t = spec["tune"]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec["base"], f)
    from fedjax_sim.protocol import seed_args

    args = ["sweep", "--config", f.name, "--algorithm", ",".join(methods),
            *seed_args(t["seeds"]), "--validation-fraction", str(t["validation_fraction"]),
            "--out", str(out)]
    for key, values in grid.items():
        args += ["--grid", f"{key}={','.join(map(str, values))}"]
    _cli(args + ([] if progress else ["--no-progress"]))


def _sweep_dirs(runs_dir: Path) -> list[Path]:
    """The grid sweep first, then its edge extensions in the order they ran."""
    def order(p: Path):
        m = re.fullmatch(r"tune_ext(\d+)([a-z]?)", p.name)
        return (int(m.group(1)), m.group(2)) if m else (10 ** 9, p.name)

    ext = sorted(runs_dir.glob("tune_ext*"), key=order)
    return [d for d in [runs_dir / "tune", *ext] if (d / "sweep.json").exists()]


def selection(spec: dict, runs_dir: Path) -> dict:
    """method -> `sweep.SweepResult` over every tuning point it ran (grid and extensions), so the
    selection rule is `fedjax_sim.sweep.select`'s over the union (ties: the earlier point)."""
    from fedjax_sim import sweep

    out = {}
    for method in spec["methods"]:
        names, summaries = [], []
        for d in _sweep_dirs(runs_dir):
            for point in _load(d / "sweep.json").get(method, {}).get("points", []):
                names.append(point["point"])
                summaries.append(_load(Path(point["out"]) / "summary.json"))
        if summaries:
            out[method] = sweep.select(names, summaries)
    return out


def tune(spec: dict, runs_dir: Path, progress: bool) -> None:
    """The grid sweep over every method, then edge extensions: a method whose selected value is
    the largest (smallest) it tried gets the next value up (down) by ``tune.extend.factor``, up to
    ``tune.extend.max`` times, so no method is left tuned at the edge of its grid. Each sweep is
    skipped when its sweep.json exists."""
    t = spec["tune"]
    if not (runs_dir / "tune" / "sweep.json").exists():
        _sweep(spec, spec["methods"], t["grid"], runs_dir / "tune", progress)
    (field, values), = t["grid"].items()  # edge extension is defined for a one-field grid
    ext = t.get("extend", {"factor": 3.0, "max": 0})
    for k in range(1, ext["max"] + 1):
        todo: dict[float, list] = {}
        for method, res in selection(spec, runs_dir).items():
            if res.best is None:
                continue
            tried = [float(n.split("=", 1)[1]) for n in res.names]
            chosen = tried[res.best]
            if chosen == max(tried):
                todo.setdefault(float(f"{chosen * ext['factor']:.3g}"), []).append(method)
            elif chosen == min(tried):
                todo.setdefault(float(f"{chosen / ext['factor']:.3g}"), []).append(method)
        if not todo:
            return
        for i, (value, methods) in enumerate(sorted(todo.items())):
            out = runs_dir / f"tune_ext{k}{'abcdefgh'[i]}" if len(todo) > 1 else runs_dir / f"tune_ext{k}"
            if not (out / "sweep.json").exists():
                _sweep(spec, methods, {field: [value]}, out, progress)


def final(spec: dict, runs_dir: Path, progress: bool) -> None:
    """Each method's selected config on the final seeds (skipped when its summary exists)."""
    chosen = selection(spec, runs_dir)
    for method in spec["methods"]:
        out = runs_dir / "final" / method
        if (out / "summary.json").exists():
            print(f"skip {out} (done)")
            continue
        res = chosen.get(method)
        if res is None or res.best is None:
            raise SystemExit(f"tuning selected nothing for {method} (see {runs_dir}/tune*/sweep.md)")
        config = runs_dir / "final" / f"{method}.config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(res.best_config, indent=2))
        from fedjax_sim.protocol import seed_args

        _cli(["run", "--config", str(config), *seed_args(spec["seeds"]),
              "--out", str(out)] + ([] if progress else ["--no-progress"]))


def same_group_share(dep: np.ndarray, data_cfg: dict) -> float:
    """Mean over clients of the share of post-CCP peer weight (G without self) on peers of the
    client's own dominant-class group (spec §5.2 sanity check; chance = (C/G - 1) / (C - 1))."""
    from fedjax_sim.data.partition import dominant_class_groups

    c = dep.shape[0]
    n_groups = len(dominant_class_groups(10, data_cfg.get("dominant_classes", 3)))
    group = np.arange(c) * n_groups // c
    peers = dep * (1 - np.eye(c))
    same = (group[:, None] == group[None, :]) & ~np.eye(c, dtype=bool)
    tot = peers.sum(1)
    ok = tot > 0
    return float(np.mean((peers * same).sum(1)[ok] / tot[ok])) if ok.any() else float("nan")


def collect(spec: dict, runs_dir: Path) -> dict:
    """method -> final summary (only finished methods)."""
    out = {}
    for method in spec["methods"]:
        path = runs_dir / "final" / method / "summary.json"
        if path.exists():
            out[method] = _load(path)
    return out


def _ccp_cells(summary: dict, data_cfg: dict) -> tuple[str, str]:
    ends = [e["final"].get("ccp_end_round") for e in summary["per_seed"]]
    if any(v is None for v in ends):
        return "-", "-"
    shares = [same_group_share(np.asarray(e["final"]["dependency_matrix"]), data_cfg)
              for e in summary["per_seed"] if "dependency_matrix" in e["final"]]
    end = f"{np.median(ends):.0f} [{min(ends):.0f}, {max(ends):.0f}]"
    return end, (f"{np.mean(shares):.2f}" if shares else "-")


def write_table(spec: dict, res: dict, runs_dir: Path, path: Path) -> str:
    from fedjax_sim.report import comparison_table

    base, seeds, t = spec["base"], spec["seeds"], spec["tune"]
    chosen = selection(spec, runs_dir)
    grid = "; ".join(f"`{k}` in {{{', '.join(map(str, v))}}}" for k, v in t["grid"].items())
    ext = t.get("extend", {"max": 0})
    lines = [
        "# FedReMa and personalized baselines: personalized accuracy",
        "",
        "Generated by `experiments/fedrema/run.py` from the run directories; do not edit by hand.",
        "",
        f"Dataset `{base['data']['dataset']}`, partition `{base['data']['partition']}`, "
        f"{base['data']['num_clients']} clients (all participate every round), {base['rounds']} rounds, "
        f"evaluation every {base['eval_every']} rounds. Local: `{base['local']['optimizer']}` (SGD with "
        f"momentum {base['local']['momentum']}), lr tuned (below), clip {base['local']['clip_norm']}, "
        f"{base['local']['epochs']} epochs, "
        f"batch {base['local']['batch_size']}; FedRep {base['fedrep']['head_epochs']} head epochs first; "
        f"model {base['model']['name']} hidden {base['model']['hidden']}, head = last "
        f"{base['model']['head_layers']} dense layers.",
        "",
        f"**Tuning** (same rule for every method, `tune*/sweep.md`): {grid}, selected by the "
        f"final-round personalized accuracy on a validation split ({t['validation_fraction']:g} of "
        f"each client's training rows), mean over tuning seeds {t['seeds']}; the test split was not "
        f"evaluated. A method whose choice was at an edge of the values it tried got the next value "
        f"beyond it (x{ext.get('factor', 3):g}), up to {ext['max']} times, until the choice was interior. "
        f"**Final**: the selected setting, trained on all training rows, on seeds {seeds[0]}..{seeds[-1]} "
        f"({len(seeds)} seeds, disjoint from the tuning seeds); a seed fixes the partition, the "
        "initialization and every sampled key, so methods are paired by seed.",
        "",
        "| method | lr values tried | selected lr | validation acc at it (%) | CCP end round, median [min, max] "
        "| peer weight on own group |",
        "|---|---|---|---|---|---|",
    ]
    for method, s in res.items():
        lr = s["config"]["local"]["lr"]
        sel = chosen.get(method)
        tried = ", ".join(n.split("=", 1)[1] for n in sel.names) if sel else "?"
        val = f"{100 * sel.summaries[sel.best]['final'][sel.metric]:.2f}" if sel and sel.best is not None else "?"
        end, share = _ccp_cells(s, base["data"])
        lines.append(f"| {method} | {tried} | {lr:g} | {val} | {end} | {share} |")
    c = base["data"]["num_clients"]
    lines += ["", "*peer weight on own group*: mean over clients and seeds of the share of the post-CCP "
              "history weight (dependency counts G without self) that falls on peers of the client's "
              f"own dominant-class group; chance with {c} clients in 5 groups is {(c / 5 - 1) / (c - 1):.2f}.", ""]
    main_rows = [m for m in res if m not in spec["ablations"]]
    baselines = [b for b in spec["baselines"] if b in res]
    lines += ["## FedReMa against the baselines", "",
              comparison_table([res[m] for m in main_rows], baselines), ""]
    ablations = [m for m in spec["ablations"] if m in res]
    if "fedrema" in res and ablations:
        lines += ["## Ablations against FedReMa", "",
                  comparison_table([res["fedrema"]] + [res[m] for m in ablations], ["fedrema"]), ""]
    rows = np.mean([s["data"]["test_per_client"]["mean"] for s in res.values()])
    lines += [f"Each client's test split is small ({rows:.1f} images on average), so one image moves a "
              f"client's accuracy by ~{100 / rows:.1f} pp and the mean over clients by "
              f"~{100 / rows / c:.2f} pp. Test rows come from a test pool held out before partitioning, "
              "so no client's test image is in any client's training set."]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot_curves(res: dict, path: Path, title: str) -> None:
    """Mean personalized accuracy over seeds against round, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedjax_sim.report import load_metrics

    fig, ax = plt.subplots(figsize=(8, 5))
    lows = []
    for method, s in res.items():
        hist = [h for h in load_metrics(Path(s["config"]["out"])) if "personalized_accuracy" in h]
        rounds = sorted({h["round"] for h in hist})
        mean = [np.mean([h["personalized_accuracy"] for h in hist if h["round"] == r]) for r in rounds]
        lows.append(min(mean[1:]) if len(mean) > 1 else mean[0])
        style = "-" if method.startswith("fedrema") else "--"
        ax.plot(rounds, mean, style, lw=2.2 if method == "fedrema" else 1.2, label=method)
    ax.set_xlabel("round")
    ax.set_ylabel("personalized accuracy (mean over clients and seeds)")
    ax.set_ylim(max(0.0, min(lows) - 0.05), 1.0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    from fedjax_sim import jsonio

    jsonio.write_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(HERE / "config.json"))
    p.add_argument("--dataset", help="override data.dataset (e.g. cifar10)")
    p.add_argument("--rounds", type=int, help="override rounds")
    p.add_argument("--seeds", help="comma-separated final seeds (override)")
    p.add_argument("--methods", help="comma-separated methods (override)")
    p.add_argument("--runs-dir", help="default runs/fedrema/<dataset>")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    spec = _load(Path(a.config))
    if a.dataset:
        spec["base"]["data"]["dataset"] = a.dataset
    if a.rounds:
        spec["base"]["rounds"] = a.rounds
    if a.seeds:
        spec["seeds"] = [int(s) for s in a.seeds.split(",")]
    if a.methods:
        spec["methods"] = [m.strip() for m in a.methods.split(",") if m.strip()]
    dataset = spec["base"]["data"]["dataset"]
    runs_dir = Path(a.runs_dir or ROOT / "runs" / "fedrema" / dataset.replace("/", "_"))
    if not a.report_only:
        tune(spec, runs_dir, a.progress)
        final(spec, runs_dir, a.progress)
    res = collect(spec, runs_dir)
    if not res:
        print(f"no finished runs under {runs_dir}", file=sys.stderr)
        return 1
    suffix = "" if dataset == "digits" else f"_{dataset.replace('/', '_')}"
    table = write_table(spec, res, runs_dir, HERE / f"results{suffix}.md")
    title = (f"{dataset}, {spec['base']['data']['partition']}, {spec['base']['data']['num_clients']} clients, "
             f"mean over {len(spec['seeds'])} seeds")
    plot_curves(res, HERE / f"personalized_accuracy{suffix}.png", title)
    from fedjax_sim.report import seed_points_plot
    seed_points_plot(list(res.values()), HERE / f"seed_points{suffix}.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
