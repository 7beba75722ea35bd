"""The core engine against plain-Python references: batching, local training under every client
mapping, the factored formulation, aggregation, sampling, evaluation, and compile-once rounds."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import (client, layers_of, make_data, mlp_params, params_of, ref_batches,
                      ref_local_sgd, ref_logits, ref_loss_and_grads, tree_add)
from fedjax_sim import tasks
from fedjax_sim.aggregators import LowRankDelta, chain, densify, mean, server_optimizer, weighted_mean
from fedjax_sim.core.cohort import DenseLayout, make_cohort_train
from fedjax_sim.core.evaluate import evaluate_clients, evaluate_global
from fedjax_sim.core.factored import make_factored_train
from fedjax_sim.core.local import Schedule, make_local_train, padding_waste, size_order
from fedjax_sim.core.mapping import ClientMapping, map_clients
from fedjax_sim.core.optim import make_optimizer
from fedjax_sim.core.sampling import gather, sample_cohort, scatter
from fedjax_sim.models import mlp

# --------------------------------------------------------------------------------------------
# batch_indices


@pytest.mark.parametrize("n", [10, 7, 5, 1])
def test_batch_indices_epoch_mode_visits_each_valid_row_once_per_epoch(n):
    """Epoch mode: every valid row exactly once per epoch, never a padded row, and the mask is
    full batches, then one partial batch (n not a multiple of B), then empty steps."""
    max_n, b, epochs = 10, 4, 3
    sched = Schedule.make(max_n, b, epochs, 0)
    assert sched.num_steps == epochs * 3  # ceil(10 / 4) steps per epoch
    idx, mask = ref_batches(jax.random.PRNGKey(n), n, max_n, sched)
    chex.assert_shape((idx, mask), (sched.num_steps, b))
    per_epoch = sched.num_steps // epochs
    expected_mask = (np.arange(per_epoch * b) < n).reshape(per_epoch, b)
    for e in range(epochs):
        ei, em = idx[e * per_epoch:(e + 1) * per_epoch], mask[e * per_epoch:(e + 1) * per_epoch]
        np.testing.assert_array_equal(em, expected_mask)
        np.testing.assert_array_equal(np.sort(ei[em]), np.arange(n))


def test_batch_indices_epoch_mode_reshuffles_each_epoch():
    """Each epoch draws its own permutation (not the same order every epoch)."""
    sched = Schedule.make(12, 4, 4, 0)
    idx, mask = ref_batches(jax.random.PRNGKey(3), 12, 12, sched)
    orders = np.asarray(idx).reshape(4, -1)
    assert len({tuple(o) for o in orders}) > 1


def test_batch_indices_batch_larger_than_data_is_clamped():
    """B > N_max in epoch mode: the batch shrinks to N_max, one step per epoch."""
    sched = Schedule.make(5, 16, 2, 0)
    assert (sched.batch_size, sched.num_steps) == (5, 2)
    idx, mask = ref_batches(jax.random.PRNGKey(0), 3, 5, sched)
    np.testing.assert_array_equal(np.asarray(mask).sum(axis=1), [3, 3])
    for row, m in zip(np.asarray(idx), np.asarray(mask)):
        np.testing.assert_array_equal(np.sort(row[m]), np.arange(3))


@pytest.mark.parametrize("n", [10, 7, 3])
def test_batch_indices_fixed_steps_cycles_through_one_permutation(n):
    """Fixed-steps mode: all slots valid; sample j is perm[j mod n], a permutation of the valid
    rows read cyclically (so only valid rows are ever used)."""
    max_n, b, steps = 10, 4, 6
    sched = Schedule.make(max_n, b, 1, steps)
    assert (sched.num_steps, sched.epochs) == (steps, 0)
    idx, mask = ref_batches(jax.random.PRNGKey(1), n, max_n, sched)
    chex.assert_shape((idx, mask), (steps, b))
    assert np.asarray(mask).all()
    flat = np.asarray(idx).reshape(-1)
    np.testing.assert_array_equal(np.sort(flat[:n]), np.arange(n))
    for j in range(n, len(flat)):
        assert flat[j] == flat[j - n]


# --------------------------------------------------------------------------------------------
# materialized local training under each client mapping


def test_reference_params_have_the_model_layout():
    """conftest.mlp_params builds the same tree (shapes, dtypes) as models.mlp's init."""
    model = mlp((6,), 3, (8, 5))
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    got = mlp_params(6, (8, 5), 3)
    chex.assert_trees_all_equal_shapes_and_dtypes(got, expected)


LOCAL_CASES = [
    ("vmap", 0, "sgd", 2, 0),
    ("chunked", 2, "momentum", 2, 0),  # chunk 2 does not divide K = 5
    ("sequential", 1, "momentum", 1, 0),
    ("vmap", 0, "momentum", 1, 5),  # fixed-steps mode
]


@pytest.mark.parametrize("trim", [False, True])
@pytest.mark.parametrize("strategy,chunk,opt_name,epochs,steps", LOCAL_CASES)
def test_mapped_local_training_matches_python_loop(strategy, chunk, opt_name, epochs, steps, trim):
    """make_local_train mapped over K=5 unequal clients (each from its own start) equals a
    per-client Python loop with a hand-written SGD / momentum update on the same batches;
    ``trim``: each client loops over its own steps only, and a chunked mapping groups clients
    by size (outputs back in the callers' order)."""
    data = make_data(train_sizes=(5, 9, 3, 7, 1), test_sizes=(1,) * 5)
    model = mlp(data.feature_shape, data.num_classes, (8,))
    lr, momentum = 0.2, 0.8
    sched = Schedule.make(data.max_train, 4, epochs, steps, trim=trim)
    opt = make_optimizer(opt_name, lr, momentum=momentum).transform
    task = tasks.classification(model.apply, data.num_classes)
    train = make_local_train(task.loss, opt, sched, data.max_train)
    mapped = jax.jit(map_clients(train, (0, 0, 0, 0, 0), strategy, chunk, sort_by=size_order(sched, 3)))
    k = data.num_clients
    params = mlp_params(clients=k)  # every client starts from its own model
    keys = jax.random.split(jax.random.PRNGKey(1), k)
    opt_state = jax.vmap(opt.init)(params)
    new_params, new_opt, stats = mapped(params, opt_state, data.train, data.n_train, keys)
    x_train, y_train = data.train["x"], data.train["y"]

    for c in range(k):
        start = client(params, c)
        ref, trace, ref_steps = ref_local_sgd(
            layers_of(start), x_train[c], y_train[c], data.n_train[c], keys[c], sched,
            data.max_train, lr, momentum if opt_name == "momentum" else None)
        chex.assert_trees_all_close(client(new_params, c), params_of(start, ref), rtol=1e-5, atol=1e-5)
        assert int(stats.steps[c]) == ref_steps
        expected_samples = (data.n_train[c] * epochs if steps == 0 else steps * sched.batch_size)
        assert int(stats.samples[c]) == expected_samples
        if opt_name == "momentum":
            chex.assert_trees_all_close(client(new_opt[-1].inner_state[0].trace, c),
                                        params_of(start, trace), rtol=1e-5, atol=1e-5)
            # the learning rate is an injected array in the optimizer state (sweepable)
            np.testing.assert_allclose(new_opt[-1].hyperparams["learning_rate"], lr, rtol=1e-6)


def test_trimmed_steps_equal_masked_steps_with_per_client_epochs():
    """FedHCA2-style per-client epochs (at most the schedule's): the trimmed loop runs exactly the
    masked scan's non-empty steps: same models, step counts, samples and mean loss."""
    data = make_data(train_sizes=(5, 9, 3, 7), test_sizes=(1,) * 4)
    model = mlp(data.feature_shape, data.num_classes, (8,))
    task = tasks.classification(model.apply, data.num_classes)
    opt = make_optimizer("momentum", 0.1, momentum=0.9).transform
    params = mlp_params(clients=4)
    keys = jax.random.split(jax.random.PRNGKey(2), 4)
    epochs = jnp.array([3, 1, 2, 3])
    out = {}
    for trim in (False, True):
        sched = Schedule.make(data.max_train, 2, 3, 0, trim=trim)
        train = make_local_train(task.loss, opt, sched, data.max_train)
        run = jax.vmap(lambda p, r, n, k, e: train(p, opt.init(p), r, n, k, None, e))
        out[trim] = jax.jit(run)(params, data.train, data.n_train, keys, epochs)
    chex.assert_trees_all_close(out[True][0], out[False][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[True][2].steps, out[False][2].steps)
    np.testing.assert_array_equal(out[True][2].steps, np.array([3, 1, 2, 3]) * -(-np.array([5, 9, 3, 7]) // 2))
    np.testing.assert_array_equal(out[True][2].samples, out[False][2].samples)
    np.testing.assert_array_equal(out[True][2].loss, out[False][2].loss)  # summed in the same order


def test_padding_waste_by_hand():
    """Steps run per non-empty step: sizes 10, 2, 4 in batches of 2 are 5, 1, 2 steps (8 real);
    masked runs 5 each (15 / 8); trimmed in groups of 2: 2 x 5 + 1 x 2 (12 / 8), grouped by size
    2 x 2 + 1 x 5 (9 / 8); one at a time 1."""
    sched = Schedule.make(10, 2, 1, 0, trim=True)
    n = np.array([10, 2, 4])
    assert padding_waste(n, sched) == pytest.approx(15 / 8)
    assert padding_waste(n, sched, 2) == pytest.approx(12 / 8)
    assert padding_waste(n, sched, 2, by_size=True) == pytest.approx(9 / 8)
    assert padding_waste(n, sched, 1) == pytest.approx(1.0)
    assert size_order(Schedule.make(10, 2, 1, 5, trim=True), 3) is None  # fixed steps: nothing to trim


def test_local_training_loss_statistic_is_mean_over_active_steps():
    """LocalStats.loss is the mean of the per-step batch losses over non-empty steps."""
    data = make_data(train_sizes=(7, 3), test_sizes=(1, 1))
    model = mlp(data.feature_shape, data.num_classes, (8,))
    lr = 0.1
    sched = Schedule.make(data.max_train, 3, 1, 0)
    opt = optax.sgd(lr)
    task = tasks.classification(model.apply, data.num_classes)
    train = jax.jit(make_local_train(task.loss, opt, sched, data.max_train))
    params = mlp_params()
    key = jax.random.PRNGKey(5)
    rows = jax.tree.map(lambda a: a[0], data.train)
    _, _, stats = train(params, opt.init(params), rows, data.n_train[0], key)
    idx, mask = ref_batches(key, data.n_train[0], data.max_train, sched)
    layers, losses = layers_of(params), []
    for t in range(sched.num_steps):
        rows = idx[t][mask[t]]
        if len(rows):
            loss, grads = ref_loss_and_grads(layers, data.train["x"][0][rows], data.train["y"][0][rows])
            losses.append(loss)
            layers = tree_add(layers, grads, -lr)
    np.testing.assert_allclose(float(stats.loss), np.mean(losses), rtol=1e-5)
    assert int(stats.steps) == len(losses) == 3  # 7 rows in batches of 3


# --------------------------------------------------------------------------------------------
# factored vs materialized


def _cohort_train(data, model, params, formulation, prox_mu, epochs=2, batch=3, lr=0.1, optimizer=None):
    sched = Schedule.make(data.max_train, batch, epochs, 0)
    task = tasks.classification(model.apply, data.num_classes)
    return make_cohort_train(task, DenseLayout(model.layers_of, model.with_layers),
                             optimizer or make_optimizer("sgd", lr), sched, data.max_train, ClientMapping("vmap"),
                             params, formulation, prox_mu)


# prox_mu = 0 through the factored path is checked against a Python loop in test_algorithms.py.
@pytest.mark.parametrize("prox_mu,hidden,opt", [
    (0.5, (8, 5), ("sgd", 0.0, "")),
    (0.0, (8, 5), ("momentum", 0.9, "")),
    (0.5, (8,), ("momentum", 0.7, "")),
    (0.3, (8, 5), ("momentum", 0.9, "nesterov=true")),
    (0.0, (6,), ("sgd", 0.0, "momentum=0.5,nesterov=true")),
])
def test_factored_cohort_training_matches_materialized(prox_mu, hidden, opt):
    """make_cohort_train('factored') gives the same dense deltas (densify), the same weighted
    mean and the same stats as 'materialized' (optax's transform on per-client weights):
    unequal clients (empty steps), one or two hidden layers, prox term, plain / heavy-ball /
    Nesterov momentum (the row-coefficient form of core.factored)."""
    optimizer = make_optimizer(opt[0], 0.1, momentum=opt[1], args=opt[2])
    data = make_data(train_sizes=(5, 9, 3, 7, 2), test_sizes=(1,) * 5)
    model = mlp(data.feature_shape, data.num_classes, hidden)
    params = mlp_params(hidden=hidden)
    keys = jax.random.split(jax.random.PRNGKey(1), data.num_clients)
    args = (params, data.train, data.n_train, keys)
    out = {}
    for form in ("materialized", "factored"):
        train, info = _cohort_train(data, model, params, form, prox_mu, optimizer=optimizer)
        assert info["formulation"] == form
        out[form] = jax.jit(train)(*args)
    (dense_deltas, dense_stats), (low_rank, fact_stats) = out["materialized"], out["factored"]
    assert any(isinstance(leaf, LowRankDelta) for leaf in jax.tree.leaves(
        low_rank, is_leaf=lambda x: isinstance(x, LowRankDelta)))
    chex.assert_trees_all_close(densify(low_rank), dense_deltas, rtol=1e-5, atol=1e-5)
    weights = data.n_train.astype(np.float32)
    chex.assert_trees_all_close(weighted_mean(low_rank, weights), weighted_mean(dense_deltas, weights),
                                rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(fact_stats, dense_stats, rtol=1e-5, atol=1e-6)


def test_factored_train_matches_proximal_sgd_loop():
    """core.factored.make_factored_train for one client (n < N_max): params + (-a^T g) is the
    model that a Python loop of SGD on loss + mu/2 ||w - w0||^2 reaches."""
    data = make_data(train_sizes=(6, 4), test_sizes=(1, 1))
    params = mlp_params(seed=2)
    lr, mu = 0.15, 0.4
    sched = Schedule.make(data.max_train, 4, 2, 0)
    key = jax.random.PRNGKey(3)
    model = mlp(data.feature_shape, data.num_classes, (8,))
    task = tasks.classification(model.apply, data.num_classes)
    factored = jax.jit(make_factored_train(task.output_loss, model.layers_of, model.with_layers,
                                           sched, data.max_train, lr, mu))
    delta, _ = factored(params, jax.tree.map(lambda a: a[1], data.train), data.n_train[1], key)
    # one client's kernels are single LowRankDelta factors a [R, in], g [R, out]
    delta = jax.tree.map(lambda d: -(d.a.T @ d.g) if isinstance(d, LowRankDelta) else d, delta,
                         is_leaf=lambda d: isinstance(d, LowRankDelta))
    start = layers_of(params)
    prox = lambda layers, grads: tree_add(grads, tree_add(layers, start, -1.0), mu)
    ref, _, _ = ref_local_sgd(start, data.train["x"][1], data.train["y"][1], data.n_train[1], key,
                              sched, data.max_train, lr, correction=prox)
    chex.assert_trees_all_close(delta, params_of(params, tree_add(ref, start, -1.0)),
                                rtol=1e-5, atol=1e-5)


def test_low_rank_weighted_mean_equals_mean_of_dense():
    """LowRankDelta.weighted_mean == weighted mean over k of dense()[k] (and dense is -a^T g)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 6, 5)).astype(np.float32)
    g = rng.normal(size=(4, 6, 3)).astype(np.float32)
    w = np.array([1.0, 0.0, 3.0, 2.0], np.float32)
    delta = LowRankDelta(jnp.asarray(a), jnp.asarray(g))
    dense = np.stack([-(a[k].T.astype(np.float64) @ g[k]) for k in range(4)])
    np.testing.assert_allclose(delta.dense(), dense, rtol=1e-5, atol=1e-5)
    expected = np.tensordot(w / w.sum(), dense, axes=1)
    np.testing.assert_allclose(delta.weighted_mean(jnp.asarray(w)), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# aggregators


def test_weighted_mean_matches_hand_computation():
    """weighted_mean over the leading axis of every leaf; zero-weight clients do not count."""
    rng = np.random.default_rng(1)
    tree = {"w": rng.normal(size=(3, 2, 2)).astype(np.float32),
            "b": rng.normal(size=(3, 4)).astype(np.float32)}
    weights = np.array([2.0, 0.0, 6.0], np.float32)
    out = weighted_mean(jax.tree.map(jnp.asarray, tree), jnp.asarray(weights))
    expected = {k: (2.0 * v[0] + 6.0 * v[2]) / 8.0 for k, v in tree.items()}
    chex.assert_trees_all_close(out, expected, rtol=1e-6, atol=1e-6)


def test_server_sgd_one_gives_weighted_mean_of_client_models():
    """server_optimizer(optax.sgd(1.0)) applied to deltas (model - global) is exactly the
    weighted mean of the client models."""
    rng = np.random.default_rng(2)
    params = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=(2,)).astype(np.float32)}
    models = {k: v[None] + rng.normal(size=(4, *v.shape)).astype(np.float32) for k, v in params.items()}
    weights = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    agg = chain(mean(), server_optimizer(optax.sgd(1.0)))
    deltas = jax.tree.map(lambda m, p: m - p[None], models, params)
    new, _, metrics = agg.update(deltas, jnp.asarray(weights), agg.init(params), params)
    assert metrics == {}
    expected = {k: np.tensordot(weights / weights.sum(), v.astype(np.float64), axes=1)
                for k, v in models.items()}
    chex.assert_trees_all_close(new, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# sampling


def test_sample_cohort_distinct_ids_in_range():
    """K distinct ids in [0, C), differing between keys; K >= C gives arange(C)."""
    seen = set()
    for s in range(20):
        idx = np.asarray(sample_cohort(jax.random.PRNGKey(s), 9, 4))
        chex.assert_shape(idx, (4,))
        assert idx.dtype == np.int32
        assert len(set(idx.tolist())) == 4 and idx.min() >= 0 and idx.max() < 9
        seen.add(tuple(sorted(idx.tolist())))
    assert len(seen) > 1
    np.testing.assert_array_equal(sample_cohort(jax.random.PRNGKey(0), 6, 6), np.arange(6))


def test_gather_scatter_round_trip():
    """gather then scatter back is the identity; scatter writes only the cohort rows."""
    rng = np.random.default_rng(3)
    state = {"a": jnp.asarray(rng.normal(size=(6, 2, 3))), "b": jnp.arange(6)}
    idx = jnp.array([4, 0, 2])
    cohort = gather(state, idx)
    chex.assert_shape((cohort["a"], cohort["b"]), [(3, 2, 3), (3,)])
    np.testing.assert_array_equal(cohort["b"], [4, 0, 2])
    chex.assert_trees_all_equal(scatter(state, idx, cohort), state)
    new = scatter(state, idx, jax.tree.map(lambda v: -jnp.ones_like(v), cohort))
    in_cohort = np.isin(np.arange(6), np.asarray(idx))
    for new_leaf, old_leaf in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(new_leaf)[in_cohort], -1)
        np.testing.assert_array_equal(np.asarray(new_leaf)[~in_cohort], np.asarray(old_leaf)[~in_cohort])


@pytest.mark.parametrize("memory", ["device", "pinned_host"])
@pytest.mark.parametrize("outer", [False, True])
def test_update_cohort_matches_python_loop_in_device_and_host_memory(memory, outer):
    """`update_cohort` on a store in device or pinned host memory, jitted over a scan of 3 rounds
    (outer: vmapped over 2 trials with their own cohorts) against a Python loop over rounds and
    clients; the store stays in its memory and only cohort rows change."""
    from fedjax_sim import parallel
    from fedjax_sim.core.clients import in_host_memory, on_device, update_cohort

    C, K, R = 7, 3, 3
    rng = np.random.default_rng(0)
    store0 = {"w": rng.normal(size=(2, C, 4)).astype(np.float32), "n": np.zeros((2, C), np.int32)}
    idx = np.stack([np.stack([rng.permutation(C)[:K] for _ in range(R)]) for _ in range(2)]).astype(np.int32)

    def one_round(store, ids):
        def step(cohort):  # a client's update reads only its own row
            return {"w": cohort["w"] * 0.5 + ids[:, None], "n": cohort["n"] + 1}, jnp.sum(on_device(cohort["w"]))
        return update_cohort(store, ids, step)

    def rounds(store, ids):
        return jax.lax.scan(one_round, store, ids)

    if not outer:
        store0, idx = jax.tree.map(lambda a: a[0], store0), idx[0]
    fn = jax.vmap(rounds) if outer else rounds
    sharding = parallel.one_device().with_memory_kind(memory)
    placed = jax.device_put(store0, sharding)
    assert in_host_memory(placed["w"]) == (memory == "pinned_host")
    got, sums = jax.jit(fn, out_shardings=({"w": sharding, "n": sharding}, parallel.one_device()))(placed, idx)
    assert got["w"].sharding.memory_kind == memory

    ref = jax.tree.map(np.array, store0)
    ref_sums = np.zeros(idx.shape[:-1], np.float32)
    for t in np.ndindex(idx.shape[:-2]):  # trials (none without outer)
        for r in range(R):
            ids = idx[t][r]
            ref_sums[t][r] = ref["w"][t][ids].sum()
            for i in ids:
                ref["w"][t][i] = ref["w"][t][i] * 0.5 + i
                ref["n"][t][i] += 1
    np.testing.assert_allclose(np.asarray(got["w"]), ref["w"], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(got["n"]), ref["n"])
    np.testing.assert_allclose(np.asarray(sums), ref_sums, rtol=1e-5)


def test_host_store_shared_by_vmapped_trials():
    """One host-memory store [C, ...] under trials with their own cohorts: each trial reads its
    rows from it and gets its own copy with its rows written (what vmap means for a shared
    operand)."""
    from fedjax_sim import parallel
    from fedjax_sim.core.clients import gather_cohort, update_cohort

    base = np.arange(12.0, dtype=np.float32).reshape(6, 2)
    store = jax.device_put(base, parallel.one_device().with_memory_kind("pinned_host"))
    idx = jnp.array([[0, 3], [5, 1], [2, 2]])
    rows = jax.jit(jax.vmap(gather_cohort, in_axes=(None, 0)))(store, idx)
    np.testing.assert_array_equal(rows, base[np.asarray(idx)])
    step = lambda s, i: update_cohort(s, i, lambda c: (c * 10, jnp.sum(c)))  # noqa: E731
    out, sums = jax.jit(jax.vmap(step, in_axes=(None, 0)))(store, idx)
    for t, ids in enumerate(np.asarray(idx)):
        ref = base.copy()
        ref[ids] = base[ids] * 10
        np.testing.assert_array_equal(out[t], ref)
        assert float(sums[t]) == base[ids].sum()


# --------------------------------------------------------------------------------------------
# evaluation


def _ref_scores(layers, x, y):
    logits = ref_logits(layers, x)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return (logits.argmax(1) == y).sum(), -logp[np.arange(len(y)), y].sum()


@pytest.mark.parametrize("stacked", [False, True])
def test_evaluate_clients_matches_numpy_loop(stacked):
    """Per-client accuracy on the valid test rows only; a client with no test rows is left out
    of the mean (and reports 0); pooled loss over all valid rows."""
    data = make_data(train_sizes=(3, 3, 3, 3), test_sizes=(3, 0, 5, 2))
    model = mlp(data.feature_shape, data.num_classes, (8,))
    params = mlp_params(clients=data.num_clients) if stacked else mlp_params()
    task = tasks.classification(model.apply, data.num_classes)
    out = jax.jit(lambda p: evaluate_clients(task.metrics, p, data.test, data.n_test, stacked,
                                             "accuracy", ClientMapping("chunked", 3)))(params)
    x_test, y_test = data.test["x"], data.test["y"]
    accs, losses, correct, loss = [], [], 0, 0.0
    for c in range(data.num_clients):
        p = client(params, c) if stacked else params
        n = data.n_test[c]
        if n == 0:
            accs.append(np.nan)  # undefined: no test rows
            continue
        cor, l = _ref_scores(layers_of(p), x_test[c, :n], y_test[c, :n])
        accs.append(cor / n)
        losses.append(l / n)
        correct, loss = correct + cor, loss + l
    total = data.n_test.sum()
    np.testing.assert_allclose(out["personalized_accuracy_per_client"], accs, atol=1e-6)
    np.testing.assert_allclose(out["personalized_accuracy"], np.nanmean(np.array(accs)), atol=1e-6)
    np.testing.assert_allclose(out["pooled_accuracy"], correct / total, atol=1e-6)
    np.testing.assert_allclose(out["pooled_loss"], loss / total, rtol=1e-5)
    np.testing.assert_allclose(out["personalized_loss"], np.mean(losses), rtol=1e-5)
    assert "personalized_loss_per_client" not in out  # only the headline metric per client


def test_evaluate_global_matches_numpy_with_partial_last_batch():
    """Global accuracy and loss over T=7 rows evaluated in batches of 3 (last batch padded)."""
    data = make_data(global_size=7)
    model = mlp(data.feature_shape, data.num_classes, (8,))
    params = mlp_params(seed=4)
    task = tasks.classification(model.apply, data.num_classes)
    out = evaluate_global(task.metrics, params, data.global_test, batch_size=3)
    cor, loss = _ref_scores(layers_of(params), data.global_test["x"], data.global_test["y"])
    np.testing.assert_allclose(out["global_accuracy"], cor / 7, atol=1e-6)
    np.testing.assert_allclose(out["global_loss"], loss / 7, rtol=1e-5)


