"""Tables and plots generated from run directories (never typed by hand)."""
from __future__ import annotations

import json
from pathlib import Path


def _fmt(v, digits=4):
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def summary_table(summaries: list[dict]) -> str:
    """Markdown table of final metrics and timing, one row per run summary."""
    rows = ["| algorithm | dataset | rounds | global acc | personalized acc | compile s | train s | samples/s |",
            "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        f, t = s["final"], s["timing"]
        rows.append(f"| {s['algorithm']} | {s['dataset']} | {s['rounds_completed']} | "
                    f"{_fmt(f.get('global_accuracy'))} | {_fmt(f.get('personalized_accuracy'))} | "
                    f"{t['compile_seconds']:.1f} | {t['train_seconds']:.1f} | {t['samples_per_second']:,.0f} |")
    return "\n".join(rows)


def load_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def comparison_plot(run_dirs: list[Path], path: Path, key: str = "personalized_accuracy") -> None:
    """One curve per run of ``key`` against round."""
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
