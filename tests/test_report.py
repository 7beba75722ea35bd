"""Seed-aware reporting: per-seed values, paired comparison tables, strip plots.

All summaries here are hand-made (no training); expected intervals come from
`paired_bootstrap` itself on the same per-seed values, so the tests check the table's pairing and
formatting, not the bootstrap (tested in test_experiments.py).
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from fedjax_sim.experiments import paired_bootstrap
from fedjax_sim.report import (comparison_table, metric_name, seed_points_plot, seed_values,
                               summary_table)

TIMING = {"compile_seconds": 1.0, "train_seconds": 2.0, "samples_per_second": 100.0}
CLS = {"name": "classification", "headline": "accuracy", "higher_is_better": True}
REG = {"name": "regression_mse", "headline": "mse", "higher_is_better": False}


def make_summary(algorithm: str, finals: dict[int, float], bests: dict[int, float] | None = None,
                 task: dict = CLS, with_global: bool = True) -> dict:
    """New-format summary: seeds -> final (and best) headline values; global = personalized - 0.02."""
    head = task["headline"]
    per_seed = []
    for seed, v in finals.items():
        final = {f"personalized_{head}": v, f"personalized_{head}_per_client": [v, v], "loss": 0.3}
        if with_global:
            final[f"global_{head}"] = v - 0.02
        rec = {"seed": seed, "final": final}
        if bests is not None:
            rec["best"] = {f"personalized_{head}": bests[seed]}
        per_seed.append(rec)
    vals = np.array(list(finals.values()))
    return {"algorithm": algorithm, "dataset": "digits", "task": task,
            "config": {"out": f"/tmp/{algorithm}"}, "rounds_completed": 10, "seeds": list(finals),
            "final": {f"personalized_{head}": float(vals.mean()),
                      **({f"global_{head}": float(vals.mean() - 0.02)} if with_global else {})},
            "final_std": {f"personalized_{head}": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0},
            "per_seed": per_seed, "timing": TIMING, "status": "ok"}


A = {0: 0.97, 1: 0.95, 2: 0.99, 3: 0.96}
B = {0: 0.96, 1: 0.96, 2: 0.97, 3: 0.93}
C = {0: 0.90, 1: 0.93, 2: 0.91, 3: 0.92}


def _cell(r, scale=100.0, digits=2) -> str:
    return f"{scale * r.mean:+.{digits}f} [{scale * r.lo:+.{digits}f}, {scale * r.hi:+.{digits}f}] ({r.wins}/{r.n})"


def _row(table: str, algorithm: str) -> list[str]:
    line = next(l for l in table.splitlines() if l.startswith(f"| {algorithm} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_metric_name_prefers_personalized_and_scope_forces():
    s = make_summary("fedavg", A)
    assert metric_name(s) == "personalized_accuracy"
    assert metric_name(s, "global") == "global_accuracy"
    glob_only = {"algorithm": "fedavg", "task": CLS, "final": {"global_accuracy": 0.9}}
    assert metric_name(glob_only) == "global_accuracy"
    with pytest.raises(ValueError):
        metric_name(s, "local")


def test_seed_values_by_seed_id_and_missing_metric_names_algorithm():
    s = make_summary("fedrema", A, bests={k: v + 0.01 for k, v in A.items()})
    assert seed_values(s, "personalized_accuracy") == A
    assert seed_values(s, "personalized_accuracy", "best") == pytest.approx({k: v + 0.01 for k, v in A.items()})
    with pytest.raises(ValueError, match="fedrema.*personalized_mse"):
        seed_values(s, "personalized_mse")
    with pytest.raises(ValueError, match="fedrema"):
        seed_values(make_summary("fedrema", A), "personalized_accuracy", "best")


def test_delta_interval_equals_paired_bootstrap_on_per_seed_values():
    summaries = [make_summary("fedrema", A, bests={k: v + 0.01 for k, v in A.items()}),
                 make_summary("fedavg", B, bests={k: v + 0.005 for k, v in B.items()}),
                 make_summary("local", C)]
    table = comparison_table(summaries, ["fedavg", "local"])
    ab = paired_bootstrap(list(A.values()), list(B.values()))
    ac = paired_bootstrap(list(A.values()), list(C.values()))
    cb = paired_bootstrap(list(C.values()), list(B.values()))
    row = _row(table, "fedrema")
    assert row[1] == "4"
    m, sd = np.mean(list(A.values())), np.std(list(A.values()), ddof=1)
    assert row[2] == f"{100 * m:.2f} ± {100 * sd:.2f}"  # final, percent
    assert row[3] == f"{100 * (m + 0.01):.2f} ± {100 * sd:.2f}"  # best over rounds
    assert row[4] == _cell(ab) and row[5] == _cell(ac)
    assert _row(table, "fedavg")[4] == "—" and _row(table, "local")[5] == "—"
    assert _row(table, "local")[3] == "—"  # no per-seed best in that run
    assert _row(table, "local")[4] == _cell(cb)
    assert "percent" in table and "higher is better" in table
    assert "10000 resamples" in table and "bootstrap" in table and "best" in table
    assert comparison_table(summaries, ["fedavg", "local"]) == table  # fixed bootstrap seed


def test_pairing_is_by_seed_id_not_position():
    a = make_summary("fedrema", A)
    b = make_summary("fedavg", B)
    shuffled = make_summary("fedavg", B)
    random.Random(3).shuffle(shuffled["per_seed"])
    assert [r["seed"] for r in shuffled["per_seed"]] != sorted(B)
    assert comparison_table([a, shuffled], ["fedavg"]) == comparison_table([a, b], ["fedavg"])
    # only shared seeds are paired; fewer than two shared is n/a
    partial = make_summary("fedavg", {2: B[2], 3: B[3], 7: 0.5})
    r = paired_bootstrap([A[2], A[3]], [B[2], B[3]])
    assert _row(comparison_table([a, partial], ["fedavg"]), "fedrema")[-1] == _cell(r)
    lone = make_summary("fedavg", {3: B[3], 9: 0.5})
    assert _row(comparison_table([a, lone], ["fedavg"]), "fedrema")[-1] == "n/a (1 shared seeds)"


def test_unknown_baseline_raises_naming_it_and_allowed_names():
    summaries = [make_summary("fedrema", A), make_summary("fedavg", B)]
    with pytest.raises(ValueError, match="fedprox.*fedrema, fedavg"):
        comparison_table(summaries, ["fedprox"])


def test_old_format_summaries_are_one_seed():
    old = {"algorithm": "fedavg", "dataset": "digits", "rounds_completed": 3,
           "config": {"seed": 5},
           "final": {"global_accuracy": 0.91, "personalized_accuracy": 0.93, "loss": 0.3},
           "timing": TIMING}
    old2 = {**old, "algorithm": "local", "config": {},
            "final": {"personalized_accuracy": 0.88}}
    assert seed_values(old, "personalized_accuracy") == {5: 0.93}
    assert seed_values(old2, "personalized_accuracy") == {0: 0.88}
    table = comparison_table([old, old2], ["fedavg"])
    assert "(best)" not in table  # no run has best-over-rounds
    row = _row(table, "local")
    assert row[1] == "1" and row[2] == "88.00 (one seed)" and row[3] == "n/a (0 shared seeds)"
    # the old table still works on both formats; multi-seed cells are mean ± std
    assert "0.9100" in summary_table([old]) and "0.9300" in summary_table([old])
    new = make_summary("fedrema", A)
    text = summary_table([old, new])
    m, sd = np.mean(list(A.values())), np.std(list(A.values()), ddof=1)
    assert f"{m:.4f} ± {sd:.4f}" in text
    assert "| algorithm | dataset | rounds | global accuracy | personalized accuracy |" in text


def test_lower_is_better_caption_and_raw_units():
    mse = {0: 0.70, 1: 0.72, 2: 0.69}
    mse_b = {0: 0.75, 1: 0.74, 2: 0.73}
    summaries = [make_summary("fedrema", mse, task=REG), make_summary("fedavg", mse_b, task=REG)]
    table = comparison_table(summaries, ["fedavg"])
    assert "personalized_mse" in table and "lower is better" in table
    assert "negative" in table and "raw units" in table.splitlines()[0]
    r = paired_bootstrap(list(mse.values()), list(mse_b.values()))
    assert r.mean < 0  # a - b: the better (lower) row has a negative Δ
    assert _row(table, "fedrema")[-1] == _cell(r, scale=1.0, digits=4)


def test_seed_points_plot_writes_a_png(tmp_path):
    summaries = [make_summary("fedrema", A), make_summary("fedavg", B),
                 make_summary("local", {0: 0.9, 1: 0.91}, with_global=False)]
    path = tmp_path / "seeds.png"
    seed_points_plot(summaries, path)
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = tmp_path / "one.png"
    seed_points_plot([make_summary("fedavg", {0: 0.5}, task=REG)], one)  # one seed: point interval
    assert one.stat().st_size > 0
