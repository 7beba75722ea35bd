"""The sharded client mapping on several devices: run by test_scale.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (JAX fixes its device count at start-up, so
the main test process, with one device, skips this module).

Every check compares the sharded mapping over 4 devices with one device: mapped client functions
against a plain Python loop, and whole runs (stateless, stateful, personalized, asynchronous,
multi-task; cohorts the devices do not divide) against the same run unsharded.
"""
from __future__ import annotations

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_sim
from fedjax_sim import parallel
from fedjax_sim.core.mapping import ClientMapping, client_mapping, map_clients

pytestmark = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices: run by test_scale.py with "
                                                               "XLA_FLAGS=--xla_force_host_platform_device_count=4")


def _client_fn(w, x, n):
    """A client's tanh regression gradient step: w [D, O] shared, x [N, D] its rows, n its count."""
    mask = (jnp.arange(x.shape[0]) < n)[:, None]
    grad = jax.grad(lambda v: jnp.sum(jnp.tanh(x @ v) ** 2 * mask) / jnp.maximum(n, 1))(w)
    return {"w": w - 0.1 * grad, "norm": jnp.linalg.norm(grad)}


@pytest.mark.parametrize("k", [3, 4, 6, 9])
@pytest.mark.parametrize("chunk", [0, 1, 2])
def test_sharded_mapping_matches_python_loop(k, chunk):
    """``sharded`` over 4 devices (each mapping its share with vmap, one at a time, or in chunks of
    2) equals a Python loop over the clients, also for cohorts the devices do not divide (padding
    is dropped) and under an outer vmap (a trial axis)."""
    rng = np.random.default_rng(k)
    w = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(k, 7, 5)), jnp.float32)
    n = jnp.asarray(rng.integers(1, 8, size=k), jnp.int32)
    mesh = parallel.client_mesh(4)
    mapped = jax.jit(map_clients(_client_fn, (None, 0, 0), "sharded", chunk, mesh))
    out = mapped(w, x, n)
    for c in range(k):
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[c], out), _client_fn(w, x[c], n[c]),
                                    rtol=1e-5, atol=1e-6)
    trials = jax.jit(jax.vmap(map_clients(_client_fn, (None, 0, 0), "sharded", chunk, mesh), in_axes=(0, None, None)))
    ws = jnp.stack([w, 2 * w])
    out2 = trials(ws, x, n)
    for t in range(2):
        for c in range(k):
            chex.assert_trees_all_close(jax.tree.map(lambda a: a[t, c], out2), _client_fn(ws[t], x[c], n[c]),
                                        rtol=1e-5, atol=1e-6)


def test_sharded_mapping_splits_the_cohort_over_the_devices():
    """The compiled program runs each device on its own quarter of the cohort: the per-client
    outputs come out split over the 4 devices, and the mean over clients is one cross-device
    reduction, not a copy of every client's work on every device."""
    mesh = parallel.client_mesh(4)
    mapped = map_clients(_client_fn, (None, 0, 0), "sharded", 0, mesh)
    w, x, n = jnp.ones((5, 3)), jnp.ones((8, 7, 5)), jnp.full((8,), 7)
    out = jax.jit(mapped)(w, x, n)
    assert len(out["norm"].sharding.device_set) == 4
    assert out["norm"].addressable_shards[0].data.shape == (2,)
    text = jax.jit(lambda w, x, n: jnp.mean(mapped(w, x, n)["w"], 0)).lower(w, x, n).compile().as_text()
    assert "all-reduce" in text


def test_auto_shards_over_every_device_and_mesh_devices_takes_a_subset():
    auto = client_mapping("auto")
    assert auto.strategy == "sharded" and auto.mesh.size == 4
    assert client_mapping("sharded", mesh_devices=2).mesh.size == 2
    assert client_mapping("vmap").mesh is None
    # each device's own mapping is the backend's measured default unless a client program prefers one
    assert ClientMapping("sharded", kind="conv", mesh=auto.mesh).resolved().chunk_size == 1
    assert ClientMapping("sharded", mesh=auto.mesh).resolved(prefer="vmap").chunk_size == 0


RUNS = {
    "fedavg": dict(algorithm="fedavg"),
    "scaffold": dict(algorithm="scaffold"),  # per-client control variates in the state
    "fedrema": dict(algorithm="fedrema"),  # the [C, C] relevance matrix, personal heads
    "floral": dict(algorithm="floral", floral__num_adaptors=2),
    "fedbuff": dict(algorithm="fedbuff", fedbuff__buffer_size=3),
    "fedadt": dict(algorithm="fedadt", data__proxy_fraction=0.05),
    "fedhca2": dict(algorithm="fedhca2", data__dataset="hcfmtl_lite", cohort=5, data__num_clients=5),
}


def _metrics(result):
    return [{k: v for k, v in m.items() if isinstance(v, (int, float)) and k != "round"} for m in result.metrics]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_run_on_four_devices_equals_one_device(name, tmp_path):
    """The same run sharded over 4 devices and unsharded on one: every metrics line equal to float
    tolerance (the cross-device mean adds in another order). Cohort 6 on 4 devices: padded."""
    base = {"rounds": 4, "eval_every": 2, "cohort": 6, "data__num_clients": 12, **RUNS[name]}
    one = fedjax_sim.run(out=tmp_path / "one", client_mapping="vmap", **base)
    four = fedjax_sim.run(out=tmp_path / "four", client_mapping="sharded", **base)
    assert four.config["resolved"]["devices"] == 4 and one.config["resolved"]["devices"] == 1
    # 12 clients: each device holds 3 clients' data; fedhca2's 5 clients are copied to every device
    placement = "replicated" if base["data__num_clients"] % 4 else "split"
    assert four.config["resolved"]["data_placement"] == placement
    a, b = _metrics(one), _metrics(four)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if math.isfinite(x[key]):
                np.testing.assert_allclose(y[key], x[key], rtol=2e-4, atol=2e-5, err_msg=f"{name} {key}")


def test_vmapped_seeds_on_four_devices_equal_one_device(tmp_path):
    """Seeds vmapped around the sharded mapping (the trial axis stays whole on every device; the
    stacked data [S, C, ...] is split on its client axis)."""
    base = dict(algorithm="scaffold", rounds=3, eval_every=3, cohort=5, data__num_clients=8, trials="vmap")
    one = fedjax_sim.run(out=tmp_path / "one", seeds=3, client_mapping="vmap", **base)
    four = fedjax_sim.run(out=tmp_path / "four", seeds=3, **base)  # auto: sharded
    resolved = four.config["resolved"]
    assert (resolved["client_mapping"], resolved["data_placement"], resolved["trials"]["mode"]) == (
        "sharded", "split", "vmap")
    for x, y in zip(_metrics(one), _metrics(four)):
        for key in x:
            np.testing.assert_allclose(y[key], x[key], rtol=2e-4, atol=2e-5, err_msg=key)


def test_interrupted_sharded_run_resumes_identical(tmp_path, monkeypatch):
    """SCAFFOLD on 4 devices, its per-client control variates split over them (8 clients, 2 per
    device), 2 seeds vmapped: interrupted after round 4 of 8 and resumed, every metrics line and
    the final state equal the uninterrupted run's."""
    from fedjax_sim import checkpoints, cli, trials

    args = ["run", "--algorithm", "scaffold", "--rounds", "8", "--set", "eval_every=2", "--seeds", "2",
            "--trials", "vmap", "--clients", "8", "--cohort", "6", "--set", "model.hidden=8", "--no-progress",
            "--set", "checkpoint=true"]
    assert cli.main(args + ["--out", str(tmp_path / "full")]) == 0

    def hook(done, state):
        if done == 4:
            checkpoints.Interrupt.signum = 2
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [hook])
    assert cli.main(args + ["--out", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [])
    assert cli.main(["run", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    lines = lambda name: sorted((tmp_path / name / "metrics.jsonl").read_text().splitlines())  # noqa: E731
    assert lines("full") == lines("cut")
    resolved = json.loads((tmp_path / "cut" / "config.json").read_text())["resolved"]
    assert (resolved["devices"], resolved["data_placement"]) == (4, "split")
    for seed in (0, 1):
        with np.load(tmp_path / "full" / f"checkpoint_seed{seed}.npz") as a, \
                np.load(tmp_path / "cut" / f"checkpoint_seed{seed}.npz") as b:
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_population_shardings_split_per_client_leaves_only():
    """Leaves whose client axis is the population are split (4 devices divide 8 clients); the
    global model, per-round scalars and leaves of other lengths stay whole; 6 clients stay whole."""
    mesh = parallel.client_mesh(4)
    tree = {"control": jax.ShapeDtypeStruct((2, 8, 5), jnp.float32), "model": jnp.zeros((3, 5)),
            "count": jnp.zeros(()), "history": jnp.zeros((2, 8, 8))}
    got = parallel.population_shardings(tree, mesh, 8, axis=1)
    assert got["control"].spec == jax.sharding.PartitionSpec(None, parallel.AXIS)
    assert got["history"].spec == jax.sharding.PartitionSpec(None, parallel.AXIS)
    assert got["model"].spec == got["count"].spec == jax.sharding.PartitionSpec()
    uneven = parallel.population_shardings(tree, mesh, 6, axis=1)
    assert all(s.spec == jax.sharding.PartitionSpec() for s in jax.tree.leaves(uneven))
    placed = parallel.place({"control": np.arange(80.0).reshape(2, 8, 5)}, {"control": got["control"]})
    assert placed["control"].addressable_shards[0].data.shape == (2, 2, 5)
    np.testing.assert_array_equal(parallel.to_host(placed)["control"], np.arange(80.0).reshape(2, 8, 5))


@pytest.mark.parametrize("algorithm,store,clients", [("scaffold", "client_control", 8), ("local", "params", 6)])
def test_host_store_split_over_four_devices_equals_one_device(algorithm, store, clients, tmp_path, monkeypatch):
    """A per-client store in host memory, split over 4 devices (SCAFFOLD's control variates, 8
    clients) or replicated (Local's models, 6 clients, evaluated a cohort-sized block at a time):
    every metrics line equals the one-device run with its store in device memory."""
    from fedjax_sim import trials
    from fedjax_sim.core.clients import in_host_memory

    base = dict(algorithm=algorithm, rounds=4, eval_every=2, cohort=5, data__num_clients=clients)
    one = fedjax_sim.run(out=tmp_path / "one", client_mapping="vmap", state_memory="device", **base)
    seen = []
    others = lambda state: [a for f in state._fields if f not in (store, "opt") for a in jax.tree.leaves(getattr(state, f))]  # noqa: E731
    monkeypatch.setattr(trials, "BLOCK_HOOKS", [lambda done, state: seen.append(
        (all(map(in_host_memory, jax.tree.leaves(getattr(state, store)))), any(map(in_host_memory, others(state))),
         jax.tree.leaves(getattr(state, store))[0].sharding.spec))])
    four = fedjax_sim.run(out=tmp_path / "four", client_mapping="sharded", state_memory="host", **base)
    split = jax.sharding.PartitionSpec(parallel.AXIS) if clients == 8 else jax.sharding.PartitionSpec()
    assert seen == [(True, False, split)] * 2
    assert four.config["resolved"]["state_memory"]["memory"] == "host"
    for x, y in zip(_metrics(one), _metrics(four)):
        for key in x:
            if math.isfinite(x[key]):
                np.testing.assert_allclose(y[key], x[key], rtol=2e-4, atol=2e-5, err_msg=key)
