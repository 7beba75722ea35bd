"""FedHCA2 and hetero-client multi-task FL: HC-FMTL-lite data, the multi-task model, the personalized
aggregators against plain-Python loops, hyper-weight updates, Delta_m, whole runs and bad input
(spec specs/fedhca2.md)."""
from __future__ import annotations

import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_sim import config as config_lib
from fedjax_sim import runner
from fedjax_sim.aggregators import partition
from fedjax_sim.aggregators.multitask import (apply_deltas, attention_outputs, clip01, conflict_averse,
                                              cross_attention, hyper_optimizer, model_mean, slot_mean)
from fedjax_sim.cli import main
from fedjax_sim.data import build_federated
from fedjax_sim.data.multitask import multitask_spec
from fedjax_sim.tasks import delta_m
from fedjax_sim.types import MultiTaskSpec


def hc_config(algorithm="fedhca2", scenario="s1", rounds=2, **local):
    cfg = config_lib.Config()
    cfg.algorithm = algorithm
    cfg.data.dataset, cfg.data.scenario = "hcfmtl_lite", scenario
    cfg.rounds, cfg.eval_every = rounds, 1
    cfg.local.optimizer, cfg.local.lr, cfg.local.batch_size = "adam", 1e-3, 32
    cfg.local.epochs_per_domain = (1, 2)
    cfg.model.encoder, cfg.model.decoder = (16, 16), (8, 8)
    for k, v in local.items():
        setattr(cfg.local, k, v)
    return cfg


# ------------------------------------------------------------------------------------------ data


@pytest.mark.parametrize("scenario,clients,decoders,groups", [
    ("s1", 5, 7, [0, 1, 2, 3, 4]), ("s2", 10, 14, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])])
def test_hcfmtl_lite_layout(scenario, clients, decoders, groups):
    cfg = hc_config(scenario=scenario)
    data = build_federated(cfg.data, 3)
    spec = data.tasks
    assert data.num_clients == clients == spec.num_clients and data.target_kind == "multi"
    assert len(spec.slots()) == decoders and spec.group_ids.tolist() == groups
    chex.assert_shape(data.train["x"], (clients, data.max_train, 32))
    per_a, per_b = (150, 300) if scenario == "s1" else (75, 150)
    np.testing.assert_array_equal(data.n_train, [per_a] * (clients - clients // 5) + [per_b] * (clients // 5))
    np.testing.assert_array_equal(data.n_test, 2000)
    for t, name in enumerate(spec.task_names):  # y_mask marks exactly the client's own tasks
        held = data.train["y_mask"][name].any(1)
        np.testing.assert_array_equal(held, spec.task_mask[:, t])
        assert data.train["y_mask"][name].sum(1)[held].tolist() == data.n_train[held].tolist()
    assert data.train["y"]["T3"].dtype == np.int32 and data.train["y"]["T1"].dtype == np.float32
    # single-task A clients first, then the multi-task B clients with {T1, T3, T5}
    assert spec.task_mask[-1].tolist() == [True, False, True, False, True]
    # the official decoder order: single-task clients, then multi-task tasks sorted by name
    assert spec.slots()[-3:] == [(clients - 1, 0), (clients - 1, 2), (clients - 1, 4)]


def test_hcfmtl_lite_is_deterministic_in_the_data_seed_and_varies_with_it():
    cfg = hc_config()
    a, b, c = (build_federated(cfg.data, s) for s in (5, 5, 6))
    chex.assert_trees_all_equal(a.train, b.train)
    assert not np.allclose(a.train["x"], c.train["x"])
    cfg.data.seed = 9  # data.seed fixes the instance whatever the run seed
    chex.assert_trees_all_equal(build_federated(cfg.data, 1).test, build_federated(cfg.data, 2).test)


def test_hcfmtl_lite_validation_rows_come_from_training_rows_of_the_domain():
    cfg = hc_config(scenario="s2")
    full = build_federated(cfg.data, 0)
    cfg.data.validation_fraction = 0.2
    val = build_federated(cfg.data, 0)
    np.testing.assert_array_equal(val.n_train, np.round(full.n_train * 0.8))
    # each domain's validation set = the rows carved from its clients; none is trained on
    domains = np.asarray(full.tasks.domains)
    for d in (0, 1):
        pool = np.concatenate([full.train["x"][c, : full.n_train[c]] for c in np.flatnonzero(domains == d)])
        kept = np.concatenate([val.train["x"][c, : val.n_train[c]] for c in np.flatnonzero(domains == d)])
        held = val.test["x"][np.flatnonzero(domains == d)[0], : val.n_test[np.flatnonzero(domains == d)[0]]]
        as_set = lambda a: {r.tobytes() for r in a}  # noqa: E731
        assert as_set(held) | as_set(kept) == as_set(pool) and not as_set(held) & as_set(kept)


def test_regression_targets_are_standardized_and_classes_balanced_enough():
    data = build_federated(hc_config().data, 0)
    for t in ("T1", "T2", "T5"):
        y = data.train["y"][t][data.train["y_mask"][t]]
        assert abs(y.mean()) < 0.5 and 0.6 < y.std() < 1.5
    t3 = data.test["y"]["T3"][0]
    assert 0.2 < t3.mean() < 0.8


# ------------------------------------------------------------------------------------- Delta_m


def test_delta_m_on_a_hand_made_table():
    # two clients; tasks: acc (higher better), mse (lower better); client 1 holds only mse
    method = jnp.array([[0.9, 0.5], [0.0, 0.2]])
    base = jnp.array([[0.8, 1.0], [0.0, 0.4]])
    mask = jnp.array([[True, True], [False, True]])
    lower = jnp.array([False, True])
    # pairs: +(0.9-0.8)/0.8 = 12.5%, -(0.5-1)/1 = 50%, -(0.2-0.4)/0.4 = 50% -> mean 37.5%
    np.testing.assert_allclose(delta_m(method, base, mask, lower), 37.5, rtol=1e-6)
    np.testing.assert_allclose(delta_m(base, base, mask, lower), 0.0)
    assert float(delta_m(method, base, jnp.zeros_like(mask), lower)) == 0.0


# --------------------------------------------------------------------------------- aggregators


def _tree(rng, c, t, shapes):
    return {k: jnp.asarray(rng.normal(size=(c, t, *s)), jnp.float32) for k, s in shapes.items()}


def test_slot_means_against_python_loops():
    rng = np.random.default_rng(0)
    mask = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 0, 0]], bool)
    last, delta = _tree(rng, 4, 3, {"w": (2, 3)}), _tree(rng, 4, 3, {"w": (2, 3)})
    same, _, _ = slot_mean(mask, True).update(delta, jnp.ones(4), optax.EmptyState(), last)
    every, _, _ = slot_mean(mask, False).update(delta, jnp.ones(4), optax.EmptyState(), last)
    trained = np.asarray(last["w"] + delta["w"])
    for c in range(4):
        for t in range(3):
            if not mask[c, t]:  # slots a client does not hold never change
                np.testing.assert_array_equal(same["w"][c, t], last["w"][c, t])
                np.testing.assert_array_equal(every["w"][c, t], last["w"][c, t])
                continue
            peers = [trained[j, t] for j in range(4) if mask[j, t]]
            np.testing.assert_allclose(same["w"][c, t], np.mean(peers, 0), rtol=1e-5, atol=1e-6)
            everyone = [trained[j, s] for j in range(4) for s in range(3) if mask[j, s]]
            np.testing.assert_allclose(every["w"][c, t], np.mean(everyone, 0), rtol=1e-5, atol=1e-6)


def test_model_mean_and_apply_deltas():
    rng = np.random.default_rng(1)
    last = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
    delta = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
    mean, _, _ = model_mean().update(delta, jnp.array([1.0, 5.0, 1.0]), None, last)
    np.testing.assert_allclose(mean["w"], np.broadcast_to(np.mean(last["w"] + delta["w"], 0), (3, 4)), rtol=1e-6)
    own, _, _ = apply_deltas().update(delta, jnp.ones(3), None, last)
    np.testing.assert_allclose(own["w"], last["w"] + delta["w"])


def test_attention_rows_sum_to_one_over_real_decoders_and_match_a_loop():
    rng = np.random.default_rng(2)
    delta = jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)
    mask = jnp.array([True, True, False, True, True, False])
    out, attn = attention_outputs(delta, mask)
    np.testing.assert_allclose(jnp.sum(attn, -1), mask.astype(jnp.float32), rtol=1e-6)
    assert float(jnp.abs(attn[:, ~np.asarray(mask)]).max()) == 0.0
    real = np.flatnonzero(mask)
    d = np.asarray(delta, np.float64)
    for k in real:  # the official loop: softmax over all real decoders, itself included
        s = np.array([d[k] @ d[j] / np.sqrt(10) for j in real])
        a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        np.testing.assert_allclose(out[k], sum(a_j * d[j] for a_j, j in zip(a, real)), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out[2], 0.0)


def test_a_decoder_attends_most_to_itself_when_all_updates_differ():
    rng = np.random.default_rng(3)
    delta = jnp.asarray(30.0 * rng.normal(size=(5, 64)), jnp.float32)  # large, nearly orthogonal
    _, attn = attention_outputs(delta, jnp.ones(5, bool))
    np.testing.assert_array_equal(jnp.argmax(attn, -1), np.arange(5))
    # tiny updates: attention is nearly uniform (spec section 3's expected behaviour)
    _, flat = attention_outputs(1e-4 * delta, jnp.ones(5, bool))
    np.testing.assert_allclose(flat, 0.2, atol=1e-4)


def test_clip01_passes_gradient_on_the_closed_interval_only():
    g = jax.vmap(jax.grad(clip01))(jnp.array([-0.1, 0.0, 0.5, 1.0, 1.2]))
    np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(clip01(jnp.array([-1.0, 0.3, 2.0])), [0.0, 0.3, 1.0], rtol=1e-7)


def test_hyper_optimizer_is_torch_sgd_with_momentum_and_weight_decay():
    lr, mom, wd = 0.01, 0.9, 1e-4
    opt = hyper_optimizer(lr, mom, wd)
    x = jnp.array([0.1, 0.7])
    state = opt.init(x)
    xr, buf = np.array([0.1, 0.7], np.float64), None
    for g in ([1.0, -2.0], [0.5, 0.5], [-3.0, 1.0]):
        steps, state = opt.update(jnp.array(g), state, x)
        x = optax.apply_updates(x, steps)
        d = np.array(g) + wd * xr  # torch: d_p = g + wd x; buf = d_p (first), else m buf + d_p
        buf = d if buf is None else mom * buf + d
        xr = xr - lr * buf
    np.testing.assert_allclose(x, xr, rtol=1e-5)


def _enc_tree(rng, c, scale=1.0):
    return {"a": jnp.asarray(scale * rng.normal(size=(c, 3, 4)), jnp.float32),
            "b": jnp.asarray(scale * rng.normal(size=(c, 4)), jnp.float32)}


def _flat(tree):
    return np.concatenate([np.asarray(tree["a"]).reshape(tree["a"].shape[0], -1), np.asarray(tree["b"])], 1)


def test_conflict_averse_reduces_to_the_mean_when_updates_agree_and_c_is_zero():
    rng = np.random.default_rng(4)
    last = _enc_tree(rng, 4)
    one = _enc_tree(rng, 1, 0.01)
    delta = jax.tree.map(lambda a: jnp.broadcast_to(a, (4, *a.shape[1:])), one)
    agg = conflict_averse(np.arange(4), c=0.0, alpha_init=1.0)
    new, state, _ = agg.update(delta, jnp.ones(4), agg.init(last), last)
    np.testing.assert_allclose(state.u_prev, _flat(delta).mean(0), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(_flat(new), _flat(last) + 2 * _flat(delta), rtol=1e-5, atol=1e-6)


def test_conflict_averse_round_against_a_python_reference():
    """Two rounds: the hyper step on alpha (closed form of spec section 4) before the second
    aggregation, the group mean and the additive personalized step (sections 2b, 2c)."""
    from fedjax_sim.aggregators.conflict_averse import ca_direction
    rng = np.random.default_rng(5)
    groups = np.array([0, 0, 1, 2])
    agg = conflict_averse(groups, c=0.4, alpha_init=0.1, hyper=hyper_optimizer(0.5, 0.9, 1e-4))
    last = _enc_tree(rng, 4)
    state = agg.init(last)
    alpha, buf, u_prev = np.full(4, 0.1), None, None
    ref_last = _flat(last).astype(np.float64)
    for r in range(2):
        delta = _enc_tree(rng, 4, 0.1)
        new, state, metrics = agg.update(delta, jnp.ones(4), state, last)
        d = _flat(delta).astype(np.float64)
        if r > 0:
            g = -(d @ u_prev) * ((alpha >= 0) & (alpha <= 1)) + 1e-4 * alpha
            buf = g if buf is None else 0.9 * buf + g
            alpha = alpha - 0.5 * buf
        u = np.asarray(ca_direction(jnp.asarray(d, jnp.float32), 0.4)[0], np.float64)
        dbar = np.stack([d[groups == groups[i]].mean(0) for i in range(4)])
        ref_new = ref_last + dbar + np.clip(alpha, 0, 1)[:, None] * u[None]
        np.testing.assert_allclose(state.alpha, alpha, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(_flat(new), ref_new, rtol=1e-4, atol=1e-5)
        u_prev, last, ref_last = u, new, ref_new
    assert float(metrics["ca_gain"]) >= -1e-6  # U is no worse than g0 for the worst client


def test_cross_attention_round_against_a_python_reference():
    """Per tensor attention over all real slots, beta per (layer, slot) shared by a layer's
    weight and bias, the hyper step (spec section 4) in round 2; unheld slots unchanged."""
    rng = np.random.default_rng(6)
    mask = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], bool)
    shapes = {"l0": {"kernel": (4, 3), "bias": (3,)}, "l1": {"kernel": (3, 2), "bias": (2,)}}

    def tree(scale):
        return {l: {k: jnp.asarray(scale * rng.normal(size=(3, 3, *s)), jnp.float32) for k, s in v.items()}
                for l, v in shapes.items()}

    agg = cross_attention(mask, ("l0", "l1"), beta_init=0.3, hyper=hyper_optimizer(0.5, 0.0, 0.0))
    last = tree(1.0)
    state = agg.init(last)
    beta = np.full((2, 3, 3), 0.3)
    out_prev = None
    for r in range(2):
        delta = tree(0.5)
        new, state, _ = agg.update(delta, jnp.ones(3), state, last)
        if r > 0:
            grad = np.zeros_like(beta)
            for li, l in enumerate(("l0", "l1")):
                for k in ("kernel", "bias"):
                    grad[li] += -np.sum(out_prev[l][k] * np.asarray(delta[l][k]),
                                        axis=tuple(range(2, np.ndim(delta[l][k]))))
            beta = beta - 0.5 * grad * ((beta >= 0) & (beta <= 1))
        np.testing.assert_allclose(state.beta, beta, rtol=1e-5, atol=1e-6)
        out_prev = {}
        for li, l in enumerate(("l0", "l1")):
            out_prev[l] = {}
            for k in ("kernel", "bias"):
                d = np.asarray(delta[l][k], np.float64)
                flat = d.reshape(9, -1)
                slots = [(c, t) for c in range(3) for t in range(3) if mask[c, t]]
                out = np.zeros_like(d)
                for (c, t) in slots:
                    s = np.array([flat[c * 3 + t] @ flat[c2 * 3 + t2] / np.sqrt(flat.shape[1]) for c2, t2 in slots])
                    a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                    out[c, t] = sum(aj * d[c2, t2] for aj, (c2, t2) in zip(a, slots))
                out_prev[l][k] = out
                for c in range(3):
                    for t in range(3):
                        want = (np.asarray(last[l][k][c, t]) + d[c, t] + np.clip(beta[li, c, t], 0, 1) * out[c, t]
                                if mask[c, t] else np.asarray(last[l][k][c, t]))
                        np.testing.assert_allclose(new[l][k][c, t], want, rtol=1e-4, atol=1e-5)
        last = new


def test_partition_over_encoder_decoders_heads():
    rng = np.random.default_rng(7)
    mask = np.array([[1, 0], [1, 1]], bool)
    params = {"encoder": _enc_tree(rng, 2), "decoders": {"l0": {"kernel": jnp.asarray(rng.normal(size=(2, 2, 3, 3)), jnp.float32)}},
              "heads": {"kernel": jnp.asarray(rng.normal(size=(2, 2, 3, 1)), jnp.float32)}}
    delta = jax.tree.map(lambda a: 0.1 * jnp.ones_like(a), params)
    agg = partition({"encoder": conflict_averse(np.arange(2)), "decoders": cross_attention(mask, ("l0",)),
                     "heads": apply_deltas()}, {"encoder": "encoder", "decoders": "decoders", "heads": "heads"})
    new, state, metrics = agg.update(delta, jnp.ones(2), agg.init(params), params)
    chex.assert_trees_all_equal_shapes(new, params)
    np.testing.assert_allclose(new["heads"]["kernel"], params["heads"]["kernel"] + 0.1, rtol=1e-6)
    np.testing.assert_array_equal(new["decoders"]["l0"]["kernel"][0, 1], params["decoders"]["l0"]["kernel"][0, 1])
    assert {"ca_alpha_mean", "xattn_entropy"} <= set(metrics)


# ----------------------------------------------------------------------------------- whole runs


def _run(cfg, tmp_path, name):
    cfg.out = str(tmp_path / name)
    return runner.run(cfg, progress=False)


def test_unheld_slots_never_change_and_epochs_follow_the_domain(tmp_path):
    cfg = hc_config("fedhca2", rounds=2, optimizer="adamw", weight_decay=0.1)
    prep = runner.prepare(cfg)
    alg, data = prep.algorithm, jax.device_put(prep.data)
    from fedjax_sim.core.driver import RoundInput
    state = alg.init(jax.random.PRNGKey(0), data)
    before = state.main.params
    for r in range(2):
        state, metrics = jax.jit(alg.round)(state, data, RoundInput(jax.random.PRNGKey(r), jnp.array(r), jnp.array(True)))
    after = state.main.params
    mask = data.tasks.task_mask
    for part in ("decoders", "heads"):
        for b, a in zip(jax.tree.leaves(before[part]), jax.tree.leaves(after[part])):
            np.testing.assert_array_equal(np.asarray(a)[~mask], np.asarray(b)[~mask])
            assert not np.allclose(np.asarray(a)[mask], np.asarray(b)[mask])
    assert alg.info["client_epochs"] == [1, 1, 1, 1, 2]
    # steps: A clients 150 rows / 32 = 5 steps x 1 epoch, the B client 300 / 32 = 10 x 2 epochs
    assert metrics["samples"] == pytest.approx(4 * 150 + 2 * 300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two-round s1 runs of local, fedavg and fedhca2 (same seed), shared by the tests below."""
    root = tmp_path_factory.mktemp("hc")
    return {name: _run(hc_config(name), root, name) | {"dir": root / name} for name in ("local", "fedavg", "fedhca2")}


@pytest.mark.parametrize("algorithm", ["fedhca2", "fedavg", "local"])
def test_summary_reports_delta_m_against_local_trained_alongside(algorithm, runs):
    s, local = runs[algorithm], runs["local"]
    final = s["final"]
    assert {"delta_m", "delta_m_A", "delta_m_B", "personalized_loss", "A/T1/mse", "B/T5/mse", "A/T4/accuracy"} <= set(final)
    assert s["task"] == {"name": "multitask", "headline": "delta_m", "higher_is_better": True}
    scores = final["task_scores"]
    assert scores[0][1] is None and scores[0][0] is not None and scores[4][1] is None
    if algorithm == "local":
        assert final["delta_m"] == 0.0 and "reference" not in json.loads((s["dir"] / "config.json").read_text())["resolved"]
        return
    # the in-program reference equals a separate Local run with the same seed
    np.testing.assert_allclose(np.array(final["reference_task_scores"], float),
                               np.array(local["final"]["task_scores"], float), rtol=1e-5, equal_nan=True)
    spec = multitask_spec("s1")
    m = np.array([[v if v is not None else 0.0 for v in row] for row in scores])
    b = np.array([[v if v is not None else 0.0 for v in row] for row in local["final"]["task_scores"]])
    np.testing.assert_allclose(final["delta_m"], float(delta_m(m, b, spec.task_mask, spec.lower_is_better)),
                               rtol=1e-4, atol=1e-4)


def test_fedhca2_reports_its_hyper_weights_and_diagnostics(runs):
    s = runs["fedhca2"]
    assert len(s["final"]["alpha"]) == 5 and np.array(s["final"]["beta"]).shape == (2, 5, 5)
    assert np.array(s["final"]["attention"]).shape == (4, 25, 25)
    lines = [json.loads(x) for x in (s["dir"] / "metrics.jsonl").read_text().splitlines()]
    for key in ("alpha/0", "beta/1/4.T5", "xattn_entropy", "ca_weight_max", "ca_gain", "delta_m"):
        assert key in lines[-1], key


def test_every_hcfmtl_algorithm_traces():
    """Every multi-task algorithm's init, round and evaluation trace with consistent shapes (no
    compile: `jax.eval_shape`); the runs above execute three of them."""
    from fedjax_sim.algorithms import MULTITASK_ALGORITHMS
    from fedjax_sim.core.driver import RoundInput
    for name in sorted(MULTITASK_ALGORITHMS):
        prep = runner.prepare(hc_config(name, scenario="s2"))
        alg, data = prep.algorithm, prep.data
        state = jax.eval_shape(alg.init, jax.random.PRNGKey(0), data)
        rin = RoundInput(jax.random.PRNGKey(1), jnp.array(0), jnp.array(True))
        new, metrics = jax.eval_shape(alg.round, state, data, rin)
        chex.assert_trees_all_equal_shapes_and_dtypes(state, new)
        assert metrics["train_loss"].shape == (), name
        out = jax.eval_shape(runner.make_evaluator(prep), state, data, jax.random.PRNGKey(2))
        assert out["personalized_delta_m_per_client"].shape == (10,) and out["task_scores"].shape == (10, 5), name


def test_seeds_vmapped_equal_single_runs(tmp_path):
    cfg = hc_config("fedavg", scenario="s2", rounds=1)
    cfg.seeds = [0, 1]
    both = _run(cfg, tmp_path, "both")
    cfg.seeds = []
    cfg.seed = 1
    one = _run(cfg, tmp_path, "one")
    np.testing.assert_allclose(both["per_seed"][1]["final"]["delta_m"], one["final"]["delta_m"], rtol=1e-4, atol=1e-4)


def test_fedhca2_paper_preset_runs_its_setting(tmp_path):
    out = tmp_path / "p"
    code = main(["run", "--preset", "fedhca2-paper", "--algorithm", "fedhca2", "--rounds", "1", "--set", "model.encoder=8",
                 "--set", "model.decoder=4,4", "--no-progress", "--out", str(out)])
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["algorithm"] == "fedhca2" and cfg["local"]["epochs_per_domain"] == [1, 2]


# ------------------------------------------------------------------------------------ bad input

BASE = ["run", "--dataset", "hcfmtl_lite", "--rounds", "1", "--no-progress"]
BAD = [
    (["--set", "data.scenario=s3"], "data.scenario", "s3"),
    (["--clients", "7"], "data.num_clients", "7"),
    (["--algorithm", "scaffold"], "algorithm", "scaffold"),
    (["--set", "fedhca2.ca_c=-0.1", "--algorithm", "fedhca2"], "fedhca2.ca_c", "-0.1"),
    (["--set", "fedhca2.alpha_init=2"], "fedhca2.alpha_init", "2"),
    (["--set", "local.epochs_per_domain=1,2,3"], "local.epochs_per_domain", "1,2,3"),
    (["--set", "model.hidden=8"], "model.hidden", "8"),
    (["--set", "model.name=cnn"], "model.name", "cnn"),
    (["--cohort", "3", "--algorithm", "fedhca2"], "cohort", "3"),
    (["--set", "task.name=classification"], "task.name", "classification"),
    (["--partition", "iid"], "data.partition", "iid"),
]


@pytest.mark.parametrize("args,field,value", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_multitask_input_exits_2(args, field, value, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(BASE + args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and value in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("args,field", [
    (["--algorithm", "fedhca2"], "algorithm"),  # a multi-task method on single-task data
    (["--set", "data.scenario=s2"], "data.scenario"),
    (["--set", "local.epochs_per_domain=1,2"], "local.epochs_per_domain"),
])
def test_multitask_settings_on_single_task_data_exit_2(args, field, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--clients", "3", "--rounds", "1", "--no-progress", "--out", str(out)] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err
    assert not out.exists()


def test_a_spec_with_a_taskless_client_or_clientless_task_is_refused():
    from fedjax_sim.errors import ConfigError
    from fedjax_sim.data.multitask import check_spec
    ok = multitask_spec("s1")
    check_spec(ok)
    no_task = MultiTaskSpec(ok.task_names, ok.task_kinds, ok.task_outputs,
                            ok.task_sets[:-1] + ((False,) * 5,), ok.domains, ok.domain_names, ok.loss_weights)
    with pytest.raises(ConfigError, match="client 4 holds no task"):
        check_spec(no_task)
    sets = tuple(tuple(h and t != 4 for t, h in enumerate(row)) for row in ok.task_sets)
    with pytest.raises(ConfigError, match="T5"):
        check_spec(MultiTaskSpec(ok.task_names, ok.task_kinds, ok.task_outputs, sets, ok.domains,
                                 ok.domain_names, ok.loss_weights))


def test_sweep_over_lr_selects_on_validation_loss_in_one_program(tmp_path, capsys):
    out = tmp_path / "sw"
    code = main(["sweep", "--dataset", "hcfmtl_lite", "--algorithm", "fedhca2", "--grid", "local.lr=0.001,0.003",
                 "--seeds", "1", "--rounds", "1", "--select", "personalized_loss", "--set", "model.encoder=8",
                 "--set", "model.decoder=4", "--set", "local.optimizer=adam", "--no-progress", "--out", str(out)])
    assert code == 0
    sweep = json.loads((out / "sweep.json").read_text())["fedhca2"]
    assert sweep["metric"] == "personalized_loss" and not sweep["higher_is_better"]
    assert sweep["best_config"]["data"]["validation_fraction"] == 0.0
    point = json.loads((Path(sweep["points"][0]["out"]) / "config.json").read_text())
    assert point["resolved"]["trials"]["grid_points_in_program"] == 2
    assert main(["sweep", "--dataset", "hcfmtl_lite", "--algorithm", "fedhca2", "--grid", "local.lr=0.001,0.003",
                 "--select", "personalized_accuracy", "--no-progress", "--out", str(tmp_path / "bad")]) == 2
    assert "--select" in capsys.readouterr().err


def test_list_shows_the_multitask_algorithms_and_dataset(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "algorithms on multi-task data" in text and "fedhca2_no_xattn" in text and "hcfmtl_lite" in text
    assert "fedhca2-paper" in text


# ------------------------------------------------------------------------------- dual solver


def _slsqp_direction(g: np.ndarray, c: float) -> np.ndarray:
    """float64 reference: the normalized dual (same argmin as the official one) by SLSQP with a
    tight tolerance from the uniform start and 4 random starts, best value kept."""
    from scipy.optimize import minimize
    n = len(g)
    a = g @ g.T
    an = a / (np.trace(a) / n)
    b = np.full(n, 1.0 / n)
    rho = c * np.sqrt(an.mean())
    f = lambda w: w @ an @ b + rho * np.sqrt(max(w @ an @ w, 0.0) + 1e-15)  # noqa: E731
    rng = np.random.default_rng(n)
    best = None
    for start in [b] + [rng.dirichlet(np.ones(n)) for _ in range(4)]:
        r = minimize(f, start, method="SLSQP", bounds=[(0, 1)] * n, options={"ftol": 1e-14, "maxiter": 2000},
                     constraints={"type": "eq", "fun": lambda w: w.sum() - 1})
        best = r if best is None or r.fun < best.fun else best
    gw = best.x @ g
    u = g.mean(0) + c * np.sqrt(a.mean() + 1e-8) / (np.linalg.norm(gw) + 1e-8) * gw
    return u / (1 + c * c)


@pytest.mark.parametrize("scale", [1e-5, 1e-3, 1.0, 1e2])
def test_dual_solver_matches_a_high_precision_reference(scale):
    """Random cases, tiny to large update norms: the JAX solver's U against float64 SLSQP
    (measured max relative error 1.5e-4 at 500 iterations; float32)."""
    from fedjax_sim.aggregators.conflict_averse import ca_direction
    rng = np.random.default_rng(int(np.log10(scale)) + 10)
    errors = []
    for case in range(5):
        n, d, c = int(rng.integers(2, 13)), int(rng.integers(5, 50)), (0.2, 0.4, 0.8)[case % 3]
        g = scale * (rng.normal(size=(n, d)) + rng.uniform(0, 2) * rng.normal(size=(1, d)))
        ref = _slsqp_direction(g, c)
        u, w = ca_direction(jnp.asarray(g, jnp.float32), c)
        chex.assert_trees_all_close(jnp.sum(w), 1.0, atol=1e-5)
        assert float(jnp.min(w)) >= 0
        errors.append(np.linalg.norm(np.asarray(u, np.float64) - ref) / np.linalg.norm(ref))
    assert max(errors) < 2e-3, errors


def test_dual_solver_identities():
    """Spec 2a: equal updates -> U = (1+c)/(1+c^2) g0; c = 0 -> U = g0; uniform w -> the same
    (1+c)/(1+c^2) g0; the primal ball constraint holds; U helps the worst client at least as
    much as g0; all-zero updates give U = 0 and uniform w."""
    from fedjax_sim.aggregators.conflict_averse import ca_direction, project_simplex, worst_case_gain
    rng = np.random.default_rng(0)
    same = jnp.asarray(np.broadcast_to(rng.normal(size=(1, 7)), (4, 7)), jnp.float32)
    u, _ = ca_direction(same, 0.4)
    np.testing.assert_allclose(u, 1.4 / 1.16 * same[0], rtol=1e-5)
    g = jnp.asarray(rng.normal(size=(5, 9)), jnp.float32)
    np.testing.assert_allclose(ca_direction(g, 0.0)[0], jnp.mean(g, 0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ca_direction(g, 0.4, uniform=True)[0], 1.4 / 1.16 * jnp.mean(g, 0), rtol=1e-5)
    for c in (0.2, 0.8):
        u, _ = ca_direction(g, c, rescale=0)
        g0 = jnp.mean(g, 0)
        assert float(jnp.linalg.norm(u - g0)) <= c * float(jnp.linalg.norm(g0)) * (1 + 1e-4) + 1e-6
        assert float(worst_case_gain(g, u)) >= float(worst_case_gain(g, g0)) - 1e-5
    u, w = ca_direction(jnp.zeros((3, 4)), 0.4)
    np.testing.assert_array_equal(u, 0.0)
    np.testing.assert_allclose(w, 1 / 3)
    v = jnp.asarray(rng.normal(size=6), jnp.float32)
    p = project_simplex(v)
    np.testing.assert_allclose(jnp.sum(p), 1.0, rtol=1e-6)
    np.testing.assert_allclose(project_simplex(p), p, atol=1e-6)


def test_dual_solver_jits_and_vmaps_with_a_traced_c():
    from fedjax_sim.aggregators.conflict_averse import ca_direction
    g = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4, 6)), jnp.float32)
    batched = jax.jit(jax.vmap(lambda x, c: ca_direction(x, c)[0], in_axes=(0, None)))(g, jnp.float32(0.4))
    for i in range(3):
        np.testing.assert_allclose(batched[i], ca_direction(g[i], 0.4)[0], rtol=1e-5, atol=1e-6)
