"""FLoRAL: adaptor layers, rank rule, router, preconditioner, mixture aggregation, and one round of
each variant against plain-Python loops (spec specs/floral.md)."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import make_data, tiny_config
from fedjax_sim import runner
from fedjax_sim.aggregators import conditional_weights, mixture_mean
from fedjax_sim.algorithms.floral import oracle_logits, rand_index
from fedjax_sim.core.driver import RoundInput
from fedjax_sim.core.local import step_key_schedule
from fedjax_sim.core.optim import lora_preconditioner
from fedjax_sim.errors import ConfigError
from fedjax_sim.models import mlp
from fedjax_sim.models.mixture import (adaptor_delta, clamp_probs, ensemble_model, init_adaptors,
                                       merge_adaptors, mixture_probs, plan_adaptors, resolve_rank)
from conftest import ref_batches, ref_cohort


def _rng_tree(rng, tree, scale=1.0):
    return jax.tree.map(lambda a: (scale * rng.normal(size=a.shape)).astype(np.float32), tree)


# ---------------------------------------------------------------------------------- rank rule


@pytest.mark.parametrize("rho,d_in,d_out,rank", [
    (0.01, 784, 200, 1), (0.1, 784, 200, 15), (0.01, 200, 10, 1), (0.1, 200, 10, 1),
    (0.5, 64, 64, 16), (1.0, 64, 64, 1), (0.01, 10, 3, 1)])
def test_rank_rule(rho, d_in, d_out, rank):
    """floor(rho d_in d_out / (d_in + d_out)), at least 1 (spec's MNIST examples: 1, 15, 1, 1)."""
    assert resolve_rank(rho, d_in, d_out) == rank


def test_plan_adapts_every_dense_and_conv_layer_with_the_rank_rule():
    from fedjax_sim.models import cnn
    shapes = jax.eval_shape(cnn((28, 28, 1), 10).init, jax.random.PRNGKey(0))
    plan = {l.name: l for l in plan_adaptors(shapes, rho=0.1)}
    assert set(plan) == {"body/features/conv_0", "body/features/conv_1", "body/mlp/dense_0", "head/mlp/dense_0"}
    conv1 = plan["body/features/conv_1"]  # 5x5, 32 -> 64; fixed rule on (C_in k, C_out k)
    assert (conv1.kind, conv1.kernel, conv1.d_in, conv1.d_out) == ("conv", 5, 32, 64)
    assert conv1.rank == int(0.1 * 160 * 320 / 480) and conv1.fan_in == 160
    buggy = {l.name: l for l in plan_adaptors(shapes, rho=0.1, conv_rank_rule="official_bug")}
    assert buggy["body/features/conv_1"].rank == int(0.1 * 64 * 128 / 192)  # (2 C_in, 2 C_out)
    assert buggy["body/features/conv_1"].fan_in == 64
    assert plan["body/mlp/dense_0"].rank == resolve_rank(0.1, 7 * 7 * 64, 512)
    assert {l.rank for l in plan_adaptors(shapes, rank=3)} == {3}


@pytest.mark.parametrize("kernel_shape", [(3,), (2, 3, 4), (3, 5, 2, 4), (2, 2, 2, 2, 2)])
def test_plan_refuses_layers_it_cannot_adapt(kernel_shape):
    params = {"layer": {"kernel": jax.ShapeDtypeStruct(kernel_shape, jnp.float32)}}
    with pytest.raises(ConfigError, match="layer"):
        plan_adaptors(params)


# ------------------------------------------------------------------------------ dense and conv


def _dense_setup(m=3, d_in=5, d_out=4, rank=2, seed=0):
    rng = np.random.default_rng(seed)
    params = {"d": {"kernel": rng.normal(size=(d_in, d_out)).astype(np.float32),
                    "bias": rng.normal(size=(d_out,)).astype(np.float32)}}
    plan = plan_adaptors(jax.eval_shape(lambda: params), rank=rank)
    ads = init_adaptors(jax.random.PRNGKey(seed), plan, m)
    return rng, params, plan, ads


def test_zero_b_and_zero_bias_give_the_base_layer():
    rng, params, plan, ads = _dense_setup()
    assert np.all(np.asarray(ads["d"]["B"]) == 0)
    probs = jnp.asarray([0.2, 0.5, 0.3])
    zero_bias = {**ads["d"], "beta": jnp.zeros_like(ads["d"]["beta"])}
    chex.assert_trees_all_equal(merge_adaptors(params, plan, {"d": zero_bias}, probs), params)
    # the default (torch) bias init is not zero: the initial model differs by p @ beta (spec 8.2)
    merged = merge_adaptors(params, plan, ads, probs)
    np.testing.assert_allclose(merged["d"]["bias"], params["d"]["bias"] + probs @ ads["d"]["beta"], rtol=1e-6)
    bound = 1 / np.sqrt(plan[0].rank)
    assert np.all(np.abs(np.asarray(ads["d"]["beta"])) <= bound) and np.any(np.asarray(ads["d"]["beta"]) != 0)


def test_merged_dense_equals_the_hooked_output_sum():
    """W x + b + sum_m p~_m (B_m A_m x + beta_m): the official forward hooks, by hand."""
    rng, params, plan, ads = _dense_setup()
    ads = {"d": {**ads["d"], "B": rng.normal(size=ads["d"]["B"].shape).astype(np.float32)}}
    x = rng.normal(size=(6, 5)).astype(np.float32)
    p = np.asarray(clamp_probs(jnp.asarray([0.005, 0.6, 0.395])))
    merged = merge_adaptors(params, plan, ads, jnp.asarray(p))
    got = x @ np.asarray(merged["d"]["kernel"]) + np.asarray(merged["d"]["bias"])
    a, b, beta = (np.asarray(ads["d"][k], np.float64) for k in ("A", "B", "beta"))
    want = x @ params["d"]["kernel"] + params["d"]["bias"]
    for m in range(3):
        want = want + p[m] * (x @ a[m].T @ b[m].T + beta[m])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert p[0] == 0.01  # clamped, not renormalized


def test_one_hot_router_selects_exactly_one_adaptor():
    rng, params, plan, ads = _dense_setup()
    ads = {"d": {**ads["d"], "B": rng.normal(size=ads["d"]["B"].shape).astype(np.float32)}}
    onehot = jnp.asarray([0.0, 1.0, 0.0])
    dk, db = adaptor_delta(plan[0], ads["d"], onehot)
    np.testing.assert_allclose(dk, (ads["d"]["B"][1] @ ads["d"]["A"][1]).T, rtol=1e-6)
    np.testing.assert_allclose(db, ads["d"]["beta"][1], rtol=1e-6)


def _conv_plan(k, c_in, c_out, rank):
    params = {"c": {"kernel": jax.ShapeDtypeStruct((k, k, c_in, c_out), jnp.float32),
                    "bias": jax.ShapeDtypeStruct((c_out,), jnp.float32)}}
    return plan_adaptors(params, rank=rank)


def test_conv_adaptor_shapes():
    plan = _conv_plan(3, 4, 6, 2)
    ads = init_adaptors(jax.random.PRNGKey(0), plan, 5)["c"]
    chex.assert_shape(ads["A"], (5, 2, 4, 3))   # [M, r, C_in, k]: the (1 x k) conv
    chex.assert_shape(ads["B"], (5, 6, 2, 3))   # [M, C_out, r, k]: the (k x 1) conv
    chex.assert_shape(ads["beta"], (5, 6))
    dk, db = adaptor_delta(plan[0], {**ads, "B": jnp.ones_like(ads["B"])}, jnp.full((5,), 0.2))
    chex.assert_shape(dk, (3, 3, 4, 6))
    chex.assert_shape(db, (6,))


def test_conv_1x1_adaptor_equals_the_dense_adaptor():
    """A 1x1 conv adaptor applied at every pixel is the dense adaptor on the channel vector."""
    rng = np.random.default_rng(1)
    plan = _conv_plan(1, 4, 6, 2)
    ads = {k: rng.normal(size=v.shape).astype(np.float32)
           for k, v in init_adaptors(jax.random.PRNGKey(0), plan, 3)["c"].items()}
    dense = {"A": ads["A"][..., 0], "B": ads["B"][..., 0], "beta": ads["beta"]}
    p = jnp.asarray([0.3, 0.3, 0.4])
    dense_plan = plan_adaptors({"d": {"kernel": jax.ShapeDtypeStruct((4, 6), jnp.float32)}}, rank=2)
    dk_conv, db_conv = adaptor_delta(plan[0], ads, p)
    dk_dense, db_dense = adaptor_delta(dense_plan[0], dense, p)
    np.testing.assert_allclose(dk_conv[0, 0], dk_dense, rtol=1e-6)
    np.testing.assert_allclose(db_conv, db_dense, rtol=1e-6)


def test_conv_effective_kernel_equals_the_separable_two_conv_adaptor():
    """(1 x k) conv C_in -> r padded along width, then (k x 1) conv r -> C_out padded along
    height (spec's balanced_2d) equals one k x k conv with the merged kernel, borders included."""
    rng = np.random.default_rng(2)
    k, c_in, c_out, r = 3, 2, 3, 2
    plan = _conv_plan(k, c_in, c_out, r)
    a = rng.normal(size=(1, r, c_in, k)).astype(np.float32)
    b = rng.normal(size=(1, c_out, r, k)).astype(np.float32)
    x = rng.normal(size=(2, 7, 6, c_in)).astype(np.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    conv = lambda inp, w, pad: jax.lax.conv_general_dilated(inp, w, (1, 1), pad, dimension_numbers=dn)
    w_first = np.transpose(a[0], (2, 1, 0))[None]        # [1, k, C_in, r]
    w_second = np.transpose(b[0], (2, 1, 0))[:, None]    # [k, 1, r, C_out]
    two_step = conv(conv(x, w_first, ((0, 0), (1, 1))), w_second, ((1, 1), (0, 0)))
    dk, _ = adaptor_delta(plan[0], {"A": a, "B": b}, jnp.ones((1,)))
    one_step = conv(x, dk, ((1, 1), (1, 1)))
    np.testing.assert_allclose(one_step, two_step, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- router


def test_router_noise_is_uniform_and_absent_in_eval():
    logits = jnp.asarray([[0.0, 1.0, -1.0]])
    chex.assert_trees_all_close(mixture_probs(logits), jax.nn.softmax(logits))
    key = jax.random.PRNGKey(0)
    u = jax.random.uniform(key, logits.shape)
    chex.assert_trees_all_close(mixture_probs(logits, key, 2.0), jax.nn.softmax(logits + 2.0 * u))
    assert np.all(np.asarray(u) >= 0) and np.all(np.asarray(u) < 1)


def test_oracle_logits_and_rand_index():
    logits = oracle_logits(jnp.asarray([0, 1, 2, 0, 1, 2]), 3)
    assert np.all(np.asarray(jnp.argmax(logits, -1)) == [0, 1, 2, 0, 1, 2])
    assert float(jnp.max(logits)) == 0.0 and float(jnp.min(logits)) == -100.0
    clusters = jnp.asarray([0, 0, 1, 1])
    assert float(rand_index(clusters, jnp.asarray([[0, 1.], [0, 1], [1, 0], [1, 0]]))) == 1.0
    # pairs: (0,1) same/same ok, (2,3) same/diff no, (0,2),(0,3),(1,2),(1,3) diff/diff but 1,2 share top
    got = float(rand_index(clusters, jnp.asarray([[0, 1.], [0, 1], [0, 1], [1, 0]])))
    assert got == pytest.approx(3 / 6)


# ------------------------------------------------------------------------------ preconditioner


def test_preconditioner_matches_hand_computation():
    rng = np.random.default_rng(3)
    m, r, d_in, d_out, k, eps = 2, 3, 5, 4, 3, 1e-5
    params = {"dense": {"A": rng.normal(size=(m, r, d_in)), "B": rng.normal(size=(m, d_out, r)),
                        "beta": rng.normal(size=(m, d_out))},
              "conv": {"A": rng.normal(size=(m, r, 2, k)), "B": rng.normal(size=(m, 4, r, k))},
              "other": rng.normal(size=(3,))}
    params = jax.tree.map(lambda a: a.astype(np.float32), params)
    grads = _rng_tree(rng, params)
    out, _ = lora_preconditioner(eps).update(grads, optax.EmptyState(), params)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    g64 = jax.tree.map(lambda a: np.asarray(a, np.float64), grads)
    for i in range(m):
        a, b = p64["dense"]["A"][i], p64["dense"]["B"][i]
        want_a = np.linalg.inv(b.T @ b + eps * np.eye(r)) @ g64["dense"]["A"][i]
        want_b = g64["dense"]["B"][i] @ np.linalg.inv(a @ a.T + eps * np.eye(r))
        np.testing.assert_allclose(out["dense"]["A"][i], want_a, rtol=2e-3, atol=1e-4)
        np.testing.assert_allclose(out["dense"]["B"][i], want_b, rtol=2e-3, atol=1e-4)
        ca, cb = p64["conv"]["A"][i], p64["conv"]["B"][i]   # [r, C_in, k], [C_out, r, k]
        gram_b = np.zeros((r, r, k))
        gram_a = np.zeros((r, r, k))
        for o in range(cb.shape[0]):
            for h in range(k):
                gram_b[:, :, h] += np.outer(cb[o, :, h], cb[o, :, h])
        for c in range(ca.shape[1]):
            for w in range(k):
                gram_a[:, :, w] += np.outer(ca[:, c, w], ca[:, c, w])
        np.testing.assert_allclose(out["conv"]["A"][i], g64["conv"]["A"][i] / (np.linalg.norm(gram_b) + eps), rtol=1e-4)
        np.testing.assert_allclose(out["conv"]["B"][i], g64["conv"]["B"][i] / (np.linalg.norm(gram_a) + eps), rtol=1e-4)
    chex.assert_trees_all_equal(out["dense"]["beta"], grads["dense"]["beta"])
    chex.assert_trees_all_equal(out["other"], grads["other"])


# ------------------------------------------------------------------------------- aggregation


def test_conditional_weights_sum_to_one_per_adaptor_and_mixture_mean_matches_loop():
    rng = np.random.default_rng(4)
    k, m = 5, 3
    n = np.asarray([3.0, 7.0, 1.0, 4.0, 0.0])  # a zero-weight client contributes nothing
    pi = jax.nn.softmax(rng.normal(size=(k, m)), -1)
    w = np.asarray(conditional_weights(jnp.asarray(n), pi))
    np.testing.assert_allclose(w.sum(0), np.ones(m), rtol=1e-6)
    assert np.all(w[4] == 0)
    results = {"A": rng.normal(size=(k, m, 2, 3)).astype(np.float32)}
    out, _, metrics = mixture_mean().update(results, jnp.asarray(n), optax.EmptyState(), None, mixture=pi)
    pi = np.asarray(pi, np.float64)
    for c in range(m):
        joint = [n[j] / n.sum() * pi[j, c] for j in range(k)]
        want = sum(joint[j] * results["A"][j, c] for j in range(k)) / sum(joint)
        np.testing.assert_allclose(out["A"][c], want, rtol=1e-5, atol=1e-6)
    mass = (n / n.sum()) @ pi
    assert float(metrics["component_mass_min"]) == pytest.approx(mass.min(), rel=1e-5)


def test_ensemble_mixes_outputs_and_drops_tiny_members():
    base = mlp((6,), 3, (4,))
    model = ensemble_model(base, 3)
    params = model.init(jax.random.PRNGKey(0))
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    p = jnp.asarray([0.6, 0.3999, 0.0001])
    got = model.apply(params, x, p)
    outs = [base.apply(jax.tree.map(lambda a: a[i], params["components"]), x) for i in range(3)]
    np.testing.assert_allclose(got, 0.6 * outs[0] + 0.3999 * outs[1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- one round vs a loop


def _ref_forward(base_layers, ads, probs, x):
    """Activation-form FLoRAL MLP: every dense layer W x + b + sum_m p~_m (B_m A_m x + beta_m)."""
    h = x.reshape(x.shape[0], -1)
    p = jnp.maximum(probs, 0.01)
    for i, ((w, b), ad) in enumerate(zip(base_layers, ads)):
        z = h @ w + b
        for m in range(p.shape[0]):
            z = z + p[m] * ((h @ ad["A"][m].T) @ ad["B"][m].T + ad["beta"][m])
        h = jax.nn.relu(z) if i < len(base_layers) - 1 else z
    return h


@jax.jit
def _ref_grads(base_layers, ads, logits, x, y, key, noise):
    def loss(base_layers, ads, logits):
        probs = jax.nn.softmax(logits + noise * jax.random.uniform(key, logits.shape))
        out = _ref_forward(base_layers, ads, probs, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))
    return jax.grad(loss, argnums=(0, 1, 2))(base_layers, ads, logits)


def _precondition_np(ad, g, eps=1e-5):
    out = {k: np.asarray(v, np.float64) for k, v in g.items()}
    for m in range(ad["A"].shape[0]):
        a, b = np.asarray(ad["A"][m], np.float64), np.asarray(ad["B"][m], np.float64)
        r = a.shape[0]
        out["A"][m] = np.linalg.solve(b.T @ b + eps * np.eye(r), out["A"][m])
        out["B"][m] = out["B"][m] @ np.linalg.inv(a @ a.T + eps * np.eye(r))
    return out


NAMES = ["body/mlp/dense_0", "head/mlp/dense_0"]


def _split(params):
    """(base layers [(W, b)], adaptors per layer, in forward order) of floral client params."""
    shared, comps = params["shared"], params["components"]
    layers = [(shared["body"]["mlp"]["dense_0"]["kernel"], shared["body"]["mlp"]["dense_0"]["bias"]),
              (shared["head"]["mlp"]["dense_0"]["kernel"], shared["head"]["mlp"]["dense_0"]["bias"])]
    return [tuple(np.asarray(a, np.float64) for a in l) for l in layers], \
        [{k: np.asarray(v, np.float64) for k, v in comps[n].items()} for n in NAMES]


def _ref_client(layers, ads, logits, data, c, key, schedule, max_n, lr, router_lr, noise):
    idx, mask = ref_batches(key, data.n_train[c], max_n, schedule)
    step_keys = step_key_schedule(jax.random.fold_in(key, 1), schedule)
    x, y = np.asarray(data.train["x"][c]), np.asarray(data.train["y"][c])
    for t in range(schedule.num_steps):
        rows = idx[t][mask[t]]
        if len(rows) == 0:
            continue
        f32 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)
        g_base, g_ads, g_log = _ref_grads(f32(layers), f32(ads), jnp.asarray(logits, jnp.float32),
                                          x[rows], y[rows], step_keys[t], noise)
        g_ads = [_precondition_np(ad, {k: np.asarray(v) for k, v in g.items()}) for ad, g in zip(ads, g_ads)]
        layers = [(w - lr * np.asarray(gw), b - lr * np.asarray(gb)) for (w, b), (gw, gb) in zip(layers, g_base)]
        ads = [{k: ad[k] - lr * g[k] for k in ad} for ad, g in zip(ads, g_ads)]
        logits = logits - router_lr * np.asarray(g_log, np.float64)
    return layers, ads, logits


def test_floral_round_matches_python_loop_and_logits_stay_private():
    """FLoRAL, C=4, K=3, M=2, MLP 6-4-3, rank 1: one round equals per-client joint SGD with the
    preconditioner and uniform router noise, then base by sample weights and each adaptor factor
    by p_{k|m}; the cohort's logits are their own trained logits (never averaged), others stay 0."""
    data = jax.device_put(make_data(train_sizes=(5, 9, 3, 7), test_sizes=(2,) * 4))
    lr, router_lr, noise = 0.1, 0.5, 1.0
    cfg = tiny_config(algorithm="floral", cohort=3, model__hidden=(4,), local__lr=lr,
                      floral__num_adaptors=2, floral__router_lr=router_lr)
    prep = runner.prepare(cfg, data)
    alg = prep.algorithm
    state = alg.init(jax.random.PRNGKey(1), data)
    # non-zero B so that every gradient path (and the preconditioner) is exercised
    state = state._replace(components=jax.tree.map(
        lambda a: a + 0.3 * jnp.asarray(np.random.default_rng(5).normal(size=a.shape), jnp.float32),
        state.components))
    start = {"shared": state.shared, "components": state.components}
    key = jax.random.PRNGKey(7)
    new, metrics = jax.jit(alg.round)(state, data, RoundInput(key, jnp.int32(0), jnp.array(True)))
    ids, keys = ref_cohort(key, 4, 3)
    trained = [_ref_client(*_split(start), np.zeros(2), data, c, keys[j], prep.schedule,
                           data.max_train, lr, router_lr, noise) for j, c in enumerate(ids)]
    n = np.asarray(data.n_train, np.float64)[ids]
    p = n / n.sum()
    pi = np.stack([np.exp(t[2]) / np.exp(t[2]).sum() for t in trained])
    got_layers, got_ads = _split({"shared": new.shared, "components": new.components})
    for l in range(2):
        for i in range(2):
            want = sum(p[j] * trained[j][0][l][i] for j in range(3))
            np.testing.assert_allclose(got_layers[l][i], want, rtol=1e-4, atol=1e-5)
        for m in range(2):
            w = p * pi[:, m] / np.sum(p * pi[:, m])
            for factor in ("A", "B", "beta"):
                want = sum(w[j] * trained[j][1][l][factor][m] for j in range(3))
                np.testing.assert_allclose(got_ads[l][factor][m], want, rtol=1e-4, atol=1e-5)
    router = np.asarray(new.clients.router)
    for j, c in enumerate(ids):
        np.testing.assert_allclose(router[c], trained[j][2], rtol=1e-4, atol=1e-5)
    outside = [c for c in range(4) if c not in ids]
    assert np.all(router[outside] == 0)
    assert not np.allclose(router[ids[0]], router[ids[1]])
    assert "router_entropy" in metrics


def _variant(name, **fields):
    data = make_data(train_sizes=(5, 9, 3, 7), test_sizes=(2,) * 4)
    data = jax.device_put(data.replace(cluster=np.asarray([0, 1, 0, 1], np.int32)))
    cfg = tiny_config(algorithm=name, cohort=3, model__hidden=(4,), floral__num_adaptors=2, **fields)
    prep = runner.prepare(cfg, data)
    alg = prep.algorithm
    state = alg.init(jax.random.PRNGKey(1), data)
    new, metrics = jax.jit(alg.round)(state, data, RoundInput(jax.random.PRNGKey(7), jnp.int32(0), jnp.array(True)))
    return prep, alg, data, state, new, metrics


def test_oracle_router_is_fixed_at_the_true_cluster():
    _, alg, data, state, new, metrics = _variant("floral_oracle")
    want = oracle_logits(jnp.asarray([0, 1, 0, 1]), 2)
    chex.assert_trees_all_equal(state.clients.router, want)
    chex.assert_trees_all_equal(new.clients.router, want)
    assert float(metrics["router_rand_index"]) == 1.0


def test_local_adaptor_keeps_adaptors_private_and_averages_the_base():
    _, alg, data, state, new, _ = _variant("local_adaptor")
    assert alg.info["num_components"] == 1 and new.components is None
    a = np.asarray(new.clients.components["body/mlp/dense_0"]["B"])  # [C, 1, d_out, r]
    assert a.shape[:2] == (4, 1)
    ids, _ = ref_cohort(jax.random.PRNGKey(7), 4, 3)
    trained = [c for c in range(4) if c in ids]
    assert not np.allclose(a[trained[0]], a[trained[1]])  # each its own, not averaged
    outside = [c for c in range(4) if c not in ids]
    chex.assert_trees_all_equal(a[outside], np.asarray(state.clients.components["body/mlp/dense_0"]["B"])[outside])
    f = alg.info["floats"]
    assert f["uplink"] == f["shared"] == f["model"] and f["client_state"] == f["components"] + 1


def test_stateless_clients_refit_the_router_from_zero_before_evaluation():
    prep, alg, data, state, new, _ = _variant("floral_stateless")
    assert alg.info["floats"]["client_state"] == 0
    params = alg.client_params(new, data, jax.random.PRNGKey(3))
    logits = np.asarray(params["router"])
    assert logits.shape == (4, 2) and np.all(np.isfinite(logits)) and np.any(logits != 0)
    ev = runner.make_evaluator(prep)(new, data, jax.random.PRNGKey(3))
    assert 0.0 <= float(ev["personalized_accuracy"]) <= 1.0


def test_ensemble_averages_members_with_mixture_weights():
    _, alg, data, state, new, metrics = _variant("ensemble")
    leaf = jax.tree.leaves(new.components)[0]
    assert leaf.shape[0] == 2 and new.shared == {}
    assert alg.info["floats"]["components"] == 2 * alg.info["floats"]["model"]
    assert 0.0 < float(metrics["component_mass_min"]) <= 0.5 <= float(metrics["component_mass_max"])


def test_floral_refuses_multitask_and_oracle_needs_clusters():
    data = jax.device_put(make_data(train_sizes=(5, 9, 3, 7), test_sizes=(2,) * 4))
    with pytest.raises(ConfigError, match="clusters"):
        runner.prepare(tiny_config(algorithm="floral_oracle", model__hidden=(4,)), data)
