"""The `fedjax-sim` command: one end-to-end subprocess run, then `main([...])` in-process for
listing, benchmarking, bad input (exit 2, one line naming field and value, nothing written)
and divergence (exit 3, what was written is kept)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedjax_sim import cli
from fedjax_sim import config as config_lib, runner
from fedjax_sim.data import sources
from fedjax_sim.errors import ConfigError
from conftest import assert_config_error

SUMMARY_KEYS = {"algorithm", "dataset", "task", "config", "rounds_completed", "data", "final",
                "timing", "status", "evaluated_on", "seeds", "final_std", "per_seed"}
TIMING_KEYS = {"compile_seconds", "train_seconds", "samples_per_second", "compiles",
               "round_block_compiles", "trials_in_program"}
TINY = ["--clients", "3", "--rounds", "1", "--set", "model.hidden=4", "--set", "eval_every=1",
        "--no-progress"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own directory, so a stray default `runs/` would be seen."""
    monkeypatch.chdir(tmp_path)


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("fedjax-sim")
    found = str(script) if script.exists() else shutil.which("fedjax-sim")
    assert found, "the fedjax-sim console script is not installed"
    return [found]


def _check_run_dir(path: Path, algorithm: str, clients: int, rounds: int, has_global: bool,
                   dataset: str = "digits", headline: str = "accuracy"):
    """A finished run directory: files, config, one metrics record per round, summary keys, the
    task's headline metric (global and personalized, per client) and the timing block."""
    for name in ("config.json", "metrics.jsonl", "summary.json", "accuracy.png"):
        assert (path / name).is_file(), f"{path / name} missing"
    config = json.loads((path / "config.json").read_text())
    assert config["algorithm"] == algorithm and config["rounds"] == rounds
    records = [json.loads(l) for l in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(rounds + 1))  # eval_every=1, plus round 0
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert summary["algorithm"] == algorithm and summary["dataset"] == dataset
    assert summary["rounds_completed"] == rounds and summary["status"] == "ok"
    assert summary["config"]["algorithm"] == algorithm
    described = summary["data"]
    assert described["num_clients"] == clients and described["name"] == dataset
    assert described["target_kind"] == ("class" if headline == "accuracy" else "real")
    final = summary["final"]
    assert (f"global_{headline}" in final) == has_global
    if headline == "accuracy":
        assert 0.0 <= final["personalized_accuracy"] <= 1.0
    else:
        assert final[f"personalized_{headline}"] >= 0.0
    per_client = final[f"personalized_{headline}_per_client"]
    assert len(per_client) == clients and np.all(np.isfinite(per_client))
    assert np.isfinite(final["loss"])
    assert all(f"personalized_{headline}" in r for r in records)
    timing = summary["timing"]
    assert set(timing) == TIMING_KEYS
    assert timing["samples_per_second"] > 0
    # the round block compiles once (in the first block), never again in later blocks
    assert timing["round_block_compiles"] == 1 and timing["compiles"] >= 1
    return config, summary


def test_end_to_end_console_script(tmp_path):
    """`fedjax-sim run` with two algorithms writes a run directory per algorithm with the
    documented files and summary keys, plus results.md and comparison.png."""
    out = tmp_path / "cmp"
    proc = subprocess.run(
        _console_script() + ["run", "--algorithm", "fedavg,local", "--clients", "5", "--rounds", "2",
                             "--set", "eval_every=1", "--set", "model.hidden=8", "--out", str(out),
                             "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_run_dir(out / "fedavg", "fedavg", 5, 2, has_global=True)
    _check_run_dir(out / "local", "local", 5, 2, has_global=False)
    assert (out / "comparison.png").is_file()
    table = (out / "results.md").read_text()
    assert "fedavg" in table and "local" in table
    assert "fedavg" in proc.stdout and str(out) in proc.stdout


def test_list_names_algorithms_datasets_partitions(capsys):
    """`list` prints every registered algorithm, the datasets and the partitions."""
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("fedavg", "fedprox", "scaffold", "local", "fedavg_ft", "fedrema", "fedrema_no_ccp",
                 "fedrema_no_history", "fedrema_random_peers", "fedper", "fedrep", "head_avg",
                 "digits", "diabetes", "synthetic", "dirichlet_label", "iid", "pathological",
                 "local.lr", "classification", "regression_mse", "regression_mae", "adam",
                 "task.name", "local.optimizer_args", "server.optimizer_args", "fedrema.delta",
                 "fedprox.mu", "fedrep.head_epochs", "fedavg_ft.finetune_epochs",
                 "data.with_replacement"):
        assert name in out, name


def test_bench_prints_one_json_line(capsys):
    """`bench --json` on a tiny workload prints exactly one JSON line with the throughput keys."""
    rc = cli.main(["bench", "--features", "8", "--hidden", "8", "--clients", "6", "--cohort", "3",
                   "--examples-per-client", "8", "--batch-size", "4", "--rounds", "2",
                   "--repeats", "1", "--json"])
    assert rc == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("samples_per_second", "compile_seconds", "seconds_per_round",
                "centralized_samples_per_second", "efficiency"):
        assert key in result and result[key] > 0, key
    assert result["workload"]["clients"] == 6 and result["workload"]["cohort"] == 3


BAD_RUNS = [
    (["--algorithm", "nosuch"], "algorithm", "nosuch"),
    (["--algorithm", "fedavg,nosuch"], "algorithm", "nosuch"),
    (["--dataset", "nosuch"], "data.dataset", "nosuch"),
    (["--set", "local.nosuch=1"], "local.nosuch", "1"),
    (["--set", "nosuch=1"], "nosuch", "1"),
    (["--rounds", "abc"], "rounds", "abc"),
    (["--seed", "99999999999"], "seed", "99999999999"),
    (["--seed", "-3"], "seed", "-3"),
    (["--set", "data.seed=4294967296"], "data.seed", "4294967296"),
    (["--set", "local.lr=fast"], "local.lr", "fast"),
    (["--clients", "0"], "data.num_clients", "0"),
    (["--rounds", "-1"], "rounds", "-1"),
    (["--set", "local.batch_size=0"], "local.batch_size", "0"),
    (["--clients", "5000"], "data.num_clients", "5000"),
    (["--set", "data.alpha=0"], "data.alpha", "0"),
    (["--set", "local.lr=nan"], "local.lr", "nan"),
    (["--cohort", "9"], "cohort", "9"),
    # task / data mismatch, both ways, and an unknown task
    (["--set", "task.name=classification", "--dataset", "diabetes"], "task.name", "classification"),
    (["--set", "task.name=regression_mse"], "task.name", "regression_mse"),
    (["--set", "task.name=regression_mae"], "task.name", "regression_mae"),
    (["--set", "task.name=nosuch"], "task.name", "nosuch"),
    # optimizer names and hyper-parameters: unknown name, a keyword optax.<name> does not take,
    # a value optax rejects when the transform is traced, a malformed list
    (["--set", "local.optimizer=adamm"], "local.optimizer", "adamm"),
    (["--set", "server.optimizer=adamm"], "server.optimizer", "adamm"),
    (["--set", "local.optimizer_args=bogus=1"], "local.optimizer_args", "bogus=1"),
    (["--set", "local.optimizer=adam", "--set", "local.optimizer_args=bogus=1"],
     "local.optimizer_args", "bogus=1"),
    (["--set", "local.optimizer=adam", "--set", "local.optimizer_args=b1=abc"],
     "local.optimizer_args", "b1=abc"),
    (["--set", "local.optimizer_args=momentum=abc"], "local.optimizer_args", "momentum=abc"),
    (["--set", "local.optimizer_args=b1"], "local.optimizer_args", "b1"),
    (["--set", "server.optimizer=adam", "--set", "server.optimizer_args=b2=fast"],
     "server.optimizer_args", "b2=fast"),
    (["--set", "local.optimizer=momentum", "--set", "local.optimizer_args=momentum=0.5"],
     "local.optimizer_args", "momentum=0.5"),  # set by local.momentum, not twice
    # algorithm-owned sections: unknown keys, bad values, the moved fields
    (["--set", "fedrema.unknown=1"], "fedrema.unknown", "1"),
    (["--set", "fedrema.head_epochs=0", "--algorithm", "fedrep"], "fedrep.head_epochs", "0"),
    (["--set", "fedprox.mu=-1", "--algorithm", "fedprox"], "fedprox.mu", "-1"),
    (["--set", "server.prox_mu=-1", "--algorithm", "fedprox"], "fedprox.mu", "-1"),
    (["--set", "fedprox.nosuch=1"], "fedprox.nosuch", "1"),
    (["--set", "fedavg_ft.finetune_epochs=0", "--algorithm", "fedavg_ft"],
     "fedavg_ft.finetune_epochs", "0"),
    # with-replacement sampling exists only for dominant_class
    (["--set", "data.with_replacement=true"], "data.with_replacement", "True"),
    # seeds, presets, baselines, trial modes
    (["--seeds", "0"], "--seeds", "0"),
    (["--seeds", "-2"], "--seeds", "-2"),
    (["--seeds", "ten"], "--seeds", "ten"),
    (["--seeds", "1,1"], "--seeds", "1,1"),
    (["--seeds", "1,,2"], "--seeds", "1,,2"),
    (["--set", "seeds=3,-1"], "seeds", "3,-1"),
    (["--preset", "nosuch"], "--preset", "nosuch"),
    (["--algorithm", "fedavg,local", "--baselines", "fedprox"], "--baselines", "fedprox"),
    (["--trials", "parallel"], "trials", "parallel"),
    (["--set", "data.validation_fraction=1"], "data.validation_fraction", "1"),
    (["--seeds", "3000000000"], "--seeds", "3000000000"),
    (["--seeds", "2", "--set", "seeds=3,4"], "--seeds", "2"),
    (["--set", "preset=fedrema"], "--set", "preset=fedrema"),
    (["--algorithm", "fedavg,local", "--baselines", "local,local"], "--baselines", "local,local"),
    (["--out", "/proc/fedjax-sim-test"], "--out", "/proc/fedjax-sim-test"),
    # FLoRAL: rank, adaptors, budget, router, clusters, the oracle router's data
    (["--algorithm", "floral", "--set", "floral.rank=-1"], "floral.rank", "-1"),
    (["--algorithm", "floral", "--set", "floral.num_adaptors=0"], "floral.num_adaptors", "0"),
    (["--algorithm", "ensemble", "--set", "floral.num_adaptors=0"], "floral.num_adaptors", "0"),
    (["--algorithm", "floral", "--set", "floral.rho=0"], "floral.rho", "0"),
    (["--algorithm", "floral", "--set", "floral.rho=1.5"], "floral.rho", "1.5"),
    (["--algorithm", "floral", "--set", "floral.rho=nan"], "floral.rho", "nan"),
    (["--algorithm", "floral", "--set", "floral.router_noise=inf"], "floral.router_noise", "inf"),
    (["--algorithm", "floral", "--set", "floral.adaptor_bias=ones"], "floral.adaptor_bias", "ones"),
    (["--algorithm", "floral", "--set", "floral.conv_rank_rule=none"], "floral.conv_rank_rule", "none"),
    (["--algorithm", "floral", "--partition", "clusters", "--set", "data.num_clusters=4"],
     "data.num_clusters", "4"),
    (["--algorithm", "floral", "--partition", "clusters", "--set", "data.num_clusters=0"],
     "data.num_clusters", "0"),
    (["--partition", "clusters", "--set", "data.cluster_transform=flip"], "data.cluster_transform", "flip"),
    (["--algorithm", "floral_oracle"], "algorithm", "floral_oracle"),
    (["--algorithm", "ensemble_oracle", "--partition", "iid"], "algorithm", "ensemble_oracle"),
]

BAD_SWEEPS = [
    ([], "--grid", ""),
    (["--grid", "local.lr"], "--grid", "local.lr"),
    (["--grid", "local.lr="], "--grid", "local.lr="),
    (["--grid", "local.lr=0.1,"], "--grid", "local.lr=0.1,"),
    (["--grid", "local.lr=fast,0.1"], "--grid", "local.lr=fast,0.1"),
    (["--grid", "local.lr=0.1,0.1"], "--grid", "local.lr=0.1,0.1"),
    (["--grid", "model.hidden=8,16"], "--grid", "model.hidden=8,16"),
    (["--grid", "nosuch=1,2"], "--grid", "nosuch=1,2"),
    (["--grid", "seed=1,2"], "--grid", "seed=1,2"),
    (["--grid", "data.dataset=digits,diabetes"], "--grid", "data.dataset=digits,diabetes"),
    (["--grid", "data.seed=1,2"], "--grid", "data.seed=1,2"),
    (["--grid", "eval_every=1,2"], "--grid", "eval_every=1,2"),
    (["--grid", "local.lr=0.1", "--grid", "local.lr=0.2"], "--grid", "local.lr=0.2"),
    (["--grid", "fedprox.mu=0,0.1"], "--grid", "fedprox.mu=0,0.1"),  # fedavg does not read it
    (["--grid", "local.momentum=0.5,0.9"], "--grid", "local.momentum=0.5,0.9"),  # sgd ignores it
    (["--grid", "local.lr=0,0.1"], "local.lr", "0.0"),  # every point is validated
    (["--grid", "local.lr=0.1", "--validation-fraction", "1.5"], "--validation-fraction", "1.5"),
    (["--grid", "local.lr=0.1", "--select", "x", "--seeds", "0"], "--seeds", "0"),
    (["--grid", "local.lr=0.1", "--select", "accuracy"], "--select", "accuracy"),
    (["--grid", "local.lr=0.1", "--select", "global_accuracy", "--algorithm", "local"],
     "--select", "global_accuracy"),
]


@pytest.mark.parametrize("args,field,value", BAD_SWEEPS, ids=[" ".join(a) or "no grid" for a, _, _ in BAD_SWEEPS])
def test_bad_sweep_input_exits_2_naming_field_and_value(args, field, value, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["sweep", "--clients", "3", "--rounds", "1", "--set", "model.hidden=4", "--no-progress",
                   "--out", str(out)] + args)
    _assert_config_error(capsys, rc, field, value)
    assert not out.exists()


def test_config_from_a_summary_json_is_refused(tmp_path, capsys):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"algorithm": "fedavg", "config": {}, "final": {}}))
    rc = cli.main(["run", "--config", str(path), "--no-progress", "--out", str(tmp_path / "o")])
    assert "summary.json" in _assert_config_error(capsys, rc, "--config", str(path))


def test_a_preset_value_that_fails_names_the_preset(tmp_path, capsys):
    rc = cli.main(["run", "--preset", "fedprox_synthetic_iid", "--clients", "5", "--no-progress",
                   "--out", str(tmp_path / "o")])
    assert "(set by --preset fedprox_synthetic_iid)" in _assert_config_error(capsys, rc, "cohort", "10")


def test_divergence_in_a_comparison_keeps_every_result_and_exits_3(tmp_path, capsys):
    """Seeds that diverge are reported, not averaged: the comparison still writes results.md
    (from the seeds that finished) and exits 3."""
    out = tmp_path / "div"
    rc = cli.main(["run", "--algorithm", "fedavg,local", "--seeds", "2", "--set", "local.lr=1e30"]
                  + TINY + ["--out", str(out)])
    assert rc == 3
    assert "diverged" in capsys.readouterr().err
    summary = json.loads((out / "fedavg" / "summary.json").read_text())
    assert summary["status"] == "diverged" and all(e["status"] == "diverged" for e in summary["per_seed"])
    assert "no seed finished" in (out / "results.md").read_text()


def test_seed_flag_reruns_a_multi_seed_config_with_one_seed(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"seeds": [0, 3, 7], "rounds": 1}))
    a = cli.build_parser().parse_args(["run", "--config", str(path), "--seed", "1"])
    cfg = cli.config_from_args(a)
    assert cfg.seeds == () and cfg.seed == 1
    a = cli.build_parser().parse_args(["run", "--config", str(path)])
    assert cli.config_from_args(a).seeds == (0, 3, 7)


def test_sweep_grid_axes_apply_to_the_algorithms_that_read_them(tmp_path, capsys):
    """fedprox.mu is swept for fedprox only; fedavg gets the lr axis alone. --trials sequential
    runs the same points one by one."""
    out = tmp_path / "s"
    rc = cli.main(["sweep", "--algorithm", "fedavg,fedprox", "--grid", "local.lr=0.05,0.1",
                   "--grid", "fedprox.mu=0,0.1", "--trials", "sequential"] + TINY + ["--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "sweep.json").read_text())
    assert [p["point"] for p in result["fedavg"]["points"]] == ["local.lr=0.05", "local.lr=0.1"]
    assert len(result["fedprox"]["points"]) == 4
    summary = json.loads((Path(result["fedprox"]["points"][1]["out"]) / "summary.json").read_text())
    assert summary["config"]["resolved"]["trials"]["mode"] == "sequential"
    assert summary["config"]["fedprox"]["mu"] == 0.1


def test_seeds_run_writes_per_seed_results(tmp_path, capsys):
    """--seeds 3 on two algorithms: one vmapped program per algorithm, per-seed finals with
    mean and std, results.md with the paired interval against the named baseline, seeds.png."""
    out = tmp_path / "cmp"
    rc = cli.main(["run", "--algorithm", "fedavg,local", "--baselines", "local", "--seeds", "3",
                   "--seed", "5"] + TINY + ["--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "fedavg" / "summary.json").read_text())
    assert summary["seeds"] == [5, 6, 7] and summary["config"]["seeds"] == [5, 6, 7]
    assert summary["config"]["resolved"]["trials"]["mode"] == "vmap"
    finals = [e["final"]["personalized_accuracy"] for e in summary["per_seed"]]
    assert summary["final"]["personalized_accuracy"] == pytest.approx(np.mean(finals))
    records = [json.loads(l) for l in (out / "fedavg" / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["seed"] for r in records}) == [5, 6, 7]
    results = (out / "results.md").read_text()
    assert "Δ vs local" in results and "Δ vs fedavg" not in results
    assert (out / "seeds.png").stat().st_size > 0
    # the stored config re-runs the same seeds
    again = tmp_path / "again"
    rc = cli.main(["run", "--config", str(out / "local" / "config.json"), "--no-progress", "--out", str(again)])
    assert rc == 0
    rerun = json.loads((again / "summary.json").read_text())
    base = json.loads((out / "local" / "summary.json").read_text())
    assert rerun["seeds"] == [5, 6, 7]
    np.testing.assert_allclose([e["final"]["personalized_accuracy"] for e in rerun["per_seed"]],
                               [e["final"]["personalized_accuracy"] for e in base["per_seed"]], atol=1e-6)


def test_sweep_selects_on_validation_and_writes_the_best_config(tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = cli.main(["sweep", "--algorithm", "fedavg,fedprox", "--grid", "local.lr=0.02,0.2",
                   "--grid", "server.lr=0.5,1", "--seeds", "2"] + TINY + ["--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((out / "sweep.json").read_text())
    for name in ("fedavg", "fedprox"):
        points = result[name]["points"]
        assert len(points) == 4
        best = max(points, key=lambda p: p["mean"])
        assert result[name]["selected"] == best["point"]
        summary = json.loads((Path(best["out"]) / "summary.json").read_text())
        assert summary["evaluated_on"] == "validation" and summary["config"]["data"]["validation_fraction"] == 0.2
        assert summary["config"]["resolved"]["trials"]["grid_points_in_program"] == 4
        chosen = json.loads((out / name / "best_config.json").read_text())
        assert chosen["data"]["validation_fraction"] == 0.0 and "seeds" not in chosen
        assert chosen["local"]["lr"] == summary["config"]["local"]["lr"]
    assert "**" + result["fedavg"]["selected"] + "**" in (out / "sweep.md").read_text()
    rc = cli.main(["run", "--config", str(out / "fedavg" / "best_config.json"), "--no-progress",
                   "--out", str(tmp_path / "final")])
    assert rc == 0
    assert json.loads((tmp_path / "final" / "summary.json").read_text())["evaluated_on"] == "test"


def test_preset_round_trips_through_config_json(tmp_path, capsys):
    from fedjax_sim.presets import PRESETS

    out = tmp_path / "p"
    rc = cli.main(["run", "--preset", "fedrema", "--algorithm", "fedrema", "--rounds", "1",
                   "--set", "local.epochs=1", "--set", "model.hidden=8,8", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    stored = json.loads((out / "config.json").read_text())
    assert stored["preset"] == "fedrema"
    for key, value in PRESETS["fedrema"].values.items():
        if key not in ("rounds", "local.epochs"):  # given explicitly: flags win over the preset
            node = stored
            for part in key.split("."):
                node = node[part]
            assert node == (list(value) if isinstance(value, tuple) else value), key
    assert stored["rounds"] == 1 and stored["local"]["epochs"] == 1
    cfg = cli.config_from_args(cli.build_parser().parse_args(["run", "--config", str(out / "config.json")]))
    assert config_lib.to_dict(cfg) == {k: v for k, v in stored.items() if k not in ("resolved", "out")} | {"out": ""}


_assert_config_error = assert_config_error


@pytest.mark.parametrize("args,field,value", BAD_RUNS, ids=[" ".join(a) for a, _, _ in BAD_RUNS])
def test_bad_run_input_exits_2_naming_field_and_value(args, field, value, tmp_path, capsys):
    """Bad input: exit code 2, one stderr line with the field and the value, no directory."""
    out = tmp_path / "out"
    base = ["run", "--clients", "3", "--rounds", "1", "--set", "model.hidden=4", "--no-progress",
            "--out", str(out)]
    rc = cli.main(base + args)
    _assert_config_error(capsys, rc, field, value)
    assert not out.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text", ["[1, 2]", '"rounds"', "null"])
def test_config_file_that_is_not_an_object_exits_2(text, tmp_path, capsys):
    """Valid JSON that is not an object of fields (a list, a string, null): exit 2 naming --config."""
    path = tmp_path / "config.json"
    path.write_text(text)
    out = tmp_path / "out"
    rc = cli.main(["run", "--config", str(path), "--out", str(out)] + TINY)
    _assert_config_error(capsys, rc, "--config", str(path))
    assert not out.exists()


def test_unknown_key_in_config_file_section_exits_2(tmp_path, capsys):
    """A config.json whose fedrema section has a key FedReMa does not know: exit 2 naming it."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"algorithm": "fedrema", "rounds": 1,
                                "fedrema": {"delta": 0.5, "unknown": 1}}))
    out = tmp_path / "out"
    rc = cli.main(["run", "--config", str(path), "--out", str(out)] + TINY)
    _assert_config_error(capsys, rc, "fedrema.unknown", "1")
    assert not out.exists()


def test_diabetes_regression_end_to_end(tmp_path, capsys):
    """`fedjax-sim run --dataset diabetes --rounds 3` (the default FedAvg vs Local comparison) on the
    embedded regression set: the task resolves to regression_mse and every summary reports
    global / personalized MSE (and MAE) and the per-client MSE instead of accuracy."""
    out = tmp_path / "diabetes"
    rc = cli.main(["run", "--dataset", "diabetes", "--rounds", "3", "--clients", "4",
                   "--set", "eval_every=1", "--set", "model.hidden=8", "--out", str(out),
                   "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    for alg, has_global in (("fedavg", True), ("local", False)):
        config, summary = _check_run_dir(out / alg, alg, 4, 3, has_global, dataset="diabetes",
                                         headline="mse")
        assert config["resolved"]["task"] == "regression_mse" and config["task"]["name"] == "auto"
        final = summary["final"]
        assert "personalized_accuracy" not in final and "global_accuracy" not in final
        assert np.isfinite(final["personalized_mae"]) and final["personalized_mse"] > 0
        if has_global:
            assert np.isfinite(final["global_mse"]) and final["global_mse"] > 0
            assert final["loss"] == pytest.approx(final["global_mse"])  # MSE is the training loss
    assert (out / "results.md").is_file() and (out / "comparison.png").is_file()


def test_results_table_shows_the_task_headline():
    """results.md of a regression comparison shows the MSE it was judged by, not '-'."""
    from fedjax_sim.report import summary_table
    summary = {"algorithm": "fedavg", "dataset": "diabetes", "rounds_completed": 3,
               "final": {"global_mse": 0.7207, "personalized_mse": 0.7198, "loss": 0.7207},
               "timing": {"compile_seconds": 1.0, "train_seconds": 0.5, "samples_per_second": 10.0}}
    table = summary_table([summary])
    assert "0.7207" in table and "0.7198" in table


def test_old_prox_mu_name_still_works_and_is_written_as_fedprox_mu(tmp_path, capsys):
    """`--set server.prox_mu=0.1 --algorithm fedprox` runs, and config.json holds it as
    fedprox.mu (the server section has no prox_mu); the old name in a config file works too."""
    out = tmp_path / "prox"
    rc = cli.main(["run", "--algorithm", "fedprox", "--set", "server.prox_mu=0.1", "--out", str(out)]
                  + TINY)
    assert rc == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["fedprox"]["mu"] == 0.1 and "prox_mu" not in config["server"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["fedprox"]["mu"] == 0.1 and summary["status"] == "ok"
    # an old config file (server.prox_mu, local.finetune_epochs, fedrema.head_epochs) still loads
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"algorithm": "fedprox", "server": {"prox_mu": 0.3},
                                "local": {"finetune_epochs": 2}, "fedrema": {"head_epochs": 4}}))
    a = cli.build_parser().parse_args(["run", "--config", str(path)])
    cfg = cli.config_from_args(a)
    assert cfg.fedprox.mu == 0.3 and cfg.fedavg_ft.finetune_epochs == 2 and cfg.fedrep.head_epochs == 4


def _nan_digits(cfg, rng):
    src = sources.load_digits(cfg, rng)
    x = src.x_pool.copy()
    x[5, 3, 3, 0] = np.nan
    return src._replace(x_pool=x)


def test_nan_in_data_exits_2_naming_data(tmp_path, capsys, monkeypatch):
    """A NaN in the source data is refused before training, naming the `data` field."""
    monkeypatch.setitem(sources.DATASETS, "digits", _nan_digits)
    out = tmp_path / "out"
    rc = cli.main(["run", "--algorithm", "fedavg", "--out", str(out)] + TINY)
    line = _assert_config_error(capsys, rc, "data", "non-finite")
    assert line.startswith("fedjax-sim: error: data=")
    assert not out.exists()


def test_check_finite_names_data_field():
    """check_finite raises a ConfigError for the `data` field on NaN or inf, and passes finite."""
    sources.check_finite(np.zeros(3), None)
    for bad in (np.nan, np.inf):
        with pytest.raises(ConfigError) as err:
            sources.check_finite(np.zeros(3), np.array([1.0, bad]))
        assert err.value.field == "data"


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_out_dir_holding_a_run_is_refused(tmp_path, capsys):
    """--out pointing at an earlier run's directory: exit 2 naming --out; nothing changes."""
    out = tmp_path / "old"
    out.mkdir()
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        (out / name).write_text(f"earlier run's {name}\n")
    before = _snapshot(out)
    rc = cli.main(["run", "--algorithm", "fedavg", "--out", str(out)] + TINY)
    _assert_config_error(capsys, rc, "--out", str(out))
    assert _snapshot(out) == before


def test_multi_algorithm_out_dir_holding_a_run_is_refused(tmp_path, capsys):
    """--out pointing at an earlier comparison (one of whose algorithms is asked again): exit 2
    before anything runs, so no sibling run directory is created."""
    out = tmp_path / "old"
    (out / "local").mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        (out / "local" / name).write_text(f"earlier run's {name}\n")
    (out / "results.md").write_text("earlier table\n")
    before = _snapshot(out)
    rc = cli.main(["run", "--algorithm", "fedavg,local", "--out", str(out)] + TINY)
    _assert_config_error(capsys, rc, "--out", str(out))  # refused at the comparison's own level
    assert _snapshot(out) == before and not (out / "fedavg").exists()


def _refuse_to_run(*args, **kwargs):
    raise AssertionError("runner.run was reached: the command should have refused its input")


def test_new_comparison_into_an_earlier_comparison_dir_is_refused(tmp_path, capsys, monkeypatch):
    """--out holding an earlier comparison (results.md, comparison.png, per-algorithm runs) with
    a different algorithm set: refused up front (exit 2, naming --out), since running would
    overwrite the earlier results.md and comparison.png. (runner.run is stubbed out: the refusal
    must come before any run; without it the stub fails the test instead of training.)"""
    monkeypatch.setattr(runner, "run", _refuse_to_run)
    out = tmp_path / "old"
    for alg in ("fedavg", "local"):
        (out / alg).mkdir(parents=True)
        for name in ("config.json", "metrics.jsonl", "summary.json"):
            (out / alg / name).write_text(f"earlier {alg} run's {name}\n")
    (out / "results.md").write_text("earlier table\n")
    (out / "comparison.png").write_bytes(b"earlier plot")
    before = _snapshot(out)
    rc = cli.main(["run", "--algorithm", "fedprox,scaffold", "--out", str(out)] + TINY)
    _assert_config_error(capsys, rc, "--out", str(out))
    assert _snapshot(out) == before


def test_duplicate_algorithm_is_refused_before_running(tmp_path, capsys, monkeypatch):
    """`--algorithm fedavg,fedavg` would write two runs into one directory: refused up front
    (exit 2), not after the first run has trained and written its results."""
    monkeypatch.setattr(runner, "run", _refuse_to_run)
    out = tmp_path / "dup"
    rc = cli.main(["run", "--algorithm", "fedavg,fedavg", "--out", str(out)] + TINY)
    _assert_config_error(capsys, rc, "fedavg", "fedavg")
    assert not out.exists()


@pytest.mark.parametrize("source", ["--set", "--config"])
def test_algorithm_from_set_or_config_file_is_used(source, tmp_path, capsys, monkeypatch):
    """`--set algorithm=NAME` and a --config file's algorithm choose the algorithm (the default
    --algorithm list must not silently replace them): an unknown name there is exit 2."""
    monkeypatch.setattr(runner, "run", _refuse_to_run)
    if source == "--set":
        extra = ["--set", "algorithm=nosuch"]
    else:
        path = tmp_path / "config.json"
        path.write_text(json.dumps({"algorithm": "nosuch", "rounds": 1}))
        extra = ["--config", str(path)]
    rc = cli.main(["run", "--out", str(tmp_path / "out")] + TINY + extra)
    _assert_config_error(capsys, rc, "algorithm", "nosuch")


BAD_BENCH = [
    (["--clients", "0"], "--clients", "0"),
    (["--cohort", "10", "--clients", "5"], "--cohort", "10"),
    (["--hidden", "8,x"], "--hidden", "8,x"),
    (["--batch-size", "0"], "--batch-size", "0"),
]


@pytest.mark.parametrize("args,field,value", BAD_BENCH, ids=[" ".join(a) for a, _, _ in BAD_BENCH])
def test_bad_bench_input_exits_2(args, field, value, capsys):
    """bench with an impossible workload: exit code 2 and one line naming the flag and value."""
    rc = cli.main(["bench", "--features", "4", "--hidden", "4", "--clients", "6", "--cohort", "3",
                   "--rounds", "1", "--repeats", "1", "--json"] + args)
    _assert_config_error(capsys, rc, field, value)


def test_diverged_run_exits_3_and_keeps_its_files(tmp_path, capsys):
    """A loss that goes non-finite stops the run with exit code 3 and a message saying it
    diverged; config.json, metrics.jsonl and summary.json (status diverged) are kept."""
    out = tmp_path / "div"
    rc = cli.main(["run", "--algorithm", "fedavg", "--clients", "3", "--rounds", "2",
                   "--set", "eval_every=1", "--set", "model.hidden=4", "--set", "local.lr=1e30",
                   "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "diverged" in err
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["rounds_completed"] == 0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "diverged" and last["round"] == 1


def test_rerun_from_a_config_file_with_another_seed_makes_a_new_directory(tmp_path, capsys, monkeypatch):
    """README: `fedjax-sim run --config <run>/config.json --seed 1` re-runs without --out; the
    earlier run's `out` stored in its config.json is not reused."""
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "first"
    assert cli.main(["run", "--algorithm", "fedavg", "--out", str(first)] + TINY) == 0
    capsys.readouterr()
    assert cli.main(["run", "--config", str(first / "config.json"), "--seed", "1", "--no-progress"]) == 0
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "summary.json").exists()]
    assert len(runs) == 1
    assert json.loads((runs[0] / "config.json").read_text())["seed"] == 1


@pytest.mark.parametrize("kind", ["file", "under_file", "single_into_comparison", "comparison_into_single"])
def test_unusable_out_paths_exit_2_before_writing(kind, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    args = ["--algorithm", "fedavg"]
    if kind == "file":
        out = afile
    elif kind == "under_file":
        out = afile / "x"
    elif kind == "single_into_comparison":
        (earlier / "results.md").write_text("| an earlier comparison |")
        out = earlier
    else:
        (earlier / "summary.json").write_text("{}")
        out, args = earlier, ["--algorithm", "fedavg,local"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc = cli.main(["run", *args, "--out", str(out)] + TINY)
    _assert_config_error(capsys, rc, "--out", str(out))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("setting,field", [("local.clip_norm=1", "local.clip_norm"),
                                           ("local.optimizer_args=momentum=0.9", "local.optimizer_args"),
                                           ("local.optimizer=adam", "local.optimizer")])
def test_scaffold_refuses_anything_but_plain_sgd_naming_the_field(setting, field, tmp_path, capsys):
    rc = cli.main(["run", "--algorithm", "scaffold", "--set", setting, "--out", str(tmp_path / "o")] + TINY)
    _assert_config_error(capsys, rc, field, "")


def test_clients_without_test_rows_have_null_per_client_scores(tmp_path):
    from conftest import make_data, tiny_config
    from fedjax_sim import runner

    cfg = tiny_config(algorithm="local", rounds=1, out=str(tmp_path / "run"))
    summary = runner.run(cfg, progress=False, data=make_data(test_sizes=(3, 0, 4, 2)))
    per_client = summary["final"]["personalized_accuracy_per_client"]
    assert per_client[1] is None and all(v is not None for i, v in enumerate(per_client) if i != 1)


def test_an_interrupted_sweep_resumes_keeping_its_finished_groups(tmp_path, capsys, monkeypatch):
    """Ctrl-C stops a sweep after the current block (exit 130, naming the command that resumes
    it); ``sweep --resume DIR`` reads its command line back, keeps the groups that finished (not
    run again), continues the stopped group of two grid points from its checkpoint, and ends with
    the uninterrupted sweep's metrics lines. Re-running the original command on that directory,
    extra options with --resume, ``run --resume`` of a grid point, a finished sweep and a changed
    setting are refused with exit 2."""
    from fedjax_sim import checkpoints, trials

    args = ["sweep", "--algorithm", "fedavg,fedprox", "--grid", "local.lr=0.05,0.1"] + TINY + ["--rounds", "2"]
    rounds_done = []
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [lambda done, state: rounds_done.append(done)])
    assert cli.main(args + ["--out", str(tmp_path / "whole")]) == 0
    second = next(i for i in range(1, len(rounds_done)) if rounds_done[i] <= rounds_done[i - 1])
    out = tmp_path / "cut"
    blocks = []

    def interrupt(done, state):  # after the second algorithm's first block
        blocks.append(done)
        if len(blocks) == second + 1:
            checkpoints.Interrupt.signum = 2
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [interrupt])
    capsys.readouterr()
    assert cli.main(args + ["--out", str(out)]) == 130
    assert f"fedjax-sim sweep --resume {out}" in capsys.readouterr().err
    assert not (out / "sweep.md").exists() and (out / "fedavg" / "local.lr=0.05" / "summary.json").exists()
    stopped = json.loads((out / "fedprox" / "local.lr=0.1" / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["resume"] == f"fedjax-sim sweep --resume {out}"
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [])
    for cmd in (["run", "--resume", str(out / "fedprox" / "local.lr=0.05")],  # the group's checkpoint
                ["run", "--resume", str(out / "fedprox")], ["sweep", "--resume", str(out / "fedprox" / "local.lr=0.1")]):
        assert cli.main(cmd) == 2
        assert f"sweep --resume {out}" in capsys.readouterr().err, cmd

    assert cli.main(args + ["--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err and not (out / "sweep.md").exists()
    assert cli.main(["sweep", "--resume", str(out), "--seeds", "2"]) == 2
    # a setting changed since the sweep began (here, in its stored command line) is refused
    stored = (out / "sweep_args.json").read_text()
    (out / "sweep_args.json").write_text(json.dumps({"argv": json.loads(stored)["argv"]
                                                     + ["--set", "local.batch_size=4"]}))
    assert cli.main(["sweep", "--resume", str(out)]) == 2
    assert "local.batch_size" in capsys.readouterr().err
    (out / "sweep_args.json").write_text(stored)

    ran = []
    run_group = trials.run_group
    monkeypatch.setattr(trials, "run_group", lambda pg, **kw: ran.append(pg.group.configs[0].algorithm)
                        or run_group(pg, **kw))
    assert cli.main(["sweep", "--resume", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    assert "of 2 group(s) of grid points trained together, 1 finished (kept), 1 continued from a checkpoint" in capsys.readouterr().err
    assert ran == ["fedprox"]
    whole, cut = (json.loads((d / "sweep.json").read_text()) for d in (tmp_path / "whole", out))
    for name in ("fedavg", "fedprox"):
        assert cut[name]["selected"] == whole[name]["selected"]
        assert [p["mean"] for p in cut[name]["points"]] == [p["mean"] for p in whole[name]["points"]]
        for point in ("local.lr=0.05", "local.lr=0.1"):
            lines = [(d / name / point / "metrics.jsonl").read_text() for d in (tmp_path / "whole", out)]
            assert lines[0] == lines[1]
    assert not list(out.rglob("resume*")), "spent checkpoints are removed"
    assert cli.main(["sweep", "--resume", str(out)]) == 2
    assert "it finished" in capsys.readouterr().err


def test_a_resumed_sweep_reads_its_own_copy_of_the_config_file(tmp_path, capsys):
    """The --config file is copied into the sweep directory as the sweep starts: deleting the
    original (a temporary file, say) does not stop the resume."""
    config = tmp_path / "base.json"
    config.write_text(json.dumps({"rounds": 1, "model": {"hidden": [4]}}))
    out = tmp_path / "s"
    assert cli.main(["sweep", "--config", str(config), "--grid", "local.lr=0.05,0.1", "--clients", "3",
                     "--no-progress", "--out", str(out)]) == 0
    stored = json.loads((out / "sweep_args.json").read_text())["argv"]
    assert stored[stored.index("--config") + 1] == "sweep_config.json" and "--out" not in stored
    config.unlink()
    (out / "sweep.json").unlink()  # as if killed before its last write
    assert cli.main(["sweep", "--resume", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    assert (out / "sweep.json").exists()


def test_running_out_of_device_memory_exits_4_with_advice(tmp_path, capsys, monkeypatch):
    """XLA's RESOURCE_EXHAUSTED (a round's activations, which the up-front check does not count)
    becomes one line naming the settings that bound a round's memory; other errors still raise."""
    from fedjax_sim import trials

    def oom(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81920000000 bytes.\n"
                           "BufferAssignment OOM Debugging.")
    monkeypatch.setattr(trials, "run_group", oom)
    assert cli.main(["run", *TINY, "--out", str(tmp_path / "r")]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "81920000000 bytes" in err[0] and "chunk_size" in err[0], err
    monkeypatch.setattr(trials, "run_group", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["run", *TINY, "--out", str(tmp_path / "r2")])


def test_a_membership_attack_out_of_memory_keeps_the_trained_run(tmp_path, capsys, monkeypatch):
    """The attack on the final models runs after the last round: out of device memory there, the
    run still ends with its summary (no mia_* values) and a warning, exit 0."""
    from fedjax_sim import runner

    def attack(prep, alg=None):
        def fails(state, data, key):
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9000000000 bytes.")
        return fails
    monkeypatch.setattr(runner, "make_attack", attack)
    out = tmp_path / "r"
    assert cli.main(["run", "--algorithm", "fedavg", *TINY, "--out", str(out)]) == 0
    assert "membership attack on the final models ran out of device memory" in capsys.readouterr().err
    final = json.loads((out / "summary.json").read_text())["final"]
    assert "global_accuracy" in final and not any(k.startswith("mia") for k in final)


def test_a_sequential_sweep_interrupted_in_its_first_point_resumes(tmp_path, capsys, monkeypatch):
    """Points run one after another (--trials sequential): stopped in the first point's last
    block, that point finishes and the second never starts (no summary); the sweep exits 130 and
    its resume keeps the first point's record (not retrained) and runs the second."""
    from fedjax_sim import checkpoints, trials

    out = tmp_path / "seq"
    blocks = []

    def stop_at_round_2(done, state):
        blocks.append(done)
        if done == 2:
            checkpoints.Interrupt.signum = 2
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [stop_at_round_2])
    assert cli.main(["sweep", "--grid", "local.lr=0.05,0.1", "--trials", "sequential"] + TINY
                    + ["--rounds", "2", "--out", str(out)]) == 130
    assert "sweep --resume" in capsys.readouterr().err
    assert blocks == [1, 2], "no program starts after the signal"
    assert not (out / "fedavg" / "local.lr=0.1" / "summary.json").exists()
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [lambda done, state: blocks.append(done)])
    assert cli.main(["sweep", "--resume", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    assert blocks == [1, 2, 1, 2], "only the second point trains"
    assert "continued from a checkpoint" in capsys.readouterr().err
    assert [p["status"] for p in json.loads((out / "sweep.json").read_text())["fedavg"]["points"]] == ["ok", "ok"]
