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


def test_figures_are_written_atomically(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    path = tmp_path / "accuracy.png"
    jsonio.write_figure(fig, path, dpi=50)
    first = path.read_bytes()
    assert first.startswith(b"\x89PNG")
    with pytest.raises(Exception):  # a failed write leaves the earlier figure and no temporary file
        jsonio.write_figure(fig, path, dpi=50, bbox_inches="no such box")
    assert path.read_bytes() == first and sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png"]


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


# ---------------------------------------------------------------------------------------------
# checkpoints, interruption and resume


def _interrupt_at(monkeypatch, rnd: int, signum=None):
    """Raise the interrupt flag right after the block that ends at round ``rnd``."""
    import signal

    from fedjax_sim import checkpoints, trials

    def hook(done, state):
        if done == rnd:
            checkpoints.Interrupt.signum = signum or signal.SIGINT
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [hook])


RESUMABLE = [("fedavg", "vmap"), ("scaffold", "vmap"), ("fedavg", "sequential")]


@pytest.mark.parametrize("algorithm,mode", RESUMABLE, ids=[f"{a}-{m}" for a, m in RESUMABLE])
def test_an_interrupted_run_resumes_bit_identical(algorithm, mode, tmp_path, monkeypatch, capsys):
    """Stateless FedAvg and stateful SCAFFOLD (per-client control variates), seeds vmapped or
    one after another: interrupt after round 4 of 8, resume, and every per-seed final value and
    every metrics line equals the uninterrupted run's. Seeds one after another: a first resume is
    also killed before its second seed's first checkpoint; that seed's lines are then written
    once."""
    args = ["run", "--algorithm", algorithm, "--rounds", "8", "--set", "eval_every=2", "--seeds", "2",
            "--trials", mode] + SMALL
    assert cli.main(args + ["--out", str(tmp_path / "full")]) == 0
    _interrupt_at(monkeypatch, 4)
    assert cli.main(args + ["--out", str(tmp_path / "cut")]) == 130
    err = capsys.readouterr().err
    assert f"fedjax-sim run --resume {tmp_path / 'cut'}" in err
    partial = _strict(tmp_path / "cut" / "summary.json")
    assert partial["status"] == "interrupted" and (tmp_path / "cut" / "accuracy.png").exists()
    monkeypatch.setattr("fedjax_sim.trials.BLOCK_HOOKS", [])
    if mode == "sequential":  # a first resume is killed (no time to checkpoint) in the second seed's first block
        blocks = []

        def crash(done, state):
            blocks.append(done)
            if len(blocks) > 1 and done <= blocks[-2]:  # the second seed began
                raise SystemError("killed")
        monkeypatch.setattr("fedjax_sim.trials.BLOCK_HOOKS", [crash])
        with pytest.raises(SystemError):
            cli.main(["run", "--resume", str(tmp_path / "cut"), "--no-progress"])
        monkeypatch.setattr("fedjax_sim.trials.BLOCK_HOOKS", [])
    assert cli.main(["run", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    full, cut = _strict(tmp_path / "full" / "summary.json"), _strict(tmp_path / "cut" / "summary.json")
    assert cut["status"] == "ok" and cut["rounds_completed"] == 8
    assert [e["final"] for e in full["per_seed"]] == [e["final"] for e in cut["per_seed"]]
    lines = lambda name: sorted((tmp_path / name / "metrics.jsonl").read_text().splitlines())  # noqa: E731
    assert lines("full") == lines("cut")  # sequential: the killed seed's lines are written once
    assert not list((tmp_path / "cut").glob("resume*"))  # spent checkpoints are removed


def _wait_for(predicate, proc, timeout=240.0):
    import time

    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first (exit {proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out")


def _spawn(out, *extra, rounds=3000, eval_every=1):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "fedjax_sim.cli", "run", "--algorithm", "fedavg", "--rounds", str(rounds),
           "--set", f"eval_every={eval_every}", "--out", str(out), *extra] + SMALL
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signame,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_leaves_a_valid_run_directory_and_a_resumable_checkpoint(signame, code, tmp_path):
    import signal

    out = tmp_path / "run"
    proc = _spawn(out)
    metrics = out / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc)
    proc.send_signal(getattr(signal, signame))
    proc.send_signal(getattr(signal, signame))  # a second signal must not cut the writing short
    assert proc.wait(timeout=120) == code
    err = proc.stderr.read()
    assert f"--resume {out}" in err and "Traceback" not in err, err
    summary = _strict(out / "summary.json")
    assert summary["status"] == "interrupted" and 0 < summary["rounds_completed"] < 3000
    assert (out / "resume" / "progress.json").exists() and (out / "accuracy.png").exists()
    _strict_lines(metrics)


def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(tmp_path, capsys):
    """SIGKILL leaves no time to write anything: --checkpoint-every kept a checkpoint, the
    metrics lines written after it are dropped on resume, and the resumed run ends equal to an
    uninterrupted one."""
    import signal

    out = tmp_path / "killed"
    proc = _spawn(out, "--checkpoint-every", "5", rounds=600, eval_every=2)
    progress = out / "resume" / "progress.json"
    _wait_for(lambda: progress.exists() and json.loads(progress.read_text())["round"] >= 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "summary.json").exists()
    assert cli.main(["run", "--resume", str(out), "--no-progress"]) == 0
    ref = tmp_path / "ref"
    assert cli.main(["run", "--algorithm", "fedavg", "--rounds", "600", "--set", "eval_every=2",
                     "--out", str(ref)] + SMALL) == 0
    capsys.readouterr()
    a, b = _strict(ref / "summary.json"), _strict(out / "summary.json")
    assert b["status"] == "ok" and a["per_seed"][0]["final"] == b["per_seed"][0]["final"]
    assert (ref / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()


BAD_RESUME = [
    (lambda p: ["--resume", str(p / "nothing")], "a run directory holding config.json"),
    (lambda p: ["--resume", str(p / "done")], "it finished"),
    (lambda p: ["--resume", str(p / "done"), "--rounds", "5"], "also given: --rounds"),
]


@pytest.mark.parametrize("args,says", BAD_RESUME, ids=["missing", "finished", "with-flags"])
def test_bad_resume_input_exits_2(args, says, tmp_path, capsys):
    assert cli.main(["run", "--algorithm", "fedavg", "--rounds", "1", "--out", str(tmp_path / "done")] + SMALL) == 0
    capsys.readouterr()
    rc = cli.main(["run"] + args(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--resume" in err[0] and says in err[0], err


def test_out_holding_a_users_config_json_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": 1}')
    rc = cli.main(["run", "--algorithm", "fedavg", "--rounds", "1", "--out", str(out)] + SMALL)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "config.json" in err[0], err
    assert (out / "config.json").read_text() == '{"mine": 1}'


def _tensorboard_scalars(folder) -> dict:
    """tag -> [(step, value)] from TensorBoard event files (TFRecord framing: length, crc,
    payload, crc), parsed with tensorboardX's protos."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos:pos + 8])
            event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_event_files_hold_every_metrics_line(tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "run"
    assert cli.main(["run", "--algorithm", "fedavg", "--rounds", "4", "--set", "eval_every=2", "--seeds", "2",
                     "--tensorboard", "--out", str(out)] + SMALL) == 0
    scalars = _tensorboard_scalars(out / "tensorboard")
    records = _strict_lines(out / "metrics.jsonl")
    for seed in (0, 1):
        rows = [r for r in records if r["seed"] == seed]
        got = scalars[f"global_accuracy/seed{seed}"]
        assert [s for s, _ in got] == [r["round"] for r in rows]
        np.testing.assert_allclose([v for _, v in got], [r["global_accuracy"] for r in rows], rtol=1e-6)
    assert _strict(out / "config.json")["tensorboard"] is True


def test_the_add_your_own_algorithm_guide_runs(tmp_path):
    """docs/extending.md's code, run as written in a fresh interpreter (its registration must
    not leak into this test process)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    code = "\n\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    script = f"import pathlib\nOUT = pathlib.Path({str(tmp_path)!r})\n" + code
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Δ vs fedavg" in done.stdout
    assert _strict(tmp_path / "fedmedian" / "summary.json")["algorithm"] == "fedmedian"


def test_a_run_that_cannot_fit_is_refused_up_front(tmp_path, monkeypatch, capsys):
    """The persistent arrays (data, every trial's state, every round's key) are estimated from
    shapes before compiling; more than is available is refused, naming the largest part."""
    from fedjax_sim import trials

    monkeypatch.setattr(trials, "available_memory", lambda: 50_000)  # bytes
    out = tmp_path / "run"
    rc = cli.main(["run", "--algorithm", "fedavg", "--rounds", "2", "--out", str(out)] + SMALL)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "GiB available" in err[0] and "data.num_clients" in err[0], err
    assert not out.exists()


def test_the_memory_estimate_counts_state_per_trial_and_keys_per_round():
    from fedjax_sim import runner, trials

    from conftest import tiny_config

    prep = runner.prepare(tiny_config(algorithm="scaffold", rounds=1000, data__num_clients=6))
    one, four = trials.memory_estimate(prep, prep.data, 1), trials.memory_estimate(prep, prep.data, 4)
    assert four["state"] == 4 * one["state"] > 0 and one["round keys"] == 8000
    plain = trials.memory_estimate(runner.prepare(tiny_config(algorithm="fedavg", data__num_clients=6)),
                                   prep.data, 1)
    assert one["state"] > plain["state"]  # SCAFFOLD keeps a control variate per client
    with pytest.raises(Exception, match="rounds"):
        trials.check_memory({"data": 10, "state": 10, "round keys": 10_000}, available=1_000)


FINDINGS = [  # the issue's findings that are bad input: exit 2, one line, nothing written
    (lambda p: ["--config", str(p / "list.json")], "--config"),
    (lambda p: ["--seed", "99999999999999999999"], "seed"),
    (lambda p: ["--out", str(p / "afile")], "--out"),
    (lambda p: ["--out", str(p / "afile" / "run")], "--out"),
    (lambda p: ["--out", "/proc/fedjax_sim_run"], "--out"),
    (lambda p: ["--rounds", "10000000000"], "rounds"),
    (lambda p: ["--clients", "1438", "--partition", "dominant_class"], "data.samples_per_client"),
]


@pytest.mark.parametrize("args,field", FINDINGS, ids=["config-list", "huge-seed", "out-file", "out-under-file",
                                                      "out-unwritable", "huge-rounds", "empty-global-test"])
def test_the_issues_bad_input_findings_exit_2(args, field, tmp_path, capsys):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "afile").write_text("not a directory")
    argv = ["run", "--algorithm", "fedavg", "--rounds", "1", "--no-progress"] + args(tmp_path)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and field in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "run").exists() and (tmp_path / "afile").read_text() == "not a directory"


def test_a_signal_during_start_up_still_exits_cleanly(tmp_path):
    """SIGINT while the data is built or the program compiles: no traceback, no crash; the run
    stops after its first block with a resumable checkpoint."""
    import signal

    out = tmp_path / "run"
    proc = _spawn(out)
    _wait_for(lambda: (out / "config.json").exists(), proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read()
    assert "Traceback" not in err and "--resume" in err, err
    assert _strict(out / "summary.json")["status"] == "interrupted"


def test_plots_use_integer_rounds_distinct_styles_and_mark_divergence(tmp_path):
    from matplotlib.ticker import MaxNLocator

    from fedjax_sim import runner
    from fedjax_sim.report import comparison_figure

    for name in ("a", "b"):
        run = tmp_path / name
        assert cli.main(["run", "--algorithm", "fedavg", "--rounds", "3", "--set", "eval_every=1", "--out", str(run)]
                        + SMALL) == 0
    fig = comparison_figure([tmp_path / "a", tmp_path / "b"], "global_accuracy")
    ax = fig.axes[0]
    assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
    styles = {(line.get_marker(), line.get_linestyle()) for line in ax.lines}
    assert len(styles) == 2  # identical curves stay distinguishable
    history = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    runner.plot_history(history, tmp_path / "h.png", "fedavg", diverged=[(0, 2)])
    assert (tmp_path / "h.png").stat().st_size > 0
