"""Asynchronous FL on the virtual clock: synchronous FedAvg, FedAsync, FedBuff and FedADT (and the
FedADT schedule ablation) on non-IID digits with heavy-tailed client speeds, each method tuned on
a validation split, then compared over seeds (`fedjax_sim.protocol`).

  python experiments/async/run.py                  # every setting in config.json
  python experiments/async/run.py --report-only    # regenerate tables/plots from run dirs

Protocol (fixed in config.json before any run), per setting:
  1. tune: one ``fedjax-sim sweep`` per method over the local lr grid on the tuning seeds,
     selected by the global model's validation accuracy at the virtual-time budget; a choice at
     an edge of the grid gets one more value beyond it (x3). Ablations (``ablation_of`` in
     config.json: FedADT's lambda schedules) are not tuned: they take the tuned method's
     selected config and change only their own fields.
  2. final: each method's selected config on the final seeds (disjoint from the tuning seeds).
     Every seed replays its own event schedule, the same for every method (same clock stream).
  3. report: accuracy at the budget and at fixed earlier virtual times, time to the target
     accuracy, each with paired 95% bootstrap intervals against the baselines; accuracy vs
     virtual time; the staleness histogram of the schedules; the lambda-schedule ablation.

Run directories: runs/async/<setting>/{tune,tune_ext1,final}/<method> (git-ignored). Generated
files go next to this file: results.md, accuracy_vs_time_<setting>.png,
staleness_<setting>.png, ablation_<setting>.png.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedjax_sim import jsonio, protocol  # noqa: E402
from fedjax_sim.protocol import Method  # noqa: E402

TIMES = (250.0, 500.0, 1000.0)  # earlier checkpoints of "accuracy at equal virtual time"
METRIC = "global_accuracy"


def methods_of(spec: dict) -> list[Method]:
    return [Method.parse(m) for m in spec["methods"]]


def runs_dir(name: str) -> Path:
    return ROOT / "runs" / "async" / name


def run_setting(spec: dict, name: str, progress: bool) -> None:
    protocol.run_setting(spec, spec["settings"][name], runs_dir(name), progress)


# ---------------------------------------------------------------------------------------------
# per-seed curves from the run directories


def curves(run: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """seed -> (virtual times [E], global test accuracy [E]) at every evaluation."""
    out: dict[int, list] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get(METRIC) is not None and "virtual_time" in rec:
            out.setdefault(int(rec["seed"]), []).append((rec["virtual_time"], rec[METRIC]))
    return {s: (np.array([t for t, _ in v]), np.array([a for _, a in v])) for s, v in out.items()}


def accuracy_at(curve, t: float) -> float:
    """The accuracy of the last evaluation at or before virtual time ``t`` (the model a user
    would hold at that time; `report.step_at`)."""
    from fedjax_sim.report import step_at

    return float(step_at(*curve, [t])[0])


def pseudo_summary(name: str, values: dict[int, float], metric: str, higher: bool = True) -> dict:
    """A summary-shaped record of per-seed values, for `report.comparison_table`."""
    return {"algorithm": name, "task": {"higher_is_better": higher, "headline": "accuracy"},
            "per_seed": [{"seed": s, "status": "ok", "final": {metric: v}} for s, v in sorted(values.items())]}


def first_time(curve, target: float):
    """Virtual time of the first evaluation at or past ``target`` (None when never): the rule of
    summary.json's ``time_to_target`` (`trials.time_to_target`), for any target."""
    times, acc = curve
    hit = np.flatnonzero(acc >= target)
    return float(times[hit[0]]) if len(hit) else None


def time_to_target_table(res: dict, cs: dict, baselines: list[str], target: float) -> str:
    """Per method: seeds that reached the target, mean ± std virtual time over those, and paired
    differences against each baseline over the seeds where both reached it."""
    from fedjax_sim.experiments import paired_bootstrap

    times = {}
    for name, s in res.items():
        ok = {e["seed"] for e in s["per_seed"] if e["status"] == "ok"}
        times[name] = {seed: first_time(c, target) for seed, c in cs[name].items() if seed in ok}
    header = ["method", "reached", "time to target (mean ± std)"] + [f"Δ vs {b}" for b in baselines] + \
             [f"speed-up vs {baselines[0]}"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, t in times.items():
        hit = {s: v for s, v in t.items() if v is not None}
        cell = f"{np.mean(list(hit.values())):.0f} ± {np.std(list(hit.values()), ddof=1):.0f}" if len(hit) > 1 else "—"
        cells = [name, f"{len(hit)}/{len(t)}", cell]
        for b in baselines:
            bh = {s: v for s, v in times[b].items() if v is not None}
            shared = sorted(set(hit) & set(bh))
            if b == name:
                cells.append("—")
            elif len(shared) < 2:
                cells.append(f"n/a ({len(shared)} shared)")
            else:
                a, b_ = [hit[s] for s in shared], [bh[s] for s in shared]
                r = paired_bootstrap(a, b_)
                faster = int(np.sum(np.asarray(a) < np.asarray(b_)))  # ties are not "faster"
                cells.append(f"{r.mean:+.0f} [{r.lo:+.0f}, {r.hi:+.0f}] ({faster}/{r.n} faster)")
        base = {s: v for s, v in times[baselines[0]].items() if v is not None}
        shared = sorted(set(hit) & set(base))
        cells.append(f"{np.median([base[s] / hit[s] for s in shared]):.2f}x" if shared and name != baselines[0] else "—")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([
        f"Virtual time until the global model's test accuracy first reached {target:.0%} at an "
        "evaluation point; mean ± sample std over the seeds that reached it (lower is better).", "",
        *rows, "",
        "Δ vs *b* = row − *b* in virtual time units over the seeds where both reached the target "
        "(mean [95% paired percentile bootstrap interval]; k/n = seeds where the row was strictly "
        "faster; equal times, at the same evaluation, count as not faster). "
        f"Speed-up = median over shared seeds of {baselines[0]}'s time / the row's time. A seed that "
        "never reached the target (by the budget) is left out of both, so with few shared seeds read "
        "the interval as a range, and the *reached* column as part of the result. "
        "Resolution: one evaluation interval (synchronous: every round; FedAsync: every 20 "
        "arrivals; FedBuff/FedADT: every 4 updates = 20 arrivals)."])


def staleness_hist(setting: dict, seeds: list[int], path: Path) -> str:
    """Histogram of arrival staleness (FedAsync K = 1, FedBuff K = 5) over the final seeds'
    schedules, rebuilt from the clock exactly as the runs replayed them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedjax_sim import asynchrony
    from fedjax_sim import config as config_lib
    from fedjax_sim.data import build_federated

    cfg = config_lib.from_dict(protocol.base_config(setting))
    k_buff = 5
    arrivals = 6000
    stale = {1: [], k_buff: []}
    for s in seeds:
        data = build_federated(cfg.data, s)
        speed, work, rng = asynchrony.seed_clock(cfg.clock, s, np.asarray(data.n_train), cfg.local.batch_size,
                                                 cfg.local.epochs)
        trace = asynchrony.build_trace(speed, work, cfg.clock.concurrency, arrivals, cfg.clock.noise, rng)
        for k in stale:
            stale[k].append(asynchrony.staleness_of(trace, k))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lines = []
    for k, label in ((1, "FedAsync (K=1)"), (k_buff, f"FedBuff/FedADT (K={k_buff})")):
        v = np.concatenate(stale[k])
        ax.hist(v, bins=np.arange(0, np.percentile(v, 99.5) + 2) - 0.5, alpha=0.55, density=True, label=label)
        lines.append(f"| {label} | {v.mean():.2f} | {np.median(v):.0f} | {np.percentile(v, 95):.0f} | {v.max()} |")
    ax.set_xlabel("staleness (server versions missed)")
    ax.set_ylabel("fraction of arrivals")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"staleness over {len(seeds)} seeds x {arrivals} arrivals")
    fig.tight_layout()
    jsonio.write_figure(fig, path, dpi=120)
    plt.close(fig)
    return "\n".join(["| schedule | mean | median | p95 | max |", "|---|---|---|---|---|", *lines])


def time_plot(res_curves: dict, path: Path, title: str, budget: float, target: float, names: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedjax_sim.report import step_at

    grid = np.linspace(0, budget, 301)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    styles = ["-", "--", "-.", ":"]
    for i, name in enumerate(names):
        cs = res_curves.get(name)
        if not cs:
            continue
        acc = np.array([step_at(*c, grid) for c in cs.values()])
        m, sd = acc.mean(0), acc.std(0)
        ax.plot(grid, m, styles[i % 4], lw=1.6, label=f"{name} ({len(cs)} seeds)")
        ax.fill_between(grid, m - sd, m + sd, alpha=0.12)
    ax.axhline(target, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("virtual time")
    ax.set_ylabel("global test accuracy (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    jsonio.write_figure(fig, path, dpi=120)
    plt.close(fig)


def report(spec: dict, names: list[str]) -> None:
    from fedjax_sim import report as report_lib

    out = ["# Asynchronous FL on the virtual clock: FedAsync, FedBuff, FedADT vs synchronous FedAvg", "",
           "Generated by `python experiments/async/run.py` from `runs/async` (do not edit).", "",
           spec["description"], ""]
    for name in names:
        setting = spec["settings"][name]
        run = runs_dir(name)
        methods = methods_of(spec)
        res = protocol.collect(methods, run)
        if not res:
            continue
        budget = setting["base"]["clock"]["time_budget"]
        target = setting["target_accuracy"]
        baselines = [b for b in spec["baselines"] if b in res]
        out += [f"## {setting['title']}", ""]
        chosen = protocol.selection([m for m in methods if m.name not in protocol.ablations(spec)], run,
                                    spec["tune"].get("select"))
        out += ["Selected local learning rates (validation accuracy at the budget): " + ", ".join(
            f"{m}: {protocol.point_values(r.names[r.best], ['local.lr']).get('local.lr')}"
            for m, r in chosen.items() if r.best is not None) + "; the schedule ablation (" + ", ".join(
            protocol.ablations(spec)) + ") uses FedADT's selected config with only `fedadt.schedule` changed.", ""]
        out += [f"### Accuracy at the budget (virtual time {budget:g})", "",
                report_lib.comparison_table(list(res.values()), baselines, METRIC), ""]
        cs = {m: curves(run / "final" / m) for m in res}
        for t in TIMES:
            vals = [pseudo_summary(m, {s: accuracy_at(c, t) for s, c in cs[m].items()}, f"accuracy_at_{t:g}")
                    for m in res]
            out += [f"### Accuracy at virtual time {t:g}", "",
                    report_lib.comparison_table(vals, baselines, f"accuracy_at_{t:g}", secondary=None), ""]
        for tgt in (target, *setting.get("more_targets", [])):
            out += [f"### Time to {tgt:.0%} test accuracy", "", time_to_target_table(res, cs, baselines, tgt), ""]
        time_plot(cs, HERE / f"accuracy_vs_time_{name}.png", setting["title"], budget, target,
                  [m for m in ("fedavg", "fedasync", "fedbuff", "fedadt") if m in cs])
        ablation = [m for m in spec["ablation"] if m in cs]
        time_plot(cs, HERE / f"ablation_{name}.png", "FedADT lambda schedule ablation: " + setting["title"],
                  budget, target, ablation)
        out += ["![accuracy vs virtual time](accuracy_vs_time_%s.png)" % name, "",
                "![ablation](ablation_%s.png)" % name, ""]
        kd = {m: res[m]["final"] for m in res if "kd_lambda_mean" in res[m]["final"]}
        if kd:
            out += ["### FedADT diagnostics (mean over seeds, last evaluation block)", "",
                    "| method | lambda (mean over last block) | KL(teacher‖student) before | after | staleness mean |",
                    "|---|---|---|---|---|"]
            out += [f"| {m} | {f['kd_lambda_mean']:.3f} | {f['kd_kl_before_mean']:.4f} | {f['kd_kl_after_mean']:.4f} | "
                    f"{f['staleness_mean_mean']:.2f} |" for m, f in kd.items()]
            out += [""]
        out += ["### Staleness of the schedules", "",
                staleness_hist(setting, spec["seeds"], HERE / f"staleness_{name}.png"), "",
                f"![staleness](staleness_{name}.png)", ""]
    (HERE / "results.md").write_text("\n".join(out))
    print(f"wrote {HERE / 'results.md'}")


if __name__ == "__main__":
    sys.exit(protocol.main(sys.argv[1:], __doc__, HERE / "config.json", run_setting, report))
