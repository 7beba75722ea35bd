"""Data layer: partitioners, sources (embedded, synthetic, TFDS via mocks), the builder."""
import dataclasses
import socket

import numpy as np
import pytest

from fedjax_sim.config import DataConfig
from fedjax_sim.data import DATASETS, PARTITIONS, build_federated, describe, resolve_partition
from fedjax_sim.data import partition as part
from fedjax_sim.data.sources import check_finite, synthetic_fedprox
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


def test_dominant_class_on_digits():
    s = 0.2
    labels = DATASETS["digits"](_cfg(), np.random.default_rng(0)).y_pool
    clients = _partition("dominant_class", labels, 20, samples_per_client=100, dominant_fraction=s)
    groups = part.dominant_class_groups(10, 3)
    for c, idx in enumerate(clients):
        group = groups[c * 5 // 20]
        counts = np.bincount(labels[idx], minlength=10)
        assert len(idx) == 100 and counts.sum() == 100
        assert counts[group].sum() / 100 >= 1 - s
        assert counts[group].sum() == 80 + 2 * len(group)  # 80 dominant + 2 per class IID
    # The sampling is the code's sequential walk: the first client gets each class's first rows.
    first = np.flatnonzero(labels == 1)[:2 + 27]
    np.testing.assert_array_equal(np.sort(clients[0][labels[clients[0]] == 1]), np.sort(first))


def test_dominant_class_build_merges_and_splits_per_client():
    data = build_federated(_cfg(partition="dominant_class", samples_per_client=50, test_fraction=0.2), 0)
    np.testing.assert_array_equal(data.n_train, 40)
    np.testing.assert_array_equal(data.n_test, 10)
    for c in range(20):
        y_all = np.concatenate([data.y_train[c, :40], data.y_test[c, :10]])
        group = part.dominant_class_groups(10, 3)[c * 5 // 20]
        assert np.isin(y_all, group).mean() >= 0.8
    assert len(data.y_global) > 0


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


def test_client_test_split_follows_client_distribution():
    data = build_federated(_cfg(alpha=0.2, test_fraction=0.25), 3)
    assert (np.asarray(data.n_train) >= 1).all()
    for c in range(data.num_clients):
        n_tr, n_te = int(data.n_train[c]), int(data.n_test[c])
        train_counts = np.bincount(data.y_train[c, :n_tr], minlength=10)
        test_counts = np.bincount(data.y_test[c, :n_te], minlength=10)
        expected = (train_counts + test_counts) * n_te / (n_tr + n_te)
        assert np.abs(test_counts - expected).max() <= 1.0


def _leaves(data):
    return [data.x_train, data.y_train, data.n_train, data.x_test, data.y_test, data.n_test,
            data.x_global, data.y_global]


@pytest.mark.parametrize("partition", ["iid", "dirichlet_label", "pathological"])
def test_seeds_reproduce(partition):
    a = build_federated(_cfg(partition=partition), 7)
    b = build_federated(_cfg(partition=partition), 7)
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)
    c = build_federated(_cfg(partition=partition), 8)
    assert not np.array_equal(a.x_train, c.x_train)
    pinned = build_federated(_cfg(partition=partition, seed=7), 123)  # data.seed overrides the run seed
    np.testing.assert_array_equal(pinned.x_train, a.x_train)


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
    data = build_federated(_cfg(dataset="synthetic", num_clients=10, synthetic_alpha=0.5,
                                synthetic_beta=0.5), 0)
    assert resolve_partition(_cfg(dataset="synthetic")) == "natural"
    total = np.asarray(data.n_train) + np.asarray(data.n_test)
    np.testing.assert_array_equal(data.n_train, 9 * total // 10)
    assert total.min() >= 50 and data.feature_shape == (60,) and data.num_classes == 10
    assert len(data.y_global) == int(np.sum(data.n_test))


def test_digits_shapes_and_global_holdout():
    data = build_federated(_cfg(num_clients=10, partition="iid", global_test_fraction=0.2), 0)
    assert data.feature_shape == (8, 8, 1) and data.x_train.dtype == np.float32
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert len(data.y_global) == round(0.2 * 1797)
    assert int(np.sum(data.n_train) + np.sum(data.n_test)) + len(data.y_global) == 1797
    info = describe(data)
    assert info["num_clients"] == 10 and info["train_per_client"]["total"] == int(np.sum(data.n_train))


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
    ({"partition": "dominant_class", "dominant_classes": 11}, "data.dominant_classes"),
    ({"partition": "quantity_skew", "quantity_sigma": -1.0}, "data.quantity_sigma"),
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


@pytest.fixture
def no_network(monkeypatch):
    """Records (and refuses) every attempt to open a connection or resolve a name."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_sources_with_mock_data(name, shape, no_network, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        src = DATASETS[name](_cfg(dataset=name, data_dir=str(tmp_path)), np.random.default_rng(0))
        data = build_federated(_cfg(dataset=name, num_clients=3, partition="iid",
                                    data_dir=str(tmp_path)), 0)
    assert src.x_pool.shape == (24, *shape) and src.x_pool.dtype == np.float32
    assert src.x_test.shape == (24, *shape) and src.y_pool.dtype == np.int32
    assert 0.0 <= src.x_pool.min() and src.x_pool.max() <= 1.0 and src.x_pool.max() > 0.5
    assert src.num_classes == 10 and 0 <= src.y_pool.min() and src.y_pool.max() < 10
    assert data.feature_shape == shape and int(np.sum(data.n_train) + np.sum(data.n_test)) == 24
    assert len(data.y_global) == 24 and not no_network


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
