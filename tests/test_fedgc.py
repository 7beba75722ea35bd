"""FedGC (specs/fedgc.md): budget allocation, the stand-in generators, the data stage (masks,
strategies, filters), the membership-inference attack, budget 0 = plain training, bad input."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from fedjax_sim import cli, config as config_lib, generative, runner
from fedjax_sim.core.privacy import loss_attack
from fedjax_sim.core.sampling import gather
from fedjax_sim.data import build_federated, stack_trials
from fedjax_sim.data.federated import trial
from fedjax_sim.generative import allocation, fidelity
from fedjax_sim.generative import generators as gens

# ---------------------------------------------------------------------------------------------
# allocation


COUNTS = np.array([[5, 0, 0, 3], [2, 2, 2, 2], [0, 9, 1, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("client_rule", allocation.CLIENT_RULES)
@pytest.mark.parametrize("class_rule", allocation.CLASS_RULES)
def test_allocation_sums_are_exact_for_every_rule(client_rule, class_rule):
    budget = 1.3
    m = allocation.allocate_budget(COUNTS, budget, client_rule, class_rule, gamma=0.7, rho=0.4)
    assert m.shape == COUNTS.shape and (m >= 0).all()
    assert m.sum() == round(budget * COUNTS.sum())
    np.testing.assert_array_equal(m.sum(1), allocation.client_budgets(COUNTS.sum(1), budget, client_rule))


def test_client_rules_and_class_rules_give_the_specified_counts():
    n = COUNTS.sum(1)  # [8, 8, 10, 0], total 26
    np.testing.assert_array_equal(allocation.client_budgets(n, 1.0, "equal"), [7, 7, 6, 6])
    np.testing.assert_array_equal(allocation.client_budgets(n, 1.0, "proportional"), [8, 8, 10, 0])
    inv = allocation.client_budgets(n, 1.0, "inverse_size")  # 1/8 : 1/8 : 1/10 : none
    assert inv[3] == 0 and inv[0] == inv[1] > inv[2] and inv.sum() == 26
    w = allocation.class_weights(COUNTS, "inverse")
    np.testing.assert_allclose(w[0], [0, 5, 5, 2] / np.float64(12))  # fill up to the largest class (5)
    np.testing.assert_allclose(w[1], [0.25] * 4)  # flat counts: inverse falls back to equal
    np.testing.assert_allclose(allocation.class_weights(COUNTS, "inverse_pow", gamma=0.0), 0.25)
    mixed = allocation.class_weights(COUNTS, "mixed", rho=0.5)
    np.testing.assert_allclose(mixed, 0.5 * 0.25 + 0.5 * w)
    m = allocation.allocate_budget(COUNTS, 1.5, "proportional", "inverse")  # 12 for client 0
    np.testing.assert_array_equal(m[0], [0, 5, 5, 2])  # the never-seen classes get most


def test_largest_remainder_matches_a_python_reference():
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.random(rng.integers(1, 8)) * (rng.random() > 0.1)
        total = int(rng.integers(0, 40))
        got = allocation.largest_remainder(total, w)
        ww = np.ones_like(w) if w.sum() == 0 else w
        exact = [total * v / ww.sum() for v in ww]
        ref = [int(np.floor(e)) for e in exact]
        order = sorted(range(len(ww)), key=lambda i: (-(exact[i] - ref[i]), i))
        for i in order[: total - sum(ref)]:
            ref[i] += 1
        np.testing.assert_array_equal(got, ref if total > 0 else np.zeros(len(w)))


def test_budget_to_labels_is_class_sorted_and_masked():
    labels, valid = allocation.budget_to_labels(np.array([[2, 0, 1], [0, 0, 0]]))
    np.testing.assert_array_equal(labels[0], [0, 0, 2])
    np.testing.assert_array_equal(valid, [[True] * 3, [False] * 3])


# ---------------------------------------------------------------------------------------------
# generators


@pytest.fixture(scope="module")
def digits_public():
    """A labeled 'public' split and a disjoint real test split of the embedded digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    return (x[order[:700]], y[order[:700]]), (x[order[700:1200]], y[order[700:1200]])


@pytest.fixture(scope="module")
def fitted(digits_public):
    (x, y), _ = digits_public
    key = jax.random.PRNGKey(0)
    return {name: gens.fit(name, x, y, 10, 4, key, steps=400, latent=8) for name in gens.GENERATORS}


def _draw(name, params, key, labels, knobs=gens.GenKnobs(), guide=None):
    g = labels.shape[0]
    d = params["mean"].shape[0]
    gx = jnp.zeros((g, d)) if guide is None else guide
    gv = jnp.zeros(g, bool) if guide is None else jnp.ones(g, bool)
    return gens.get(name).sample(params, key, labels, jnp.zeros(g, jnp.int32), gx, gv, knobs)


@pytest.mark.parametrize("name", gens.GENERATORS)
def test_generators_are_deterministic_under_a_key(fitted, name):
    labels = jnp.arange(20, dtype=jnp.int32) % 10
    a = _draw(name, fitted[name], jax.random.PRNGKey(3), labels)
    b = _draw(name, fitted[name], jax.random.PRNGKey(3), labels)
    c = _draw(name, fitted[name], jax.random.PRNGKey(4), labels)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.shape == (20, 64) and np.isfinite(np.asarray(a)).all()


@pytest.mark.parametrize("name,above", [("gmm", True), ("vae", True), ("real", True), ("noise", False)])
def test_generators_are_label_faithful_and_noise_is_at_chance(fitted, digits_public, name, above):
    """A classifier trained on real data (not the public split) labels gmm/vae/real samples far
    above chance (10%) and noise near chance."""
    _, (xt, yt) = digits_public
    clf = fidelity.fit_linear(jnp.asarray(xt), jnp.asarray(yt), jnp.ones(len(yt)), 10)
    labels = jnp.arange(500, dtype=jnp.int32) % 10
    x = _draw(name, fitted[name], jax.random.PRNGKey(1), labels)
    acc = float(fidelity.accuracy(clf, x, labels, jnp.ones(500, bool)))
    if above:
        assert acc > 0.6, acc
    else:
        assert acc < 0.2, acc


def test_gmm_guidance_strength_interpolates_between_the_guide_and_a_fresh_sample(fitted, digits_public):
    (x, y), _ = digits_public
    params = fitted["gmm"]
    labels = jnp.asarray(y[:16])
    guide = jnp.asarray(x[:16].reshape(16, -1))
    exact = _draw("gmm", params, jax.random.PRNGKey(0), labels, gens.GenKnobs(strength=0.0), guide)
    np.testing.assert_allclose(exact, guide, atol=1e-6)
    free = _draw("gmm", params, jax.random.PRNGKey(0), labels, gens.GenKnobs(strength=1.0), guide)
    other = _draw("gmm", params, jax.random.PRNGKey(0), labels, gens.GenKnobs(strength=1.0), guide + 5.0)
    np.testing.assert_allclose(free, other, atol=1e-5)  # s = 1 ignores the guide
    unguided = _draw("gmm", params, jax.random.PRNGKey(0), labels, gens.GenKnobs(strength=1.0))
    np.testing.assert_allclose(free, unguided, atol=1e-5)


def test_label_noise_and_domain_gap(fitted, digits_public):
    _, (xt, yt) = digits_public
    clf = fidelity.fit_linear(jnp.asarray(xt), jnp.asarray(yt), jnp.ones(len(yt)), 10)
    labels = jnp.arange(400, dtype=jnp.int32) % 10
    ok = jnp.ones(400, bool)
    clean = float(fidelity.accuracy(clf, _draw("real", fitted["real"], jax.random.PRNGKey(0), labels), labels, ok))
    noisy = float(fidelity.accuracy(clf, _draw("real", fitted["real"], jax.random.PRNGKey(0), labels,
                                               gens.GenKnobs(label_noise=1.0)), labels, ok))
    assert clean > 0.8 and noisy < 0.15  # eps = 1: every sample depicts another class
    base = _draw("noise", fitted["noise"], jax.random.PRNGKey(0), labels)
    gap = _draw("noise", fitted["noise"], jax.random.PRNGKey(0), labels, gens.GenKnobs(domain_gap=2.0))
    p = fitted["noise"]
    np.testing.assert_allclose(gap - base, jnp.broadcast_to(2.0 * p["std"] * p["gap"], base.shape), atol=1e-5)


def test_modes_and_guides_follow_the_rules():
    logits = jnp.log(jnp.array([[1.0, 5.0, 3.0, 2.0], [4.0, 1.0, 1.0, 1.0]]))
    labels = jnp.array([[0] * 50 + [1] * 50])
    single = generative.assign_modes(jax.random.PRNGKey(0), labels, "single", 2, logits)
    assert set(np.asarray(single[0, :50]).tolist()) == {1} and set(np.asarray(single[0, 50:]).tolist()) == {0}
    multi = generative.assign_modes(jax.random.PRNGKey(0), labels, "multiple", 2, logits)
    assert set(np.asarray(multi[0, :50]).tolist()) == {1, 2}  # class 0's two heaviest modes
    llm = generative.assign_modes(jax.random.PRNGKey(0), labels, "llm", 2, logits)
    assert len(set(np.asarray(llm[0]).tolist())) >= 3
    x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    y = jnp.array([[0, 1, 0, 2, 2], [1, 1, 1, 1, 0]])
    n = jnp.array([4, 3])  # client 0's class-2 row at index 3 is valid, index 4 padding
    want = jnp.array([[0, 2, 1, 1], [1, 0, 2, 1]])
    gx, gv = generative.pick_guides(jax.random.PRNGKey(0), x, y, n, want)
    np.testing.assert_array_equal(gv, [[True, True, True, True], [True, False, False, True]])
    for k in range(2):
        for g in range(4):
            if gv[k, g]:
                row = int(np.flatnonzero((np.asarray(x[k]) == np.asarray(gx[k, g])).all(1))[0])
                assert row < n[k] and y[k, row] == want[k, g]


def test_merge_matches_a_python_reference():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2)).astype(np.float32), rng.integers(0, 3, 6).astype(np.int32)
    xg, yg = rng.normal(size=(4, 2)).astype(np.float32), rng.integers(0, 3, 4).astype(np.int32)
    keep = np.array([True, False, True, True])
    for first in (False, True):
        xm, ym, is_gen, n_total, n_first = generative.merge(x, y, 4, xg, yg, keep, first)
        real = [(x[i], y[i], False) for i in range(4)]
        gen = [(xg[i], yg[i], True) for i in range(4) if keep[i]]
        ref = gen + real if first else real + gen
        assert int(n_total) == 7 and int(n_first) == (3 if first else 4)
        for i, (rx, ry, rg) in enumerate(ref):
            np.testing.assert_array_equal(xm[i], rx)
            assert int(ym[i]) == ry and bool(is_gen[i]) == rg
        assert not np.asarray(is_gen[7:]).any()


# ---------------------------------------------------------------------------------------------
# the data stage on built data


def _fedgc_config(**fields):
    base = {"data__num_clients": 6, "data__public_fraction": 0.2, "data__alpha": 0.1, "data__min_size": 5,
            "data__partition": "dirichlet_label", "generative": "fedgc", "rounds": 4}
    return tiny_config(**{**base, **fields})


def test_the_generated_mask_survives_partitioning_stacking_and_gathering(tmp_path):
    cfg = _fedgc_config(fedgc__budget=1.5, out=str(tmp_path / "run"))
    datas = [runner.build_data(cfg, s) for s in (0, 1)]
    for data, stats in datas:
        gen, n = np.asarray(data.train["generated"]), np.asarray(data.n_train)
        plain = build_federated(cfg.data, 0 if data is datas[0][0] else 1)
        valid = np.arange(gen.shape[1])[None, :] < n[:, None]
        assert not (gen & ~valid).any()  # generated rows are valid rows
        np.testing.assert_array_equal((valid & ~gen).sum(1), plain.n_train)  # real rows kept
        # the real rows come first (mixed) and are the plain data's rows, unchanged
        for c in range(len(n)):
            k = int(plain.n_train[c])
            np.testing.assert_array_equal(data.train["x"][c, :k], plain.train["x"][c, :k])
        assert stats["generated_rows"] == int(gen.sum()) == round(1.5 * int(plain.n_train.sum()))
    stacked = stack_trials([d for d, _ in datas])
    for s, (data, _) in enumerate(datas):
        t = trial(stacked, s)
        n_max = data.max_train
        np.testing.assert_array_equal(np.asarray(t.train["generated"])[:, :n_max], data.train["generated"])
        assert not np.asarray(t.train["generated"])[:, n_max:].any()
    idx = jnp.array([4, 1])
    rows, n = gather((datas[0][0].train, datas[0][0].n_train), idx)
    np.testing.assert_array_equal(rows["generated"], np.asarray(datas[0][0].train["generated"])[[4, 1]])


@pytest.mark.parametrize("strategy,first_is_generated", [("gen_first", True), ("real_first", False),
                                                         ("gen_only", True), ("real_only", False)])
def test_staged_strategies_train_on_a_prefix_in_the_early_phase(strategy, first_is_generated):
    cfg = _fedgc_config(fedgc__strategy=strategy, fedgc__strategy_rounds=3, rounds=8)
    data, _ = runner.build_data(cfg, 0)
    gen = np.asarray(data.train["generated"])
    early = np.asarray(data.n_early)
    assert data.early_rounds == (3 if strategy.endswith("first") else 8)
    for c in range(data.num_clients):
        prefix = gen[c, : early[c]]
        assert prefix.all() if first_is_generated else not prefix.any()
    np.testing.assert_array_equal(data.at_round(jnp.int32(2)).n_train, early)
    np.testing.assert_array_equal(data.at_round(jnp.int32(data.early_rounds)).n_train, data.n_train)


@pytest.mark.parametrize("name", ["reference", "local"])
def test_filters_only_remove_generated_rows(name):
    plain_cfg = _fedgc_config(fedgc__label_noise=0.5)
    plain, _ = runner.build_data(plain_cfg, 0)
    cfg = _fedgc_config(fedgc__label_noise=0.5, fedgc__filter=name)
    data, stats = runner.build_data(cfg, 0)
    kept = np.asarray(data.train["generated"]).sum()
    assert 0 < stats["filtered_out"] < 1 and kept < np.asarray(plain.train["generated"]).sum()
    np.testing.assert_array_equal(np.asarray(data.n_train) - np.asarray(data.train["generated"]).sum(1),
                                  np.asarray(plain.n_train) - np.asarray(plain.train["generated"]).sum(1))
    if name == "local":  # a client's own classifier never predicts a class it has no rows of
        real = build_federated(cfg.data, 0)
        for c in range(data.num_clients):
            has = set(np.asarray(real.train["y"][c, : real.n_train[c]]).tolist())
            g = np.asarray(data.train["generated"][c])
            assert set(np.asarray(data.train["y"][c])[g].tolist()) <= has


def _final_history(cfg, tmp_path, name):
    cfg = config_lib.copy_config(cfg)
    cfg.out = str(tmp_path / name)
    runner.run(cfg, progress=False)
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fields", [{"fedgc__budget": 0.0}, {"fedgc__strategy": "real_only"}],
                         ids=["budget0", "real_only"])
def test_budget_zero_and_real_only_equal_the_plain_run_bit_for_bit(tmp_path, fields):
    plain = _fedgc_config(generative="none", rounds=3)
    other = _fedgc_config(rounds=3, **fields)
    a, b = _final_history(plain, tmp_path, "plain"), _final_history(other, tmp_path, "fedgc")
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("fedgc_")}  # noqa: E731
    assert [drop(r) for r in a] == [drop(r) for r in b]
    summary = json.loads((tmp_path / "fedgc" / "summary.json").read_text())
    assert summary["final"]["mia_auc"] == json.loads((tmp_path / "plain" / "summary.json").read_text())["final"]["mia_auc"]


def test_fedgc_runs_under_any_algorithm_and_reports_the_attack(tmp_path):
    for alg in ("fedprox", "scaffold", "local"):
        cfg = _fedgc_config(algorithm=alg, rounds=2, out=str(tmp_path / alg))
        summary = runner.run(cfg, progress=False)
        final = summary["final"]
        key = "mia_auc_personalized" if alg == "local" else "mia_auc"
        assert 0.0 <= final[key] <= 1.0
        assert final["fedgc_generated_rows"] > 0 and 0 <= final["fedgc_fidelity"] <= 1
        assert summary["data"]["generated_per_client"]["total"] == final["fedgc_generated_rows"]


def test_the_vae_is_cached_in_the_run_directory_and_reused(tmp_path):
    cfg = _fedgc_config(fedgc__generator="vae", fedgc__vae_steps=100, out=str(tmp_path / "a"))
    data, stats = runner.build_data(cfg, 0)
    assert stats["generator_source"] == "fitted"
    files = sorted((tmp_path / "a" / "generators").glob("vae-*.msgpack"))
    assert len(files) == 1
    again, stats2 = runner.build_data(cfg, 0)
    assert stats2["generator_source"] == "cache"
    np.testing.assert_array_equal(again.train["x"], data.train["x"])
    cfg.fedgc.generator_path = str(files[0])  # explicitly reused: same public split, accepted
    loaded, stats3 = runner.build_data(cfg, 0)
    assert stats3["generator_source"] == "loaded"
    np.testing.assert_array_equal(loaded.train["x"], data.train["x"])


# ---------------------------------------------------------------------------------------------
# membership inference


def _ref_auc_bal(mem, non):
    pairs = [(1.0 if -a > -b else 0.5 if a == b else 0.0) for a in mem for b in non]
    auc = sum(pairs) / len(pairs)
    best = 0.5
    for t in [-v for v in list(mem) + list(non)]:
        tpr = np.mean([-a >= t for a in mem])
        tnr = np.mean([-b < t for b in non])
        best = max(best, (tpr + tnr) / 2)
    return auc, best


def test_loss_attack_matches_a_python_reference_with_ties_and_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mem = np.round(rng.exponential(1.0, 9), 1)
        non = np.round(rng.exponential(1.4, 7), 1)
        m_mem = rng.random(9) > 0.3
        m_non = rng.random(7) > 0.3
        m_mem[0] = m_non[0] = True
        auc, bal = loss_attack(jnp.asarray(mem), jnp.asarray(m_mem), jnp.asarray(non), jnp.asarray(m_non))
        ref_auc, ref_bal = _ref_auc_bal(mem[m_mem], non[m_non])
        np.testing.assert_allclose(float(auc), ref_auc, atol=1e-6)
        np.testing.assert_allclose(float(bal), ref_bal, atol=1e-6)
    auc, bal = loss_attack(jnp.ones(3), jnp.zeros(3, bool), jnp.ones(3), jnp.ones(3, bool))
    assert np.isnan(auc) and np.isnan(bal)


def test_loss_attack_is_at_chance_on_identically_distributed_members_and_non_members():
    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    mem = jax.random.exponential(key1, (4000,))
    non = jax.random.exponential(key2, (4000,))
    auc, bal = loss_attack(mem, jnp.ones(4000, bool), non, jnp.ones(4000, bool))
    assert abs(float(auc) - 0.5) < 0.02 and float(bal) < 0.54
    auc, _ = loss_attack(mem * 0.2, jnp.ones(4000, bool), non, jnp.ones(4000, bool))
    assert float(auc) > 0.8  # lower member losses are detected


# ---------------------------------------------------------------------------------------------
# bad input


BAD = [
    (["--set", "fedgc.budget=-1"], "fedgc.budget", "-1"),
    (["--set", "fedgc.budget=inf"], "fedgc.budget", "inf"),
    (["--set", "fedgc.allocation=random"], "fedgc.allocation", "random"),
    (["--set", "fedgc.client_allocation=rich"], "fedgc.client_allocation", "rich"),
    (["--set", "fedgc.strategy=interleaved"], "fedgc.strategy", "interleaved"),
    (["--set", "fedgc.generator=diffusion"], "fedgc.generator", "diffusion"),
    (["--set", "fedgc.prompt=many"], "fedgc.prompt", "many"),
    (["--set", "fedgc.guidance=none"], "fedgc.guidance", "none"),
    (["--set", "fedgc.filter=clip"], "fedgc.filter", "clip"),
    (["--set", "fedgc.strength=1.5"], "fedgc.strength", "1.5"),
    (["--set", "fedgc.prompts=9"], "fedgc.prompts", "9"),
    (["--generative", "gan"], "generative", "gan"),
    (["--set", "fedgc.strategy=gen_first", "--set", "fedgc.strategy_rounds=1"], "fedgc.strategy_rounds", "1"),
    (["--generative", "fedgc", "--set", "data.public_fraction=0.2", "--partition", "clusters"],
     "generative", "fedgc"),
    (["--generative", "fedgc", "--set", "data.public_fraction=0.001"], "fedgc.generator", "gmm"),
    (["--generative", "fedgc", "--set", "data.public_fraction=0"], "data.public_fraction", "0"),
    (["--generative", "fedgc", "--dataset", "diabetes", "--set", "data.public_fraction=0.1"],
     "generative", "fedgc"),
    (["--generative", "fedgc", "--set", "data.public_fraction=0.1", "--set",
      "fedgc.generator_path=/nonexistent/g.msgpack"], "fedgc.generator_path", "/nonexistent/g.msgpack"),
]


@pytest.mark.parametrize("args,field,value", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_fedgc_input_exits_2_naming_field_and_value(args, field, value, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["run", "--algorithm", "fedavg", "--clients", "6", "--rounds", "1", "--set", "model.hidden=4",
                   "--no-progress", "--out", str(out)] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert field in err[0] and value in err[0], err[0]
    assert not out.exists()


def _saved_generator(tmp_path, seed, **fields):
    cfg = _fedgc_config(out=str(tmp_path / f"fit{seed}"), **fields)
    runner.build_data(cfg, seed)
    return sorted((tmp_path / f"fit{seed}" / "generators").glob("*.msgpack"))[0]


def _refused_with(path, tmp_path, capsys) -> str:
    """Runs seed 0 with the generator file ``path``; asserts exit 2, one line naming
    fedgc.generator_path and nothing written; returns the line."""
    out = tmp_path / "out"
    rc = cli.main(["run", "--algorithm", "fedavg", "--clients", "6", "--rounds", "1", "--no-progress",
                   "--generative", "fedgc", "--set", "data.public_fraction=0.2", "--set",
                   f"fedgc.generator_path={path}", "--seed", "0", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fedgc.generator_path" in err[0], err
    assert not out.exists()
    return err[0]


def test_a_generator_fitted_on_client_data_is_refused(tmp_path, capsys):
    """A generator fitted under another data seed saw rows that this seed gives to clients."""
    err = _refused_with(_saved_generator(tmp_path, seed=1), tmp_path, capsys)
    assert "disjoint" in err, err


def test_labels_outside_the_generators_classes_are_refused(tmp_path, capsys):
    path = _saved_generator(tmp_path, seed=0)
    from flax import serialization

    params = serialization.msgpack_restore(path.read_bytes())
    params["has_class"] = np.asarray(params["has_class"])[:7]  # a generator of classes 0..6 only
    path.write_bytes(serialization.msgpack_serialize(params))
    err = _refused_with(path, tmp_path, capsys)
    assert "[7, 8, 9]" in err, err


def test_generation_is_padding_invariant():
    """Padding the requested rows (the stage buckets shapes so seeds share one compile) changes
    no real row's mode, guide or sample."""
    from fedjax_sim.generative.fedgc import _stage

    rng = np.random.default_rng(0)
    x = rng.random((3, 10, 4)).astype(np.float32)
    y = rng.integers(0, 3, (3, 10)).astype(np.int32)
    n = np.array([10, 6, 3])
    pub_x, pub_y = rng.random((60, 4)).astype(np.float32), np.arange(60, dtype=np.int32) % 3
    params = gens.fit("gmm", pub_x, pub_y, 3, 2, jax.random.PRNGKey(0))
    labels, valid = allocation.budget_to_labels(np.array([[2, 1, 1], [0, 3, 0], [1, 1, 1]]))
    kw = dict(generator="gmm", knobs=gens.GenKnobs(), prompt="llm", prompts=2, guided=True, filter_name="none",
              threshold=0.0, generated_first=False, num_classes=3)
    args = (pub_x, pub_y, pub_x, pub_y, np.ones(60, bool))
    a = _stage(params, jax.random.PRNGKey(1), x, y, n, labels, valid, *args, **kw)
    pad = lambda v, w: np.pad(v, [(0, 0), (0, w)] + [(0, 0)] * (v.ndim - 2))  # noqa: E731
    b = _stage(params, jax.random.PRNGKey(1), pad(x, 5), pad(y, 5), n, pad(labels, 7), pad(valid, 7), *args, **kw)
    for k in range(3):
        t = int(a["n_total"][k])
        assert int(b["n_total"][k]) == t
        np.testing.assert_array_equal(a["x"][k, :t], b["x"][k, :t])
        np.testing.assert_array_equal(a["generated"][k, :t], b["generated"][k, :t])
