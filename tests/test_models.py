"""The literature's named CNNs (`emnist_cnn`: FedJAX's EMNIST CNN; `simple_cnn`: pfl-research's),
the loop-friendly max-pool (the conv models' agreement across implementations is in
test_patch_conv.py), optional dropout through the task's loss, the conv-aware client
mapping default, and `fedjax-sim bench` on conv models and momentum."""
from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_sim import cli, runner
from fedjax_sim import config as config_lib
from fedjax_sim import tasks
from fedjax_sim.core.mapping import ClientMapping, resolve
from fedjax_sim.models import build_model, max_pool
from conftest import assert_config_error


def _ties(shape, seed=0):
    """Inputs with many exact ties (values in {0, 1, 2}), as constant image regions give."""
    return jnp.asarray(np.random.default_rng(seed).integers(0, 3, shape).astype(np.float32))


@pytest.mark.parametrize("shape,window", [((2, 8, 8, 3), (2, 2)), ((2, 7, 9, 3), (2, 2)), ((1, 9, 8, 2), (3, 2))])
def test_max_pool_equals_flax_max_pool_values_and_gradients_on_ties(shape, window):
    """`max_pool` gives nn.max_pool's values and routes each window's gradient to its first
    maximum in row-major order (XLA's select-and-scatter), also on ties and odd sizes."""
    x = _ties(shape)
    ref = lambda x: nn.max_pool(x, window, strides=window)  # noqa: E731
    np.testing.assert_array_equal(max_pool(x, window), ref(x))
    w = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
    g_ref = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
    g_ours = jax.grad(lambda x: jnp.sum(max_pool(x, window) * w))(x)
    np.testing.assert_array_equal(g_ours, g_ref)


def test_max_pool_gradient_follows_a_loop_reference():
    """Plain-Python reference: each window's gradient goes to the first maximal element."""
    x = np.asarray(_ties((1, 4, 6, 1), seed=3))
    g = np.arange(1, 7, dtype=np.float32).reshape(1, 2, 3, 1)
    got = np.asarray(jax.vjp(lambda a: max_pool(a, (2, 2)), jnp.asarray(x))[1](jnp.asarray(g))[0])
    want = np.zeros_like(x)
    for i in range(2):
        for j in range(3):
            cells = [(2 * i + a, 2 * j + b) for a in range(2) for b in range(2)]
            first = max(cells, key=lambda c: (x[0, c[0], c[1], 0], -cells.index(c)))
            want[0, first[0], first[1], 0] = g[0, i, j, 0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["emnist_cnn", "simple_cnn"])
def test_named_cnns_have_the_published_layout(name):
    """conv32 3x3 VALID, conv64 3x3 VALID, one 2x2 pool, fc128, logits: 1,206,590 parameters at
    28x28x1 with 62 classes (the peers' count for FedJAX's and pfl-research's model)."""
    model = build_model(name, (28, 28, 1), 62)
    p = model.init(jax.random.PRNGKey(0))
    shapes = jax.tree.map(jnp.shape, p)
    assert shapes["body"]["features"]["conv_0"]["kernel"] == (3, 3, 1, 32)
    assert shapes["body"]["features"]["conv_1"]["kernel"] == (3, 3, 32, 64)
    assert shapes["body"]["mlp"]["dense_0"]["kernel"] == (12 * 12 * 64, 128)
    assert shapes["head"]["mlp"]["dense_0"]["kernel"] == (128, 62)
    assert sum(a.size for a in jax.tree.leaves(p)) == 1_206_590
    assert model.feature_dim == 128 and model.convolutional and not model.dense_chain
    biases = [p["body"]["features"][c]["bias"] for c in ("conv_0", "conv_1")] + [
        p["body"]["mlp"]["dense_0"]["bias"], p["head"]["mlp"]["dense_0"]["bias"]]
    assert all(float(jnp.abs(b).max()) == 0.0 for b in biases)


def test_initializers_follow_haiku_and_glorot():
    """emnist_cnn: dense kernels as Haiku's Linear (normal truncated at 2 std, std 1/sqrt(fan_in)
    before truncation, i.e. about 0.88/sqrt(fan_in) after); simple_cnn: Glorot uniform."""
    k = build_model("emnist_cnn", (28, 28, 1), 62).init(jax.random.PRNGKey(0))["body"]["mlp"]["dense_0"]["kernel"]
    scale = 1.0 / math.sqrt(k.shape[0])
    assert float(jnp.abs(k).max()) <= 2 * scale + 1e-7
    assert abs(float(jnp.std(k)) / scale - 0.88) < 0.01
    k = build_model("simple_cnn", (28, 28, 1), 62).init(jax.random.PRNGKey(0))["body"]["mlp"]["dense_0"]["kernel"]
    bound = math.sqrt(6.0 / sum(k.shape))
    assert float(jnp.abs(k).max()) <= bound
    assert abs(float(jnp.std(k)) / (bound / math.sqrt(3)) - 1.0) < 0.02


def test_dropout_enters_the_training_loss_only():
    """With dropout the task's loss depends on its key (and repeats for the same key); metrics
    and `apply` stay deterministic; without dropout the loss ignores the key."""
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 10, 10, 1))
    batch = {"x": x, "y": jnp.arange(8) % 5, "mask": jnp.ones(8, bool)}
    with_drop = build_model("emnist_cnn", (10, 10, 1), 5, dropout=True)
    plain = build_model("emnist_cnn", (10, 10, 1), 5)
    assert plain.train_apply is None and with_drop.train_apply is not None
    p = with_drop.init(jax.random.PRNGKey(1))
    task = tasks.classification(with_drop.apply, 5, with_drop.train_apply)
    k1, k2 = jax.random.PRNGKey(2), jax.random.PRNGKey(3)
    assert float(task.loss(p, batch, k1)[0]) != float(task.loss(p, batch, k2)[0])
    assert float(task.loss(p, batch, k1)[0]) == float(task.loss(p, batch, k1)[0])
    np.testing.assert_array_equal(with_drop.apply(p, x), plain.apply(p, x))
    plain_task = tasks.classification(plain.apply, 5)
    assert float(plain_task.loss(p, batch, k1)[0]) == float(plain_task.loss(p, batch, k2)[0])


def test_build_model_refuses_dropout_for_models_without_it():
    with pytest.raises(ValueError, match="no dropout"):
        build_model("cnn", (28, 28, 1), 10, dropout=True)


def test_conv_models_default_to_sequential_clients_on_cpu():
    """The measured CPU default: conv clients one at a time, dense ones in chunks of 10; an
    explicit strategy or another backend is left alone."""
    assert resolve("auto", 0, "cpu", "conv") == ("sequential", 1)
    assert resolve("auto", 0, "cpu", "dense") == ("chunked", 10)
    assert resolve("auto", 0, "gpu", "conv") == ("vmap", 0)
    assert resolve("chunked", 4, "cpu", "conv") == ("chunked", 4)
    assert ClientMapping("auto", 0, "conv").resolved(prefer="vmap").strategy == "vmap"
    cfg = config_lib.Config(algorithm="fedavg", rounds=1)
    cfg.data.num_clients, cfg.model.name = 3, "emnist_cnn"
    prep = runner.prepare(cfg)
    if jax.default_backend() == "cpu":
        assert prep.mapping.kind == "conv" and prep.algorithm.info["client_mapping"] == "sequential"


def test_a_run_with_emnist_cnn_and_dropout_trains(tmp_path):
    """End to end on the 8x8 digits: emnist_cnn with its dropouts runs and learns something."""
    out = tmp_path / "run"
    rc = cli.main(["run", "--algorithm", "fedavg", "--clients", "4", "--rounds", "3", "--no-progress",
                   "--set", "model.name=emnist_cnn", "--set", "model.dropout=true", "--set", "eval_every=3",
                   "--set", "local.lr=0.1", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["global_accuracy"] > 0.2  # 10 classes: chance is 0.1


BAD_MODELS = [
    (["--set", "model.dropout=true"], "model.dropout", "True"),
    (["--set", "model.name=cnn", "--set", "model.dropout=true"], "model.dropout", "True"),
    (["--dataset", "diabetes", "--set", "model.name=emnist_cnn"], "model.name", "emnist_cnn"),
]


@pytest.mark.parametrize("args,field,value", BAD_MODELS, ids=[" ".join(a) for a, _, _ in BAD_MODELS])
def test_bad_model_choices_exit_2(args, field, value, tmp_path, capsys):
    rc = cli.main(["run", "--clients", "3", "--rounds", "1", "--out", str(tmp_path / "o"), "--no-progress"] + args)
    assert_config_error(capsys, rc, field, value)
    assert not (tmp_path / "o").exists()


def test_bench_runs_the_peers_cnn_workload(capsys):
    """`bench --model cnn` is the peers' CNN (emnist_cnn without dropout) on image-shaped inputs,
    with the loop-friendly conv on CPU; momentum runs the factored MLP path."""
    rc = cli.main(["bench", "--model", "cnn", "--image-shape", "8,8,1", "--classes", "5", "--clients", "4",
                   "--cohort", "2", "--examples-per-client", "8", "--batch-size", "4", "--rounds", "1",
                   "--repeats", "1", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["workload"]["model_name"] == "emnist_cnn" and r["workload"]["input_shape"] == [8, 8, 1]
    assert r["workload"]["parameters"] == 320 + 18496 + 256 * 128 + 128 + 128 * 5 + 5
    assert r["samples_per_second"] > 0 and r["efficiency"] > 0
    if jax.default_backend() == "cpu":
        assert r["engine"]["conv"] == "patches" and r["engine"]["client_mapping"] == "sequential"
    rc = cli.main(["bench", "--features", "16", "--hidden", "8", "--clients", "4", "--cohort", "2",
                   "--examples-per-client", "8", "--batch-size", "4", "--rounds", "1", "--repeats", "1",
                   "--optimizer", "momentum", "--no-centralized", "--json"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and r["engine"]["formulation"] == "factored" and r["efficiency"] is None


BAD_BENCH_IMAGES = [
    (["--model", "cnn", "--features", "10"], "--features", "10"),
    (["--model", "cnn", "--image-shape", "4,4,1"], "--image-shape", "4,4,1"),
    (["--model", "cnn", "--image-shape", "28,28"], "--image-shape", "28,28"),
    (["--model", "cnn", "--image-shape", "a,b,c"], "--image-shape", "a,b,c"),
    (["--model", "cnn", "--conv", "fast"], "--conv", "fast"),
    (["--model", "mlp", "--image-shape", "28,28,1"], "--image-shape", "28,28,1"),
    (["--model", "resnet"], "--model", "resnet"),
    (["--optimizer", "sgdd"], "--optimizer", "sgdd"),
]


@pytest.mark.parametrize("args,field,value", BAD_BENCH_IMAGES, ids=[" ".join(a) for a, _, _ in BAD_BENCH_IMAGES])
def test_bad_bench_model_input_exits_2(args, field, value, capsys):
    rc = cli.main(["bench", "--clients", "4", "--cohort", "2", "--rounds", "1", "--repeats", "1", "--json"] + args)
    assert_config_error(capsys, rc, field, value)
