"""Whole rounds of FedReMa and FedRep against plain-Python references (specs/fedrema.md §3, §4,
§7.1, §7.2, §7.11), and every registered FedReMa ablation run end to end through `runner.run`.

The references reuse only conftest's numpy MLP (`ref_local_sgd`, float64, hand-derived
gradients) and the engine's batch order (`batch_indices`); the key derivation of a split round is
rewritten here: round key -> (k_sel, k_extra); k_sel -> cohort ids and per-client keys (as
`ref_cohort`); k_extra -> (k_sim, k_agg); k_sim -> the probes; k_agg -> (k_rand, k_bug).
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import (layers_of, make_data, ref_cohort, ref_local_sgd, ref_logits, tiny_config,
                      weighted_average)
from fedjax_sim import runner
from fedjax_sim.aggregators.relevance import CCPState, RelevanceState
from fedjax_sim.core.driver import RoundInput
from fedjax_sim.core.local import Schedule

TOL = dict(rtol=2e-5, atol=2e-5)


def _rin(key) -> RoundInput:
    return RoundInput(key, jnp.int32(0), jnp.bool_(True))


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def _cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _assert_layers_close(got_tree, want_layers, what):
    got = layers_of(got_tree)
    assert len(got) == len(want_layers), what
    for i, ((gw, gb), (ww, wb)) in enumerate(zip(got, want_layers)):
        np.testing.assert_allclose(gw, ww, err_msg=f"{what}: layer {i} kernel", **TOL)
        np.testing.assert_allclose(gb, wb, err_msg=f"{what}: layer {i} bias", **TOL)


def _client_tree(tree, c):
    return jax.tree.map(lambda a: np.asarray(a)[c], tree)


# ------------------------------------------------------------------ reference pieces

def ref_mds(sim):
    """MDS (spec §3.2) over all K participants, by a loop: (R [K, K] bool, gap [K], margin [K]).

    ``margin``: best gap minus the runner-up (how far the cut is from a tie; the test requires
    it to be clear of float32 noise, so engine and reference cannot pick different cuts)."""
    k = len(sim)
    rel, gap, margin = np.zeros((k, k), bool), np.zeros(k), np.zeros(k)
    for i in range(k):
        order = sorted(range(k), key=lambda j: (np.inf if j == i else sim[i][j], j))
        vals = [np.inf if j == i else sim[i][j] for j in order]
        gaps = [vals[p + 1] - vals[p] for p in range(k - 2)]  # the self gap is dropped
        best = max(range(len(gaps)), key=lambda p: (gaps[p], -p))  # first on ties
        for j in order[best + 1:]:
            rel[i, j] = True
        gap[i] = gaps[best]
        others = [g for p, g in enumerate(gaps) if p != best]
        margin[i] = gaps[best] - max(others) if others else np.inf
    return rel, gap, margin


def ref_probe_similarity(heads, probes, t_ref, t_peer):
    """S[r, j] = cos(softmax(h_r(z_r) / t_ref), softmax(h_j(z_r) / t_peer)), S[r, r] = 1."""
    k = len(heads)
    sim = np.ones((k, k))
    for r in range(k):
        z = np.asarray(probes[r], np.float64)[None]
        p_ref = _softmax(ref_logits(heads[r], z)[0] / t_ref)
        for j in range(k):
            if j != r:
                sim[r, j] = _cosine(p_ref, _softmax(ref_logits(heads[j], z)[0] / t_peer))
    return sim


def ref_features(body, x):
    """The body's features: every body layer is followed by a ReLU (relu_last)."""
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    for w, b in body:
        h = np.maximum(h @ w + b, 0.0)
    return h


def ref_proto_similarity(bodies, heads, xs, ys, ns, num_classes):
    """Class means of each trained body's features over its client's rows; per class the
    unweighted mean over the clients that have it; S[i, j] = mean over present classes of
    cos(softmax(h_i(g_k)), softmax(h_j(g_k))), S[i, i] = 1."""
    k = len(heads)
    protos = {}
    for a in range(k):
        feats = ref_features(bodies[a], xs[a][: ns[a]])
        for cls in range(num_classes):
            rows = [t for t in range(ns[a]) if ys[a][t] == cls]
            if rows:
                protos.setdefault(cls, []).append(feats[rows].mean(0))
    g = {cls: np.mean(v, 0) for cls, v in protos.items()}
    sim = np.ones((k, k))
    for i in range(k):
        for j in range(k):
            if i != j:
                sim[i, j] = np.mean([_cosine(_softmax(ref_logits(heads[i], g[c][None])[0]),
                                             _softmax(ref_logits(heads[j], g[c][None])[0]))
                                     for c in sorted(g)])
    return sim


def ref_row_normalize(m):
    out = np.zeros(m.shape)
    for i in range(len(m)):
        s = m[i].sum()
        if s > 0:
            out[i] = m[i] / s
        else:
            out[i, i] = 1.0  # an all-zero row keeps the client's own head
    return out


def ref_upload_order(w, perm):
    """Spec §7.1: the weight row of client i is paired by position with the uploaded heads; the
    head at upload position u is client perm[u]'s, so it receives W[i, u]."""
    out = np.zeros_like(w)
    for i in range(len(w)):
        for u in range(len(perm)):
            out[i, perm[u]] = w[i, u]
    return out


def ref_mix(w, heads, inplace):
    """heads_i <- sum_j W[i, j] heads_j; from the pre-mix copy, or (spec §7.2) one client after
    another, each reading heads already overwritten by earlier clients."""
    src = [[[wl.copy(), bl.copy()] for wl, bl in h] for h in heads]
    out = [None] * len(heads)
    for i in range(len(heads)):
        mixed = [[sum(w[i, j] * src[j][l][p] for j in range(len(heads))) for p in range(2)]
                 for l in range(len(heads[0]))]
        out[i] = mixed
        if inplace:
            src[i] = mixed
    return out


class RefFedReMa:
    """FedReMa's state and round (spec §4 "One round, intended semantics") as Python loops."""

    def __init__(self, state, data, cfg, schedule, nb):
        self.c = data.num_clients
        self.body = layers_of({"body": _np(state.body), "head": {}})
        self.heads = [layers_of({"body": {}, "head": _client_tree(state.clients.head, c)})
                      for c in range(self.c)]
        self.traces = [None] * self.c
        rel = state.server["head"]
        self.dep = np.asarray(rel.dep, np.float64).copy()
        self.is_ccp, self.m_max = bool(rel.ccp.is_ccp), float(rel.ccp.m_max)
        self.end_round, self.round = int(rel.ccp.end_round), int(rel.round)
        self.data, self.cfg, self.schedule, self.nb = data, cfg, schedule, nb
        self.momentum = cfg.local.momentum if cfg.local.optimizer == "momentum" else None

    def round_(self, key):
        cfg, hp, data = self.cfg, self.cfg.fedrema, self.data
        x, y, n = (np.asarray(data.train["x"]), np.asarray(data.train["y"]),
                   np.asarray(data.n_train))
        k_sel, k_extra = jax.random.split(key)
        idx, keys = ref_cohort(k_sel, self.c, cfg.cohort or self.c)
        trained = []
        for a, c in enumerate(idx):
            layers, trace, _ = ref_local_sgd(self.body + self.heads[c], x[c], y[c], n[c], keys[a],
                                             self.schedule, data.max_train, cfg.local.lr,
                                             momentum=self.momentum, trace=self.traces[c])
            trained.append(layers)
            self.traces[c] = trace  # per-client momentum persists across rounds (spec §7.11)
        bodies, heads = [t[: self.nb] for t in trained], [t[self.nb:] for t in trained]

        k_sim, k_agg = jax.random.split(k_extra)
        if hp.sim_type == "probe":
            d = self.body[-1][0].shape[1]
            probes = np.asarray(jax.random.uniform(k_sim, (len(idx), d), minval=0.0,
                                                   maxval=hp.probe_scale))
            sim = ref_probe_similarity(heads, probes, hp.t_ref, hp.t_peer)
        else:
            sim = ref_proto_similarity(bodies, heads, x[idx], y[idx], n[idx], data.num_classes)
        rel, gap, margin = ref_mds(sim)
        assert margin.min() > 1e-4, f"MDS cut too close to a tie for a float32 comparison: {margin}"

        was_ccp = self.is_ccp
        m_t = gap.mean()
        self.round += 1
        if was_ccp:
            for a in range(len(idx)):
                for b in range(len(idx)):
                    self.dep[idx[a], idx[b]] += rel[a, b]
            self.m_max = max(self.m_max, m_t)
            if m_t < hp.delta * self.m_max:
                self.is_ccp, self.end_round = False, self.round
            w = ref_row_normalize(rel.astype(float))
        else:
            w = ref_row_normalize(self.dep[np.ix_(idx, idx)])
        if hp.official_index_bug:
            _, k_bug = jax.random.split(k_agg)
            w = ref_upload_order(w, np.asarray(jax.random.permutation(k_bug, len(idx))))
        mixed = ref_mix(w, heads, hp.official_inplace_mixing)
        for a, c in enumerate(idx):
            self.heads[c] = mixed[a]
        self.body = weighted_average(bodies, n[idx])
        sizes = (w > 0).sum(1)
        return {"idx": idx, "rel": rel, "w": w, "samples": float(n[idx].sum() * cfg.local.epochs),
                "mds_gap_mean": m_t, "ccp_active": float(was_ccp),
                "ccp_ended": float(was_ccp and not self.is_ccp),
                "relevant_set_size_mean": sizes.mean(), "relevant_set_size_min": sizes.min(),
                "relevant_set_size_max": sizes.max()}

    def check(self, state, metrics, info, what):
        _assert_layers_close({"body": state.body, "head": {}}, self.body, f"{what}: body")
        for c in range(self.c):
            _assert_layers_close({"body": {}, "head": _client_tree(state.clients.head, c)},
                                 self.heads[c], f"{what}: head of client {c}")
            if self.traces[c] is not None:  # momentum buffers, body and head
                trace = optax.tree_utils.tree_get(state.clients.opt, "trace")
                _assert_layers_close(_client_tree(trace, c), self.traces[c], f"{what}: trace {c}")
        rel = state.server["head"]
        np.testing.assert_array_equal(np.asarray(rel.dep), self.dep, err_msg=f"{what}: G")
        assert bool(rel.ccp.is_ccp) == self.is_ccp, what
        assert int(rel.ccp.end_round) == self.end_round, what
        assert int(rel.round) == self.round, what
        if self.m_max > -np.inf:
            assert float(rel.ccp.m_max) == pytest.approx(self.m_max, abs=1e-5), what
        for name in ("samples", "mds_gap_mean", "ccp_active", "ccp_ended", "relevant_set_size_mean",
                     "relevant_set_size_min", "relevant_set_size_max"):
            assert float(metrics[name]) == pytest.approx(info[name], abs=1e-5), f"{what}: {name}"


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _force_post_ccp(state, ref, dep, m_max, end_round):
    """Ends the CCP by hand in both the engine state and the reference, with a hand-set G."""
    dep = np.asarray(dep, np.float32)
    relevance = RelevanceState(jnp.asarray(dep), CCPState(jnp.array(False), jnp.float32(m_max),
                                                          jnp.int32(end_round)),
                               state.server["head"].round)
    ref.dep, ref.is_ccp, ref.m_max, ref.end_round = dep.astype(np.float64), False, m_max, end_round
    return state._replace(server={**state.server, "head": relevance})


# ------------------------------------------------------------------ a full FedReMa round

FEDREMA_CASES = {
    # probe similarity, 4 of 5 clients per round, SGD momentum carried per client; two CCP rounds,
    # then a hand-set G with the CCP ended (history weights; client 1's G row is zero over the
    # cohort -> keeps its own head)
    "probe-partial-momentum": dict(over=dict(cohort=4, local__optimizer="momentum",
                                             local__momentum=0.5, local__lr=0.2),
                                   force_g=[[3, 1, 0, 2, 0],
                                            [0, 0, 0, 0, 0],
                                            [1, 1, 1, 1, 1],
                                            [0, 2, 0, 5, 0],
                                            [4, 0, 1, 0, 1]]),
    # class-prototype similarity, every client, both official-code bugs replicated (upload-order
    # column permutation and in-place mixing); delta 1 so the CCP may end on its own
    "proto-full-official-bugs": dict(over=dict(fedrema__sim_type="proto",
                                               fedrema__official_index_bug=True,
                                               fedrema__official_inplace_mixing=True,
                                               fedrema__delta=1.0, local__epochs=2),
                                     force_g=[[2, 0, 1, 1, 0],
                                              [1, 3, 0, 0, 2],
                                              [0, 0, 0, 0, 0],
                                              [1, 1, 1, 1, 1],
                                              [0, 2, 0, 1, 6]]),
}


@pytest.mark.parametrize("case", list(FEDREMA_CASES))
def test_fedrema_rounds_match_python_reference(case):
    """Three FedReMa rounds against `RefFedReMa`: two from init (CCP: MDS weights, G counts,
    the end rule), then one after ending the CCP by hand with a hand-set G (history weights).
    Checks the global body, every client's head (non-participants keep theirs), momentum
    buffers, G, the CCP state and the round metrics after each round."""
    spec = FEDREMA_CASES[case]
    data = make_data(train_sizes=(5, 9, 3, 7, 6), test_sizes=(2,) * 5, seed=1)
    cfg = tiny_config(algorithm="fedrema", model__hidden=(8, 5), model__head_layers=2,
                      **spec["over"])
    prep = runner.prepare(cfg, data)
    alg = prep.algorithm
    data = jax.device_put(data)
    state = alg.init(jax.random.PRNGKey(0), data)
    ref = RefFedReMa(state, data, cfg, prep.schedule, nb=1)
    round_fn = jax.jit(alg.round)
    cohorts, ccp_seen = [], []
    for r in range(3):
        if r == 2:
            state = _force_post_ccp(state, ref, spec["force_g"], m_max=0.3, end_round=2)
        key = jax.random.PRNGKey(40 + r)
        state, metrics = round_fn(state, data, _rin(key))
        info = ref.round_(key)
        ref.check(state, metrics, info, f"{case} round {r + 1}")
        cohorts.append(set(info["idx"].tolist()))
        ccp_seen.append(info["ccp_active"])
    assert ccp_seen[0] == 1.0 and ccp_seen[2] == 0.0
    if cfg.cohort:
        assert len(set.union(*cohorts)) > len(cohorts[0]), "every round drew the same cohort"


def test_fedrema_reference_detects_a_wrong_mixing():
    """The reference is sharp: the same round mixed from the pre-mix copy instead of in place
    (or without the upload-order permutation) gives different heads, so the bug variants above
    are really exercised."""
    data = jax.device_put(make_data(train_sizes=(5, 9, 3, 7, 6), test_sizes=(2,) * 5, seed=1))
    over = FEDREMA_CASES["proto-full-official-bugs"]["over"]
    cfg = tiny_config(algorithm="fedrema", model__hidden=(8, 5), model__head_layers=2, **over)
    prep = runner.prepare(cfg, data)
    state = prep.algorithm.init(jax.random.PRNGKey(0), data)
    key = jax.random.PRNGKey(40)
    heads = {}
    for flags in [(True, True), (False, True), (True, False)]:
        c = tiny_config(algorithm="fedrema", model__hidden=(8, 5), model__head_layers=2, **over)
        c.fedrema.official_index_bug, c.fedrema.official_inplace_mixing = flags
        ref = RefFedReMa(state, data, c, prep.schedule, nb=1)
        ref.round_(key)
        heads[flags] = np.concatenate([h[-1][1] for h in ref.heads])
    assert not np.allclose(heads[(True, True)], heads[(False, True)], atol=1e-4)
    assert not np.allclose(heads[(True, True)], heads[(True, False)], atol=1e-4)


# ------------------------------------------------------------------ FedRep's two phases

def _freeze(nb, part):
    """A gradient correction zeroing the frozen part (``body``: the first nb layers)."""
    def correction(layers, grads):
        return [[np.zeros_like(gw), np.zeros_like(gb)] if (l < nb) == (part == "body") else [gw, gb]
                for l, (gw, gb) in enumerate(grads)]
    return correction


def test_fedrep_two_phases_match_python_reference():
    """FedRep (Collins et al. 2021), C=5, K=3, two rounds, momentum: each client runs
    ``fedrep.head_epochs`` epochs on its head with the body frozen (batches from k_head), then
    ``local.epochs`` on the body with the head frozen (batches from k_body), where
    ``k_head, k_body = split(client key)``; each phase keeps its own momentum buffer across rounds.
    The body becomes the sample-weighted mean of the trained bodies; heads stay local."""
    data = make_data(train_sizes=(5, 9, 3, 7, 6), test_sizes=(2,) * 5, seed=2)
    lr, mom, head_epochs = 0.2, 0.5, 2
    cfg = tiny_config(algorithm="fedrep", cohort=3, fedrep__head_epochs=head_epochs,
                      local__epochs=1, local__optimizer="momentum", local__momentum=mom,
                      local__lr=lr, model__hidden=(8,))
    prep = runner.prepare(cfg, data)
    alg = prep.algorithm
    data = jax.device_put(data)
    state = alg.init(jax.random.PRNGKey(3), data)
    x, y, n = (np.asarray(data.train["x"]), np.asarray(data.train["y"]), np.asarray(data.n_train))
    max_n = data.max_train
    head_schedule = Schedule.make(max_n, cfg.local.batch_size, head_epochs, 0)
    assert head_schedule.num_steps != prep.schedule.num_steps  # the phases are distinguishable

    body = layers_of({"body": _np(state.body), "head": {}})
    nb = len(body)
    heads = [layers_of({"body": {}, "head": _client_tree(state.clients.head, c)}) for c in range(5)]
    traces = {"head": [None] * 5, "body": [None] * 5}
    round_fn = jax.jit(alg.round)
    for r in range(2):
        key = jax.random.PRNGKey(60 + r)
        state, metrics = round_fn(state, data, _rin(key))
        k_sel, _ = jax.random.split(key)
        idx, keys = ref_cohort(k_sel, 5, 3)
        bodies = []
        for a, c in enumerate(idx):
            k_head, k_body = jax.random.split(keys[a])
            layers, traces["head"][c], _ = ref_local_sgd(
                body + heads[c], x[c], y[c], n[c], k_head, head_schedule, max_n, lr, momentum=mom,
                trace=traces["head"][c], correction=_freeze(nb, "body"))
            layers, traces["body"][c], _ = ref_local_sgd(
                layers, x[c], y[c], n[c], k_body, prep.schedule, max_n, lr, momentum=mom,
                trace=traces["body"][c], correction=_freeze(nb, "head"))
            bodies.append(layers[:nb])
            heads[c] = layers[nb:]
        body = weighted_average(bodies, n[idx])
        what = f"fedrep round {r + 1}"
        _assert_layers_close({"body": state.body, "head": {}}, body, f"{what}: body")
        for c in range(5):
            _assert_layers_close({"body": {}, "head": _client_tree(state.clients.head, c)},
                                 heads[c], f"{what}: head {c}")
        # stats are the body phase's: local.epochs passes over each client's rows
        assert float(metrics["samples"]) == float(n[idx].sum() * cfg.local.epochs)

    # the frozen part really is frozen: training only the head from the same start and keys
    # leaves the body where it was (sanity check of the reference's correction)
    same, _, _ = ref_local_sgd(body + heads[0], x[0], y[0], n[0], jax.random.PRNGKey(0),
                               head_schedule, max_n, lr, correction=_freeze(nb, "body"))
    np.testing.assert_array_equal(same[0][0], body[0][0])


# ------------------------------------------------------------------ ablations end to end

ABLATION_DATA = dict(train_sizes=(8, 6, 9, 7, 5, 8), test_sizes=(3,) * 6, seed=3)


def _ablation_run(tmp_path_factory, name, rounds=6):
    """``runner.run`` of one FedReMa variant on a 6-client hand-built dataset, everyone every round;
    delta 1 (the CCP ends as soon as the mean MDS gap drops: round 4 with this seed).
    Returns (summary, metrics records of rounds 1.., final heads [C, P] from the checkpoint)."""
    out = tmp_path_factory.mktemp(name) / "run"
    cfg = tiny_config(algorithm=name, rounds=rounds, eval_every=1, checkpoint=True, out=str(out),
                      seed=2, fedrema__delta=1.0, model__hidden=(8,), local__lr=0.05)
    summary = runner.run(cfg, progress=False, data=make_data(**ABLATION_DATA))
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    state = dict(np.load(out / "checkpoint.npz"))
    heads = np.concatenate([v.reshape(v.shape[0], -1) for k, v in sorted(state.items())
                            if k.startswith(".clients.head")], axis=1)  # [C, all head params]
    return summary, records[1:], heads


@pytest.fixture(scope="module")
def fedrema_run(tmp_path_factory):
    return _ablation_run(tmp_path_factory, "fedrema")


def test_fedrema_run_ends_its_ccp(fedrema_run):
    """The shared configuration (delta 1) ends the CCP within the run, so the ablations below
    differ from FedReMa where they should: `ccp_active` 1 up to the end round, 0 afterwards."""
    summary, records, _ = fedrema_run
    end = int(summary["final"]["ccp_end_round"])
    assert 1 < end < len(records), end
    assert [r["ccp_active"] for r in records] == [1.0] * end + [0.0] * (len(records) - end)
    assert summary["config"]["resolved"]["fedrema_ablation"] == "none"
    g = np.asarray(summary["final"]["dependency_matrix"])
    np.testing.assert_array_equal(np.diag(g), end)  # full participation: self once per CCP round


def test_ablation_no_ccp_end_to_end(tmp_path_factory):
    """fedrema_no_ccp: the end rule still fires (ccp_end_round recorded; `ccp_active` 1 up to the
    end round, 0 afterwards, as FedReMa), yet MDS weights are used every round (`mds_weights` 1 in
    every round, also after the end round)."""
    summary, records, _ = _ablation_run(tmp_path_factory, "fedrema_no_ccp")
    assert summary["config"]["resolved"]["fedrema_ablation"] == "no_ccp"
    end = int(summary["final"]["ccp_end_round"])
    assert 1 < end < len(records), end  # so rounds after the end exist
    assert all(r["mds_weights"] == 1.0 and r["mds_weights_mean"] == 1.0 for r in records)
    assert [r["ccp_active"] for r in records] == [1.0] * end + [0.0] * (len(records) - end)
    for r in records:  # MDS sets every round: sizes in [2, n - 1]
        assert 2 <= r["relevant_set_size_min"] <= r["relevant_set_size_max"] <= 5


def test_ablation_no_history_end_to_end(tmp_path_factory, fedrema_run):
    """fedrema_no_history: after the CCP each client's head is the uniform mean over every peer it
    ever chose (G > 0). Final round (post-CCP, everyone participates): the weight supports are
    the rows of G > 0, and clients with the same support end with identical heads; FedReMa's
    frequency weights on the same run do not make them identical."""
    summary, records, heads = _ablation_run(tmp_path_factory, "fedrema_no_history")
    assert summary["config"]["resolved"]["fedrema_ablation"] == "no_history"
    end = int(summary["final"]["ccp_end_round"])
    assert 1 < end < len(records), end
    g = np.asarray(summary["final"]["dependency_matrix"])
    np.testing.assert_array_equal(np.diag(g), end)
    last = records[-1]
    assert last["ccp_active"] == 0.0
    support = g > 0
    sizes = support.sum(1)
    assert last["relevant_set_size_min"] == sizes.min()
    assert last["relevant_set_size_max"] == sizes.max()
    assert last["relevant_set_size_mean"] == pytest.approx(sizes.mean())
    pairs = [(i, j) for i in range(len(g)) for j in range(i + 1, len(g))
             if np.array_equal(support[i], support[j])]
    assert pairs, f"no two clients share a support in G:\n{g}"
    for i, j in pairs:
        np.testing.assert_allclose(heads[i], heads[j], rtol=1e-5, atol=1e-6,
                                   err_msg=f"clients {i}, {j}: same support, different heads")
    # FedReMa itself (same data, keys and CCP rounds) uses frequencies: its G rows on those pairs
    # are not all proportional, and then its heads differ
    g_ref, _, heads_ref = fedrema_run
    g_ref = np.asarray(g_ref["final"]["dependency_matrix"])
    np.testing.assert_array_equal(g_ref, g)  # identical up to the end of the CCP
    differ = [(i, j) for i, j in pairs
              if not np.allclose(g[i] / g[i].sum(), g[j] / g[j].sum())]
    assert differ, "every support-sharing pair has proportional G rows: the test cannot tell"
    for i, j in differ:
        assert not np.allclose(heads_ref[i], heads_ref[j], atol=1e-4), (i, j)


def test_ablation_random_peers_end_to_end(tmp_path_factory, fedrema_run):
    """fedrema_random_peers: each relevant set is self + random peers, as many as MDS chose. Round 1
    trains the same models as FedReMa (same init, keys and data), so MDS's set sizes are FedReMa's
    round-1 sizes: the random sets have exactly those sizes, but other members (G differs)."""
    summary, records, _ = _ablation_run(tmp_path_factory, "fedrema_random_peers")
    assert summary["config"]["resolved"]["fedrema_ablation"] == "random_peers"
    base_summary, base_records, _ = fedrema_run
    for name in ("relevant_set_size_mean", "relevant_set_size_min", "relevant_set_size_max"):
        assert records[0][name] == base_records[0][name], name
    assert records[0]["train_loss"] == pytest.approx(base_records[0]["train_loss"], rel=1e-6)
    for r in records:
        if r["ccp_active"] == 1.0:
            assert 2 <= r["relevant_set_size_min"] <= r["relevant_set_size_max"] <= 5
    g = np.asarray(summary["final"]["dependency_matrix"])
    end = int(summary["final"]["ccp_end_round"])
    rounds_in_ccp = end if end > 0 else len(records)
    np.testing.assert_array_equal(np.diag(g), rounds_in_ccp)  # self always in its set
    assert not np.array_equal(g, np.asarray(base_summary["final"]["dependency_matrix"]))
