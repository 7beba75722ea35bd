"""Seeds and grid points as vmapped axes (fedjax_sim.trials): equal to the runs they stand for.

A vmapped group must give, trial by trial, what the sequential runs give (float tolerance): seeds
with their own partitions (so padding to a common N_max must not change training) and grid points
whose swept hyper-parameters enter the program as arrays.
"""
from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import make_data, tiny_config
from fedjax_sim import config as config_lib
from fedjax_sim import runner, tasks, trials
from fedjax_sim.core.evaluate import evaluate_global
from fedjax_sim.core.local import Schedule, batch_indices, make_local_train
from fedjax_sim.data import build_federated, stack_trials
from fedjax_sim.data.federated import trial
from fedjax_sim.models import build_model


def digits_config(**fields) -> config_lib.Config:
    """Five digits clients under Dirichlet label skew: every seed partitions differently, so
    their padded lengths differ and stacking them really pads."""
    return tiny_config(**{"data.dataset": "digits", "data.num_clients": 5, "data.min_size": 5,
                          "rounds": 3, "eval_every": 2, "local.batch_size": 8, **fields})


def _run_group(configs, seeds, tmp_path, mode="vmap", name="g"):
    outs = [str(tmp_path / f"{name}{i}") for i in range(len(configs))]
    for c, o in zip(configs, outs):
        c.trials, c.out = mode, o
    groups = trials.plan(configs, outs, seeds)
    return groups, [s for g in groups for s in trials.run_group(trials.prepare_group(g), progress=False)]


def _history(summary):
    out = summary["config"]["out"]
    return [json.loads(l) for l in open(f"{out}/metrics.jsonl")]


def _assert_trial_equals_run(group_summary, seed, run_summary, atol=1e-5):
    """One seed of a group summary against a single run: final metrics and every logged round."""
    entry = next(e for e in group_summary["per_seed"] if e["seed"] == seed)
    for key, value in run_summary["final"].items():
        if isinstance(value, float):
            np.testing.assert_allclose(entry["final"][key], value, atol=atol, err_msg=key)
    mine = [h for h in _history(group_summary) if h["seed"] == seed]
    theirs = _history(run_summary)
    assert [h["round"] for h in mine] == [h["round"] for h in theirs]
    for a, b in zip(mine, theirs):
        for key, value in b.items():
            if isinstance(value, float):
                np.testing.assert_allclose(a[key], value, atol=atol, err_msg=f"round {b['round']} {key}")


@pytest.mark.parametrize("algorithm", ["fedavg", "fedrema", "scaffold"])
def test_vmapped_seeds_equal_sequential_runs(tmp_path, algorithm):
    seeds = [0, 1, 2]
    sizes = {build_federated(digits_config().data, s).max_train for s in seeds}
    assert len(sizes) > 1  # the seeds' padded lengths differ: stacking pads
    _, (summary,) = _run_group([digits_config(algorithm=algorithm)], seeds, tmp_path)
    resolved = summary["config"]["resolved"]["trials"]
    assert resolved["mode"] == "vmap" and resolved["seeds"] == seeds
    assert summary["timing"]["round_block_compiles"] == 1 and summary["timing"]["trials_in_program"] == 3
    assert summary["seeds"] == seeds and [e["seed"] for e in summary["per_seed"]] == seeds
    for s in seeds:
        single = runner.run(digits_config(algorithm=algorithm, seed=s, out=str(tmp_path / f"single{s}")),
                            progress=False)
        _assert_trial_equals_run(summary, s, single)
    finals = [e["final"]["personalized_accuracy"] for e in summary["per_seed"]]
    np.testing.assert_allclose(summary["final"]["personalized_accuracy"], np.mean(finals), rtol=1e-6)
    np.testing.assert_allclose(summary["final_std"]["personalized_accuracy"], np.std(finals, ddof=1), rtol=1e-6)


def test_grid_points_equal_single_runs(tmp_path):
    """A 2 x 2 grid over local.lr and fedprox.mu (both traceable) is one program over 2 seeds x 4
    points; each point equals a single run with that value."""
    base = digits_config(algorithm="fedprox")
    points = config_lib.grid_points(base, config_lib.parse_grid(["local.lr=0.05,0.2", "fedprox.mu=0,0.5"]))
    assert [n for n, _ in points] == ["local.lr=0.05_fedprox.mu=0.0", "local.lr=0.05_fedprox.mu=0.5",
                                      "local.lr=0.2_fedprox.mu=0.0", "local.lr=0.2_fedprox.mu=0.5"]
    groups, summaries = _run_group([c for _, c in points], [0, 1], tmp_path)
    assert len(groups) == 1 and groups[0].swept == ("fedprox.mu", "local.lr")
    assert summaries[0]["timing"]["round_block_compiles"] == 1
    assert summaries[0]["timing"]["trials_in_program"] == 8
    finals = set()
    for (name, c), summary in zip(points, summaries):
        assert summary["config"]["local"]["lr"] == c.local.lr and summary["config"]["fedprox"]["mu"] == c.fedprox.mu
        single = runner.run(digits_config(algorithm="fedprox", seed=1, local__lr=c.local.lr,
                                          fedprox__mu=c.fedprox.mu, out=str(tmp_path / f"single-{name}")),
                            progress=False)
        _assert_trial_equals_run(summary, 1, single)
        finals.add(round(summary["final"]["loss"], 6))
    assert len(finals) == 4  # the points really differ


def test_static_fields_make_separate_programs(tmp_path):
    base = digits_config()
    lr = [c for _, c in config_lib.grid_points(base, config_lib.parse_grid(["local.lr=0.1,0.2,0.3"]))]
    epochs = [c for _, c in config_lib.grid_points(base, config_lib.parse_grid(["local.epochs=1,2"]))]
    mixed = [c for _, c in config_lib.grid_points(base, config_lib.parse_grid(
        ["local.epochs=1,2", "server.lr=0.5,1"]))]
    assert [len(g.configs) for g in trials.plan(lr, ["a"] * 3, [0])] == [3]
    assert [len(g.configs) for g in trials.plan(epochs, ["a"] * 2, [0])] == [1, 1]
    groups = trials.plan(mixed, ["a"] * 4, [0])
    assert [len(g.configs) for g in groups] == [2, 2] and all(g.swept == ("server.lr",) for g in groups)
    assert trials.choose_mode("auto", 1, [])[0] == "sequential"
    assert trials.choose_mode("auto", 4, [make_data()])[0] == "vmap"


@pytest.mark.parametrize("epochs,steps,batch", [(2, 0, 3), (1, 0, 50), (0, 5, 4)])
def test_local_training_is_padding_invariant(epochs, steps, batch):
    """The same client trained with its rows padded to N_max = 9 or to 23 (garbage in the padding)
    ends at the same parameters: the valid rows' order and the step keys do not depend on N_max."""
    data = make_data(train_sizes=(7, 9), test_sizes=(2, 2))
    wide = make_data(train_sizes=(7, 23), test_sizes=(2, 2))  # same rng draws for client 0's first 7 rows
    np.testing.assert_array_equal(data.train["x"][0, :7], wide.train["x"][0, :7])
    model = build_model("mlp", (6,), 3, (8,), 1)
    task = tasks.classification(model.apply, 3)
    params = model.init(jax.random.PRNGKey(0))
    opt = optax.sgd(0.1, momentum=0.9)
    key, n = jax.random.PRNGKey(3), jnp.int32(7)
    results = []
    for d in (data, wide):
        max_n = d.max_train
        schedule = Schedule.make(max_n, batch, max(epochs, 1), steps)
        train = make_local_train(task.loss, opt, schedule, max_n)
        rows = jax.tree.map(lambda a: jnp.asarray(a[0]), d.train)
        idx, mask = batch_indices(key, n, max_n, schedule)
        valid = np.asarray(idx)[np.asarray(mask)]
        results.append((train(params, opt.init(params), rows, n, key)[0], valid))
    chex.assert_trees_all_close(results[0][0], results[1][0], atol=1e-6)
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_stack_trials_pads_and_masks_the_global_set():
    a = make_data(train_sizes=(5, 9, 3, 7), test_sizes=(3, 0, 4, 2), global_size=7, seed=0)
    b = make_data(train_sizes=(2, 4, 12, 1), test_sizes=(1, 6, 2, 2), global_size=11, seed=1)
    s = stack_trials([a, b])
    chex.assert_shape(s.train["x"], (2, 4, 12, 6))
    chex.assert_shape(s.test["y"], (2, 4, 6))
    chex.assert_shape(s.global_test["x"], (2, 11, 6))
    np.testing.assert_array_equal(s.global_test["mask"], np.arange(11)[None] < np.array([[7], [11]]))
    np.testing.assert_array_equal(s.n_train, [[5, 9, 3, 7], [2, 4, 12, 1]])
    np.testing.assert_array_equal(trial(s, 0).train["x"][:, :9], a.train["x"])
    model = build_model("mlp", (6,), 3, (8,), 1)
    params = model.init(jax.random.PRNGKey(0))
    metrics = tasks.classification(model.apply, 3).metrics
    for i, d in enumerate((a, b)):
        padded = evaluate_global(metrics, params, trial(s, i).global_test, batch_size=4)
        plain = evaluate_global(metrics, params, d.global_test, batch_size=4)
        chex.assert_trees_all_close(padded, plain, atol=1e-6)
    with pytest.raises(ValueError, match="structure"):
        stack_trials([a, make_data(features=5)])


def test_validation_split_is_disjoint_from_test_and_other_clients():
    cfg = digits_config().data
    plain, plain_rows = build_federated(cfg, 4, return_assignment=True)
    cfg.validation_fraction = 0.25
    data, rows = build_federated(cfg, 4, return_assignment=True)
    test_ids = set(plain_rows.test_source_ids.tolist())
    every_train = [set(rows.client_train_ids(c).tolist()) for c in range(data.num_clients)]
    for c in range(data.num_clients):
        val = set(rows.client_test_ids(c).tolist())
        assert val and not val & test_ids  # never a test-pool row
        assert all(not val & t for t in every_train)  # nobody trains on it
        # the client's training rows of the plain run, split in two (same partition)
        assert val | every_train[c] == set(plain_rows.client_train_ids(c).tolist())
        n = len(plain_rows.train[c])
        assert len(val) == min(round(0.25 * n), n - 1)
    assert data.global_size == sum(len(t) for t in rows.test)  # the pooled validation rows
    assert int(np.sum(data.n_train) + np.sum(data.n_test)) == int(np.sum(plain.n_train))


def test_trial_chunk_shrinks_the_client_chunk_by_the_trials_it_is_vmapped_with():
    from fedjax_sim.core.mapping import trial_chunk

    assert trial_chunk(1, "cpu") == 10 and trial_chunk(3, "cpu") == 3
    assert trial_chunk(16, "cpu") == 2 and trial_chunk(4, "gpu") == 0


def test_best_over_rounds_skips_the_untrained_model():
    history = [{"round": 0, "acc": 0.9, "loss": 0.1}, {"round": 5, "acc": 0.4, "loss": 2.0},
               {"round": 10, "acc": 0.6, "loss": 1.0}]
    assert trials._best(history, ("acc",), True) == {"acc": 0.6}
    assert trials._best(history, ("loss",), False) == {"loss": 1.0}
    assert trials._best(history[:1], ("acc",), True) == {"acc": 0.9}  # round 0 alone: it is all there is
