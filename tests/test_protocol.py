"""The experiments' protocol (`fedjax_sim.protocol`): per-method tuning on a validation split,
edge extension, final seeds, relabelled summaries, resuming after an interruption."""
from __future__ import annotations

import json

from fedjax_sim import protocol
from fedjax_sim.protocol import Method

BASE = {"rounds": 1, "eval_every": 1, "data": {"num_clients": 3}, "model": {"hidden": [4]}}


def test_point_values_reads_fields_with_underscores():
    assert protocol.point_values("local.lr=0.1_floral.router_lr=1e-05", ["local.lr", "floral.router_lr"]) == \
        {"local.lr": 0.1, "floral.router_lr": 1e-05}
    assert Method.parse("fedavg") == Method("fedavg", "fedavg", {})
    assert Method.parse({"name": "p2", "algorithm": "fedprox", "set": {"fedprox.mu": 1}}) == \
        Method("p2", "fedprox", {"fedprox.mu": 1})


def test_tune_extend_final_collect_and_resume(tmp_path):
    """Two methods (one a variant with fixed values) tuned on a 1-value grid: the single value is
    both edges, so no extension; a two-value grid whose choice is an edge gets one extension;
    the final run uses the selected config with the variant's values; collect names rows by
    method; a step interrupted before its result file is redone."""
    methods = [Method.parse("fedavg"), Method.parse({"name": "prox_big", "algorithm": "fedprox",
                                                     "set": {"fedprox.mu": 0.5}})]
    spec = {"seeds": [100], "validation_fraction": 0.3, "extend": {"factor": 3.0, "max": 1},
            "grid": {"local.lr": [0.01, 0.03]}}
    protocol.tune(BASE, methods, spec, tmp_path, progress=False)
    chosen = protocol.selection(methods, tmp_path)
    assert set(chosen) == {"fedavg", "prox_big"}
    for m in methods:
        tried = [protocol.point_values(n, ["local.lr"])["local.lr"] for n in chosen[m.name].names]
        assert tried[:2] == [0.01, 0.03] and len(tried) == 3  # the edge choice was extended once
        assert tried[2] in (0.09, 0.00333)
    (tmp_path / "final" / "prox_big").mkdir(parents=True)  # an interrupted final run
    (tmp_path / "final" / "prox_big" / "metrics.jsonl").write_text("")
    protocol.final(methods, [0, 1], tmp_path, progress=False)
    res = protocol.collect(methods, tmp_path)
    assert [res[m]["algorithm"] for m in res] == ["fedavg", "prox_big"]
    config = json.loads((tmp_path / "final" / "prox_big" / "config.json").read_text())
    assert config["algorithm"] == "fedprox" and config["fedprox"]["mu"] == 0.5
    assert config["data"]["validation_fraction"] == 0 and res["prox_big"]["seeds"] == [0, 1]
    best = protocol.point_values(chosen["prox_big"].names[chosen["prox_big"].best], ["local.lr"])
    assert config["local"]["lr"] == best["local.lr"]


def test_an_interrupted_tuning_sweep_resumes_unless_its_settings_changed(tmp_path, monkeypatch):
    """A sweep stopped before its sweep.json is resumed with ``sweep --resume`` when the method,
    grid and base config are the ones it began with; with another base it starts over."""
    method, spec = Method.parse("fedavg"), {"seeds": [100], "validation_fraction": 0.3}
    out = tmp_path / "tune" / "fedavg"
    protocol.sweep(BASE, method, spec, {"local.lr": [0.01, 0.03]}, out, progress=False)
    (out / "sweep.json").unlink()  # killed before its last write
    calls = []
    real = protocol.cli
    monkeypatch.setattr(protocol, "cli", lambda args, ok=(0,): calls.append(args[:2]) or real(args, ok))
    protocol.sweep(BASE, method, spec, {"local.lr": [0.01, 0.03]}, out, progress=False)
    assert calls == [["sweep", "--resume"]] and (out / "sweep.json").exists()
    (out / "sweep.json").unlink()
    protocol.sweep({**BASE, "rounds": 2}, method, spec, {"local.lr": [0.01, 0.03]}, out, progress=False)
    assert calls[1][:1] == ["sweep"] and calls[1][1] == "--config"
    assert json.loads((out / "sweep_config.json").read_text())["rounds"] == 2
