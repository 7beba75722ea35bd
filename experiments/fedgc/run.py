"""FedGC (specs/fedgc.md) on digits under Dirichlet 0.05 and 0.5 label skew: FedAvg, FedProx and
SCAFFOLD each with and without FedGC, the budget curve, one ablation per option of each design
axis, and the loss-based membership-inference attack beside every accuracy.

  python experiments/fedgc/run.py                  # every setting in config.json
  python experiments/fedgc/run.py --report-only    # regenerate tables/plots from run dirs

Protocol (fixed in config.json before any run), per setting:
  1. tune: one ``fedjax-sim sweep`` per method (the six algorithm x FedGC rows) over the local lr
     grid on the tuning seeds, selected by the global model's validation accuracy; a choice at an
     edge of the grid gets one more value beyond it (x3).
  2. final: each method's selected config on the final seeds (disjoint from the tuning seeds).
  3. ablations (``ablation_of`` in config.json): FedAvg+FedGC's selected config with one fedgc
     field changed (budget, allocation, prompt, guidance, strategy, filter, generator), not
     retuned, on the same final seeds. Every seed generates from the same key in every run, so
     the runs are paired by seed.
  4. report: paired 95% bootstrap intervals (over seeds) of accuracy and attack AUC against the
     same algorithm without FedGC and against FedAvg+FedGC's default.

Run directories: runs/fedgc/<setting>/{tune,tune_ext1,final}/<method> (git-ignored); fitted
generators are cached in runs/fedgc/<setting>/generators. Generated files go next to this file:
results.md, budget_accuracy.png, budget_mia.png.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from fedjax_sim import jsonio, protocol  # noqa: E402
from fedjax_sim.protocol import Method  # noqa: E402

METRIC = "global_accuracy"
ATTACK = "mia_auc"


def methods_of(spec: dict) -> list[Method]:
    return [Method.parse(m) for m in spec["methods"]]


def runs_dir(name: str) -> Path:
    return ROOT / "runs" / "fedgc" / name


def run_setting(spec: dict, name: str, progress: bool) -> None:
    os.chdir(ROOT)  # the settings' fedgc.cache_dir is relative to the repository root
    protocol.run_setting(spec, spec["settings"][name], runs_dir(name), progress)


# ---------------------------------------------------------------------------------------------
# report


AXES = [  # (axis, FedAvg+FedGC's default option, {method: option})
    ("budget allocation: clients", "equal", {"clients_proportional": "proportional"}),
    ("budget allocation: classes", "equal", {"alloc_inverse": "inverse", "alloc_mixed": "mixed (rho 0.5)",
                                             "alloc_inverse_pow": "inverse_pow (gamma 1)"}),
    ("prompt design", "multiple (4 of 8 modes)", {"prompt_single": "single", "prompt_llm": "llm"}),
    ("generation guidance", "prompt + real data (strength 0.5)", {"guidance_prompt": "prompt only",
                                                                  "guidance_real": "real data only"}),
    ("training strategy", "mixed", {"strategy_gen_first": "gen_first (25 rounds)",
                                    "strategy_real_first": "real_first (25 rounds)",
                                    "strategy_gen_only": "gen_only (control)"}),
    ("filter", "none", {"filter_reference": "reference classifier", "filter_local": "client's own classifier"}),
    ("generator", "gmm", {"generator_vae": "vae", "generator_real": "real (public rows: best case)",
                          "generator_noise": "noise (worst case)"}),
]
STATS = [("fedgc_fidelity", "fidelity", 100.0, ".1f"), ("fedgc_diversity", "diversity", 1.0, ".2f"),
         ("fedgc_guide_fallback", "guide fallback", 100.0, ".0f"), ("fedgc_filtered_out", "filtered out", 100.0, ".0f"),
         ("fedgc_label_js_after", "label JS after", 1.0, ".3f")]


def seed_values(summary: dict, key: str) -> dict[int, float]:
    return {e["seed"]: e["final"][key] for e in summary["per_seed"]
            if e["status"] == "ok" and e["final"].get(key) is not None}


def cell(v: dict, scale: float, fmt: str) -> str:
    a = np.asarray(list(v.values()), np.float64)
    return f"{scale * a.mean():{fmt}} ± {scale * a.std(ddof=1):{fmt}}" if len(a) > 1 else "—"


def delta(a: dict, b: dict, scale: float, digits: int) -> str:
    from fedjax_sim.report import _delta_cell

    return _delta_cell(a, b, 0.95, scale, digits)


def stat_cells(summary: dict) -> list[str]:
    out = []
    for key, _, scale, fmt in STATS:
        v = seed_values(summary, key)
        out.append(f"{scale * np.mean(list(v.values())):{fmt}}" if v else "—")
    return out


def main_table(res: dict, pairs: dict) -> list[str]:
    head = ["method", "accuracy (%)", "Δ vs without FedGC (pp)", "attack AUC", "Δ AUC vs without FedGC",
            "label JS before → after"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in res.items():
        if name not in pairs and name not in pairs.values():
            continue
        acc, auc = seed_values(s, METRIC), seed_values(s, ATTACK)
        base = pairs.get(name)
        d_acc = delta(acc, seed_values(res[base], METRIC), 100.0, 2) if base in res else "—"
        d_auc = delta(auc, seed_values(res[base], ATTACK), 1.0, 4) if base in res else "—"
        js = (f"{np.mean(list(seed_values(s, 'fedgc_label_js_before').values())):.3f} → "
              f"{np.mean(list(seed_values(s, 'fedgc_label_js_after').values())):.3f}") if name in pairs else "—"
        rows.append("| " + " | ".join([name, cell(acc, 100.0, ".2f"), d_acc, cell(auc, 1.0, ".4f"), d_auc, js]) + " |")
    return rows


def ablation_rows(res: dict, rows_of: list[tuple[str, str]], ref: str) -> list[str]:
    head = ["option", "accuracy (%)", f"Δ vs {ref} (pp)", "attack AUC", f"Δ AUC vs {ref}"] + [s[1] for s in STATS]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_acc, base_auc = seed_values(res[ref], METRIC), seed_values(res[ref], ATTACK)
    for label, name in rows_of:
        if name not in res:
            continue
        s = res[name]
        acc, auc = seed_values(s, METRIC), seed_values(s, ATTACK)
        same = name == ref
        rows.append("| " + " | ".join([label, cell(acc, 100.0, ".2f"), "—" if same else delta(acc, base_acc, 100.0, 2),
                                       cell(auc, 1.0, ".4f"), "—" if same else delta(auc, base_auc, 1.0, 4)]
                                      + stat_cells(s)) + " |")
    return rows


def budget_plot(spec: dict, names: list[str], key: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedjax_sim.report import bootstrap_mean_interval

    fig, ax = plt.subplots(figsize=(6, 4))
    scale = 100.0 if "accuracy" in key else 1.0
    for name in names:
        res = protocol.collect(methods_of(spec), runs_dir(name))
        pts = [(b, seed_values(res[m], key)) for m, b in spec["budgets"].items() if m in res]
        if len(pts) < 2:
            continue
        xs = [b for b, _ in pts]
        means = [scale * np.mean(list(v.values())) for _, v in pts]
        ci = [bootstrap_mean_interval(list(v.values())) for _, v in pts]
        err = [[m - scale * lo for m, (lo, _) in zip(means, ci)], [scale * hi - m for m, (_, hi) in zip(means, ci)]]
        ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=spec["settings"][name]["title"])
    if "mia" in key:
        ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance (no leak)")
    ax.set_xlabel("FedGC budget (generated rows per real row, in total)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(sorted(spec["budgets"].values()))
    ax.set_title("FedAvg + FedGC on digits: mean and 95% bootstrap interval over 10 seeds", fontsize=9)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    jsonio.write_figure(fig, path, dpi=120)
    plt.close(fig)


def report(spec: dict, names: list[str]) -> None:
    from fedjax_sim import report as report_lib

    out = ["# FedGC: generative augmentation under FedAvg, FedProx and SCAFFOLD", "",
           "Generated by `python experiments/fedgc/run.py` from `runs/fedgc` (do not edit).", "",
           spec["description"], "",
           "Columns: mean ± sample std over the final seeds; Δ = mean paired difference [95% percentile bootstrap "
           "interval over seeds] (k/n = seeds where the row is higher). Attack AUC: lower = less membership "
           "leakage. Generation statistics (means over seeds): fidelity = a softmax-regression classifier fitted "
           "on the public split labels the kept generated rows correctly (%); diversity = mean pairwise distance "
           "between same-class generated rows of a client; guide fallback = requested rows whose client had no "
           "real row of the class to guide with (%); filtered out (%); label JS after = mean Jensen-Shannon "
           "divergence between each client's label mix (real + generated) and the pooled one.", ""]
    for name in names:
        run = runs_dir(name)
        methods = methods_of(spec)
        res = protocol.collect(methods, run)
        if not res:
            continue
        abl = protocol.ablations(spec)
        out += [f"## {spec['settings'][name]['title']}", ""]
        chosen = protocol.selection([m for m in methods if m.name not in abl], run, spec["tune"].get("select"))
        out += ["Selected local learning rates (validation accuracy of the global model): " + ", ".join(
            f"{m}: {protocol.point_values(r.names[r.best], ['local.lr']).get('local.lr')}"
            for m, r in chosen.items() if r.best is not None) + ".", ""]
        main = [m for m in ("fedavg", "fedavg_fedgc", "fedprox", "fedprox_fedgc", "scaffold", "scaffold_fedgc")
                if m in res]
        out += ["### With and without FedGC", ""] + main_table({m: res[m] for m in main}, spec["pairs"]) + [""]
        base = [b for b in ("fedavg", "fedprox", "scaffold") if b in res]
        if len(main) > 1:
            out += ["All pairs (test accuracy):", "",
                    report_lib.comparison_table([res[m] for m in main], base, METRIC, secondary=None), ""]
        out += ["### Budget (FedAvg + FedGC)", ""]
        budget_rows = [(f"budget {b:g}" + (" (= FedAvg)" if b == 0 else " (default)" if m == "fedavg_fedgc" else ""), m)
                       for m, b in spec["budgets"].items()]
        ref = "budget_0" if "budget_0" in res else "fedavg"
        if ref in res:
            out += ablation_rows(res, budget_rows, ref) + [""]
        if "budget_0" in res and "fedavg" in res:
            same = all(seed_values(res["budget_0"], k) == seed_values(res["fedavg"], k) for k in (METRIC, "global_loss", ATTACK))
            out += [f"Budget 0 reproduces plain FedAvg on every seed, bit for bit (accuracy, loss and attack AUC): "
                    f"{'yes' if same else 'NO'}.", ""]
        out += ["### One design axis at a time (FedAvg + FedGC; every other axis at the default)", ""]
        for axis, default, options in AXES:
            rows_of = [(f"{default} (default)", "fedavg_fedgc")] + [(label, m) for m, label in options.items()]
            if "fedavg_fedgc" in res:
                out += [f"**{axis}**", ""] + ablation_rows(res, rows_of, "fedavg_fedgc") + [""]
    (HERE / "results.md").write_text("\n".join(out) + "\n")
    budget_plot(spec, names, METRIC, "global test accuracy (%)", HERE / "budget_accuracy.png")
    budget_plot(spec, names, ATTACK, "membership-inference AUC (global model)", HERE / "budget_mia.png")


if __name__ == "__main__":
    raise SystemExit(protocol.main(sys.argv[1:], __doc__, HERE / "config.json", run_setting, report))
