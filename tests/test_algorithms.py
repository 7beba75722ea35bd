"""Each algorithm's round against a hand-written Python loop of its paper's update, on a tiny
hand-built FederatedData with unequal clients (numpy float64 MLP with hand-derived gradients)."""
from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest

from conftest import (client, layers_of, make_data, params_of, ref_cohort, ref_local_sgd,
                      tiny_config, tree_add, tree_scale, tree_zeros, weighted_average)
from fedjax_sim import runner
from fedjax_sim.core.driver import RoundInput
from fedjax_sim.core.local import Schedule


def _build(cfg, data):
    prep = runner.prepare(cfg, data)
    return prep, prep.algorithm


# Algorithms are initialized eagerly: Flax init's per-op programs are cached across tests, where
# a jit of each new init closure would compile again every time.


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _rin(key, index=0):
    """One round's RoundInput."""
    return RoundInput(key, jax.numpy.int32(index), jax.numpy.array(True))


def _xy(data, c):
    return data.train["x"][c], data.train["y"][c]


@pytest.mark.parametrize("weighting,formulation", [("samples", "materialized"),
                                                   ("uniform", "factored")])
def test_fedavg_round_is_weighted_mean_of_local_sgd(weighting, formulation):
    """One FedAvg round, full participation: every client runs local SGD from the global model
    (Python loop), and the new global model is the sample-weighted (or plain) mean of them."""
    data = jax.device_put(make_data())
    cfg = tiny_config(algorithm="fedavg", local__epochs=2, local__lr=0.2,
                      server__weighting=weighting, local__formulation=formulation)
    prep, alg = _build(cfg, data)
    assert alg.info["formulation"] == formulation
    state = alg.init(jax.random.PRNGKey(0), data)
    start = _np(alg.global_params(state))
    key = jax.random.PRNGKey(7)
    new_state, metrics = jax.jit(alg.round)(state, data, _rin(key))

    ids, keys = ref_cohort(key, data.num_clients, data.num_clients)
    np.testing.assert_array_equal(ids, np.arange(data.num_clients))
    models = [ref_local_sgd(layers_of(start), *_xy(data, c), data.n_train[c],
                            keys[c], prep.schedule, data.max_train, cfg.local.lr)[0]
              for c in range(data.num_clients)]
    n = np.asarray(data.n_train)
    expected = weighted_average(models, n if weighting == "samples" else np.ones_like(n))
    chex.assert_trees_all_close(alg.global_params(new_state), params_of(start, expected),
                                rtol=1e-5, atol=1e-5)
    assert float(metrics["samples"]) == 2 * n.sum()


@pytest.mark.parametrize("formulation", ["materialized", "factored"])
def test_fedprox_round_matches_proximal_sgd_loop(formulation):
    """FedProx: local steps on loss + mu/2 ||w - w_global||^2, i.e. w <- w - lr (g + mu (w - w0)),
    looped by hand, then the sample-weighted mean; both local-step formulations agree with it."""
    data = jax.device_put(make_data())
    mu = 0.7
    cfg = tiny_config(algorithm="fedprox", local__epochs=2, local__lr=0.3, fedprox__mu=mu,
                      local__formulation=formulation)
    prep, alg = _build(cfg, data)
    assert alg.info["formulation"] == formulation
    state = alg.init(jax.random.PRNGKey(1), data)
    start = _np(alg.global_params(state))
    key = jax.random.PRNGKey(8)
    new_state, _ = jax.jit(alg.round)(state, data, _rin(key))

    w0 = layers_of(start)
    prox = lambda layers, grads: tree_add(grads, tree_add(layers, w0, -1.0), mu)
    _, keys = ref_cohort(key, data.num_clients, data.num_clients)
    models = [ref_local_sgd(w0, *_xy(data, c), data.n_train[c], keys[c],
                            prep.schedule, data.max_train, cfg.local.lr, correction=prox)[0]
              for c in range(data.num_clients)]
    expected = weighted_average(models, np.asarray(data.n_train))
    chex.assert_trees_all_close(alg.global_params(new_state), params_of(start, expected),
                                rtol=1e-5, atol=1e-5)
    # the proximal term matters here: plain FedAvg lands elsewhere
    plain = weighted_average([ref_local_sgd(w0, *_xy(data, c), data.n_train[c],
                                            keys[c], prep.schedule, data.max_train,
                                            cfg.local.lr)[0] for c in range(data.num_clients)],
                             np.asarray(data.n_train))
    assert max(np.abs(a - b).max() for la, lb in zip(plain, expected) for a, b in zip(la, lb)) > 1e-3


def test_scaffold_two_rounds_partial_participation_matches_option_ii():
    """SCAFFOLD, C=5, K=3, two rounds, by hand (Karimireddy et al. 2020, Alg. 1, option II):
    local y <- y - lr (g + c - c_i); c_i+ = c_i - c + (x - y_i) / (s_i lr) with s_i the client's
    steps; x <- x + lr_g * mean_k (y_k - x); c <- c + (1/C) sum_k (c_k+ - c_k). Clients outside the
    cohort keep their c_i."""
    data = jax.device_put(make_data(train_sizes=(5, 9, 3, 7, 4), test_sizes=(2,) * 5))
    lr, server_lr, num_clients, cohort = 0.2, 0.8, 5, 3
    cfg = tiny_config(algorithm="scaffold", cohort=cohort, local__lr=lr, local__epochs=2,
                      server__lr=server_lr, server__weighting="uniform")
    prep, alg = _build(cfg, data)
    state = alg.init(jax.random.PRNGKey(2), data)
    round_fn = jax.jit(alg.round)

    x = layers_of(_np(alg.global_params(state)))
    template = _np(alg.global_params(state))
    c = tree_zeros(x)
    c_i = [tree_zeros(x) for _ in range(num_clients)]
    cohorts = []
    for r in range(2):
        key = jax.random.PRNGKey(100 + r)
        state, _ = round_fn(state, data, _rin(key, r))
        ids, keys = ref_cohort(key, num_clients, cohort)
        cohorts.append(set(ids.tolist()))
        deltas, dcs = [], []
        for j, cid in enumerate(ids):
            correction = lambda layers, grads, cid=cid: tree_add(tree_add(grads, c), c_i[cid], -1.0)
            y, _, steps = ref_local_sgd(x, *_xy(data, cid), data.n_train[cid],
                                        keys[j], prep.schedule, data.max_train, lr,
                                        correction=correction)
            c_plus = tree_add(tree_add(c_i[cid], c, -1.0), tree_add(x, y, -1.0), 1.0 / (steps * lr))
            deltas.append(tree_add(y, x, -1.0))
            dcs.append(tree_add(c_plus, c_i[cid], -1.0))
            c_i[cid] = c_plus
        x = tree_add(x, weighted_average(deltas, np.ones(cohort)), server_lr)
        total_dc = dcs[0]
        for d in dcs[1:]:
            total_dc = tree_add(total_dc, d)
        c = tree_add(c, tree_scale(total_dc, 1.0 / num_clients))

    assert cohorts[0] != cohorts[1] and cohorts[0] & cohorts[1]  # c_i reused and left alone
    tol = dict(rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(alg.global_params(state), params_of(template, x), **tol)
    chex.assert_trees_all_close(state.control, params_of(template, c), **tol)
    for cid in range(num_clients):
        chex.assert_trees_all_close(client(state.client_control, cid), params_of(template, c_i[cid]), **tol)


def test_local_trains_only_the_cohort_with_persistent_momentum():
    """Local, C=5, K=3, momentum SGD, two rounds: cohort clients equal independent per-client
    training that keeps its momentum trace across rounds; everyone else keeps their params."""
    data = jax.device_put(make_data(train_sizes=(5, 9, 3, 7, 4), test_sizes=(2,) * 5))
    lr, momentum, num_clients, cohort = 0.1, 0.9, 5, 3
    cfg = tiny_config(algorithm="local", cohort=cohort, local__optimizer="momentum", local__lr=lr,
                      local__momentum=momentum, local__epochs=1)
    prep, alg = _build(cfg, data)
    assert alg.global_params is None
    state = alg.init(jax.random.PRNGKey(3), data)
    client_params = lambda s: _np(alg.client_params(s, data, jax.random.PRNGKey(0)))
    before = client_params(state)
    template = client(before, 0)
    models = [layers_of(client(before, c)) for c in range(num_clients)]
    traces = [None] * num_clients
    round_fn = jax.jit(alg.round)
    for r in range(2):
        key = jax.random.PRNGKey(200 + r)
        state, _ = round_fn(state, data, _rin(key, r))
        after = client_params(state)
        ids, keys = ref_cohort(key, num_clients, cohort)
        for j, cid in enumerate(ids):
            models[cid], traces[cid], _ = ref_local_sgd(
                models[cid], *_xy(data, cid), data.n_train[cid], keys[j],
                prep.schedule, data.max_train, lr, momentum, traces[cid])
        for cid in range(num_clients):
            if cid not in ids:
                chex.assert_trees_all_equal(client(after, cid), client(before, cid))
            chex.assert_trees_all_close(client(after, cid), params_of(template, models[cid]),
                                        rtol=1e-5, atol=1e-5)
        before = after


def test_fedavg_ft_client_params_are_finetuned_global_model():
    """FedAvg+FT: each client's model is the global model fine-tuned on the client's own data
    (finetune_epochs of local momentum SGD from a fresh optimizer state), per-client keys."""
    data = jax.device_put(make_data())
    lr, momentum = 0.1, 0.5
    cfg = tiny_config(algorithm="fedavg_ft", local__optimizer="momentum", local__lr=lr,
                      local__momentum=momentum, fedavg_ft__finetune_epochs=2, local__batch_size=4)
    prep, alg = _build(cfg, data)
    state = alg.init(jax.random.PRNGKey(4), data)
    key = jax.random.PRNGKey(9)
    tuned = _np(jax.jit(alg.client_params)(state, data, key))
    start = _np(alg.global_params(state))
    keys = jax.random.split(key, data.num_clients)
    schedule = Schedule.make(data.max_train, 4, 2, 0)
    for c in range(data.num_clients):
        ref, _, _ = ref_local_sgd(layers_of(start), *_xy(data, c),
                                  data.n_train[c], keys[c], schedule, data.max_train, lr, momentum)
        chex.assert_trees_all_close(client(tuned, c), params_of(start, ref), rtol=1e-5, atol=1e-5)


def _run(tmp_path, name, seed, data, prep=None):
    cfg = tiny_config(algorithm="fedavg", cohort=2, rounds=2, eval_every=1, seed=seed,
                      out=str(tmp_path / name))
    prep = prep._replace(config=cfg) if prep else runner.prepare(cfg, data)
    runner.run(cfg, progress=False, prep=prep)
    return json.loads((tmp_path / name / "summary.json").read_text())["final"], prep


def test_same_seed_same_summary_different_seed_different(tmp_path):
    """runner.run twice with one seed writes identical final metrics; another seed (init,
    cohorts and batches) gives different ones. (The data is given, so prepare is shared.)"""
    data = make_data(train_sizes=(6, 9, 4, 8), test_sizes=(5, 6, 4, 5))
    first, prep = _run(tmp_path, "a", 0, data)
    second, _ = _run(tmp_path, "b", 0, data, prep)
    other, _ = _run(tmp_path, "c", 1, data, prep)
    assert first == second
    assert first != other
