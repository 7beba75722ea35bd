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


# ---------------------------------------------------------------------------------------------
# the Python API and the field reference


def test_python_api_runs_loads_compares_and_plots(tmp_path):
    import fedjax_sim as fs

    a = fs.run({"algorithm": "fedavg", "rounds": 2, "local": {"lr": 0.1}}, seeds=2, out=tmp_path / "a",
               data__num_clients=6, model__hidden=(8,))
    assert a.status == "ok" and a.seeds == [0, 1] and a.config["local"]["lr"] == 0.1
    assert a.final == json.loads((tmp_path / "a" / "summary.json").read_text())["final"]
    rounds, values = a.history("global_accuracy", seed=1)
    assert rounds == [0, 2] and len(values) == 2
    b = fs.run(tmp_path / "a", algorithm="local", out=tmp_path / "b")  # a run directory as config
    assert b.config["data"]["num_clients"] == 6 and b.seeds == [0, 1]
    c = fs.compare([tmp_path / "a", b], baselines=["fedavg"])
    assert "Δ vs fedavg" in c.table and c._repr_markdown_() == c.table
    fig = fs.plot([a, fs.load_run(tmp_path / "b")])
    assert len(fig.axes[0].lines) == 2
    assert "fedavg on digits" in repr(a)


@pytest.mark.parametrize("call,field", [
    (lambda fs, p: fs.run({"local": {"lr": -1}}, out=p), "local.lr"),
    (lambda fs, p: fs.run(rounds=0, out=p), "rounds"),
    (lambda fs, p: fs.run({"algorithm": "fedavg,local"}, out=p), "algorithm"),
    (lambda fs, p: fs.run(p / "missing.json", out=p / "x"), "config"),
    (lambda fs, p: fs.load_run(p), "path"),
])
def test_python_api_bad_input_raises_config_error_before_writing(call, field, tmp_path):
    import fedjax_sim as fs

    out = tmp_path / "out"
    with pytest.raises(fs.ConfigError) as e:
        call(fs, out)
    assert e.value.field == field
    assert not out.exists()


def test_python_api_returns_a_diverged_result_with_a_warning(tmp_path):
    import fedjax_sim as fs

    with pytest.warns(RuntimeWarning, match="server.lr"):
        r = fs.run(algorithm="fedavg", rounds=1, out=tmp_path / "d", data__num_clients=6, server__lr=1e30)
    assert r.status == "diverged"


def test_list_fields_prints_every_field_with_type_default_and_description(capsys):
    from fedjax_sim import config as config_lib

    assert cli.main(["list", "--fields"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(config_lib.field_names())
    by_name = {line.split()[0]: line for line in lines}
    assert "float" in by_name["local.lr"] and "0.05" in by_name["local.lr"]
    assert "one of gmm, vae, real, noise" in by_name["fedgc.generator"]
    assert all(len(line.split(None, 3)) == 4 or line.split()[0] == "seeds" for line in lines)


def test_the_config_reference_in_docs_is_current():
    from pathlib import Path

    from fedjax_sim import config as config_lib

    path = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert path.read_text() == config_lib.field_reference(markdown=True), \
        "docs/config.md is stale: regenerate it with fedjax-sim list --fields --markdown > docs/config.md"
