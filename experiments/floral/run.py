"""FLoRAL and its baselines on clustered tasks, each method tuned on a validation split, then
compared over seeds (`fedjax_sim.protocol`).

  python experiments/floral/run.py                         # every setting in config.json
  python experiments/floral/run.py --settings synthetic_linear,digits_rotate
  python experiments/floral/run.py --report-only           # regenerate tables/plots from run dirs

Protocol (fixed in config.json before any run), per setting:
  1. tune: one ``fedjax-sim sweep`` per method over the setting's lr grid on the tuning seeds,
     selected by the final-round personalized metric on a validation split (20% of each client's
     training rows; the test split is not seen); a choice at an edge of the grid gets one more
     value beyond it (x3).
  2. final: each method's selected config on the final seeds (disjoint from the tuning seeds), one
     vmapped program per method, trained on all training rows, evaluated on the test split.
  3. report: final-round personalized accuracy (digits) or MSE (synthetic), mean over clients;
     paired 95% bootstrap intervals over seeds against FedAvg and Local Adaptor
     (`fedjax_sim.report.comparison_table`); the routers' Rand index against the true clusters;
     the floats each client stores and communicates per round.

Run directories: runs/floral/<setting>/{tune,tune_ext1,final}/<method> (git-ignored). Generated
files (never typed by hand) go next to this file: results.md, router_probs.png,
seed_points_<setting>.png.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedjax_sim import jsonio, protocol  # noqa: E402
from fedjax_sim.protocol import Method  # noqa: E402

LEARNED_ROUTERS = ("floral", "floral_10", "floral_stateless", "ensemble")


def own_methods(spec: dict, setting: dict) -> list[Method]:
    skipped = set(setting.get("reuse", {}).get("methods", [])) | set(setting.get("skip", []))
    return [m for m in map(Method.parse, spec["methods"]) if m.name not in skipped]


def grid_of(setting: dict, method: Method) -> dict:
    """The setting's grid, plus its ``router_grid`` for methods with a learned router."""
    extra = setting.get("router_grid", {}) if method.name in LEARNED_ROUTERS else {}
    return {**setting["grid"], **extra}


def run_setting(spec: dict, name: str, progress: bool) -> None:
    setting = spec["settings"][name]
    runs_dir = ROOT / "runs" / "floral" / name
    methods = own_methods(spec, setting)
    protocol.tune(protocol.base_config(setting), methods, {**spec["tune"], "grid": setting["grid"]}, runs_dir,
                  progress, lambda m: grid_of(setting, m))
    protocol.final(methods, spec["seeds"], runs_dir, progress)


def collect(spec: dict, name: str) -> dict:
    """method -> final summary, in config order (reused methods from their own setting)."""
    setting = spec["settings"][name]
    res = protocol.collect(own_methods(spec, setting), ROOT / "runs" / "floral" / name)
    reuse = setting.get("reuse")
    if reuse:
        other = [m for m in map(Method.parse, spec["methods"]) if m.name in reuse["methods"]]
        res.update(protocol.collect(other, ROOT / "runs" / "floral" / reuse["setting"]))
    order = [Method.parse(m).name for m in spec["methods"]]
    return {m: res[m] for m in order if m in res}


def _floats(res: dict) -> dict:
    """method -> (client state, downlink, uplink) floats per round, from the runs' configs."""
    out, model = {}, None
    for method, s in res.items():
        resolved = protocol.load(Path(s["config"]["out"]) / "config.json")["resolved"]
        if "floats" in resolved:
            f = resolved["floats"]
            out[method] = (f["client_state"], f["downlink"], f["uplink"])
            model = f["model"]
    if "fedavg" in res and model is not None:
        out["fedavg"] = (0, model, model)
    return out, model


def _tuning_rows(spec: dict, name: str, res: dict) -> list[str]:
    setting = spec["settings"][name]
    chosen = {}
    for src in {name, setting.get("reuse", {}).get("setting", name)}:
        chosen.update(protocol.selection([Method.parse(m) for m in spec["methods"]], ROOT / "runs" / "floral" / src))
    fields = " x ".join(f"`{f}`" for f in {**setting["grid"], **setting.get("router_grid", {})})
    rows = [f"Values are {fields} (the router lr only for methods with a learned router).", "",
            "| method | values tried | selected | validation value at it |", "|---|---|---|---|"]
    for method in res:
        sel = chosen.get(method)
        if sel is None or sel.best is None:
            rows.append(f"| {method} | ? | ? | ? |")
            continue
        fields = list(grid_of(setting, Method.parse(method)))
        short = lambda name: ", ".join(f"{v:g}" for v in protocol.point_values(name, fields).values())
        tried = "; ".join(short(n) for n in sel.names)
        value = sel.summaries[sel.best]["final"][sel.metric]
        rows.append(f"| {method} | {tried} | {short(sel.names[sel.best])} | {value:.4g} ({sel.metric}) |")
    return rows


def write_results(spec: dict, names: list[str], path: Path) -> str:
    from fedjax_sim.report import comparison_table, mean_std_cell, seed_values

    t = spec["tune"]
    lines = ["# FLoRAL and baselines on clustered tasks", "",
             "Generated by `experiments/floral/run.py` from the run directories; do not edit by hand.", "",
             spec["description"], "",
             f"Tuning seeds {t['seeds']}, validation fraction {t['validation_fraction']}; final seeds "
             f"{spec['seeds'][0]}..{spec['seeds'][-1]} ({len(spec['seeds'])} seeds, disjoint); a seed "
             "fixes the partition, initialization and every sampled key, so methods are paired by seed. "
             "`floral` is FLoRAL(1%) (rank budget rho = 0.01), `floral_10` FLoRAL(10%).", ""]
    for name in names:
        res = collect(spec, name)
        if not res:
            continue
        setting = spec["settings"][name]
        base = protocol.base_config(setting)
        d = base["data"]
        lines += [f"## {setting['title']}", "",
                  f"`{name}`: dataset `{d['dataset']}`, partition `{d['partition']}`"
                  + (f" ({d['cluster_transform']})" if d["partition"] == "clusters" else "")
                  + f", {d['num_clients']} clients, {d['num_clusters']} clusters, "
                  f"M = {base['floral']['num_adaptors']} adaptors / members, {base['rounds']} rounds, "
                  f"batch {base['local']['batch_size']}, model `{base['model']['name']}` hidden "
                  f"{tuple(base['model']['hidden'])}"
                  + (f", preset `{setting['preset']}` (rounds shortened)" if setting.get("preset") else "")
                  + (f"; {', '.join(setting['reuse']['methods'])} do not depend on M and are the runs of "
                     f"`{setting['reuse']['setting']}`" if setting.get("reuse") else "") + ".", "",
                  "Tuning:", "", *_tuning_rows(spec, name, res), "",
                  comparison_table(list(res.values()), [b for b in spec["baselines"] if b in res]), ""]
        rand = {m: seed_values(s, "router_rand_index") for m, s in res.items()
                if m in LEARNED_ROUTERS and "router_rand_index" in s["final"]}
        if rand:
            lines += ["Do clients find their cluster? Rand index between the true clusters and each "
                      "client's top adaptor (argmax of its router logits) after the last round, over "
                      "seeds (1 = clusters recovered up to relabelling):", "",
                      "| method | Rand index |", "|---|---|"]
            lines += [f"| {m} | {mean_std_cell(list(v.values()), 'router_rand_index')} |" for m, v in rand.items()]
            lines += [""]
        floats, model = _floats(res)
        if floats:
            lines += [f"Floats per client (base model: {model:,}): stored between rounds, received and "
                      "sent per participation:", "",
                      "| method | client state | downlink | uplink | state / model |", "|---|---|---|---|---|"]
            for m in res:
                if m in floats:
                    st, down, up = floats[m]
                    lines.append(f"| {m} | {st:,} | {down:,} | {up:,} | {st / model:.2%} |")
            lines += [""]
        seed_points(res, HERE / f"seed_points_{name}.png")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def seed_points(res: dict, path: Path) -> None:
    from fedjax_sim.report import seed_points_plot

    seed_points_plot(list(res.values()), path)


def plot_routers(spec: dict, names: list[str], path: Path) -> None:
    """FLoRAL(1%)'s router probabilities after the last round, clients (sorted by true cluster)
    x adaptors, final seed 0, one panel per setting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for name in names:
        s = collect(spec, name).get("floral")
        if s is None:
            continue
        entry = next(e for e in s["per_seed"] if e["status"] == "ok")
        probs = np.asarray(entry["final"]["router_probs"])
        clusters = np.arange(probs.shape[0]) % protocol.base_config(spec["settings"][name])["data"]["num_clusters"]
        order = np.argsort(clusters, kind="stable")
        panels.append((name, entry["seed"], probs[order], clusters[order]))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 4.2), squeeze=False)
    fig.subplots_adjust(wspace=0.35)
    for i, (ax, (name, seed, probs, clusters)) in enumerate(zip(axes[0], panels)):
        im = ax.imshow(probs, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        for b in np.flatnonzero(np.diff(clusters)) + 0.5:
            ax.axhline(b, color="white", lw=0.8)
        ax.set_title(f"{name}\n(seed {seed})", fontsize=8)
        ax.set_xlabel("adaptor")
        ax.set_xticks(range(probs.shape[1]))
        ax.yaxis.get_major_locator().set_params(integer=True)
        if i == 0:
            ax.set_ylabel("client (sorted by true cluster; lines: cluster boundaries)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="router probability")
    fig.suptitle("FLoRAL(1%): router probabilities after the last round", y=1.04)
    jsonio.write_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def report(spec: dict, every: list[str]) -> None:
    print(write_results(spec, every, HERE / "results.md"))
    plot_routers(spec, every, HERE / "router_probs.png")


def main(argv=None) -> int:
    return protocol.main(argv, __doc__, HERE / "config.json", run_setting, report)


if __name__ == "__main__":
    sys.exit(main())
