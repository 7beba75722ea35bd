"""Asynchronous FL (issue 10): the virtual clock and event schedule, its replay in buffers
against an event-by-event Python loop, staleness functions, FedADT's distillation correction
(lambda 0 is the base method bit for bit; a step moves the student toward the teacher), the
synchronous reference on the clock, the proxy split and bad input."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import layers_of, make_data, ref_local_sgd, tiny_config
from fedjax_sim import asynchrony, cli, runner
from fedjax_sim.aggregators import distillation_correction, staleness_weight
from fedjax_sim.aggregators.asynchronous import kl_to, lambda_schedule, staleness_gate
from fedjax_sim.core.driver import RoundInput
from fedjax_sim.core.sampling import cohort_ids
from fedjax_sim.data.build import Pools, carve_proxy
from fedjax_sim.trials import time_to_target


def _trace(seed=0, clients=12, concurrency=4, arrivals=120, kind="lognormal", stragglers=0.0):
    n = np.arange(clients) % 5 + 2
    clock = tiny_config(clock__speed=kind, clock__straggler_fraction=stragglers).clock
    speed, work, rng = asynchrony.seed_clock(clock, seed, n, 2)
    return asynchrony.build_trace(speed, work, concurrency, arrivals, clock.noise, rng)


# ----------------------------------------------------------------------------------------------
# the clock and the schedule


@pytest.mark.parametrize("kind,stragglers", [("lognormal", 0.0), ("exponential", 0.25), ("constant", 0.5)])
def test_trace_is_deterministic_and_respects_the_closed_loop(kind, stragglers):
    concurrency = 4
    a = _trace(kind=kind, stragglers=stragglers)
    b = _trace(kind=kind, stragglers=stragglers)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.t_finish, _trace(seed=1, kind=kind, stragglers=stragglers).t_finish) or kind == "constant"
    assert np.all(np.diff(a.t_finish) >= 0)  # arrival order
    assert np.all(a.t_finish >= a.t_dispatch)
    initial = a.after == 0
    assert initial.sum() <= concurrency and np.all(a.job[initial] < concurrency)
    # every later job was dispatched at the arrival it replaced: jobs in flight stay = concurrency
    later = np.flatnonzero(~initial)
    np.testing.assert_array_equal(a.t_dispatch[later], a.t_finish[a.after[later] - 1])
    assert len(set(a.after[later].tolist())) == len(later)  # one replacement per arrival
    for c in np.unique(a.client):  # a client is never in flight twice
        mine = np.flatnonzero(a.client == c)
        order = np.argsort(a.t_dispatch[mine])
        assert np.all(a.t_finish[mine][order][:-1] <= a.t_dispatch[mine][order][1:])


def test_buffer_size_only_relabels_versions_of_the_same_timeline():
    t = _trace()
    for k in (1, 3, 5):
        s = asynchrony.staleness_of(t, k)
        assert s.min() >= 0  # the start version never exceeds the version at arrival
    # FedAsync's mean staleness is about concurrency - 1, FedBuff's about (concurrency - 1) / K
    assert 2.0 < asynchrony.staleness_of(t, 1).mean() < 4.5
    assert asynchrony.staleness_of(t, 3).mean() < asynchrony.staleness_of(t, 1).mean() / 2


def finish_half(trace, k):
    """A time budget that the 40 rounds pass halfway."""
    return float(trace.t_finish[k * 20 - 1])


@pytest.mark.parametrize("k,concurrency", [(1, 4), (3, 4), (2, 7), (5, 2)])
def test_replayed_ring_always_holds_each_arrivals_base_version(k, concurrency):
    t = _trace(concurrency=concurrency, arrivals=k * 40)
    ring = asynchrony.ring_size(concurrency)
    ev = asynchrony.replay_events(t, k, 40, ring, server_time=0.5)
    held = np.full(ring, -1)
    for r in range(40):
        if ev["store"][r] < ring:
            held[ev["store"][r]] = r
        np.testing.assert_array_equal(held[ev["slot"][r]], r - ev["staleness"][r])
    assert np.all(ev["staleness"] >= 0)
    np.testing.assert_allclose(ev["progress"], np.arange(40) / 40, rtol=1e-6)
    timed = asynchrony.replay_events(t, k, 40, ring, server_time=0.5, time_budget=finish_half(t, k))
    assert timed["progress"][0] > 0 and np.all(np.diff(timed["progress"]) >= 0) and timed["progress"][-1] == 1.0
    # round r writes the model it produces (version r + 1) where round r + 1 expects it
    np.testing.assert_array_equal(ev["store_next"][:-1], ev["store"][1:])
    assert ev["store"][0] == 0 and ev["store_next"][-1] == ring
    finish = t.t_finish[k - 1::k][:40]
    np.testing.assert_allclose(np.cumsum(ev["round_time"].astype(np.float64)), finish + 0.5 * np.arange(1, 41),
                               rtol=1e-5)


def test_staleness_functions_match_their_formulas():
    s = np.arange(0, 30)
    np.testing.assert_allclose(staleness_weight(s, "constant"), np.ones(30))
    np.testing.assert_allclose(staleness_weight(s, "polynomial", a=0.5), (s + 1.0) ** -0.5, rtol=1e-6)
    want = np.where(s <= 4, 1.0, 1.0 / (10 * (s - 4) + 1.0))
    np.testing.assert_allclose(staleness_weight(s, "hinge", a=10.0, b=4.0), want, rtol=1e-6)
    np.testing.assert_allclose(staleness_gate(s, "stale"), (s > 0).astype(float))
    np.testing.assert_allclose(staleness_gate(s, "sqrt"), 1 - (1 + s) ** -0.5, rtol=1e-6)
    p = np.linspace(0, 1, 11)
    np.testing.assert_allclose(lambda_schedule(p, "sigmoid", 0.5), 0.5 / (1 + np.exp(-10 * (p - 0.3))), rtol=1e-5)
    np.testing.assert_allclose(lambda_schedule(p, "linear", 0.5), 0.5 * p, rtol=1e-6)
    assert float(lambda_schedule(0.0, "sigmoid", 0.5)) == pytest.approx(0.024, abs=1e-3)


# ----------------------------------------------------------------------------------------------
# replay against an event-by-event loop


def _run_rounds(alg, data, rounds, seed=0):
    state = alg.init(jax.random.PRNGKey(seed), data)
    events = alg.events(seed, data, rounds)
    step = jax.jit(alg.round)
    start = state
    metrics = []
    for r in range(rounds):
        rin = RoundInput(jax.random.PRNGKey(100 + r), jnp.int32(r), jnp.array(True),
                         jax.tree.map(lambda e: jnp.asarray(e[r]), events))
        state, m = step(state, data, rin)
        metrics.append(m)
    return start, state, metrics


def _reference(start, data, prep, k, rounds, merge, lr, seed=0):
    """Arrivals one by one from the same trace: each trains from the version it was dispatched
    with (a dict of versions, no ring), the server merges every K arrivals."""
    alg = prep.algorithm
    clock = prep.config.clock
    conc = alg.info["concurrency"]
    speed, work, rng = asynchrony.seed_clock(clock, seed, np.asarray(data.n_train), prep.config.local.batch_size)
    trace = asynchrony.build_trace(speed, work, conc, k * rounds, clock.noise, rng)
    versions = {0: layers_of(start.params)}
    v, buf = 0, []
    for i in range(k * rounds):
        c, j, base_v = int(trace.client[i]), int(trace.job[i]), int(trace.after[i]) // k
        base = versions[base_v]
        new, _, _ = ref_local_sgd(base, data.train["x"][c], data.train["y"][c], int(data.n_train[c]),
                                  jax.random.fold_in(start.job_key, j), prep.schedule, data.max_train, lr)
        buf.append((base, new, v - base_v))
        if len(buf) == k:
            versions[v + 1] = merge(versions[v], buf)
            v, buf = v + 1, []
    return versions[rounds]


def _poly(s):
    return (s + 1.0) ** -0.5


def test_fedbuff_replay_equals_event_by_event_loop():
    data = jax.device_put(make_data(train_sizes=(5, 9, 3, 7, 4, 6), test_sizes=(2,) * 6))
    lr, eta, k, rounds = 0.1, 0.8, 3, 6
    cfg = tiny_config(algorithm="fedbuff", model__hidden=(4,), local__lr=lr, server__lr=eta,
                      fedbuff__buffer_size=k, clock__speed="lognormal", clock__concurrency=4)
    prep = runner.prepare(cfg, data)
    start, state, metrics = _run_rounds(prep.algorithm, data, rounds)

    def merge(w, buf):
        out = [[np.array(a) for a in layer] for layer in w]
        for base, new, s in buf:
            for l, (wl, bl, nl) in enumerate(zip(out, base, new)):
                for i in range(2):
                    wl[i] += eta * _poly(s) * (nl[i] - bl[i]) / k
        return out

    want = _reference(start, data, prep, k, rounds, merge, lr)
    for got, ref in zip(layers_of(state.params), want):
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-5)
    assert max(float(m["staleness_max"]) for m in metrics) >= 1  # stale arrivals were exercised


def test_fedasync_replay_equals_event_by_event_loop():
    data = jax.device_put(make_data(train_sizes=(5, 9, 3, 7, 4, 6), test_sizes=(2,) * 6))
    lr, alpha, rounds = 0.1, 0.6, 10
    cfg = tiny_config(algorithm="fedasync", model__hidden=(4,), local__lr=lr, fedasync__alpha=alpha,
                      clock__speed="exponential", clock__concurrency=3)
    prep = runner.prepare(cfg, data)
    start, state, metrics = _run_rounds(prep.algorithm, data, rounds)

    def merge(w, buf):
        (base, new, s), = buf
        return [[wi + alpha * _poly(s) * (ni - wi) for wi, ni in zip(wl, nl)] for wl, nl in zip(w, new)]

    want = _reference(start, data, prep, 1, rounds, merge, lr)
    for got, ref in zip(layers_of(state.params), want):
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-5)
    assert max(float(m["staleness_max"]) for m in metrics) >= 2


# ----------------------------------------------------------------------------------------------
# FedADT


def _proxy_data():
    data = make_data(train_sizes=(5, 9, 3, 7, 4, 6), test_sizes=(2,) * 6)
    proxy = np.random.default_rng(3).normal(size=(20, 6)).astype(np.float32)
    return jax.device_put(data.replace(proxy={"x": proxy}))


@pytest.mark.parametrize("base", ["fedbuff", "fedasync"])
def test_fedadt_with_lambda_zero_is_its_base_method_bit_for_bit(base):
    data = _proxy_data()
    common = dict(model__hidden=(4,), fedbuff__buffer_size=2, clock__speed="lognormal", clock__concurrency=4)
    plain = runner.prepare(tiny_config(algorithm=base, **common), data).algorithm
    adt = runner.prepare(tiny_config(algorithm="fedadt", fedadt__base=base, fedadt__lambda_max=0.0,
                                     fedadt__schedule="constant", fedadt__gate="one", **common), data).algorithm
    _, a, _ = _run_rounds(plain, data, 5)
    _, b, mb = _run_rounds(adt, data, 5)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert float(mb[-1]["kd_lambda"]) == 0.0
    # and with a positive weight the correction changes the model
    on = runner.prepare(tiny_config(algorithm="fedadt", fedadt__base=base, fedadt__lambda_max=1.0,
                                    fedadt__schedule="constant", fedadt__gate="one", **common), data).algorithm
    _, c, _ = _run_rounds(on, data, 5)
    assert not np.allclose(np.asarray(jax.tree.leaves(a.params)[0]), np.asarray(jax.tree.leaves(c.params)[0]))


def _mlp_apply(params, x):
    h = jnp.maximum(x @ params["w1"] + params["b1"], 0.0)
    return h @ params["w2"] + params["b2"]


def _mlp(rng, lead=()):
    return {"w1": jnp.asarray(rng.normal(size=(*lead, 6, 8)) / 2.5, jnp.float32), "b1": jnp.zeros((*lead, 8)),
            "w2": jnp.asarray(rng.normal(size=(*lead, 8, 4)) / 3.0, jnp.float32), "b2": jnp.zeros((*lead, 4))}


def test_distillation_step_moves_students_toward_the_teacher_on_the_proxy_set():
    rng = np.random.default_rng(0)
    teacher, bases = _mlp(rng), _mlp(rng, (3,))
    deltas = jax.tree.map(lambda a: 0.1 * jnp.asarray(rng.normal(size=a.shape), jnp.float32), bases)
    proxy = jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)
    kd = distillation_correction(_mlp_apply, lam_max=1.0, schedule="constant", gate="one", temperature=2.0,
                                 steps=20, batch=32, lr=0.5)
    out, _, m = kd.update(deltas, jnp.ones(3), kd.init(teacher), teacher, bases=bases,
                          staleness=jnp.array([0, 2, 5]), progress=jnp.float32(0.5), proxy=proxy,
                          key=jax.random.PRNGKey(0))
    t_logits = _mlp_apply(teacher, proxy)
    for i in range(3):
        before = jax.tree.map(lambda b, d: b[i] + d[i], bases, deltas)
        after = jax.tree.map(lambda b, d: b[i] + d[i], bases, out)
        assert float(kl_to(t_logits, _mlp_apply(after, proxy))) < float(kl_to(t_logits, _mlp_apply(before, proxy)))
    assert float(m["kd_kl_after"]) < float(m["kd_kl_before"])
    # the stale gate leaves a fresh update (s = 0) untouched, bit for bit
    gated = distillation_correction(_mlp_apply, lam_max=1.0, schedule="constant", gate="stale", steps=3, batch=8, lr=0.5)
    out, _, _ = gated.update(deltas, jnp.ones(3), gated.init(teacher), teacher, bases=bases,
                             staleness=jnp.array([0, 2, 5]), progress=jnp.float32(0.5), proxy=proxy,
                             key=jax.random.PRNGKey(0))
    for d, o in zip(jax.tree.leaves(deltas), jax.tree.leaves(out)):
        np.testing.assert_array_equal(np.asarray(d[0]), np.asarray(o[0]))
        assert not np.array_equal(np.asarray(d[1]), np.asarray(o[1]))


# ----------------------------------------------------------------------------------------------
# synchronous reference, proxy split, summary fields


def test_synchronous_round_lasts_as_long_as_its_slowest_sampled_client():
    data = jax.device_put(make_data(train_sizes=(5, 9, 3, 7, 4, 6), test_sizes=(2,) * 6))
    cfg = tiny_config(algorithm="fedavg", cohort=3, model__hidden=(4,), clock__speed="lognormal",
                      clock__server_time=0.25)
    alg = runner.prepare(cfg, data).algorithm
    durations = alg.events(0, data, 4)
    assert durations.shape == (4, 6)
    state = alg.init(jax.random.PRNGKey(0), data)
    for r in range(4):
        key = jax.random.PRNGKey(50 + r)
        state, m = jax.jit(alg.round)(state, data, RoundInput(key, jnp.int32(r), jnp.array(True),
                                                              jnp.asarray(durations[r])))
        ids = np.asarray(cohort_ids(key, 6, 3))
        assert float(m["round_time"]) == pytest.approx(float(durations[r, ids].max()) + 0.25, rel=1e-6)


def test_proxy_rows_come_out_of_the_train_pool_before_partitioning():
    ids = np.arange(100)
    pools = Pools(np.arange(100, dtype=np.float32)[:, None], ids % 4, ids % 4, None, ids,
                  np.zeros((5, 1), np.float32), np.zeros(5), np.zeros(5), None, np.arange(100, 105))
    rest, proxy = carve_proxy(pools, 0.1, np.random.default_rng(0))
    assert proxy["x"].shape == (10, 1) and set(proxy.keys()) == {"x"}  # labels dropped
    assert not set(proxy["x"][:, 0].astype(int)) & set(rest.ids.tolist())
    counts = np.bincount(rest.y)
    assert len(rest.ids) == 90 and counts.max() - counts.min() <= 1  # stratified: 2.5 per class out
    same, none = carve_proxy(pools, 0.0, np.random.default_rng(0))
    assert none is None and same is pools


def test_time_to_target_is_the_first_evaluation_at_or_past_it():
    hist = [{"round": 0, "virtual_time": 0.0, "global_accuracy": 0.1},
            {"round": 5, "virtual_time": 3.5, "global_accuracy": 0.6},
            {"round": 10, "virtual_time": 7.0, "global_accuracy": 0.8}]
    assert time_to_target(hist, 0.6) == {"rounds_to_target": 5, "time_to_target": 3.5}
    assert time_to_target(hist, 0.9) == {"rounds_to_target": None, "time_to_target": None}
    assert time_to_target([{k: v for k, v in h.items() if k != "virtual_time"} for h in hist], 0.7) == {
        "rounds_to_target": 10}


def test_async_run_writes_virtual_time_and_time_to_target(tmp_path):
    """Two seeds in one vmapped program equal each seed run alone (events stacked per seed)."""
    args = ["run", "--algorithm", "fedbuff", "--clients", "8", "--rounds", "6", "--no-progress",
            "--set", "model.hidden=8", "--set", "eval_every=3", "--set", "fedbuff.buffer_size=2",
            "--set", "clock.speed=lognormal", "--set", "clock.concurrency=4", "--set", "target_accuracy=0.2"]
    assert cli.main(args + ["--seeds", "2", "--out", str(tmp_path / "both")]) == 0
    both = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert both["config"]["resolved"]["trials"]["mode"] == "vmap"
    for e in both["per_seed"]:
        assert cli.main(args + ["--seed", str(e["seed"]), "--out", str(tmp_path / f"s{e['seed']}")]) == 0
        alone = json.loads((tmp_path / f"s{e['seed']}" / "summary.json").read_text())["final"]
        assert e["final"]["virtual_time"] == pytest.approx(alone["virtual_time"], rel=1e-9)
        assert e["final"]["global_accuracy"] == pytest.approx(alone["global_accuracy"], abs=1e-5)
        assert "time_to_target" in e["final"] and "rounds_to_target" in e["final"]
    lines = [json.loads(l) for l in (tmp_path / "both" / "metrics.jsonl").read_text().splitlines()]
    assert all("virtual_time" in l for l in lines)
    times = [l["virtual_time"] for l in lines if l["seed"] == both["seeds"][0]]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:]))


BAD_ASYNC = [
    (["--algorithm", "fedbuff", "--set", "clock.concurrency=9"], "clock.concurrency", "9"),
    (["--algorithm", "fedbuff", "--set", "fedbuff.buffer_size=0"], "fedbuff.buffer_size", "0"),
    (["--set", "clock.sigma=0"], "clock.sigma", "0"),
    (["--set", "clock.straggler_slowdown=-2"], "clock.straggler_slowdown", "-2"),
    (["--set", "clock.server_time=-1"], "clock.server_time", "-1"),
    (["--set", "clock.speed=fast"], "clock.speed", "fast"),
    (["--algorithm", "fedadt"], "data.proxy_fraction", "0"),
    (["--algorithm", "fedadt", "--set", "data.proxy_fraction=0.0001"], "data.proxy_fraction", "0.0001"),
    (["--algorithm", "fedadt", "--set", "data.proxy_fraction=0.1", "--set", "fedadt.schedule=cosine"],
     "fedadt.schedule", "cosine"),
    (["--algorithm", "fedasync", "--set", "fedasync.staleness=exp"], "fedasync.staleness", "exp"),
    (["--algorithm", "fedasync", "--set", "fedasync.alpha=0"], "fedasync.alpha", "0"),
    (["--set", "target_accuracy=1.5"], "target_accuracy", "1.5"),
    (["--set", "target_accuracy=-0.1"], "target_accuracy", "-0.1"),
    (["--dataset", "diabetes", "--set", "target_accuracy=0.5"], "target_accuracy", "0.5"),
]


@pytest.mark.parametrize("args,field,value", BAD_ASYNC, ids=[" ".join(a) for a, _, _ in BAD_ASYNC])
def test_bad_async_input_exits_2_naming_field_and_value(args, field, value, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["run", "--clients", "8", "--rounds", "1", "--set", "model.hidden=4", "--no-progress",
                   "--out", str(out)] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert field in err[0] and value in err[0], err[0]
    assert not out.exists()


def test_step_at_holds_the_last_evaluation_and_clocked_comparison_plot(tmp_path):
    from fedjax_sim.report import comparison_plot, step_at

    np.testing.assert_array_equal(step_at([0.0, 2.0, 5.0], [0.1, 0.5, 0.9], [0.0, 1.9, 2.0, 4.0, 7.0]),
                                  [0.1, 0.1, 0.5, 0.5, 0.9])
    dirs = []
    for name, scale in (("fedavg", 3.0), ("fedbuff", 1.0)):  # different rounds per unit of time
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"algorithm": name, "task": {"headline": "accuracy"},
                                                    "per_seed": [{"seed": s, "status": "ok"} for s in (0, 1)]}))
        lines = [{"round": r, "seed": s, "virtual_time": scale * r + s, "personalized_accuracy": r / 10}
                 for s in (0, 1) for r in range(5)]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
        dirs.append(d)
    comparison_plot(dirs, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0


def test_ring_of_versions_is_updated_in_place():
    """Structural guard for the replay's cost (no timing): in the compiled rounds, nothing but an
    in-place dynamic-update-slice produces a ring-shaped array; a copy of the ring per round made
    the replay 10x slower at high concurrency (docs/performance.md)."""
    import re

    data = jax.device_put(make_data(train_sizes=(5, 9, 3, 7, 4, 6), test_sizes=(2,) * 6))
    cfg = tiny_config(algorithm="fedasync", model__hidden=(4,), clock__speed="lognormal", clock__concurrency=5)
    alg = runner.prepare(cfg, data).algorithm
    state = alg.init(jax.random.PRNGKey(0), data)
    rows = alg.info["ring_size"] + 1
    events = jax.tree.map(jnp.asarray, alg.events(0, data, 4))
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    inputs = RoundInput(keys, jnp.arange(4, dtype=jnp.int32), jnp.ones(4, bool), events)
    scan = jax.jit(lambda s, d, i: jax.lax.scan(lambda c, r: alg.round(c, d, r), s, i), donate_argnums=0)
    text = scan.lower(state, data, inputs).compile().as_text()
    made = [l.strip() for l in text.splitlines() if re.search(rf"= f32\[{rows},", l)]
    assert made, "the ring was not found in the compiled program"
    # allowed: the DUS itself (or a fusion rooted in it), loop parameters and tuple plumbing
    bad = [l for l in made if not re.search(r"dynamic[-_]update[-_]slice|parameter\(|get-tuple-element\(", l)]
    assert not bad, bad[:3]
