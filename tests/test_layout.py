"""Packed training rows (data.layout=packed): a cohort gathered from rows held back to back is
exactly the padded layout's cohort, through stacking over seeds too, and whole runs are
identical in either layout."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from conftest import assert_config_error
from test_stackoverflow import _write_users

from fedjax_sim import cli
from fedjax_sim.data.federated import (make_federated, pack_clients, padded, stack_clients, stack_trials,
                                       trial)


def _both(sizes, seed=0):
    """The same clients as padded and as packed FederatedData (x [n, 3], y [n] ints)."""
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, 3)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, 5, n).astype(np.int32) for n in sizes]
    x, y, n = stack_clients(xs, ys)
    xt, yt, nt = stack_clients(xs, ys)  # test rows: any
    grid = make_federated(x, y, n, xt, yt, nt, xt[0], yt[0], num_classes=5)
    px, py, pn, start = pack_clients(xs, ys)
    packed = make_federated(px, py, pn, xt, yt, nt, xt[0], yt[0], num_classes=5).replace(
        train_start=start, packed_rows=max(int(pn.max()), 1))
    return grid, packed


def test_packed_cohort_is_the_padded_cohort():
    grid, packed = _both((4, 0, 7, 2, 5))
    assert packed.packed and not grid.packed
    assert packed.train["x"].shape == (18, 3) and grid.train["x"].shape == (5, 7, 3)
    assert (packed.max_train, packed.feature_shape, packed.target_shape) == (7, (3,), ())
    for idx in ([2, 0, 4], [1], [4, 3, 2, 1, 0]):
        idx = jnp.asarray(idx)
        (rows_p, n_p), (rows_g, n_g) = packed.cohort(idx), grid.cohort(idx)
        np.testing.assert_array_equal(n_p, n_g)
        for k in ("x", "y"):
            np.testing.assert_array_equal(rows_p[k], rows_g[k])
    for k in ("x", "y"):
        np.testing.assert_array_equal(packed.train_view()[k], grid.train[k])
        np.testing.assert_array_equal(padded(packed).train[k], grid.train[k])


def test_a_block_of_clients_is_data_of_its_own():
    """`FederatedData.clients`: the block's padded training rows, test rows and counts in either
    layout, and the keys the whole population draws for those clients (a part of a part too)."""
    grid, packed = _both((4, 0, 7, 2, 5))
    idx = jnp.asarray([3, 0, 3])
    key = jax.random.PRNGKey(7)
    for data in (grid, packed):
        part = data.clients(idx)
        assert not part.packed and part.num_clients == 3 and part.population == 5
        for k in ("x", "y"):
            np.testing.assert_array_equal(part.train[k], grid.train[k][idx])
            np.testing.assert_array_equal(part.test[k], grid.test[k][idx])
        np.testing.assert_array_equal(part.n_train, grid.n_train[idx])
        np.testing.assert_array_equal(part.n_test, grid.n_test[idx])
        np.testing.assert_array_equal(part.client_keys(key), data.client_keys(key)[idx])
        np.testing.assert_array_equal(part.clients(jnp.asarray([2])).client_keys(key), data.client_keys(key)[3:4])


def test_stacked_packed_seeds_keep_each_seeds_cohort():
    """Seeds of different sizes stack to common R and N_max; each seed's cohort is its own,
    zero-padded to the common N_max."""
    (_, a), (_, b) = _both((3, 6, 1), seed=1), _both((2, 2, 9), seed=2)
    stacked = stack_trials([a, b])
    assert stacked.packed_rows == 9 and stacked.train_start.shape == (2, 3)
    idx = jnp.asarray([2, 0])
    for s, own in enumerate((a, b)):
        rows, n = trial(stacked, s).cohort(idx)
        mine, n_own = own.cohort(idx)
        np.testing.assert_array_equal(n, n_own)
        width = own.packed_rows
        np.testing.assert_array_equal(rows["x"][:, :width], mine["x"])
        assert not np.any(np.asarray(rows["x"][:, width:]))


def test_runs_are_identical_in_either_layout(tmp_path, capsys):
    """SCAFFOLD (per-client state), two vmapped seeds, on natural-client files capped at 5 rows
    per user: every metrics line is the same whether training rows are padded or packed (auto
    packs natural files)."""
    _write_users(tmp_path)
    lines = {}
    for layout in ("padded", "auto"):
        out = tmp_path / layout
        rc = cli.main(["run", "--algorithm", "scaffold", "--dataset", "stackoverflow", "--clients", "4",
                       "--seeds", "2", "--rounds", "2", "--cohort", "3", "--set", "eval_every=1", "--set", "local.lr=50",
                       "--set", "data.vocab_size=40", "--set", "data.tag_vocab_size=8", "--set", f"data.layout={layout}",
                       "--set", "data.max_examples=5",
                       "--set", f"data.data_dir={tmp_path}", "--no-progress", "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
        lines[layout] = (out / "metrics.jsonl").read_text()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["data"]["layout"] == ("packed" if layout == "auto" else "padded")
    assert lines["padded"] == lines["auto"]


def test_bad_layout_exits_2(tmp_path, capsys):
    rc = cli.main(["run", "--rounds", "1", "--set", "data.layout=ragged", "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, "data.layout", "ragged")


def test_padding_stacked_packed_seeds_gives_the_stacked_padded_rows():
    """What a mesh that splits data by client receives (`padded(..., stacked=True)`): the same
    [S, C, N_max, ...] rows as stacking the padded seeds."""
    (grid_a, a), (grid_b, b) = _both((3, 6, 1), seed=1), _both((2, 2, 9), seed=2)
    from_packed = padded(stack_trials([a, b]), stacked=True)
    from_grid = stack_trials([grid_a, grid_b])
    assert not from_packed.packed
    for k in ("x", "y"):
        np.testing.assert_array_equal(from_packed.train[k], from_grid.train[k])


def _materialized(jaxpr, prefix: tuple) -> list:
    """Shapes of the values a jaxpr (and the jaxprs inside it) computes that start with ``prefix``."""
    found = []
    for e in jaxpr.eqns:
        found += [v.aval.shape for v in e.outvars if tuple(getattr(v.aval, "shape", ()))[:len(prefix)] == prefix]
        for v in e.params.values():
            for sub in v if isinstance(v, (tuple, list)) else [v]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _materialized(inner, prefix)
    return found


def test_whole_population_passes_read_packed_rows_a_cohort_at_a_time():
    """FedAvg with fine-tuning builds every client's model from its training rows at evaluation,
    and the membership attack scores every training row: on packed rows both go a cohort of
    clients at a time, never building the padded view [C, N_max, ...] that packing avoids, and
    they give what the padded layout gives at once."""
    from conftest import tiny_config

    from fedjax_sim import runner
    from fedjax_sim.data.federated import padded

    prep = runner.prepare(tiny_config(algorithm="fedavg_ft", cohort=3, data__num_clients=7, data__layout="packed"))
    data = jax.device_put(prep.data)
    assert data.packed
    key = jax.random.PRNGKey(1)
    state = jax.jit(prep.algorithm.init)(key, data)
    whole_view = (data.num_clients, data.max_train)
    for make in (runner.make_evaluator, runner.make_attack):
        fn = make(prep, prep.algorithm)
        assert not _materialized(jax.make_jaxpr(fn)(state, data, key).jaxpr, whole_view), make.__name__
        blocks, whole = jax.jit(fn)(state, data, key), jax.jit(fn)(state, padded(data), key)
        assert blocks.keys() == whole.keys() and blocks
        for k in whole:
            np.testing.assert_allclose(np.asarray(blocks[k]), np.asarray(whole[k]), rtol=1e-6, err_msg=k)
