"""FLoRAL's data (``specs/floral.md`` §5-6): the `clusters` partition (rotate / label_shift by
cluster = client id mod M) and the `floral_synthetic` regression source, plus the
`FederatedData.cluster` field they set."""
from __future__ import annotations

import math

import chex
import numpy as np
import pytest

from fedjax_sim import cli
from fedjax_sim.config import DataConfig
from fedjax_sim.data import (DATASETS, build_federated, describe, make_federated, stack_trials,
                             validate_data_config)
from fedjax_sim.data import clusters as cl
from fedjax_sim.data.federated import trial
from fedjax_sim.data.sources import Source
from fedjax_sim.errors import ConfigError


def _digits():
    src = DATASETS["digits"](DataConfig(), np.random.default_rng(0))
    return src.x_pool, src.y_pool


def _build(**kw):
    seed = kw.pop("run_seed", 0)
    return build_federated(DataConfig(**kw), seed, return_assignment=True)


# ----------------------------------------------------------------------------------------------
# rotation


def _rotate_reference(image, angle):
    """Plain Python: nearest-neighbour CCW rotation about the centre, zero fill, one pixel at a
    time (image: nested lists [H][W])."""
    h, w = len(image), len(image[0])
    cy, cx = (h - 1) / 2, (w - 1) / 2
    t = math.radians(angle)
    out = [[0.0] * w for _ in range(h)]
    for i in range(h):
        for j in range(w):
            x, y = j - cx, cy - i  # y up
            xs = math.cos(t) * x + math.sin(t) * y  # rotate back by -angle
            ys = -math.sin(t) * x + math.cos(t) * y
            r, c = round(round(cy - ys, 9)), round(round(cx + xs, 9))  # exact ties: half to even
            if 0 <= r < h and 0 <= c < w:
                out[i][j] = image[r][c]
    return out


def test_rotate_45_nearest_matches_hand_computed():
    image = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    # 1 2 3        2 3 6
    # 4 5 6  -->   1 5 9   (45 degrees counter-clockwise, nearest, by hand)
    # 7 8 9        4 7 8
    expected = np.array([[2, 3, 6], [1, 5, 9], [4, 7, 8]], np.float32)
    chex.assert_trees_all_equal(cl.rotate_images(image, 45)[0, :, :, 0], expected)
    chex.assert_trees_all_equal(cl.rotate_nearest(image, 45)[0, :, :, 0], expected)


@pytest.mark.parametrize("shape, angle", [((5, 5), 45), ((5, 4), 45), ((6, 6), 120), ((4, 7), 90),
                                          ((5, 5), -30)])
def test_rotate_nearest_matches_plain_python(shape, angle):
    rng = np.random.default_rng(1)
    images = rng.random((2, *shape, 2)).astype(np.float32)
    got = cl.rotate_images(images, angle)
    assert got.shape == images.shape
    for n in range(2):
        for ch in range(2):
            ref = np.array(_rotate_reference(images[n, :, :, ch].tolist(), angle), np.float32)
            np.testing.assert_array_equal(got[n, :, :, ch], ref)
    if shape == (5, 5) and angle == 45:  # the corners' sources fall outside: zero fill
        assert (got[:, 0, 0] == 0).all()


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rot90_path_equals_nearest_rotation(k):
    images = np.random.default_rng(0).random((3, 6, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(cl.rotate_images(images, 90 * k), np.rot90(images, k, axes=(1, 2)))
    np.testing.assert_array_equal(cl.rotate_nearest(images, 90 * k), np.rot90(images, k, axes=(1, 2)))


# ----------------------------------------------------------------------------------------------
# the clusters partition on digits


def test_rotate_by_cluster_equals_rot90_and_cluster_is_client_mod_m():
    data, asg = _build(partition="clusters", num_clients=10, num_clusters=4, cluster_transform="rotate")
    x, y = _digits()
    chex.assert_trees_all_equal(np.asarray(data.cluster), np.arange(10, dtype=np.int32) % 4)
    assert data.cluster.dtype == np.int32
    for k in range(10):
        c, n, m = k % 4, int(data.n_train[k]), int(data.n_test[k])
        np.testing.assert_array_equal(data.train["x"][k, :n], np.rot90(x[asg.client_train_ids(k)], c, axes=(1, 2)))
        np.testing.assert_array_equal(data.train["y"][k, :n], y[asg.client_train_ids(k)])
        # the client's own test rows, drawn as usual, then rotated with its cluster
        assert m >= 1
        np.testing.assert_array_equal(data.test["x"][k, :m], np.rot90(x[asg.client_test_ids(k)], c, axes=(1, 2)))
        np.testing.assert_array_equal(data.test["y"][k, :m], y[asg.client_test_ids(k)])
    # global test row t is in cluster t mod M
    gx = x[asg.test_source_ids]
    for t in range(data.global_size):
        np.testing.assert_array_equal(data.global_test["x"][t], np.rot90(gx[t], t % 4))
    assert describe(data)["num_clusters"] == 4


def test_label_shift_by_cluster():
    data, asg = _build(partition="clusters", num_clients=6, num_clusters=3, cluster_transform="label_shift")
    x, y = _digits()
    for k in range(6):
        n, m = int(data.n_train[k]), int(data.n_test[k])
        np.testing.assert_array_equal(data.train["y"][k, :n], (y[asg.client_train_ids(k)] + k % 3) % 10)
        np.testing.assert_array_equal(data.train["x"][k, :n], x[asg.client_train_ids(k)])
        np.testing.assert_array_equal(data.test["y"][k, :m], (y[asg.client_test_ids(k)] + k % 3) % 10)
    t = np.arange(data.global_size)
    np.testing.assert_array_equal(data.global_test["y"], (y[asg.test_source_ids] + t % 3) % 10)
    assert data.train["y"].dtype == np.int32


def test_clusters_rows_are_an_iid_partition_without_leak():
    """The rows behind the transforms: `iid` on the train pool, tests from the disjoint test pool."""
    iid, iid_asg = _build(partition="iid", num_clients=8)
    data, asg = _build(partition="clusters", num_clients=8, num_clusters=4)
    for a, b in zip(asg.train + asg.test, iid_asg.train + iid_asg.test):
        np.testing.assert_array_equal(a, b)  # same rows as iid with the same seed
    train_ids = np.concatenate([asg.client_train_ids(c) for c in range(8)])
    test_ids = np.concatenate([asg.client_test_ids(c) for c in range(8)])
    assert len(np.unique(train_ids)) == len(train_ids) == len(asg.train_source_ids)
    assert len(np.unique(test_ids)) == len(test_ids)
    assert not np.isin(test_ids, train_ids).any()
    assert not np.isin(asg.test_source_ids, asg.train_source_ids).any()
    for c in range(8):
        assert len(asg.train[c]) == int(data.n_train[c]) and len(asg.test[c]) == int(data.n_test[c])
    assert iid.cluster is None and describe(iid)["num_clusters"] is None


def test_validation_rows_are_transformed_too():
    data, asg = _build(partition="clusters", num_clients=4, num_clusters=2,
                       cluster_transform="label_shift", validation_fraction=0.2)
    _, y = _digits()
    pooled = []
    for k in range(4):
        m = int(data.n_test[k])
        assert m >= 1 and not np.isin(asg.client_test_ids(k), asg.client_train_ids(k)).any()
        expected = (y[asg.client_test_ids(k)] + k % 2) % 10
        np.testing.assert_array_equal(data.test["y"][k, :m], expected)
        pooled.append(expected)
    np.testing.assert_array_equal(data.global_test["y"], np.concatenate(pooled))


def test_cluster_knobs_are_ignored_by_other_partitions():
    data = build_federated(DataConfig(partition="iid", num_clients=4, num_clusters=0,
                                      cluster_transform="nope"), 0)
    assert data.cluster is None


@pytest.mark.parametrize("kw, field", [
    ({"partition": "clusters", "num_clusters": 0}, "data.num_clusters"),
    ({"partition": "clusters", "num_clients": 3, "num_clusters": 4}, "data.num_clusters"),
    ({"partition": "clusters", "cluster_transform": "flip"}, "data.cluster_transform"),
    ({"partition": "clusters", "dataset": "diabetes", "cluster_transform": "label_shift"},
     "data.cluster_transform"),
    ({"partition": "clusters", "dataset": "diabetes"}, "data.cluster_transform"),
    ({"partition": "clusters", "dataset": "floral_synthetic"}, "data.partition"),
    ({"dataset": "floral_synthetic", "num_clients": 10, "num_clusters": 3}, "data.num_clients"),
    ({"dataset": "floral_synthetic", "num_clusters": 0}, "data.num_clusters"),
    ({"dataset": "floral_synthetic", "floral_variant": "deep"}, "data.floral_variant"),
    ({"dataset": "floral_synthetic", "partition": "iid"}, "data.partition"),
])
def test_bad_inputs_are_refused_before_any_data_is_built(kw, field, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("data was loaded")

    monkeypatch.setitem(DATASETS, kw.get("dataset", "digits"), no_load)
    cfg = DataConfig(**kw)
    with pytest.raises(ConfigError) as err:
        validate_data_config(cfg)
    assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        build_federated(cfg, 0)
    assert err.value.field == field
    if "num_clients" in field:
        assert "divisible" in err.value.allowed
    if kw.get("num_clusters") == 4:
        assert "num_clusters larger than the number of clients" in err.value.allowed


def test_rotate_on_vector_inputs_is_refused_when_the_source_is_loaded(monkeypatch):
    """A source whose inputs are not [H, W, C] images: found once it is loaded."""
    def vectors(cfg, rng):
        x = np.random.default_rng(0).random((60, 5)).astype(np.float32)
        return Source(x, np.arange(60, dtype=np.int32) % 3, None, None, 3)

    monkeypatch.setitem(DATASETS, "digits", vectors)
    with pytest.raises(ConfigError) as err:
        build_federated(DataConfig(partition="clusters", num_clients=4), 0)
    assert err.value.field == "data.cluster_transform" and "[5]" in err.value.allowed
    data = build_federated(DataConfig(partition="clusters", num_clients=4, cluster_transform="label_shift"), 0)
    assert data.num_classes == 3 and list(data.cluster) == [0, 1, 2, 3]


@pytest.mark.parametrize("args, field, value", [
    (["--partition", "clusters", "--set", "data.num_clusters=5"], "data.num_clusters", "5"),
    (["--partition", "clusters", "--set", "data.cluster_transform=shear"], "data.cluster_transform", "shear"),
    (["--dataset", "floral_synthetic", "--set", "data.num_clusters=2"], "data.num_clients", "3"),
])
def test_cli_bad_cluster_input_exits_2_with_one_line(args, field, value, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["run", "--clients", "3", "--rounds", "1", "--set", "model.hidden=4",
                   "--no-progress", "--out", str(out)] + args)
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1 and field in lines[0] and value in lines[0], lines
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# FederatedData.cluster through stacking


def test_stack_trials_carries_cluster():
    datas = [build_federated(DataConfig(partition="clusters", num_clients=6, num_clusters=3), s)
             for s in (0, 1)]
    stacked = stack_trials(datas)
    chex.assert_shape(stacked.cluster, (2, 6))
    for s in range(2):
        np.testing.assert_array_equal(trial(stacked, s).cluster, datas[s].cluster)
    plain = stack_trials([build_federated(DataConfig(partition="iid", num_clients=6), s) for s in (0, 1)])
    assert plain.cluster is None and trial(plain, 1).cluster is None
    with pytest.raises(ValueError):
        stack_trials([datas[0], build_federated(DataConfig(partition="iid", num_clients=6), 0)])


def test_make_federated_cluster_keyword():
    x = np.zeros((2, 3, 4), np.float32)
    y = np.zeros((2, 3), np.int32)
    n = np.array([3, 3], np.int32)
    d = make_federated(x, y, n, x, y, n, x[0], y[0])
    assert d.cluster is None
    d = make_federated(x, y, n, x, y, n, x[0], y[0], cluster=[1, 0])
    assert d.cluster.dtype == np.int32 and list(d.cluster) == [1, 0]
    assert describe(d)["num_clusters"] == 2


# ----------------------------------------------------------------------------------------------
# floral_synthetic


@pytest.mark.parametrize("variant, n, n_train, n_test, d_o, K, C", [
    ("linear", 8, 7, 1, 3, 10, 2), ("mlp", 120, 96, 24, 1, 20, 4)])
def test_floral_synthetic_counts_and_splits(variant, n, n_train, n_test, d_o, K, C):
    assert cl.floral_samples(variant) == n
    assert cl.random_split_lengths(n) == [n_train, n_test]
    cfg = DataConfig(dataset="floral_synthetic", floral_variant=variant, num_clients=K, num_clusters=C)
    data, asg = build_federated(cfg, 0, return_assignment=True)
    assert data.target_kind == "real" and data.num_classes == 0 and data.name == "floral_synthetic"
    chex.assert_shape([data.train["x"], data.train["y"]], [(K, n_train, 10), (K, n_train, d_o)])
    chex.assert_shape([data.test["x"], data.test["y"]], [(K, n_test, 10), (K, n_test, d_o)])
    assert (np.asarray(data.n_train) == n_train).all() and (np.asarray(data.n_test) == n_test).all()
    assert data.train["y"].dtype == np.float32
    np.testing.assert_array_equal(data.cluster, np.arange(K) % C)
    # global test = every client's test rows, in client order; no test row is trained on
    np.testing.assert_array_equal(data.global_test["x"], data.test["x"].reshape(-1, 10))
    np.testing.assert_array_equal(data.global_test["y"], data.test["y"].reshape(-1, d_o))
    assert not np.isin(asg.test_source_ids, asg.train_source_ids).any()
    # a client's train and test rows are a split of its own n generated rows
    x = np.random.default_rng(0 + 11).standard_normal((K, n, 10)).astype(np.float32)
    for k in (0, K - 1):
        rows = np.concatenate([data.train["x"][k], data.test["x"][k]])
        np.testing.assert_array_equal(np.sort(rows, axis=0), np.sort(x[k], axis=0))
    assert describe(data)["num_clusters"] == C


def test_floral_synthetic_parameters_follow_the_spec_draw_order():
    seed, K, C = 5, 6, 3
    p = cl.floral_synthetic_params(seed, K, C, "linear")
    g = np.random.default_rng(seed + 27)
    expected = {"W": g.standard_normal((1, 10, 10)) / np.sqrt(10),
                "u": g.standard_normal((C, 10, 1)) / np.sqrt(10),
                "v": g.standard_normal((C, 1, 10)) / np.sqrt(1),
                "bias": g.standard_normal((1, 1, 10)) / np.sqrt(10),
                "W_out": g.standard_normal((1, 10, 3)) / np.sqrt(10)}
    for name, value in expected.items():
        np.testing.assert_allclose(p[name], value, rtol=1e-6, err_msg=name)
    chex.assert_shape(p["W_s"], (K, 10, 10))


@pytest.mark.parametrize("variant", ["linear", "mlp"])
def test_floral_synthetic_targets_match_a_numpy_recomputation(variant):
    seed, K, C = 3, 8, 4
    cfg = DataConfig(dataset="floral_synthetic", floral_variant=variant, num_clients=K,
                     num_clusters=C, seed=seed)
    data = build_federated(cfg, 0)
    p = {k: np.asarray(v, np.float64) for k, v in cl.floral_synthetic_params(seed, K, C, variant).items()}
    for k in (1, 6):
        w = p["W"][0] + 2.0 * p["u"][k % C] @ p["v"][k % C]  # cluster k mod C, uv_const = 2
        for split in (data.train, data.test):
            x = np.asarray(split["x"][k], np.float64)
            h = x @ w + p["bias"][0, 0]
            y = h[:, :3] if variant == "linear" else np.maximum(h, 0.0) @ p["W_out"][0]
            np.testing.assert_allclose(split["y"][k], y, rtol=1e-5, atol=1e-5)


def test_floral_synthetic_is_deterministic_in_the_data_seed():
    cfg = lambda **kw: DataConfig(dataset="floral_synthetic", floral_variant="linear", num_clients=4,
                                  num_clusters=2, **kw)
    a, b = build_federated(cfg(), 7), build_federated(cfg(), 7)
    chex.assert_trees_all_equal(a.train, b.train)
    chex.assert_trees_all_equal(a.test, b.test)
    c = build_federated(cfg(), 8)
    assert not np.array_equal(a.train["x"], c.train["x"])
    assert not np.array_equal(a.train["y"], c.train["y"])
    chex.assert_trees_all_equal(build_federated(cfg(seed=7), 0).train, a.train)  # data.seed wins


def test_floral_synthetic_refuses_k_not_divisible_by_c():
    with pytest.raises(ConfigError) as err:
        build_federated(DataConfig(dataset="floral_synthetic", num_clients=10, num_clusters=4), 0)
    assert err.value.field == "data.num_clients" and err.value.value == 10
    with pytest.raises(ValueError):
        cl.make_floral_synthetic(0, 10, 4, "mlp")


def test_floral_synthetic_validation_split():
    data = build_federated(DataConfig(dataset="floral_synthetic", num_clients=4, num_clusters=2,
                                      validation_fraction=0.25), 0)
    assert (np.asarray(data.n_train) == 72).all() and (np.asarray(data.n_test) == 24).all()
    assert data.global_size == 96


def test_floral_synthetic_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["run", "--dataset", "floral_synthetic", "--set", "data.floral_variant=linear",
                   "--set", "data.num_clients=4", "--set", "data.num_clusters=2", "--set",
                   "model.hidden=4", "--rounds", "1", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# TFDS mock data



def test_clusters_rotate_on_mock_mnist(no_network, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = DataConfig(dataset="mnist", partition="clusters", num_clients=4, num_clusters=4,
                     data_dir=str(tmp_path))
    with tfds.testing.mock_data(num_examples=24):
        src = DATASETS["mnist"](cfg, np.random.default_rng(0))
        data, asg = build_federated(cfg, 0, return_assignment=True)
    source_x = np.concatenate([src.x_pool, src.x_test])
    assert data.feature_shape == (28, 28, 1)
    np.testing.assert_array_equal(data.cluster, [0, 1, 2, 3])
    for k in range(4):
        n, m = int(data.n_train[k]), int(data.n_test[k])
        np.testing.assert_array_equal(data.train["x"][k, :n],
                                      np.rot90(source_x[asg.client_train_ids(k)], k, axes=(1, 2)))
        np.testing.assert_array_equal(data.test["x"][k, :m],
                                      np.rot90(source_x[asg.client_test_ids(k)], k, axes=(1, 2)))
    assert not np.isin(asg.test_source_ids, asg.train_source_ids).any()
    assert not no_network
