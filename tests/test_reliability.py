"""No silent nonsense (issue: research workflow and reliability): non-finite config values are
refused up front, a non-finite model is a divergence (exit 3) wherever it shows, every file a run
writes is strict JSON, a comparison outlives one diverged algorithm, and config.json records what
was resolved."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedjax_sim import cli, jsonio

SMALL = ["--clients", "6", "--set", "model.hidden=8", "--no-progress"]


def _strict_lines(path):
    """Every line of a JSON-lines file, parsed by a strict parser (NaN / Infinity refused)."""
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name} in {path}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _strict(path):
    return _strict_lines(path)[0] if path.suffix == ".jsonl" else json.loads(
        path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


NON_FINITE = [("local.weight_decay", "inf"), ("data.synthetic_alpha", "inf"), ("server.lr", "-inf"),
              ("fedprox.mu", "inf"), ("clock.sigma", "inf"), ("fedgc.gamma", "inf"),
              ("data.alpha", "-inf")]


@pytest.mark.parametrize("field,value", NON_FINITE, ids=[f for f, _ in NON_FINITE])
def test_non_finite_fields_are_refused_before_anything_runs(field, value, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["run", "--rounds", "1", "--out", str(out), "--set", f"{field}={value}"] + SMALL)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert field in err[0] and "finite" in err[0], err[0]
    assert not out.exists()


def test_a_non_finite_model_in_the_last_round_is_a_divergence_with_strict_files(tmp_path, capsys):
    """server.lr=1e30 for one round: the training loss of round 1 is finite (it is computed before
    the server step), the model after it is not. Caught at the evaluation: exit 3, status
    diverged, a hint naming server.lr, and only strict JSON on disk."""
    out = tmp_path / "run"
    rc = cli.main(["run", "--algorithm", "fedavg", "--rounds", "1", "--set", "server.lr=1e30", "--out", str(out)]
                  + SMALL)
    err = capsys.readouterr().err
    assert rc == 3 and "server.lr" in err, err
    summary = _strict(out / "summary.json")
    assert summary["status"] == "diverged" and summary["per_seed"][0]["status"] == "diverged"
    assert summary["rounds_completed"] == 0  # the last finite model is round 0's
    records = _strict_lines(out / "metrics.jsonl")
    assert records[-1]["status"] == "diverged" and records[-1]["global_loss"] is None
    _strict(out / "config.json")


def test_divergence_inside_a_block_keeps_the_finished_rounds(tmp_path, capsys):
    """The model blows up in round 1's server step; round 2's training loss is the first
    non-finite value, inside an evaluation block of 10. Round 1's training loss is kept."""
    out = tmp_path / "run"
    rc = cli.main(["run", "--algorithm", "fedavg", "--rounds", "10", "--set", "eval_every=10",
                   "--set", "server.lr=1e30", "--out", str(out)] + SMALL)
    err = capsys.readouterr().err
    assert rc == 3 and "round 2" in err and "server.lr" in err, err
    records = _strict_lines(out / "metrics.jsonl")
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[1]["evaluated"] is False and math.isfinite(records[1]["train_loss"])
    assert records[2]["status"] == "diverged"
    assert _strict(out / "summary.json")["rounds_completed"] == 1


def test_a_comparison_goes_on_after_one_algorithm_diverges(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = cli.main(["run", "--algorithm", "fedavg,local", "--rounds", "2", "--set", "server.lr=1e30",
                   "--out", str(out)] + SMALL)
    assert rc == 3
    capsys.readouterr()
    assert _strict(out / "local" / "summary.json")["status"] == "ok"  # local has no server step
    assert _strict(out / "fedavg" / "summary.json")["status"] == "diverged"
    results = (out / "results.md").read_text()
    assert "fedavg (**diverged**: 1/1 seeds)" in results and "| local |" in results


def test_config_json_records_the_partition_used(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", "--algorithm", "fedavg", "--rounds", "1", "--out", str(out)] + SMALL) == 0
    config = _strict(out / "config.json")
    assert config["data"]["partition"] == "auto" and config["resolved"]["partition"] == "dirichlet_label"


def test_a_fixed_ablation_refuses_a_conflicting_fedrema_ablation(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["run", "--algorithm", "fedrema_no_ccp", "--rounds", "1", "--set", "fedrema.ablation=no_history",
                   "--out", str(out)] + SMALL)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fedrema.ablation" in err[0] and "no_history" in err[0], err
    assert not out.exists()


def test_strict_json_replaces_every_non_finite_number():
    obj = {"a": float("nan"), "b": [1.0, float("inf"), np.float32("-inf"), np.float64(2.5)],
           "c": {"d": (np.int32(3), True, None, "x")}}
    text = jsonio.dumps(obj)
    assert json.loads(text) == {"a": None, "b": [1.0, None, None, 2.5], "c": {"d": [3, True, None, "x"]}}


def test_json_writes_are_atomic(tmp_path):
    path = tmp_path / "summary.json"
    jsonio.write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    with pytest.raises(TypeError):  # a failed serialization leaves the earlier file untouched
        jsonio.write_json(path, {"x": object()})
    assert json.loads(path.read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
