"""Engine v2 protocols: tasks, optimizers and corrections, aggregator combinators, the scanned
RoundInput driver, compile counting, config sections, and the import floors."""
from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import make_data, tiny_config
from fedjax_sim import config as config_lib
from fedjax_sim import runner, tasks, trials
from fedjax_sim.aggregators import (Aggregator, broadcast_mean, chain, keep, mean, partition,
                                    server_optimizer)
from fedjax_sim.algorithms import Algorithm
from fedjax_sim.core.driver import RoundInput, count_compiles, make_block, round_inputs
from fedjax_sim.core.local import Schedule, make_local_train
from fedjax_sim.core.optim import control_variates, make_optimizer, proximal
from fedjax_sim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# tasks


def _linear(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def test_classification_task_loss_and_metric_sums():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3)}
    x = rng.normal(size=(5, 4)).astype(np.float32)
    y = np.array([0, 2, 1, 1, 0], np.int32)
    mask = np.array([1, 1, 0, 1, 0], bool)
    task = tasks.classification(_linear, 3)
    batch = {"x": x, "y": y, "mask": mask}
    logits = np.asarray(_linear(params, x), np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -logp[np.arange(5), y]
    loss, _ = task.loss(params, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(loss, ce[mask].mean(), rtol=1e-5)
    m = task.metrics(params, batch)
    np.testing.assert_allclose(m["count"], 3)
    np.testing.assert_allclose(m["accuracy"], (logits.argmax(1) == y)[mask].sum())
    np.testing.assert_allclose(m["loss"], ce[mask].sum(), rtol=1e-5)
    np.testing.assert_allclose(task.output_loss(jnp.asarray(logits, jnp.float32), batch), loss, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mse", "mae"])
def test_regression_task_matches_numpy(kind):
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(4, 1)), jnp.float32), "b": jnp.ones(1)}
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = rng.normal(size=(6,)).astype(np.float32)
    mask = np.array([1, 0, 1, 1, 1, 0], bool)
    task = tasks.regression(_linear, kind)
    err = np.asarray(_linear(params, x))[:, 0] - y
    per_row = err ** 2 if kind == "mse" else np.abs(err)
    loss, _ = task.loss(params, {"x": x, "y": y, "mask": mask}, None)
    np.testing.assert_allclose(loss, per_row[mask].mean(), rtol=1e-5)
    m = task.metrics(params, {"x": x, "y": y, "mask": mask})
    np.testing.assert_allclose(m["mse"], (err ** 2)[mask].sum(), rtol=1e-5)
    np.testing.assert_allclose(m["mae"], np.abs(err)[mask].sum(), rtol=1e-5)
    assert (task.headline, task.higher_is_better, task.target_kind) == (kind, False, "real")


def _two_task_model(rng, weights=None):
    """A linear model on 3 features with a 3-class head ``cls`` and a scalar head ``reg``."""
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.zeros(4)}

    def apply(p, x):
        out = _linear(p, x)
        return {"cls": out[:, :3], "reg": out[:, 3:]}

    task = tasks.multitask(apply, {"cls": tasks.classification_pointwise(),
                                   "reg": tasks.regression_pointwise("mse")}, weights)
    return params, apply, task


def test_multitask_masks_each_task_and_divides_by_its_count():
    """Two heads over one batch; rows without a task's target are masked for that task only, and
    divide_metrics divides each task's sums by its own count."""
    rng = np.random.default_rng(2)
    params, apply, task = _two_task_model(rng, {"cls": 1.0, "reg": 0.5})
    x = rng.normal(size=(5, 3)).astype(np.float32)
    batch = {"x": x, "y": {"cls": np.array([0, 1, 2, 0, 1], np.int32),
                           "reg": rng.normal(size=(5,)).astype(np.float32)},
             "y_mask": {"cls": np.array([1, 1, 0, 0, 1], bool), "reg": np.array([0, 1, 1, 1, 1], bool)},
             "mask": np.array([1, 1, 1, 1, 0], bool)}
    out = {k: np.asarray(v, np.float64) for k, v in apply(params, x).items()}
    cls_rows = np.array([1, 1, 0, 0, 0], bool)
    reg_rows = np.array([0, 1, 1, 1, 0], bool)
    logp = out["cls"] - np.log(np.exp(out["cls"]).sum(1, keepdims=True))
    ce = -logp[np.arange(5), batch["y"]["cls"]]
    sq = (out["reg"][:, 0] - batch["y"]["reg"]) ** 2
    loss, per_task = task.loss(params, batch, None)
    np.testing.assert_allclose(loss, ce[cls_rows].mean() + 0.5 * sq[reg_rows].mean(), rtol=1e-5)
    means = tasks.divide_metrics(task.metrics(params, batch))
    np.testing.assert_allclose(means["cls/accuracy"], (out["cls"].argmax(1) == batch["y"]["cls"])[cls_rows].mean())
    np.testing.assert_allclose(means["reg/mse"], sq[reg_rows].mean(), rtol=1e-5)
    assert "cls/count" not in means and task.headline == "cls/accuracy"


# --------------------------------------------------------------------------------------------
# optimizers and corrections


def test_optimizer_hyperparameters_are_injected_arrays():
    spec = make_optimizer("adam", 0.01, args="b1=0.8,eps=1e-6")
    state = spec.transform.init({"w": jnp.zeros(3)})
    hp = state[-1].hyperparams
    np.testing.assert_allclose([hp["learning_rate"], hp["b1"], hp["eps"]], [0.01, 0.8, 1e-6], rtol=1e-6)
    assert spec.plain_sgd is False and make_optimizer("sgd", 0.1).plain_sgd
    assert not make_optimizer("sgd", 0.1, clip_norm=1.0).plain_sgd


@pytest.mark.parametrize("name,args,field", [("adamm", "", "local.optimizer"),
                                             ("adam", "bogus=1", "local.optimizer_args"),
                                             ("adam", "b1", "local.optimizer_args"),
                                             ("sgd", "nesterov=maybe", "local.optimizer_args"),
                                             ("sgd", "learning_rate=3", "local.optimizer_args"),
                                             ("fedadam", "b1=1.5", "local.optimizer_args"),
                                             ("adam", "b2=1", "local.optimizer_args"),
                                             ("fedyogi", "eps=0", "local.optimizer_args"),
                                             ("adam", "eps=nan", "local.optimizer_args"),
                                             ("fedadagrad", "initial_accumulator_value=-1", "local.optimizer_args"),
                                             ("fedadam", "bias_correction=1", "local.optimizer_args"),
                                             ("adam", "b1=true", "local.optimizer_args"),
                                             ("fedadam", "eps=1e-3,eps=1e-2", "local.optimizer_args")])
def test_bad_optimizer_names_and_hyperparameters(name, args, field):
    with pytest.raises(ConfigError) as e:
        make_optimizer(name, 0.1, args=args, params_example={"w": jnp.zeros(2)})
    assert e.value.field == field


def test_fedadagrad_is_fedopts_server_adagrad():
    """``fedadagrad`` against FedOpt's update written out (v += g^2, w -= lr g / (sqrt(v) + tau),
    v from 0): a loop of three steps, a zero gradient included, with its injected hyper-parameters;
    optax's adagrad (eps inside the root, v from 0.1) differs."""
    spec = make_optimizer("fedadagrad", 10.0, args="eps=0.01", params_example={"w": jnp.zeros(2)},
                          field="server")
    w, state = {"w": jnp.array([1.0, -1.0])}, None
    state = spec.transform.init(w)
    v, ref = np.zeros(2), np.array([1.0, -1.0])
    for g in ([0.5, 0.0], [-0.2, 0.0], [0.1, 3.0]):
        g = np.asarray(g, np.float32)
        updates, state = spec.transform.update({"w": jnp.asarray(g)}, state, w)
        w = optax.apply_updates(w, updates)
        v = v + g * g
        ref = ref - 10.0 * g / (np.sqrt(v) + 0.01)
        np.testing.assert_allclose(w["w"], ref, rtol=1e-5)
    assert state[-1].hyperparams["eps"] == pytest.approx(0.01)
    other = make_optimizer("adagrad", 10.0, args="eps=0.01").transform
    moved, _ = other.update({"w": jnp.array([0.5, 0.0])}, other.init(w), w)
    assert not np.allclose(moved["w"], -10.0 * 0.5 / (0.5 + 0.01) * np.array([1.0, 0.0]))
    with pytest.raises(ConfigError) as e:
        make_optimizer("fedadagrad", 1.0, args="b1=0.9")
    assert e.value.field == "local.optimizer_args" and "fedjax_sim.core.optim.fedadagrad" in str(e.value)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
@pytest.mark.parametrize("corrected", [True, False])
def test_fedadam_and_fedyogi_are_fedopts_server_updates(name, corrected):
    """Against FedOpt's update written out, as TFF's / Keras' Adam and Yogi compute it (eps added
    to the uncorrected root; the bias correction in the learning rate, or Algorithm 2 without it):
    three steps, a coordinate with a zero gradient included. optax's adam adds eps elsewhere."""
    args = "eps=0.01,b2=0.99" + ("" if corrected else ",bias_correction=false")
    spec = make_optimizer(name, 0.5, args=args, params_example={"w": jnp.zeros(2)}, field="server")
    w = {"w": jnp.array([1.0, -1.0])}
    state = spec.transform.init(w)
    m, v, ref = np.zeros(2), np.zeros(2), np.array([1.0, -1.0])
    for t, g in enumerate(([0.5, 0.0], [-0.2, 0.0], [0.1, 3.0]), start=1):
        g = np.asarray(g, np.float32)
        updates, state = spec.transform.update({"w": jnp.asarray(g)}, state, w)
        w = optax.apply_updates(w, updates)
        m = 0.9 * m + 0.1 * g
        v = v + 0.01 * (g * g - v) if name == "fedadam" else v - 0.01 * g * g * np.sign(v - g * g)
        lr = 0.5 * np.sqrt(1 - 0.99 ** t) / (1 - 0.9 ** t) if corrected else 0.5
        ref = ref - lr * m / (np.sqrt(v) + 0.01)
        np.testing.assert_allclose(w["w"], ref, rtol=1e-5)
    if corrected:
        other = make_optimizer("adam", 0.5, args="eps=0.01,b2=0.99").transform
        moved, _ = other.update({"w": jnp.array([0.5, 0.0])}, other.init(w), w)
        first = 0.5 * np.sqrt(0.01) / 0.1 * 0.05 / (np.sqrt(0.01 * 0.25) + 0.01)  # FedAdam's first step
        assert not np.isclose(moved["w"][0], -first)


def test_hyperparameter_optax_rejects_is_a_config_error():
    """A value optax only rejects when tracing the update is still caught before any compile."""
    with pytest.raises(ConfigError) as e:
        make_optimizer("adam", 0.1, args="b1=abc",
                       params_example={"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    assert e.value.field == "local.optimizer_args"


def test_proximal_and_control_variate_transforms_read_extras():
    g = {"w": jnp.array([1.0, -2.0])}
    w = {"w": jnp.array([0.5, 0.5])}
    anchor = {"w": jnp.array([0.0, 1.0])}
    opt = optax.chain(proximal(0.5), control_variates(), optax.sgd(0.1))
    state = opt.init(w)
    c, ci = {"w": jnp.array([0.2, 0.0])}, {"w": jnp.array([0.0, 0.4])}
    updates, _ = opt.update(g, state, w, anchor=anchor, control=c, client_control=ci)
    expected = -0.1 * (np.array([1.0, -2.0]) + 0.5 * (np.array([0.5, 0.5]) - [0.0, 1.0])
                       + np.array([0.2, 0.0]) - [0.0, 0.4])
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)


def test_local_train_passes_extras_to_the_optimizer():
    """A FedProx client: make_local_train with chain(proximal(mu), sgd) and extras={"anchor": w0}
    equals the proximal gradient step by hand on one full-batch step."""
    data = make_data(train_sizes=(4,), test_sizes=(1,))
    params = {"w": jnp.ones((6, 3)) * 0.1, "b": jnp.zeros(3)}
    anchor = jax.tree.map(lambda a: a - 0.2, params)
    task = tasks.classification(_linear, 3)
    opt = optax.chain(proximal(0.7), optax.sgd(0.5))
    train = make_local_train(task.loss, opt, Schedule.make(4, 4, 1, 0), 4)
    rows = jax.tree.map(lambda a: jnp.asarray(a[0]), data.train)
    new, _, _ = train(params, opt.init(params), rows, jnp.int32(4), jax.random.PRNGKey(0),
                      {"anchor": anchor})
    grads = jax.grad(lambda p: task.loss(p, {**rows, "mask": jnp.ones(4, bool)}, None)[0])(params)
    expected = jax.tree.map(lambda p, gr, a: p - 0.5 * (gr + 0.7 * (p - a)), params, grads, anchor)
    chex.assert_trees_all_close(new, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# aggregators


def _models(k=4, seed=0):
    rng = np.random.default_rng(seed)
    params = {"body": {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
              "head": {"w": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)}}
    results = jax.tree.map(lambda p: p[None] + jnp.asarray(rng.normal(size=(k, *p.shape)), jnp.float32), params)
    return params, results


def test_chain_threads_outputs_and_states():
    params, models = _models()
    deltas = jax.tree.map(lambda m, p: m - p[None], models, params)
    weights = jnp.array([1.0, 2.0, 3.0, 4.0])
    agg = chain(mean(), server_optimizer(optax.sgd(0.5, momentum=0.9)))
    state = agg.init(params)
    new, state, _ = agg.update(deltas, weights, state, params)
    mean_delta = jax.tree.map(lambda d: np.tensordot(np.asarray(weights) / 10.0, d, axes=1), deltas)
    chex.assert_trees_all_close(new, jax.tree.map(lambda p, d: p + 0.5 * d, params, mean_delta), rtol=1e-5)
    # momentum state is carried: the second identical round moves 1.9x as far
    new2, _, _ = agg.update(deltas, weights, state, new)
    chex.assert_trees_all_close(jax.tree.map(jnp.subtract, new2, new),
                                jax.tree.map(lambda d: 0.5 * 1.9 * d, mean_delta), rtol=1e-5)


def test_partition_routes_groups_and_merges_outputs():
    params, models = _models()
    deltas = {"body": jax.tree.map(lambda m, p: m - p[None], models["body"], params["body"]),
              "head": models["head"]}
    weights = jnp.array([1.0, 1.0, 2.0, 0.0])
    seen = {}

    def spy(name):
        def update(results, weights, state, p, **extras):
            seen[name] = (jax.tree.structure(results), extras)
            return results, state, {f"{name}_calls": jnp.float32(1)}
        return Aggregator(lambda p: (), update)

    agg = partition({"body": chain(mean(), server_optimizer(optax.sgd(1.0)), spy("body")),
                     "head": chain(broadcast_mean(), spy("head"))}, {"body": "body", "head": "head"})
    new, state, metrics = agg.update(deltas, weights, agg.init(params), params, cohort_idx=jnp.arange(4))
    body_mean = jax.tree.map(lambda m: np.tensordot(np.asarray(weights) / 4.0, m, axes=1), models["body"])
    chex.assert_trees_all_close(new["body"], body_mean, rtol=1e-5, atol=1e-6)
    head_mean = jax.tree.map(lambda m: np.broadcast_to(np.asarray(m).mean(0), m.shape), models["head"])
    chex.assert_trees_all_close(new["head"], head_mean, rtol=1e-5, atol=1e-6)
    assert set(metrics) == {"body_calls", "head_calls"}
    # each group saw only its own leaves (the other group masked) and the extras
    assert len(jax.tree.leaves(seen["head"][0].unflatten(range(seen["head"][0].num_leaves)))) == 1
    assert set(seen["body"][1]) == {"cohort_idx"}
    keep_only = partition({"body": mean(), "head": keep()}, {"body": "body", "head": "head"})
    out, _, _ = keep_only.update(models, weights, keep_only.init(params), params)
    chex.assert_trees_all_equal(out["head"], models["head"])


# --------------------------------------------------------------------------------------------
# driver and compile counting


def _toy_round(state, data, rin):
    del data
    return state + 1.0, {"train_loss": jnp.float32(0), "samples": jnp.float32(1)}


def test_round_inputs_pad_the_last_block():
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    events = {"t": jnp.arange(5) * 10}
    inp = round_inputs(keys, 4, 1, 3, events)
    np.testing.assert_array_equal(inp.index, [4, 5, 6])
    np.testing.assert_array_equal(inp.active, [True, False, False])
    np.testing.assert_array_equal(inp.events["t"], [40, 40, 40])
    np.testing.assert_array_equal(inp.key[0], keys[4])


def test_compile_counter_sees_a_shape_changing_state():
    """The same jitted block called with a state of a new shape compiles again, and
    count_compiles (JAX's own monitoring events) reports it."""
    example = RoundInput(jax.random.PRNGKey(0), jnp.int32(0), jnp.array(True))
    block = jax.jit(make_block(_toy_round, jnp.zeros(3), None, example))
    inputs = round_inputs(jax.random.split(jax.random.PRNGKey(0), 4), 0, 4, 4)
    with count_compiles() as log:
        block(jnp.zeros(3), None, inputs)
        block(jnp.ones(3), None, inputs)
    assert log.compiles == 1
    with count_compiles() as log:
        block(jnp.zeros(4), None, inputs)  # a state that changed shape
    assert log.compiles == 1 and "block" in log.names[0]


def _with_algorithm(cfg, algorithm):
    prep = runner.prepare(cfg, make_data())
    return prep._replace(algorithm=algorithm)


def test_runner_compiles_round_block_and_evaluator_once(tmp_path):
    """A whole run (5 rounds, eval_every=2: the last block is partly masked) compiles the round
    block and the evaluator exactly once each, counted with JAX's own compile events (the
    runner jits, it does not AOT-compile, so a recompile would show). SCAFFOLD under partial
    participation carries the most state, which must keep its shapes and dtypes."""
    cfg = tiny_config(algorithm="scaffold", cohort=3, rounds=5, eval_every=2, out=str(tmp_path / "run"))
    with count_compiles() as log:
        summary = runner.run(cfg, progress=False, data=make_data())
    names = Counter(log.names)
    assert names["jit(block)"] == 1, names
    assert names["jit(evaluate)"] == 1, names
    assert summary["timing"]["round_block_compiles"] == 1
    assert summary["timing"]["compiles"] <= log.compiles
    rounds = [json.loads(l)["round"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 2, 4, 5]


def test_runner_reports_a_recompiling_block(tmp_path, capsys, monkeypatch):
    """If the last block were scanned at its true length (no masking), its inputs would change
    shape and the round block would compile twice: the runner's count (JAX's compile events)
    sees it and warns. This is the check test_runner_compiles_round_block_and_evaluator_once
    relies on, shown to fail when a shape changes."""
    unpadded = lambda keys, start, count, block_len, events=None: round_inputs(keys, start, count, count, events)
    monkeypatch.setattr(trials, "round_inputs", unpadded)
    cfg = tiny_config(rounds=5, eval_every=2, out=str(tmp_path / "run"))
    summary = runner.run(cfg, progress=False, data=make_data())
    assert summary["timing"]["round_block_compiles"] == 2
    assert "recompiled" in capsys.readouterr().err


def test_driver_hands_each_round_its_event_rows(tmp_path):
    """Algorithm.events precomputes a schedule [R, ...]; round r receives row r as
    RoundInput.events and its index r, exactly once (padding rounds of the last block skipped)."""
    base = runner.prepare(tiny_config(rounds=5, eval_every=2), make_data()).algorithm
    rounds = 5

    def events(seed, data, num_rounds):  # host side, from the seed and its data
        return {"client": np.arange(num_rounds, dtype=np.int32) * 3 + 1}

    def init(key, data):
        return (base.init(key, data), jnp.zeros(rounds, jnp.int32), jnp.zeros(rounds, jnp.int32))

    def round_fn(state, data, rin):
        params, seen, hits = state
        seen = seen.at[rin.index].set(rin.events["client"])
        return (params, seen, hits.at[rin.index].add(1)), {"train_loss": jnp.float32(0),
                                                           "samples": jnp.float32(0)}

    toy = Algorithm("toy", init, round_fn, lambda s: base.global_params(s[0]), None, {},
                    report=lambda s: {"seen": s[1], "hits": s[2]}, events=events)
    cfg = tiny_config(rounds=rounds, eval_every=2, out=str(tmp_path / "run"))
    summary = runner.run(cfg, progress=False, prep=_with_algorithm(cfg, toy))
    assert summary["final"]["seen"] == [1, 4, 7, 10, 13]
    assert summary["final"]["hits"] == [1] * 5


# --------------------------------------------------------------------------------------------
# config sections and regression runs


def test_algorithm_sections_aliases_and_unknown_keys():
    from fedjax_sim import algorithms  # noqa: F401  (registers sections)

    cfg = config_lib.Config()
    config_lib.set_field(cfg, "server.prox_mu", "0.3")  # old name -> fedprox.mu
    assert cfg.fedprox.mu == 0.3
    config_lib.set_field(cfg, "fedrema.delta", "0.25")
    d = config_lib.to_dict(cfg)
    assert d["fedprox"]["mu"] == 0.3 and d["fedrema"]["delta"] == 0.25 and "prox_mu" not in d["server"]
    assert config_lib.from_dict(d) == cfg
    with pytest.raises(ConfigError) as e:
        config_lib.from_dict({**d, "fedrema": {**d["fedrema"], "tau": 1}})
    assert e.value.field == "fedrema.tau"
    copy = config_lib.copy_config(cfg)
    copy.fedrema.delta = 0.9
    assert cfg.fedrema.delta == 0.25


def test_regression_run_on_diabetes_reports_mse(tmp_path):
    cfg = tiny_config(rounds=3, out=str(tmp_path / "run"), **{"data.dataset": "diabetes",
                                                              "data.num_clients": 6})
    summary = runner.run(cfg, progress=False)
    final = summary["final"]
    assert summary["config"]["resolved"]["task"] == "regression_mse"
    assert np.isfinite(final["global_mse"]) and final["global_mse"] < 2.0
    assert len(final["personalized_mse_per_client"]) == 6 and "global_accuracy" not in final


@pytest.mark.parametrize("dataset,task", [("diabetes", "classification"), ("digits", "regression_mae")])
def test_task_data_mismatch_is_a_config_error(dataset, task):
    cfg = tiny_config(**{"data.dataset": dataset, "task.name": task, "data.num_clients": 6})
    with pytest.raises(ConfigError) as e:
        runner.prepare(cfg)
    assert e.value.field == "task.name"


# --------------------------------------------------------------------------------------------
# import floors (DESIGN section 1, docs/ARCHITECTURE.md)

FLOORS = {
    # package or module -> fedjax_sim modules it may import
    "types": set(), "errors": set(), "jsonio": set(), "config": {"errors"},
    "data": {"errors", "types", "data"}, "tasks": {"errors", "types", "tasks"},
    "models": {"errors", "types", "models"}, "aggregators": {"errors", "types", "aggregators"},
    "asynchrony": {"errors", "types", "asynchrony"},
    "parallel": {"errors", "parallel"},
    "core": {"errors", "types", "tasks", "parallel", "core"},
    "generative": {"errors", "types", "config", "data", "models", "generative"},
    "algorithms": {"errors", "types", "config", "core", "aggregators", "models", "tasks", "asynchrony",
                   "algorithms"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedjax_sim"):
            parts = node.module.split(".")
            found.add(parts[1] if len(parts) > 1 else node.names[0].name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fedjax_sim."):
                    found.add(alias.name.split(".")[1])
    return found


def test_imports_flow_up_the_floors():
    pkg = ROOT / "fedjax_sim"
    violations = []
    for floor, allowed in FLOORS.items():
        files = sorted((pkg / floor).glob("*.py")) if (pkg / floor).is_dir() else [pkg / f"{floor}.py"]
        for f in files:
            bad = _imports(f) - allowed
            if bad:
                violations.append(f"{f.relative_to(ROOT)} imports {sorted(bad)}")
    assert not violations, violations
    # no algorithm module imports another algorithm's module (shared code: common, split, base)
    shared = {"base", "common", "split", "__init__"}
    for f in (pkg / "algorithms").glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedjax_sim.algorithms."):
                assert node.module.split(".")[2] in shared or f.stem == "__init__", (f.name, node.module)


def test_evaluate_clients_with_a_multitask_model_skips_clients_without_a_task():
    """Per-task personalized means are over the clients that hold the task (its count > 0); a
    client without the 'reg' task is left out of personalized_reg/mse, not counted as 0."""
    from fedjax_sim.core.evaluate import evaluate_clients
    from fedjax_sim.core.mapping import ClientMapping

    rng = np.random.default_rng(3)
    params, apply, task = _two_task_model(rng)
    c, m = 3, 4
    x = rng.normal(size=(c, m, 3)).astype(np.float32)
    y = {"cls": rng.integers(0, 3, (c, m)).astype(np.int32), "reg": rng.normal(size=(c, m)).astype(np.float32)}
    y_mask = {"cls": np.ones((c, m), bool), "reg": np.array([[1] * m, [0] * m, [1, 1, 0, 0]], bool)}
    n = np.array([4, 3, 2], np.int32)
    out = evaluate_clients(task.metrics, params, {"x": x, "y": y, "y_mask": y_mask}, jnp.asarray(n),
                           False, task.headline, ClientMapping("vmap"))
    per_client_mse, accs = [], []
    for i in range(c):
        o = {k: np.asarray(v, np.float64) for k, v in apply(params, x[i, :n[i]]).items()}
        accs.append(np.mean(o["cls"].argmax(1) == y["cls"][i, :n[i]]))
        rows = y_mask["reg"][i, :n[i]]
        if rows.any():
            per_client_mse.append(np.mean(((o["reg"][:, 0] - y["reg"][i, :n[i]]) ** 2)[rows]))
    np.testing.assert_allclose(out["personalized_reg/mse"], np.mean(per_client_mse), rtol=1e-5)
    np.testing.assert_allclose(out["personalized_cls/accuracy"], np.mean(accs), rtol=1e-6)
    np.testing.assert_allclose(out["personalized_cls/accuracy_per_client"], accs, rtol=1e-6)
