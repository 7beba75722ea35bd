"""Data layer: partitioners, sources (embedded, synthetic, regression, TFDS via mocks), the
leak-free builder (train and test pools split before partitioning)."""
import ast
import dataclasses
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fedjax_sim.config import DataConfig
from fedjax_sim.data import DATASETS, PARTITIONS, build_federated, describe, resolve_partition
from fedjax_sim.data import partition as part
from fedjax_sim.data.sources import DIABETES_STRATA, check_finite, quantile_strata, synthetic_fedprox
from fedjax_sim.errors import ConfigError, DataUnavailableError

KNOBS = {
    "iid": {},
    "dirichlet_label": {"alpha": 0.5, "min_size": 5},
    "dirichlet_client": {"alpha": 0.5, "samples_per_client": 40},
    "pathological": {"classes_per_client": 2},
    "dominant_class": {"samples_per_client": 20, "dominant_fraction": 0.2, "dominant_classes": 3},
    "quantity_skew": {"quantity_sigma": 1.0},
}
EXACT_COVER = ("iid", "dirichlet_label", "pathological", "quantity_skew")


def _labels(n=1000, num_classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, num_classes, n)


def _partition(name, labels, num_clients=20, seed=0, **overrides):
    return PARTITIONS[name](labels, num_clients, np.random.default_rng(seed), **{**KNOBS[name], **overrides})


def _cfg(**kw):
    return DataConfig(**kw)


@pytest.mark.parametrize("name", EXACT_COVER)
def test_every_example_in_exactly_one_client(name):
    labels = _labels()
    clients = _partition(name, labels)
    assert len(clients) == 20 and all(len(c) >= 1 and c.dtype == np.int64 for c in clients)
    np.testing.assert_array_equal(np.sort(np.concatenate(clients)), np.arange(len(labels)))


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_no_example_in_two_clients(name):
    clients = _partition(name, _labels())
    flat = np.concatenate(clients)
    assert len(np.unique(flat)) == len(flat)
    assert flat.min() >= 0 and flat.max() < 1000


def test_pathological_at_most_k_classes():
    labels = _labels(2000)
    for k in (1, 2, 3):
        clients = _partition("pathological", labels, num_clients=30, classes_per_client=k)
        assert max(len(np.unique(labels[c])) for c in clients) <= k


def _class_shares(labels, clients, num_classes=10):
    return np.stack([np.bincount(labels[c], minlength=num_classes) / len(c) for c in clients])


def test_dirichlet_client_mix_follows_alpha():
    labels = np.repeat(np.arange(10), 1000)
    uniform = _class_shares(labels, _partition("dirichlet_client", labels, 10, alpha=1000.0,
                                               samples_per_client=500))
    assert np.abs(uniform - 0.1).max() < 0.06
    skewed = _class_shares(labels, _partition("dirichlet_client", labels, 10, alpha=0.01,
                                              samples_per_client=500))
    assert skewed.max(axis=1).mean() > 0.8
    assert all(len(c) == 500 for c in _partition("dirichlet_client", labels, 10, samples_per_client=500))


def test_dirichlet_client_renormalises_when_a_class_runs_out():
    labels = np.repeat(np.arange(4), [5, 100, 100, 100])
    clients = _partition("dirichlet_client", labels, 3, alpha=0.01, samples_per_client=90)
    assert all(len(c) == 90 for c in clients)
    assert len(np.unique(np.concatenate(clients))) == 270


def test_dirichlet_label_alpha_and_min_size():
    labels = _labels(2000)
    skewed = _class_shares(labels, _partition("dirichlet_label", labels, 10, alpha=0.05, min_size=10))
    spread = _class_shares(labels, _partition("dirichlet_label", labels, 10, alpha=100.0, min_size=10))
    assert skewed.max(axis=1).mean() > 0.6 > spread.max(axis=1).mean()
    sizes = [len(c) for c in _partition("dirichlet_label", labels, 50, alpha=0.3, min_size=10)]
    assert min(sizes) >= 10


def test_dirichlet_label_gives_up_with_a_config_error(monkeypatch):
    monkeypatch.setattr(part, "MAX_DIRICHLET_TRIES", 20)
    with pytest.raises(ConfigError) as err:
        _partition("dirichlet_label", _labels(), 50, alpha=0.01, min_size=19)
    assert err.value.field == "data.min_size" and "data.alpha" in str(err.value)
    with pytest.raises(ConfigError, match="data.min_size"):  # infeasible at once: 50 * 30 > 1000
        _partition("dirichlet_label", _labels(), 50, min_size=30)


def test_dominant_class_groups_match_the_spec():
    assert part.dominant_class_groups(10, 3) == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8], [8, 9, 0]]
    assert part.dominant_class_groups(10, 1) == [[k] for k in range(10)]


def test_dominant_class_on_digits_with_replacement():
    """The official walk: sequential per class block, wrapping (reuse) once a block runs out."""
    s = 0.2
    labels = DATASETS["digits"](_cfg(), np.random.default_rng(0)).y_pool
    clients = _partition("dominant_class", labels, 20, samples_per_client=100, dominant_fraction=s,
                         with_replacement=True)
    groups = part.dominant_class_groups(10, 3)
    for c, idx in enumerate(clients):
        group = groups[c * 5 // 20]
        counts = np.bincount(labels[idx], minlength=10)
        assert len(idx) == 100 and len(np.unique(idx)) == 100  # never twice within a client
        assert counts[group].sum() / 100 >= 1 - s
        assert counts[group].sum() == 80 + 2 * len(group)  # 80 dominant + 2 per class IID
    # The code's sequential walk, over each class block shuffled by the seed: the first client
    # gets the first rows of the shuffled block of class 1.
    _check_walk(clients, labels, 2 + 27)
    flat = np.concatenate(clients)
    assert len(np.unique(flat)) < len(flat)  # 20 x 100 > 1797: the blocks wrapped
    with pytest.raises(ConfigError) as err:  # the same request without replacement is refused
        _partition("dominant_class", labels, 20, samples_per_client=100, dominant_fraction=s)
    assert err.value.field == "data.samples_per_client"


def test_dominant_class_without_replacement_never_wraps():
    labels = DATASETS["digits"](_cfg(), np.random.default_rng(0)).y_pool
    largest = part.dominant_class_max_size(labels, 20)
    clients = _partition("dominant_class", labels, 20, samples_per_client=0)
    flat = np.concatenate(clients)
    assert all(len(c) == largest for c in clients) and len(np.unique(flat)) == len(flat)
    # The bound is tight: one more per client needs some example twice.
    over = _partition("dominant_class", labels, 20, samples_per_client=largest + 1, with_replacement=True)
    flat = np.concatenate(over)
    assert len(np.unique(flat)) < len(flat)
    # Sequential walk without wrap over the seed's shuffled blocks.
    iid, grp = part._dominant_counts(largest, 10, 0.2, 3)
    _check_walk(clients, labels, iid[1] + grp[1])


def _check_walk(clients, labels, first_count):
    """Client 0 holds the first rows of class 1's block, the blocks shuffled in class order by
    the partition's generator (seed 0 in `_partition`)."""
    rng = np.random.default_rng(0)
    block = [rng.permutation(np.flatnonzero(labels == k)) for k in range(10)][1]
    np.testing.assert_array_equal(np.sort(clients[0][labels[clients[0]] == 1]), np.sort(block[:first_count]))


def test_dominant_class_varies_with_the_seed_not_its_counts():
    labels = DATASETS["digits"](_cfg(), np.random.default_rng(0)).y_pool
    a = part.dominant_class(labels, 20, np.random.default_rng(1))
    b = part.dominant_class(labels, 20, np.random.default_rng(2))
    assert any(set(x.tolist()) != set(y.tolist()) for x, y in zip(a, b))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.bincount(labels[x], minlength=10), np.bincount(labels[y], minlength=10))


def test_quantity_skew_sizes():
    labels = _labels(5000)
    sizes = np.array([len(c) for c in _partition("quantity_skew", labels, 50, quantity_sigma=1.5)])
    assert sizes.sum() == 5000 and sizes.min() >= 1 and sizes.max() > 3 * np.median(sizes)
    flat = np.array([len(c) for c in _partition("quantity_skew", labels, 50, quantity_sigma=0.0)])
    assert flat.max() - flat.min() <= 1


def test_stratified_split_keeps_the_mix():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 3, 7], [50, 30, 20])
    train, test = part.stratified_split(labels, 0.2, rng)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    np.testing.assert_array_equal(np.bincount(labels[test], minlength=8)[[0, 3, 7]], [10, 6, 4])
    assert part.stratified_split(np.array([4]), 0.5, rng)[1].size == 0  # one example: no test row
    assert part.stratified_split(np.array([1, 2]), 0.9, rng)[0].size == 1  # >= 1 train row


def test_draw_client_tests_follows_demand_and_apportions_a_short_pool():
    rng = np.random.default_rng(0)
    train = np.repeat([0, 1, 2], [100, 100, 100])
    clients = [np.arange(0, 80), np.arange(80, 100), np.arange(100, 200), np.arange(200, 300)]
    # class 0 supply 100 (enough), class 1: 10 for a demand of 25 (short), class 2: 0.
    test = np.repeat([0, 1], [100, 10])
    drawn = part.draw_client_tests(train, clients, test, 0.2, rng)
    flat = np.concatenate(drawn)
    assert len(np.unique(flat)) == len(flat)  # without replacement, disjoint across clients
    counts = np.stack([np.bincount(test[d], minlength=3) for d in drawn])
    np.testing.assert_array_equal(counts, [[20, 0, 0], [5, 0, 0], [0, 10, 0], [0, 0, 0]])
    # A short class is shared in proportion to demand: 10 rows for demands 20 and 5 -> 8 and 2.
    clients = [np.arange(100, 180), np.arange(180, 200)]
    drawn = part.draw_client_tests(train, clients, test, 0.2, rng)
    np.testing.assert_array_equal([len(d) for d in drawn], [8, 2])
    with pytest.raises(ConfigError, match="data.test_fraction"):
        part.draw_client_tests(train, clients, test, 1.0, rng)


# ---------------------------------------------------------------------------------------------
# The builder: pools split before partitioning, no leak, at-most-once.


def _digits_x():
    return DATASETS["digits"](_cfg(), np.random.default_rng(0)).x_pool


def _leaves(data):
    return [data.train["x"], data.train["y"], data.n_train, data.test["x"], data.test["y"],
            data.n_test, data.global_test["x"], data.global_test["y"]]


def _check_no_leak(data, asg, source_x=None):
    """The leak contract on row indices (contents would false-positive: digits has duplicates).

    Also ties the assignment to the arrays, so the index check is about the data a run sees.
    """
    C = data.num_clients
    assert len(asg.train) == len(asg.test) == C
    train_ids = np.concatenate([asg.client_train_ids(c) for c in range(C)])
    test_ids = np.concatenate([asg.client_test_ids(c) for c in range(C)])
    # No client's test example is in any client's training set; no test-pool row is trained on.
    assert not np.isin(test_ids, train_ids).any()
    assert not np.isin(asg.test_source_ids, train_ids).any()
    assert not np.isin(asg.test_source_ids, asg.train_source_ids).any()
    # Client test sets are drawn without replacement, disjoint across clients, from the test pool.
    assert len(np.unique(test_ids)) == len(test_ids)
    for c in range(C):
        n, m = int(data.n_train[c]), int(data.n_test[c])
        assert len(asg.train[c]) == n and len(asg.test[c]) == m
        if source_x is not None:
            np.testing.assert_array_equal(data.train["x"][c, :n], source_x[asg.client_train_ids(c)])
            np.testing.assert_array_equal(data.test["x"][c, :m], source_x[asg.client_test_ids(c)])
        np.testing.assert_array_equal(data.test["x"][c, :m], data.global_test["x"][asg.test[c]])
        np.testing.assert_array_equal(data.test["y"][c, :m], data.global_test["y"][asg.test[c]])
    assert data.global_size == len(asg.test_source_ids)  # global test = the whole test pool
    if source_x is not None:
        np.testing.assert_array_equal(data.global_test["x"], source_x[asg.test_source_ids])


def _assert_at_most_once(asg):
    train_ids = np.concatenate(asg.train)
    assert len(np.unique(train_ids)) == len(train_ids)


POOLED = [name for name in PARTITIONS if name != "natural"]
DIGITS_CASES = [(name, {}) for name in POOLED] + [("dominant_class", {"with_replacement": True})]


@pytest.mark.parametrize("name, extra", DIGITS_CASES,
                         ids=[n + ("-with_replacement" if e else "") for n, e in DIGITS_CASES])
def test_no_client_test_example_is_trained_on(name, extra):
    """(a) every registered partition on digits, dominant_class with and without replacement."""
    data, asg = build_federated(_cfg(partition=name, **extra), 3, return_assignment=True)
    _check_no_leak(data, asg, _digits_x())
    assert (np.asarray(data.n_test) >= 1).all() and (np.asarray(data.n_train) >= 1).all()
    if extra.get("with_replacement"):  # the default size (pool // C) does reuse training rows ...
        train_ids = np.concatenate(asg.train)
        assert len(np.unique(train_ids)) < len(train_ids)


@pytest.mark.parametrize("name", POOLED)
def test_every_partitioner_is_at_most_once_by_default(name):
    """(b) with the default config knobs, on digits (the sizes a run actually gets)."""
    data, asg = build_federated(_cfg(partition=name), 0, return_assignment=True)
    _assert_at_most_once(asg)
    assert int(np.sum(data.n_train)) <= len(asg.train_source_ids)


def test_synthetic_is_at_most_once_and_leak_free():
    data, asg = build_federated(_cfg(dataset="synthetic", num_clients=10), 0, return_assignment=True)
    _assert_at_most_once(asg)
    _check_no_leak(data, asg)


@pytest.mark.parametrize("partition, kw", [("dirichlet_label", {"alpha": 0.2}),
                                           ("dominant_class", {}),
                                           ("pathological", {})])
def test_client_test_mix_follows_its_train_mix(partition, kw):
    """(c) per class, a client's test count is its demand (scaled down pro rata where the pool's
    class cannot meet the total demand), up to largest-remainder rounding."""
    f = 0.25
    data, asg = build_federated(_cfg(partition=partition, test_fraction=f, **kw), 3,
                                return_assignment=True)
    ratio = f / (1 - f)
    train = np.stack([np.bincount(data.train["y"][c, :data.n_train[c]], minlength=10)
                      for c in range(data.num_clients)])
    test = np.stack([np.bincount(data.test["y"][c, :data.n_test[c]], minlength=10)
                     for c in range(data.num_clients)])
    supply = np.bincount(data.global_test["y"], minlength=10)
    demand = train * ratio
    scale = np.minimum(1.0, supply / np.maximum(demand.sum(axis=0), 1e-9))
    assert np.abs(test - demand * scale).max() <= 1.0 + 1e-6
    # Where the pool suffices (digits: global_test_fraction 0.2 gives ~36 per class for a total
    # demand of ~48), sizes track f of train + test per client.
    sizes = np.asarray(data.n_test) / (np.asarray(data.n_train) + np.asarray(data.n_test))
    if partition == "dominant_class":
        assert np.abs(sizes - f).max() < 0.05
    # A client never gets a class it does not train on.
    assert not ((train == 0) & (test > 0)).any()


def test_client_test_sizes_follow_test_fraction():
    data = build_federated(_cfg(alpha=0.2, test_fraction=0.2), 3)
    n_tr, n_te = np.asarray(data.n_train), np.asarray(data.n_test)
    # Per class rounding: within about one row per class the client trains on.
    classes = [len(np.unique(data.train["y"][c, :n_tr[c]])) for c in range(data.num_clients)]
    assert (np.abs(n_te - n_tr * 0.25) <= np.asarray(classes) + 1).all()
    assert abs(n_te.sum() - min(n_tr.sum() * 0.25, data.global_size)) <= 10


def test_dominant_class_default_size_needs_no_reuse():
    """(d) default = largest size without reuse; one more is a ConfigError naming the field."""
    data, asg = build_federated(_cfg(partition="dominant_class"), 0, return_assignment=True)
    n = int(data.n_train[0])
    assert (np.asarray(data.n_train) == n).all()
    _assert_at_most_once(asg)
    # The size is the largest without reuse on this train pool.
    src = DATASETS["digits"](_cfg(), np.random.default_rng(0))
    pool_labels = src.y_pool[asg.train_source_ids]
    assert n == part.dominant_class_max_size(pool_labels, 20) and n > 40
    with pytest.raises(ConfigError) as err:
        build_federated(_cfg(partition="dominant_class", samples_per_client=n + 1), 0)
    assert err.value.field == "data.samples_per_client"
    assert f"[1, {n}]" in str(err.value) and "data.with_replacement=true" in str(err.value)
    explicit = build_federated(_cfg(partition="dominant_class", samples_per_client=n), 0)
    np.testing.assert_array_equal(explicit.train["x"], data.train["x"])
    reused, asg = build_federated(_cfg(partition="dominant_class", samples_per_client=n + 1,
                                       with_replacement=True), 0, return_assignment=True)
    assert (np.asarray(reused.n_train) == n + 1).all()
    _check_no_leak(reused, asg, _digits_x())


def test_dominant_class_build_keeps_groups():
    data = build_federated(_cfg(partition="dominant_class", samples_per_client=40), 0)
    np.testing.assert_array_equal(data.n_train, 40)
    assert (np.abs(np.asarray(data.n_test) - 10) <= 3).all()
    for c in range(20):
        group = part.dominant_class_groups(10, 3)[c * 5 // 20]
        assert np.isin(data.train["y"][c, :40], group).mean() >= 0.8
        assert np.isin(data.test["y"][c, :data.n_test[c]], group).mean() >= 0.7


@pytest.mark.parametrize("partition", ["iid", "dirichlet_label", "pathological"])
def test_seeds_reproduce(partition):
    a = build_federated(_cfg(partition=partition), 7)
    b = build_federated(_cfg(partition=partition), 7)
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)
    c = build_federated(_cfg(partition=partition), 8)
    assert not np.array_equal(a.train["x"], c.train["x"])
    pinned = build_federated(_cfg(partition=partition, seed=7), 123)  # data.seed overrides the run seed
    np.testing.assert_array_equal(pinned.train["x"], a.train["x"])


# ---------------------------------------------------------------------------------------------
# diabetes: the embedded regression source


def _diabetes_source():
    return DATASETS["diabetes"](_cfg(dataset="diabetes"), np.random.default_rng(0))


def test_diabetes_source_and_strata():
    src = _diabetes_source()
    assert src.x_pool.shape == (442, 10) and src.y_pool.shape == (442,)
    assert src.x_test is None and src.target_kind == "real" and src.num_classes == 0
    assert src.strata.shape == (442,) and set(np.unique(src.strata)) == set(range(DIABETES_STRATA))
    counts = np.bincount(src.strata)
    assert counts.min() >= 80  # quintiles of 442
    # Higher strata hold higher targets.
    assert all(src.y_pool[src.strata == k].max() <= src.y_pool[src.strata == k + 1].min()
               for k in range(DIABETES_STRATA - 1))
    np.testing.assert_array_equal(quantile_strata(np.arange(10.0), 5), np.repeat(np.arange(5), 2))


def test_diabetes_builds_with_real_standardized_targets():
    """(e) float targets, train-pool standardization, shapes, auto = iid, no leak."""
    cfg = _cfg(dataset="diabetes")
    assert resolve_partition(cfg) == "iid"
    data, asg = build_federated(cfg, 0, return_assignment=True)
    assert data.target_kind == "real" and data.num_classes == 0
    assert data.feature_shape == (10,) and data.target_shape == ()
    assert data.train["y"].dtype == np.float32 and data.train["x"].dtype == np.float32
    assert data.train["y"].shape == data.train["x"].shape[:2]
    assert data.test["y"].shape == data.test["x"].shape[:2]
    assert data.global_test["y"].shape == (data.global_size,) and data.global_size == round(0.2 * 442)
    assert int(np.sum(data.n_train)) + data.global_size == 442  # iid covers the whole train pool
    _check_no_leak(data, asg)
    # Standardized with train-pool statistics: the union of the clients' train rows is that pool.
    y = np.concatenate([data.train["y"][c, :data.n_train[c]] for c in range(data.num_clients)])
    x = np.concatenate([data.train["x"][c, :data.n_train[c]] for c in range(data.num_clients)])
    np.testing.assert_allclose([y.mean(), y.std()], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-5)
    # The same affine map on the test pool, which is not itself re-centred.
    src = _diabetes_source()
    raw_train, raw_test = src.y_pool[asg.train_source_ids], src.y_pool[asg.test_source_ids]
    expected = (raw_test - raw_train.astype(np.float64).mean()) / raw_train.astype(np.float64).std()
    np.testing.assert_allclose(data.global_test["y"], expected, rtol=1e-5, atol=1e-5)
    info = describe(data)
    assert info["target_kind"] == "real" and info["num_classes"] == 0 and info["target_shape"] == []


DIABETES_CASES = {
    "iid": {},
    "quantity_skew": {},
    "dirichlet_label": {"alpha": 0.3, "min_size": 10},
    "dirichlet_client": {"alpha": 0.3},
    "pathological": {"classes_per_client": 1},
    "dominant_class": {"dominant_classes": 2},
}


@pytest.mark.parametrize("name", sorted(DIABETES_CASES))
def test_diabetes_strata_partitions(name):
    """(e) the label-based partitioners run on target strata and stay leak-free."""
    data, asg = build_federated(_cfg(dataset="diabetes", partition=name, num_clients=8,
                                     **DIABETES_CASES[name]), 1, return_assignment=True)
    _check_no_leak(data, asg)
    _assert_at_most_once(asg)
    assert data.num_clients == 8 and (np.asarray(data.n_train) >= 1).all()
    assert data.train["y"].dtype == np.float32
    strata = _diabetes_source().strata
    if name == "pathological":  # one stratum per client: train and test targets from one bin
        for c in range(8):
            assert len(np.unique(strata[asg.client_train_ids(c)])) == 1
            assert set(strata[asg.client_test_ids(c)]) <= set(strata[asg.client_train_ids(c)])
    if name == "dirichlet_label":  # label skew over strata shows in the client target means
        means = [data.train["y"][c, :data.n_train[c]].mean() for c in range(8)]
        assert np.std(means) > 0.2


# ---------------------------------------------------------------------------------------------
# synthetic, digits, errors, TFDS


def test_synthetic_generator_statistics():
    x, y, ids, w, b = synthetic_fedprox(30, np.random.default_rng(0), alpha=1.0, beta=1.0, iid=False)
    sizes = np.bincount(ids)
    assert x.shape == (len(y), 60) and x.dtype == np.float32 and y.dtype == np.int32
    assert w.shape == (30, 60, 10) and b.shape == (30, 10)
    assert len(sizes) == 30 and sizes.min() >= 50 and sizes.max() <= 10_000
    logits = np.einsum("nd,ndk->nk", x.astype(np.float64), w[ids]) + b[ids]
    np.testing.assert_array_equal(y, np.argmax(logits, axis=1))
    assert y.min() >= 0 and y.max() <= 9
    xi, yi, idsi, wi, _ = synthetic_fedprox(30, np.random.default_rng(1), alpha=0, beta=0, iid=True)
    np.testing.assert_array_equal(wi[0], wi[-1])  # shared model in the IID variant
    var = xi.var(axis=0)
    np.testing.assert_allclose(var[[0, 9, 59]], np.array([1, 10, 60], float) ** -1.2, rtol=0.25)
    assert abs(xi.mean()) < 0.05


def test_synthetic_build_uses_fedprox_split():
    """(f) FedProx's per-device 90/10: the first floor(0.9 n_k) rows train, the rest test."""
    cfg = _cfg(dataset="synthetic", num_clients=10, synthetic_alpha=0.5, synthetic_beta=0.5)
    data = build_federated(cfg, 0)
    assert resolve_partition(_cfg(dataset="synthetic")) == "natural"
    total = np.asarray(data.n_train) + np.asarray(data.n_test)
    np.testing.assert_array_equal(data.n_train, 9 * total // 10)
    assert total.min() >= 50 and data.feature_shape == (60,) and data.num_classes == 10
    assert data.global_size == int(np.sum(data.n_test))
    # Global test = every device's test rows, in device order; each device's are its last rows.
    x, y, ids, _, _ = synthetic_fedprox(10, np.random.default_rng(np.random.SeedSequence(0).spawn(4)[0]),
                                        alpha=0.5, beta=0.5, iid=False)
    for c in range(10):
        rows = np.flatnonzero(ids == c)
        n = int(data.n_train[c])
        np.testing.assert_array_equal(data.train["x"][c, :n], x[rows[:n]])
        np.testing.assert_array_equal(data.test["x"][c, :data.n_test[c]], x[rows[n:]])
    np.testing.assert_array_equal(
        data.global_test["x"],
        np.concatenate([data.test["x"][c, :data.n_test[c]] for c in range(10)]))


def test_digits_shapes_and_global_holdout():
    data = build_federated(_cfg(num_clients=10, partition="iid", global_test_fraction=0.2), 0)
    assert data.feature_shape == (8, 8, 1) and data.train["x"].dtype == np.float32
    assert data.train["y"].dtype == np.int32 and data.target_kind == "class"
    assert 0.0 <= data.train["x"].min() and data.train["x"].max() <= 1.0
    assert data.global_size == round(0.2 * 1797)
    # iid covers the whole train pool; the test pool is the global test set.
    assert int(np.sum(data.n_train)) + data.global_size == 1797
    assert int(np.sum(data.n_test)) <= data.global_size
    info = describe(data)
    assert info["num_clients"] == 10 and info["train_per_client"]["total"] == int(np.sum(data.n_train))
    assert info["global_test"] == data.global_size and info["target_kind"] == "class"


@pytest.mark.parametrize("kw, field", [
    ({"dataset": "nope"}, "data.dataset"),
    ({"partition": "nope"}, "data.partition"),
    ({"partition": "natural"}, "data.partition"),
    ({"dataset": "synthetic", "partition": "iid"}, "data.partition"),
    ({"num_clients": 5000}, "data.num_clients"),
    ({"alpha": 0.0}, "data.alpha"),
    ({"partition": "dirichlet_client", "alpha": -1.0}, "data.alpha"),
    ({"partition": "pathological", "classes_per_client": 11}, "data.classes_per_client"),
    ({"partition": "pathological", "num_clients": 2, "classes_per_client": 2}, "data.classes_per_client"),
    ({"partition": "dirichlet_client", "samples_per_client": 10_000}, "data.samples_per_client"),
    ({"partition": "dominant_class", "samples_per_client": 500}, "data.samples_per_client"),
    ({"partition": "dominant_class", "samples_per_client": 600, "with_replacement": True},
     "data.samples_per_client"),  # one client would need a row of a class twice
    ({"partition": "dominant_class", "dominant_classes": 11}, "data.dominant_classes"),
    ({"partition": "iid", "with_replacement": True}, "data.with_replacement"),
    ({"with_replacement": True}, "data.with_replacement"),  # auto = dirichlet_label
    ({"partition": "quantity_skew", "quantity_sigma": -1.0}, "data.quantity_sigma"),
    ({"global_test_fraction": 1.5}, "data.global_test_fraction"),
    ({"test_fraction": 0.0}, "data.test_fraction"),
    ({"seed": -2}, "data.seed"),
])
def test_bad_inputs_name_the_field(kw, field):
    with pytest.raises(ConfigError) as err:
        build_federated(_cfg(**kw), 0)
    assert err.value.field == field


def test_non_finite_inputs_are_rejected():
    with pytest.raises(ConfigError, match="2 non-finite") as err:
        check_finite(np.array([1.0, np.nan, np.inf]), None)
    assert err.value.field == "data"


def test_data_does_not_import_config():
    """Floors: `data` reads a DataConfig-like object and never imports `fedjax_sim.config`."""
    root = pathlib.Path(__file__).resolve().parents[1] / "fedjax_sim" / "data"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "fedjax_sim.config" or n.startswith("fedjax_sim.config.")
                           for n in names), f"{path.name} imports fedjax_sim.config"
    code = ("import sys, types; from fedjax_sim.data import build_federated; "
            "from fedjax_sim.data.partition import PARTITIONS; "
            "cfg = types.SimpleNamespace(dataset='digits', partition='iid', num_clients=4, seed=-1, "
            "test_fraction=0.2, global_test_fraction=0.2, data_dir=''); "
            "d = build_federated(cfg, 0); assert d.num_clients == 4; "
            "assert 'fedjax_sim.config' not in sys.modules, 'config imported'")
    repo = root.parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo, env=env)



@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_sources_with_mock_data(name, shape, no_network, tmp_path):
    """(g) the real loading path on tfds.testing.mock_data: train split = train pool, test split
    = test pool (and global test set), no network."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        src = DATASETS[name](_cfg(dataset=name, data_dir=str(tmp_path)), np.random.default_rng(0))
        data, asg = build_federated(_cfg(dataset=name, num_clients=3, partition="iid",
                                         data_dir=str(tmp_path)), 0, return_assignment=True)
    assert src.x_pool.shape == (24, *shape) and src.x_pool.dtype == np.float32
    assert src.x_test.shape == (24, *shape) and src.y_pool.dtype == np.int32
    assert 0.0 <= src.x_pool.min() and src.x_pool.max() <= 1.0 and src.x_pool.max() > 0.5
    assert src.num_classes == 10 and 0 <= src.y_pool.min() and src.y_pool.max() < 10
    assert data.feature_shape == shape and int(np.sum(data.n_train)) == 24
    assert data.global_size == 24 and 1 <= int(np.sum(data.n_test)) <= 24
    np.testing.assert_array_equal(asg.test_source_ids, np.arange(24, 48))  # ids after the train split
    _check_no_leak(data, asg, np.concatenate([src.x_pool, src.x_test]))
    assert not no_network


def test_unprepared_tfds_dataset_says_how_to_prepare(no_network, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataUnavailableError) as err:
        build_federated(_cfg(dataset="mnist", data_dir=str(tmp_path)), 0)
    message = str(err.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert "tfds build mnist" in message and "data.data_dir" in message
    assert not no_network


def test_every_registered_partition_builds_on_digits():
    for name in PARTITIONS:
        if name == "natural":
            continue
        data = build_federated(dataclasses.replace(_cfg(num_clients=8), partition=name), 1)
        assert data.num_clients == 8 and (np.asarray(data.n_train) >= 1).all()
        assert set(data.train) == set(data.test) == set(data.global_test) == {"x", "y"}
