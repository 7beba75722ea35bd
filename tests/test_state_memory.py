"""Per-client state in host memory (``state_memory=host``): the store of every stateful algorithm
stays in pinned host memory through the round blocks, and every run equals its device-memory run
exactly (the same programs, only the cohort's rows move); the auto decision; bad input."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import assert_config_error

import fedjax_sim
from fedjax_sim import cli, trials
from fedjax_sim.core.clients import in_host_memory
from fedjax_sim.errors import ConfigError

STATEFUL = {  # algorithm -> the state fields that are its per-client store
    "scaffold": ("client_control",), "local": ("params", "opt"), "fedper": ("clients",),
    "fedrep": ("clients",), "fedrema": ("clients",), "floral": ("clients",),
}


def _lines(out) -> list:
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in json.loads(line).items() if "time" not in k and "second" not in k}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def _same_lines(a, b) -> None:
    """Equal metrics lines: training metrics exactly; evaluation metrics to float32 rounding (a
    host store is evaluated in cohort-sized blocks of clients, which XLA may sum in another
    order)."""
    la, lb = _lines(a), _lines(b)
    assert [sorted(x) for x in la] == [sorted(x) for x in lb]
    for x, y in zip(la, lb):
        for k in x:
            if k.startswith(("personalized_", "pooled_")):
                np.testing.assert_allclose(np.asarray(x[k], float), np.asarray(y[k], float), rtol=1e-6, err_msg=k)
            else:
                assert x[k] == y[k], k


def _memory_kinds(monkeypatch) -> list:
    """Records, after every block, which state fields hold host-memory leaves."""
    seen: list = []

    def hook(done, state):
        seen.append({f: sorted({in_host_memory(a) for a in jax.tree.leaves(getattr(state, f))})
                     for f in state._fields if jax.tree.leaves(getattr(state, f))})
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [hook])
    return seen


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_host_store_run_equals_device_run(name, tmp_path, monkeypatch):
    """Every metrics line and the final state equal the device-memory run's (evaluation to float32
    rounding: `_same_lines`); after each block the store's leaves are in host memory and no other
    leaf is."""
    base = dict(algorithm=name, rounds=4, eval_every=2, cohort=4, data__num_clients=10, checkpoint=True)
    device = fedjax_sim.run(out=tmp_path / "device", state_memory="device", **base)
    seen = _memory_kinds(monkeypatch)
    host = fedjax_sim.run(out=tmp_path / "host", state_memory="host", **base)
    assert host.config["resolved"]["state_memory"] == {"memory": "host", "reason": "requested"}
    assert device.config["resolved"]["state_memory"]["memory"] == "device"
    assert len(seen) == 2
    for kinds in seen:
        assert kinds == {f: [f in STATEFUL[name]] for f in kinds}, kinds
    _same_lines(tmp_path / "device", tmp_path / "host")
    with np.load(tmp_path / "device" / "checkpoint.npz") as a, np.load(tmp_path / "host" / "checkpoint.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_host_store_with_vmapped_seeds_and_grid_points(tmp_path, monkeypatch):
    """Seeds and a swept learning rate vmapped around the host store (state [S, G, C, ...]):
    each trial gathers its own cohort's rows; equal to the device-memory program. 3 rounds in
    blocks of 2: the padded last block's inactive round leaves the host store as it was."""
    args = ["sweep", "--algorithm", "scaffold", "--rounds", "3", "--set", "eval_every=2", "--seeds", "2",
            "--trials", "vmap", "--clients", "8", "--cohort", "3", "--set", "model.hidden=8", "--no-progress",
            "--grid", "local.lr=0.05,0.1"]
    assert cli.main(args + ["--out", str(tmp_path / "device"), "--set", "state_memory=device"]) == 0
    seen = _memory_kinds(monkeypatch)
    assert cli.main(args + ["--out", str(tmp_path / "host"), "--set", "state_memory=host"]) == 0
    assert seen and all(k["client_control"] == [True] and k["params"] == [False] for k in seen)
    dirs = sorted(p.parent.relative_to(tmp_path / "host") for p in (tmp_path / "host").rglob("config.json"))
    assert len(dirs) == 2
    for d in dirs:
        resolved = json.loads((tmp_path / "host" / d / "config.json").read_text())["resolved"]
        assert resolved["trials"]["mode"] == "vmap" and resolved["state_memory"]["memory"] == "host"
        _same_lines(tmp_path / "device" / d, tmp_path / "host" / d)


def test_interrupted_host_store_run_resumes_identical(tmp_path, monkeypatch):
    """A resumable checkpoint of a host store is written from host memory and placed back there."""
    from fedjax_sim import checkpoints

    args = ["run", "--algorithm", "local", "--rounds", "6", "--set", "eval_every=2", "--clients", "6",
            "--cohort", "3", "--set", "model.hidden=8", "--no-progress", "--set", "checkpoint=true",
            "--set", "state_memory=host"]
    assert cli.main(args + ["--out", str(tmp_path / "full")]) == 0

    def interrupt(done, state):
        if done == 2:
            checkpoints.Interrupt.signum = 2
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [interrupt])
    assert cli.main(args + ["--out", str(tmp_path / "cut")]) == 130
    seen = _memory_kinds(monkeypatch)
    assert cli.main(["run", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    assert seen and all(k["params"] == [True] for k in seen)
    assert _lines(tmp_path / "full") == _lines(tmp_path / "cut")
    with np.load(tmp_path / "full" / "checkpoint.npz") as a, np.load(tmp_path / "cut" / "checkpoint.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_algorithms_without_a_store_keep_everything_on_device(tmp_path):
    r = fedjax_sim.run(out=tmp_path / "r", algorithm="fedavg", rounds=2, state_memory="host")
    assert r.config["resolved"]["state_memory"] == {"memory": "device", "reason": "no per-client store"}


class _Alg:
    client_store = ("client_control",)


GIB = 2**30


@pytest.mark.parametrize("requested,platform,device_free,host_free,want", [
    ("auto", "cpu", 1 * GIB, 100 * GIB, "device"),  # one RAM: nothing to gain
    ("auto", "gpu", 20 * GIB, 100 * GIB, "device"),  # everything fits the accelerator
    ("auto", "gpu", 8 * GIB, 100 * GIB, "host"),  # the store does not fit beside the data
    ("auto", "gpu", 8 * GIB, 5 * GIB, "device"),  # nor the host: check_memory then refuses the run
    ("auto", "gpu", 3 * GIB, 100 * GIB, "device"),  # the data alone does not fit
    ("host", "cpu", 100 * GIB, 100 * GIB, "host"),
    ("device", "gpu", 8 * GIB, 100 * GIB, "device"),
])
def test_auto_state_memory_moves_the_store_to_host_only_where_it_does_not_fit(
        requested, platform, device_free, host_free, want):
    parts = {"data": 4 * GIB, "state": 1 * GIB, "client state": 10 * GIB, "round keys": 0}
    got, reason = trials.choose_state_memory(requested, _Alg, parts, platform, device_free, host_free)
    assert got == want, reason


def test_a_store_too_large_for_the_host_is_refused_naming_the_field(monkeypatch):
    monkeypatch.setattr(trials, "available_memory", lambda: 8 * GIB)
    monkeypatch.setattr(trials, "host_memory", lambda: 2 * GIB)
    monkeypatch.setattr(trials.jax, "devices", lambda *a: [type("D", (), {"platform": "gpu"})()])
    with pytest.raises(ConfigError, match=r"data\.num_clients.*client state 3\.0 GiB"):
        trials.check_state_memory({"data": GIB, "state": GIB, "client state": 3 * GIB}, "host")
    trials.check_state_memory({"data": 6 * GIB, "state": GIB, "client state": GIB}, "host")  # fits both


@pytest.mark.parametrize("argv,field,value", [
    (["run", "--set", "state_memory=disk"], "state_memory", "disk"),
    (["sweep", "--algorithm", "scaffold", "--grid", "state_memory=device,host"], "state_memory", "device,host"),
])
def test_bad_state_memory_exits_2_with_one_line(argv, field, value, capsys, tmp_path):
    out = tmp_path / "run"
    assert_config_error(capsys, cli.main([*argv, "--rounds", "2", "--out", str(out)]), field, value)
    assert not out.exists()


def _device_puts(jaxpr) -> list:
    """Shapes of every value a jaxpr (and the jaxprs inside it) copies to device memory."""
    shapes = []
    for e in jaxpr.eqns:
        if e.primitive.name == "device_put" and jax.memory.Space.Device in e.params.get("devices", ()):
            shapes += [v.aval.shape for v in e.outvars]
        for v in e.params.values():
            for sub in v if isinstance(v, (tuple, list)) else [v]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes += _device_puts(inner)
    return shapes


def _host_state(name: str):
    """(prep, data, the initial state with its store in host memory) of a 10-client run with
    cohort 3 (so evaluation blocks of 3, the last one padded)."""
    from conftest import tiny_config

    from fedjax_sim import runner
    from fedjax_sim.core.clients import to_host_memory

    prep = runner.prepare(tiny_config(algorithm=name, cohort=3, data__num_clients=10))
    alg = prep.algorithm
    data = jax.device_put(prep.data)
    state = jax.jit(lambda k, d: to_host_memory(alg.init(k, d), alg.client_store))(jax.random.PRNGKey(0), data)
    return prep, data, state


def test_blocked_evaluation_equals_whole_evaluation():
    """FLoRAL's stateless router, fitted per client at evaluation from that client's key: read
    in blocks from a host store, every client gets the key (and the metrics) it gets when the
    whole population is evaluated at once."""
    from fedjax_sim import runner
    from fedjax_sim.core.clients import on_device

    prep, data, state = _host_state("floral_stateless")
    key = jax.random.PRNGKey(1)
    evaluate = jax.jit(runner.make_evaluator(prep, prep.algorithm))  # the attack: tests/test_layout.py
    blocks, whole = evaluate(state, data, key), evaluate(on_device(state), data, key)
    assert blocks.keys() == whole.keys()
    for k in whole:
        np.testing.assert_allclose(np.asarray(blocks[k]), np.asarray(whole[k]), rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("name", ["local", "fedper", "floral", "scaffold"])
def test_evaluation_copies_a_host_store_to_the_device_one_row_at_a_time(name):
    """Evaluating (or attacking) a run whose store is in host memory never copies the store whole to the device:
    per-client models are built a cohort-sized block at a time from rows moved one by one, and
    the global model reads no store at all (checked on the traced program: on CPU both memories
    are one RAM, so a memory reading would not tell)."""
    from fedjax_sim import runner

    prep, data, state = _host_state(name)
    for make in (runner.make_evaluator, runner.make_attack):  # and the membership attack on the final models
        jaxpr = jax.make_jaxpr(make(prep, prep.algorithm))(state, data, jax.random.PRNGKey(1)).jaxpr
        moved = _device_puts(jaxpr)
        assert all(shape[:1] == (1,) for shape in moved), moved
        assert bool(moved) == (name != "scaffold")
