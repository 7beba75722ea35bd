"""FedReMa relevance functions, algorithms and bad input (specs/fedrema.md)."""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_sim import config as config_lib
from fedjax_sim import runner
from fedjax_sim.aggregators import relevance as rv
from fedjax_sim.algorithms.split import SplitState
from fedjax_sim.core.driver import RoundInput
from fedjax_sim.errors import ConfigError


def _rin(seed: int) -> RoundInput:
    return RoundInput(jax.random.PRNGKey(seed), jnp.int32(0), jnp.bool_(True))


# ------------------------------------------------------------------ plain-Python references

def mds_reference(sim, part):
    k = len(sim)
    rel = np.zeros((k, k), bool)
    gap = np.zeros(k)
    ids = [j for j in range(k) if part[j]]
    for i in ids:
        vals = sorted(((np.inf if j == i else sim[i][j]), j) for j in ids)  # ties: by id
        vals = sorted([(v, j) for v, j in vals], key=lambda t: t[0])
        gaps = [vals[p + 1][0] - vals[p][0] for p in range(len(vals) - 2)]  # drop the self gap
        best = max(range(len(gaps)), key=lambda p: (gaps[p], -p))  # first index on ties
        for _, j in vals[best + 1:]:
            rel[i, j] = True
        gap[i] = gaps[best]
    return rel, gap


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


# ------------------------------------------------------------------ MDS

@pytest.mark.parametrize("seed", range(6))
def test_mds_matches_reference(seed):
    rng = np.random.default_rng(seed)
    k = 7
    sim = np.round(rng.uniform(0, 1, (k, k)), 1).astype(np.float32)  # rounding makes ties
    np.fill_diagonal(sim, 1.0)
    part = np.ones(k, bool)
    if seed % 2:
        part[rng.choice(k, 2, replace=False)] = False
    rel, gap = rv.mds_select(jnp.asarray(sim), jnp.asarray(part))
    rel_ref, gap_ref = mds_reference(sim, part)
    np.testing.assert_array_equal(np.asarray(rel), rel_ref)
    np.testing.assert_allclose(np.asarray(gap), gap_ref, atol=1e-6)
    n = part.sum()
    sizes = np.asarray(rel).sum(1)[part]
    assert np.all((sizes >= 2) & (sizes <= n - 1))
    assert np.all(np.diag(np.asarray(rel))[part])  # self always in its own set
    assert not np.asarray(rel)[~part].any() and not np.asarray(rel)[:, ~part].any()


def test_mds_hand_built_rows():
    sim = np.array([
        [1.0, 0.9, 0.85, 0.1, 0.05],   # gaps .05 .75 .05 | (.1 self gap dropped) -> {1, 2, self}
        [0.5, 1.0, 0.5, 0.5, 0.5],     # all peers tied: every gap 0 -> first gap -> n - 1 clients
        [0.1, 0.2, 1.0, 0.3, 0.95],    # self gap (.05) small; largest is .65 -> {4, self}
        [0.2, 0.2, 0.9, 1.0, 1.0],     # a peer as similar as self: self still counts as top
        [0.0, 0.3, 0.6, 0.9, 1.0],     # equal gaps -> first -> {1, 2, 3, self}
    ], np.float32)
    rel, gap = rv.mds_select(jnp.asarray(sim), jnp.ones(5, bool))
    rel = np.asarray(rel)
    assert set(np.flatnonzero(rel[0])) == {0, 1, 2}
    assert set(np.flatnonzero(rel[1])) == {1, 2, 3, 4}
    assert set(np.flatnonzero(rel[2])) == {2, 4}
    assert set(np.flatnonzero(rel[3])) == {2, 3, 4}
    assert set(np.flatnonzero(rel[4])) == {1, 2, 3, 4}
    np.testing.assert_allclose(np.asarray(gap), [0.75, 0.0, 0.65, 0.7, 0.3], atol=1e-6)
    rel_ref, _ = mds_reference(sim, np.ones(5, bool))
    np.testing.assert_array_equal(rel, rel_ref)


def test_mds_three_participants_sizes():
    sim = np.array([[1, 0.2, 0.9], [0.3, 1, 0.1], [0.5, 0.5, 1]], np.float32)
    rel, _ = rv.mds_select(jnp.asarray(sim), jnp.ones(3, bool))
    np.testing.assert_array_equal(np.asarray(rel).sum(1), [2, 2, 2])


# ------------------------------------------------------------------ CCP, dependency, weights

def test_ccp_end_rule_hand_built():
    means = [0.2, 0.3, 0.25, 0.14, 0.5, 0.01]  # 0.14 < 0.5 * 0.3 ends it in round 4, for good
    state = rv.ccp_init()
    active = []
    for t, m in enumerate(means, start=1):
        state, m_t = rv.ccp_step(state, jnp.full((4,), m), jnp.ones(4, bool), 0.5, jnp.array(t))
        assert float(m_t) == pytest.approx(m)
        active.append(bool(state.is_ccp))
    assert active == [True, True, True, False, False, False]
    assert int(state.end_round) == 4
    assert float(state.m_max) == pytest.approx(0.3)  # frozen after the end


def test_ccp_never_ends_with_growing_gaps_and_masked_mean():
    state = rv.ccp_init()
    for t in range(1, 6):
        gap = jnp.array([0.1 * t, 0.1 * t, 100.0])
        state, m_t = rv.ccp_step(state, gap, jnp.array([True, True, False]), 0.5, jnp.array(t))
        assert float(m_t) == pytest.approx(0.1 * t)
    assert bool(state.is_ccp) and int(state.end_round) == -1


def test_dependency_counts():
    dep = jnp.zeros((5, 5))
    idx = jnp.array([4, 0, 2])
    rel = jnp.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
    dep = rv.update_dependency(dep, rel, idx, jnp.array(True))
    dep = rv.update_dependency(dep, rel, idx, jnp.array(True))
    dep = rv.update_dependency(dep, rel, idx, jnp.array(False))  # after the CCP: frozen
    expected = np.zeros((5, 5))
    for a in range(3):
        for b in range(3):
            expected[int(idx[a]), int(idx[b])] += 2 * int(rel[a, b])
    np.testing.assert_array_equal(np.asarray(dep), expected)
    assert np.asarray(dep)[4, 4] == 2  # self counted: number of CCP rounds it took part in


def test_history_weights_normalize_and_fallback():
    dep = jnp.array([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 4.0]])
    w = np.asarray(rv.history_weights(dep))
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[0], [0.75, 0.25, 0.0])
    np.testing.assert_array_equal(w[1], [0.0, 1.0, 0.0])  # zero row -> identity
    w = np.asarray(rv.ccp_weights(jnp.array([[True, True, False], [False, False, False], [True, True, True]])))
    np.testing.assert_allclose(w, [[0.5, 0.5, 0], [0, 1, 0], [1 / 3] * 3], rtol=1e-6)


# ------------------------------------------------------------------ head mixing

def _heads(k, key=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(key))
    return {"mlp": {"dense_0": {"kernel": jax.random.normal(k1, (k, 6, 4)),
                                "bias": jax.random.normal(k2, (k, 4))}}}


def test_mix_one_hot_is_local_and_all_ones_is_head_average():
    k = 5
    heads = _heads(k)
    part = jnp.ones(k, bool)
    local = rv.mix_heads(rv.ccp_weights(jnp.eye(k, dtype=bool)), heads, part)
    chex.assert_trees_all_close(local, heads)
    avg = rv.mix_heads(rv.ccp_weights(jnp.ones((k, k), bool)), heads, part)
    mean = jax.tree.map(lambda a: jnp.broadcast_to(a.mean(0), a.shape), heads)
    chex.assert_trees_all_close(avg, mean, atol=1e-5)
    # the in-place (official bug) variant agrees on one-hot weights, differs otherwise
    chex.assert_trees_all_close(rv.mix_heads_inplace(jnp.eye(k), heads, part), heads)
    w = rv.ccp_weights(jnp.array(np.random.default_rng(0).uniform(size=(k, k)) > 0.4) | jnp.eye(k, dtype=bool))
    a = rv.mix_heads(w, heads, part)["mlp"]["dense_0"]["bias"]
    b = rv.mix_heads_inplace(w, heads, part)["mlp"]["dense_0"]["bias"]
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5)  # the first row reads only pre-mix heads
    assert not np.allclose(a, b)


def test_mix_keeps_non_participants():
    k = 4
    heads = _heads(k)
    part = jnp.array([True, False, True, True])
    out = rv.mix_heads(jnp.full((k, k), 0.25), heads, part)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[1], out), jax.tree.map(lambda a: a[1], heads))


def test_random_peers_same_sizes():
    sim = jax.random.uniform(jax.random.PRNGKey(3), (6, 6))
    part = jnp.ones(6, bool)
    rel, _ = rv.mds_select(sim, part)
    rnd = rv.random_relevant_sets(jax.random.PRNGKey(1), rel, part)
    np.testing.assert_array_equal(np.asarray(rnd).sum(1), np.asarray(rel).sum(1))
    assert np.all(np.diag(np.asarray(rnd)))
    assert not np.array_equal(np.asarray(rnd), np.asarray(rel))  # other members than MDS's


# upload-order replica (spec §7.1): the weight row of client i, indexed by client id, is paired by
# POSITION with the uploaded heads; the head at upload position u belongs to client perm[u], so it
# receives W[i, u]:  W_eff[i, perm[u]] = W[i, u].
W_HAND = np.array([[0.1, 0.2, 0.3, 0.4],
                   [0.5, 0.0, 0.25, 0.25],
                   [0.0, 0.6, 0.0, 0.4],
                   [0.7, 0.1, 0.1, 0.1]], np.float32)
PERM_HAND = [2, 0, 3, 1]  # upload position 0 holds client 2, position 1 client 0, ...
# column perm[u] of W_eff = column u of W: col 2 <- col 0, col 0 <- col 1, col 3 <- col 2,
# col 1 <- col 3, written out:
W_EFF_HAND = np.array([[0.2, 0.4, 0.1, 0.3],
                       [0.0, 0.25, 0.5, 0.25],
                       [0.6, 0.4, 0.0, 0.0],
                       [0.1, 0.1, 0.7, 0.1]], np.float32)


def test_upload_order_bug_with_a_hand_written_permutation(monkeypatch):
    """The replica against a hand-written permutation and its hand-permuted weight matrix (the
    permutation is fixed by replacing `jax.random.permutation` for this call)."""
    seen = []

    def fixed_permutation(key, n, *args, **kwargs):
        seen.append(n)
        return jnp.asarray(PERM_HAND)

    monkeypatch.setattr(jax.random, "permutation", fixed_permutation)
    out = np.asarray(rv.upload_order_bug(jax.random.PRNGKey(0), jnp.asarray(W_HAND)))
    assert seen == [4]
    np.testing.assert_array_equal(out, W_EFF_HAND)
    # e.g. client 0's weight meant for client 0 (0.1) lands on client 2's head
    assert out[0, 2] == W_HAND[0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_upload_order_bug_with_jax_permutation_by_hand(seed):
    """With the real key: recompute ``jax.random.permutation(key, K)``, check it scrambles (not
    the identity), and apply the spec's rule by a Python loop."""
    k = 6
    rel = (jax.random.uniform(jax.random.PRNGKey(10 + seed), (k, k)) > 0.5) | jnp.eye(k, dtype=bool)
    w = np.asarray(rv.ccp_weights(rel))
    key = jax.random.PRNGKey(seed)
    perm = np.asarray(jax.random.permutation(key, k))
    assert sorted(perm.tolist()) == list(range(k)) and perm.tolist() != list(range(k))
    want = np.zeros_like(w)
    for i in range(k):
        for u in range(k):
            want[i, perm[u]] = w[i, u]
    got = np.asarray(rv.upload_order_bug(key, jnp.asarray(w)))
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, w)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)


def test_official_index_bug_in_the_aggregator():
    """relevance_matching(official_index_bug=True) mixes with the permuted weights, the
    permutation drawn from the second half of its key: (k_rand, k_bug) = split(key)."""
    k = 4
    heads = _heads(k)
    idx = jnp.arange(k)
    sim = jnp.array([[1, .9, .1, .05], [.9, 1, .05, .1], [.1, .05, 1, .9], [.05, .1, .9, 1]])
    key = jax.random.PRNGKey(5)
    agg = rv.relevance_matching(k, 0.5, official_index_bug=True)
    mixed, _, _ = agg.update(heads, jnp.ones(k), agg.init(None), None, similarity=sim,
                             cohort_idx=idx, key=key)
    rel, _ = rv.mds_select(sim, jnp.ones(k, bool))
    w = np.asarray(rv.ccp_weights(rel))  # pairs {0, 1} and {2, 3}
    np.testing.assert_allclose(w, [[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, .5, .5], [0, 0, .5, .5]])
    perm = np.asarray(jax.random.permutation(jax.random.split(key)[1], k))
    w_eff = np.zeros_like(w)
    for i in range(k):
        for u in range(k):
            w_eff[i, perm[u]] = w[i, u]
    assert not np.array_equal(w_eff, w)
    chex.assert_trees_all_close(mixed, rv.mix_heads(jnp.asarray(w_eff), heads, jnp.ones(k, bool)),
                                atol=1e-6)


# ------------------------------------------------------------------ similarity

def _linear_head(h, f):
    return f @ h["w"] + h["b"]


def test_probe_similarity_equals_pair_loop():
    k, d, c = 4, 5, 3
    kw, kb, kz = jax.random.split(jax.random.PRNGKey(0), 3)
    heads = {"w": jax.random.normal(kw, (k, d, c)), "b": jax.random.normal(kb, (k, c))}
    z = rv.uniform_probes(kz, k, d, 0.5)
    assert z.shape == (k, d) and float(z.min()) >= 0 and float(z.max()) < 0.5
    sim = np.asarray(rv.probe_similarity(_linear_head, heads, z, 0.5, 1.0))
    w, b, zz = np.asarray(heads["w"]), np.asarray(heads["b"]), np.asarray(z)
    for r in range(k):
        p_ref = softmax((zz[r] @ w[r] + b[r]) / 0.5)
        for j in range(k):
            want = 1.0 if r == j else cosine(p_ref, softmax(zz[r] @ w[j] + b[j]))
            assert sim[r, j] == pytest.approx(want, abs=1e-5)


def test_proto_similarity_and_prototypes_equal_loops():
    k, d, c = 3, 4, 3
    kw, kb, kx = jax.random.split(jax.random.PRNGKey(1), 3)
    heads = {"w": jax.random.normal(kw, (k, d, c)), "b": jax.random.normal(kb, (k, c))}
    x = jax.random.normal(kx, (k, 6, d))
    y = jnp.array([[0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 0, 1]])
    n = jnp.array([4, 3, 6])
    body = lambda p, xx: xx * p
    protos, counts = jax.vmap(lambda xc, yc, nc: rv.class_prototypes(body, 2.0, xc, yc, nc, c))(x, y, n)
    xn, yn = np.asarray(x), np.asarray(y)
    for i in range(k):
        for cls in range(c):
            rows = [t for t in range(int(n[i])) if yn[i, t] == cls]
            assert counts[i, cls] == len(rows)
            if rows:
                np.testing.assert_allclose(protos[i, cls], 2.0 * xn[i, rows].mean(0), rtol=1e-5)
    g, present = rv.global_prototypes(protos, counts, jnp.ones(k, bool))
    np.testing.assert_array_equal(np.asarray(present), [True, True, False])
    sim = np.asarray(rv.proto_similarity(_linear_head, heads, g, present))
    w, b, gg = np.asarray(heads["w"]), np.asarray(heads["b"]), np.asarray(g)
    for i in range(k):
        for j in range(k):
            want = 1.0 if i == j else np.mean([cosine(softmax(gg[q] @ w[i] + b[i]), softmax(gg[q] @ w[j] + b[j]))
                                              for q in range(c) if present[q]])
            assert sim[i, j] == pytest.approx(want, abs=1e-5)


# ------------------------------------------------------------------ algorithms end to end

def _cfg(algorithm="fedrema", **over) -> config_lib.Config:
    cfg = config_lib.Config(algorithm=algorithm, rounds=2, eval_every=1, client_mapping="vmap")
    cfg.data = dataclasses.replace(cfg.data, partition="dominant_class", num_clients=6)
    cfg.model = dataclasses.replace(cfg.model, hidden=(16, 16), head_layers=2)
    cfg.local = dataclasses.replace(cfg.local, optimizer="momentum", lr=0.01, clip_norm=10.0, epochs=1,
                                    batch_size=32)
    for k, v in over.items():
        config_lib.set_field(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def tiny_data():
    return runner.prepare(_cfg()).data


@pytest.mark.parametrize("flags", [{"fedrema.sim_type": "proto", "fedrema.official_index_bug": True,
                                    "fedrema.official_inplace_mixing": True}])
def test_fedrema_round_runs_and_reports(tiny_data, flags):
    prep = runner.prepare(_cfg(**flags), tiny_data)
    alg = prep.algorithm
    state = jax.jit(alg.init)(jax.random.PRNGKey(0), tiny_data)
    assert isinstance(state, SplitState) and isinstance(state.server["head"], rv.RelevanceState)
    state, metrics = jax.jit(alg.round)(state, tiny_data, _rin(1))
    for key in ("train_loss", "samples", "mds_gap_mean", "ccp_active", "relevant_set_size_mean",
                "relevant_set_size_min", "relevant_set_size_max"):
        assert key in metrics and np.isfinite(float(metrics[key])), key
    assert float(metrics["ccp_active"]) == 1.0  # round 1 always uses MDS
    assert 2 <= float(metrics["relevant_set_size_min"]) <= float(metrics["relevant_set_size_max"]) <= 5
    params = alg.client_params(state, tiny_data, jax.random.PRNGKey(2))
    assert jax.tree.leaves(params["head"])[0].shape[0] == 6
    assert int(alg.report(state)["ccp_end_round"]) == -1


@pytest.mark.parametrize("name", ["fedper", "fedrep", "head_avg"])
def test_baselines_and_ablations_run(tiny_data, name):
    prep = runner.prepare(_cfg(name), tiny_data)
    alg = prep.algorithm
    state = jax.jit(alg.init)(jax.random.PRNGKey(0), tiny_data)
    new, metrics = jax.jit(alg.round)(state, tiny_data, _rin(1))
    assert np.isfinite(float(metrics["train_loss"]))
    heads = jax.tree.leaves(new.clients.head)[-1]
    if name == "head_avg":  # every head is the same mean
        np.testing.assert_allclose(heads, jnp.broadcast_to(heads[0], heads.shape), rtol=1e-5, atol=1e-6)
    if name in ("fedper", "fedrep"):  # heads stay local, hence differ
        assert not np.allclose(heads[0], heads[1])


def test_runner_summary_has_ccp_end_round(tiny_data, tmp_path):
    summary = runner.run(_cfg(out=str(tmp_path / "run")), progress=False, data=tiny_data)
    assert "ccp_end_round" in summary["final"]
    import json
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key in ("mds_gap_mean", "ccp_active", "relevant_set_size_mean", "relevant_set_size_min",
                "relevant_set_size_max"):
        assert key in recs[-1], key


@pytest.mark.parametrize("ablation", ["none", "no_ccp", "no_history"])
def test_aggregator_after_ccp_per_ablation(ablation):
    """Round 1 has large MDS gaps, round 2 tiny ones (CCP ends, delta 0.5), round 3 is post-CCP."""
    k = 4
    heads = _heads(k)
    agg = rv.relevance_matching(6, 0.5, ablation)
    state = agg.init(None)
    assert state.dep.shape == (6, 6) and int(state.round) == 0
    idx = jnp.array([5, 1, 2, 0])
    kw = dict(cohort_idx=idx, participation=jnp.ones(k, bool), key=jax.random.PRNGKey(0))
    big = jnp.array([[1, .9, .1, .05], [.9, 1, .05, .1], [.1, .05, 1, .9], [.05, .1, .9, 1]])
    small = jnp.array([[1, .5, .49, .48], [.5, 1, .48, .49], [.49, .48, 1, .5], [.48, .49, .5, 1]])
    weights = jnp.ones(k)  # not used: relevance replaces them
    _, state, st1 = agg.update(heads, weights, state, None, similarity=big, **kw)
    _, state, st2 = agg.update(heads, weights, state, None, similarity=small, **kw)
    assert float(st1["ccp_active"]) == 1.0 and float(st2["ccp_active"]) == 1.0
    assert float(st2["ccp_ended"]) == 1.0 and int(state.ccp.end_round) == 2
    assert int(state.round) == 2
    dep = np.asarray(state.dep)[np.ix_(np.asarray(idx), np.asarray(idx))]
    np.testing.assert_array_equal(np.diag(dep), 2.0)  # self counted in both CCP rounds
    np.testing.assert_array_equal(np.asarray(state.dep)[[3, 4]], 0.0)  # never in a cohort
    mixed, state, st3 = agg.update(heads, weights, state, None, similarity=small, **kw)
    if ablation == "none":
        w = rv.history_weights(jnp.asarray(dep))
    elif ablation == "no_history":
        w = rv.ccp_weights(jnp.asarray(dep) > 0)
    else:
        w = rv.ccp_weights(rv.mds_select(small, jnp.ones(k, bool))[0])
    assert float(st3["ccp_active"]) == 0.0  # the CCP ended in round 2, in every ablation
    assert float(st3["mds_weights"]) == (1.0 if ablation == "no_ccp" else 0.0)
    chex.assert_trees_all_close(mixed, rv.mix_heads(w, heads, jnp.ones(k, bool)), atol=1e-6)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("over, field", [
    ({"cohort": 2}, "cohort"),
    ({"data.num_clients": 2, "data.samples_per_client": 100}, "data.num_clients"),
    ({"model.head_layers": 3}, "model.head_layers"),
    ({"fedrema.delta": 0.0}, "fedrema.delta"),
    ({"fedrema.delta": 1.5}, "fedrema.delta"),
    ({"fedrema.sim_type": "logits"}, "fedrema.sim_type"),
    ({"fedrema.ablation": "nope"}, "fedrema.ablation"),
])
def test_bad_input_raises_config_error(over, field):
    with pytest.raises(ConfigError) as err:
        runner.prepare(_cfg(**over))
    assert err.value.field == field


def test_delta_one_is_allowed(tiny_data):
    runner.prepare(_cfg(**{"fedrema.delta": 1.0}), tiny_data)


def test_unknown_fedrema_key_is_refused():
    """The fedrema section is FedReMa's own (registered by algorithms/fedrema.py): an unknown key,
    from --set or from a config file's section, names the field and the value."""
    with pytest.raises(ConfigError) as err:
        _cfg(**{"fedrema.unknown": 1})
    assert err.value.field == "fedrema.unknown"
    with pytest.raises(ConfigError) as err:
        config_lib.from_dict({"algorithm": "fedrema", "fedrema": {"delta": 0.5, "nosuch": 2}})
    assert err.value.field == "fedrema.nosuch"


def test_head_epochs_moved_to_fedrep_section():
    """``fedrep.head_epochs`` (was ``fedrema.head_epochs``; the old name is an alias)."""
    cfg = _cfg("fedrep", **{"fedrema.head_epochs": 3})
    assert cfg.fedrep.head_epochs == 3
    assert "head_epochs" not in config_lib.to_dict(cfg)["fedrema"]
    with pytest.raises(ConfigError) as err:
        runner.prepare(_cfg("fedrep", **{"fedrep.head_epochs": 0}))
    assert err.value.field == "fedrep.head_epochs"


@pytest.mark.parametrize("name", ["fedrema", "fedrema_no_ccp", "fedrema_no_history",
                                  "fedrema_random_peers"])
def test_fedrema_refuses_regression_targets(name):
    """FedReMa compares class probabilities of classifier heads: real-valued targets (the
    embedded diabetes set) are refused before anything compiles, naming task.name."""
    cfg = _cfg(name, **{"data.dataset": "diabetes", "data.partition": "iid",
                        "model.head_layers": 1})
    with pytest.raises(ConfigError) as err:
        runner.prepare(cfg)
    assert err.value.field == "task.name"
