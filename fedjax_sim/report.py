"""Tables and plots generated from run directories (never typed by hand)."""
from __future__ import annotations

import json
from pathlib import Path


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


def summary_table(summaries: list[dict]) -> str:
    """Markdown table of final headline metrics and timing, one row per run summary."""
    names = sorted({headline(s) for s in summaries})
    cols = [f"{scope} {name}" for name in names for scope in ("global", "personalized")]
    rows = ["| algorithm | dataset | rounds | " + " | ".join(cols) + " | compile s | train s | samples/s |",
            "|---|---|---|" + "---|" * len(cols) + "---|---|---|"]
    for s in summaries:
        f, t = s["final"], s["timing"]
        values = " | ".join(_fmt(f.get(f"{scope}_{name}")) for name in names for scope in ("global", "personalized"))
        rows.append(f"| {s['algorithm']} | {s['dataset']} | {s['rounds_completed']} | {values} | "
                    f"{t['compile_seconds']:.1f} | {t['train_seconds']:.1f} | {t['samples_per_second']:,.0f} |")
    return "\n".join(rows)


def load_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def comparison_plot(run_dirs: list[Path], path: Path, key: str | None = None) -> None:
    """One curve per run of ``key`` against round (default: ``personalized_<headline>`` of the
    first run)."""
    if key is None:
        key = "personalized_" + headline(json.loads((Path(run_dirs[0]) / "summary.json").read_text()))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for d in run_dirs:
        hist = [h for h in load_metrics(d) if key in h]
        name = json.loads((Path(d) / "summary.json").read_text())["algorithm"]
        ax.plot([h["round"] for h in hist], [h[key] for h in hist], marker="o", ms=3, label=name)
    ax.set_xlabel("round")
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
