"""FedHCA2, its ablations and the HC-FMTL baselines on HC-FMTL-lite, each method tuned on a
validation split, then compared over seeds (`fedjax_sim.protocol`).

  python experiments/fedhca2/run.py                  # both scenarios in config.json
  python experiments/fedhca2/run.py --settings s1
  python experiments/fedhca2/run.py --report-only    # regenerate tables/plots from run dirs

Protocol (fixed in config.json before any run), per scenario:
  1. tune: one ``fedjax-sim sweep`` per method over the local lr grid (FedProx also over mu) on
     the tuning seeds, selected by the final-round validation multi-task loss
     (``personalized_loss``; validation = 20% of each client's training rows, pooled per
     domain); a choice at an edge of the lr grid gets one more value beyond it (x3).
  2. final: each method's selected config on the final seeds (disjoint from the tuning seeds),
     one vmapped program per method, evaluated on each domain's test set.
  3. report: Delta_m per seed against the *tuned* Local run of the same seed (spec section 6:
     mean over (client, task) pairs of the signed relative change; accuracy up, MSE down), over
     all pairs and per domain, with paired 95% bootstrap intervals against Local, FedAvg
     (per-task decoder mean), FedAvg-all (the official code's all-decoder mean) and FedHCA2; the
     per-(domain, task) metrics; FedHCA2's diagnostics (dual weights, worst-case gain, attention
     entropy, hyper weights).

Run directories: runs/fedhca2/<setting>/{tune,tune_ext1,final}/<method> (git-ignored). Generated
files go next to this file: results.md, hyper_weights.png, attention.png, seed_points_<setting>.png.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedjax_sim import jsonio, protocol  # noqa: E402
from fedjax_sim.protocol import Method  # noqa: E402

REFERENCE = "local"


def methods_of(spec: dict) -> list[Method]:
    return [Method.parse(m) for m in spec["methods"]]


def grid_of(spec: dict, method: Method) -> dict:
    return {**spec["grid"], **spec.get("method_grids", {}).get(method.algorithm, {})}


def runs_dir(name: str) -> Path:
    return ROOT / "runs" / "fedhca2" / name


def run_setting(spec: dict, name: str, progress: bool) -> None:
    setting = spec["settings"][name]
    methods = methods_of(spec)
    tune = {**spec["tune"], "grid": spec["grid"]}
    protocol.tune(protocol.base_config(setting), methods, tune, runs_dir(name), progress, lambda m: grid_of(spec, m))
    protocol.final(methods, spec["seeds"], runs_dir(name), progress, spec["tune"].get("select"))


def _scores(entry: dict) -> np.ndarray:
    """[C, T] task scores of one seed (NaN where a client does not hold a task)."""
    return np.array([[np.nan if v is None else v for v in row] for row in entry["final"]["task_scores"]], float)


def with_tuned_delta_m(res: dict, spec_tasks: dict) -> dict:
    """Adds ``dm_local`` (and ``dm_local_<domain>``) to every seed's final: Delta_m of the method
    against the tuned Local run of the same seed (percent), from the two runs' task scores."""
    clients = spec_tasks["clients"]
    tasks = list(spec_tasks["tasks"])
    lower = np.array([spec_tasks["tasks"][t]["lower_is_better"] for t in tasks])
    domains = np.array([c["domain"] for c in clients])
    ref = {e["seed"]: _scores(e) for e in res[REFERENCE]["per_seed"] if e["status"] == "ok"}
    out = {}
    for method, s in res.items():
        s = copy.deepcopy(s)
        for e in s["per_seed"]:
            if e["status"] != "ok" or e["seed"] not in ref:
                continue
            m, b = _scores(e), ref[e["seed"]]
            rel = np.where(lower, -1.0, 1.0) * (m - b) / b
            e["final"]["dm_local"] = float(100 * np.nanmean(rel))
            for d in sorted(set(domains)):
                e["final"][f"dm_local_{d}"] = float(100 * np.nanmean(rel[domains == d]))
        out[method] = s
    return out


def _task_table(res: dict) -> list[str]:
    from fedjax_sim.report import mean_std_cell, seed_values

    keys = [k for k in next(iter(res.values()))["final"] if k.count("/") == 2 and k[0] in "AB"]
    keys = sorted(keys, key=lambda k: (k.split("/")[0], k.split("/")[1]))
    head = ["method"] + [f"{k.split('/')[0]}/{k.split('/')[1]} {'acc %' if k.endswith('accuracy') else 'MSE'}"
                         for k in keys]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, s in res.items():
        cells = [method] + [mean_std_cell(list(seed_values(s, k).values()), k) for k in keys]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _diagnostics(res: dict, name: str) -> list[str]:
    """FedHCA2's last-round diagnostics, mean over final seeds, from metrics.jsonl."""
    from fedjax_sim.report import load_metrics

    rows = ["| method | alpha (mean) | alpha outside [0,1] | max dual weight | worst-case gain of U over g0 "
            "| attention entropy (nats) | self-attention | beta (mean) |", "|---|---|---|---|---|---|---|---|"]
    for method, s in res.items():
        hist = load_metrics(Path(s["config"]["out"]))
        last = {}
        for rec in hist:
            if "ca_alpha_mean" in rec or "xattn_entropy" in rec:
                last[rec["seed"]] = rec
        if not last:
            continue
        def cell(key, fmt="{:.3g}"):
            v = [r[key] for r in last.values() if key in r]
            return fmt.format(np.mean(v)) if v else "—"
        rows.append(f"| {method} | {cell('ca_alpha_mean')} | {cell('ca_alpha_outside')} | {cell('ca_weight_max')} | "
                    f"{cell('ca_gain')} | {cell('xattn_entropy')} | {cell('xattn_self')} | {cell('xattn_beta_mean')} |")
    return rows


def _tuning_rows(spec: dict, name: str, res: dict) -> list[str]:
    chosen = protocol.selection(methods_of(spec), runs_dir(name), spec["tune"].get("select"))
    rows = ["| method | values tried | selected | validation loss at it |", "|---|---|---|---|"]
    for method in res:
        sel = chosen.get(method)
        m = next(x for x in methods_of(spec) if x.name == method)
        if sel is None or sel.best is None:
            rows.append(f"| {method} | ? | ? | ? |")
            continue
        fields = list(grid_of(spec, m))
        short = lambda n: ", ".join(f"{k.split('.')[-1]}={v:g}" for k, v in protocol.point_values(n, fields).items())  # noqa: E731
        value = sel.summaries[sel.best]["final"][sel.metric]
        rows.append(f"| {method} | {'; '.join(short(n) for n in sel.names)} | {short(sel.names[sel.best])} | {value:.4g} |")
    return rows


def collect(spec: dict, name: str) -> dict:
    res = protocol.collect(methods_of(spec), runs_dir(name))
    return {m.name: res[m.name] for m in methods_of(spec) if m.name in res}


def write_results(spec: dict, names: list[str], path: Path) -> str:
    from fedjax_sim.report import comparison_table, seed_points_plot

    t = spec["tune"]
    lines = ["# FedHCA2 on HC-FMTL-lite", "",
             "Generated by `experiments/fedhca2/run.py` from the run directories; do not edit by hand.", "",
             spec["description"], "",
             f"Tuning seeds {t['seeds']}, validation fraction {t['validation_fraction']}, selection "
             f"metric `{t['select']}`; final seeds {spec['seeds'][0]}..{spec['seeds'][-1]} "
             f"({len(spec['seeds'])} seeds, disjoint from the tuning seeds). A seed fixes the data "
             "instance (projections, task directions, samples), the initialization and every sampled "
             "key, so methods are paired by seed.", "",
             "Δm (percent) = mean over (client, task) pairs of ±(M − M_Local) / M_Local against the "
             "tuned Local run of the same seed (+ for accuracy, − for MSE; spec §6); Δm_A / Δm_B over "
             "the pairs of one domain's clients. Every run's summary.json also holds `delta_m`, against "
             "Local trained alongside it with the run's own settings; it is listed as *Δm (own lr)*.", ""]
    for name in names:
        res = collect(spec, name)
        if REFERENCE not in res:
            continue
        setting = spec["settings"][name]
        base = protocol.base_config(setting)
        tasks = res[REFERENCE]["data"]["multitask"]
        res = with_tuned_delta_m(res, tasks)
        lines += [f"## {setting['title']}", "",
                  f"`{name}`: {len(tasks['clients'])} clients, {tasks['decoders']} decoders, groups "
                  f"{tasks['groups']}, {base['rounds']} rounds, Adam, batch {base['local']['batch_size']}, "
                  f"local epochs per domain {tuple(base['local']['epochs_per_domain'])}, encoder "
                  f"{tuple(base['model']['encoder'])}, decoder {tuple(base['model']['decoder'])}.", "",
                  "Tuning (local lr; FedProx also mu):", "", *_tuning_rows(spec, name, res), ""]
        baselines = [b for b in spec["baselines"] if b in res]
        for metric, title in (("dm_local", "Δm over all (client, task) pairs"),
                              ("dm_local_A", "Δm_A (domain A: single-task clients)"),
                              ("dm_local_B", "Δm_B (domain B: multi-task clients)")):
            lines += [f"### {title}", "", comparison_table(list(res.values()), baselines, metric=metric,
                                                           secondary=None), ""]
        lines += ["### Δm (own lr): against Local trained alongside with the run's own settings", "",
                  comparison_table(list(res.values()), [b for b in ("fedavg", "fedhca2") if b in res],
                                   metric="delta_m", secondary=None), ""]
        lines += ["### Per-task test metrics (mean over the domain's clients holding the task)", "",
                  *_task_table(res), ""]
        diag = _diagnostics(res, name)
        if len(diag) > 2:
            lines += ["### Aggregation diagnostics after the last round (mean over final seeds)", "",
                      "*max dual weight*: largest w*_i of the conflict-averse dual (1/N = uniform); "
                      "*worst-case gain*: min_i <Δ_i, U> − min_i <Δ_i, g0>; attention entropy over the real "
                      "decoders (log K is uniform).", "", *diag, ""]
        seed_points_plot(list(res.values()), HERE / f"seed_points_{name}.png", metric="dm_local")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def _fedhca2_runs(spec: dict, names: list[str]):
    """(setting, FedHCA2's final summary) for every setting that has one."""
    for name in names:
        s = collect(spec, name).get("fedhca2")
        if s is not None:
            yield name, s


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_hyper_weights(spec: dict, names: list[str], path: Path) -> None:
    """alpha per client and beta per (layer, decoder) over rounds, FedHCA2, final seed 0."""
    from fedjax_sim.report import load_metrics

    plt = _pyplot()
    panels = []
    for name, s in _fedhca2_runs(spec, names):
        seed = s["per_seed"][0]["seed"]
        hist = [r for r in load_metrics(Path(s["config"]["out"])) if r.get("seed") == seed and "alpha/0" in r]
        clients = s["data"]["multitask"]["clients"]
        panels.append((name, seed, hist, clients))
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.4 * len(panels)), squeeze=False)
    for row, (name, seed, hist, clients) in zip(axes, panels):
        rounds = [r["round"] for r in hist]
        for c, info in enumerate(clients):
            row[0].plot(rounds, [r[f"alpha/{c}"] for r in hist], label=f"client {c} ({info['domain']}: "
                        f"{'+'.join(info['tasks'])})", lw=1.2, ls="-" if info["domain"] == "A" else "--")
        row[0].set_title(f"{name}: encoder alpha per client (seed {seed})", fontsize=9)
        keys = sorted(k for k in hist[-1] if k.startswith("beta/"))
        for k in keys:
            _, layer, slot = k.split("/")
            row[1].plot(rounds, [r[k] for r in hist], lw=0.9, ls="-" if layer == "0" else ":",
                        label=f"l{layer} {slot}" if len(keys) <= 16 else None)
        row[1].set_title(f"{name}: decoder beta per (layer, client.task); solid l0, dotted l1", fontsize=9)
        for ax in row:
            ax.set_xlabel("round")
            ax.axhline(0, color="k", lw=0.4)
            ax.axhline(1, color="k", lw=0.4)
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    jsonio.write_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_attention(spec: dict, names: list[str], path: Path) -> None:
    """FedHCA2's last-round cross-attention per decoder layer (mean over the layer's weight and
    bias tensors), real decoders only, final seed 0."""
    plt = _pyplot()
    panels = []
    for name, s in _fedhca2_runs(spec, names):
        entry = s["per_seed"][0]
        attn = np.asarray(entry["final"]["attention"])  # [P, C*T, C*T]
        resolved = protocol.load(Path(s["config"]["out"]) / "config.json")["resolved"]
        tasks = list(s["data"]["multitask"]["tasks"])
        clients = s["data"]["multitask"]["clients"]
        slots = [(c, tasks.index(t)) for c, info in enumerate(clients) for t in info["tasks"]]
        idx = [c * len(tasks) + t for c, t in slots]
        labels = [f"{c}.{tasks[t]}" for c, t in slots]
        layers = resolved["decoder_layers"]
        per_layer = len(attn) // len(layers)  # leaves are ordered layer by layer (bias, kernel)
        for li, layer in enumerate(layers):
            a = attn[li * per_layer:(li + 1) * per_layer].mean(0)[np.ix_(idx, idx)]
            panels.append((f"{name}, layer {layer}", entry["seed"], a, labels))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (title, seed, a, labels) in zip(axes[0], panels):
        im = ax.imshow(a, cmap="magma", vmin=0, interpolation="nearest")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_title(f"{title} (seed {seed})", fontsize=8)
        ax.set_xlabel("key decoder (client.task)", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.7)
    axes[0][0].set_ylabel("query decoder", fontsize=7)
    fig.suptitle("FedHCA2: cross-attention weights of the last aggregation (rows sum to 1)", y=1.02)
    jsonio.write_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def report(spec: dict, every: list[str]) -> None:
    print(write_results(spec, every, HERE / "results.md"))
    plot_hyper_weights(spec, every, HERE / "hyper_weights.png")
    plot_attention(spec, every, HERE / "attention.png")


def main(argv=None) -> int:
    return protocol.main(argv, __doc__, HERE / "config.json", run_setting, report)


if __name__ == "__main__":
    sys.exit(main())
