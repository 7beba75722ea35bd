"""Shared fixtures and plain-Python references for the engine tests.

The references here are deliberately written without the engine: a numpy (float64) MLP with
hand-derived gradients, and per-client Python loops over local steps. The only engine function
they share is `batch_indices`, so that the reference and the engine train on the same batches
(its own behaviour is tested separately in test_core.py).
"""
from __future__ import annotations

import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_sim import config as config_lib
from fedjax_sim.core.local import Schedule, batch_indices
from fedjax_sim.core.sampling import sample_cohort
from fedjax_sim.data.federated import FederatedData, make_federated
from fedjax_sim.models import dense_chain_layers, with_dense_chain_layers

# Padding rows are filled with this (finite) garbage, so a test fails if the engine ever lets a
# padded row into a gradient or a score instead of masking it.
PAD_GARBAGE = 7.5


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


def make_data(train_sizes=(5, 9, 3, 7), test_sizes=(3, 0, 4, 2), features=6, classes=3,
              global_size=7, seed=0) -> FederatedData:
    """A hand-built FederatedData with unequal clients (numpy leaves, garbage in padded rows)."""
    rng = np.random.default_rng(seed)
    c = len(train_sizes)

    def stacked(sizes):
        n_max = max(max(sizes), 1)
        x = np.full((c, n_max, features), PAD_GARBAGE, np.float32)
        y = np.full((c, n_max), classes - 1, np.int32)
        for i, n in enumerate(sizes):
            x[i, :n] = rng.normal(size=(n, features))
            y[i, :n] = rng.integers(0, classes, n)
        return x, y, np.asarray(sizes, np.int32)

    x_train, y_train, n_train = stacked(train_sizes)
    x_test, y_test, n_test = stacked(test_sizes)
    x_global = rng.normal(size=(global_size, features)).astype(np.float32)
    y_global = rng.integers(0, classes, global_size).astype(np.int32)
    return make_federated(x_train, y_train, n_train, x_test, y_test, n_test, x_global, y_global,
                          num_classes=classes, name="hand-built")


def tiny_config(**fields) -> config_lib.Config:
    """A small Config; keyword names use ``__`` for dots (``local__lr=0.1``)."""
    cfg = config_lib.Config()
    defaults = {"rounds": 2, "eval_every": 1, "client_mapping": "vmap", "model.hidden": (8,),
                "local.lr": 0.1, "local.batch_size": 3, "local.epochs": 1,
                "local.formulation": "materialized"}
    for path, value in {**defaults, **{k.replace("__", "."): v for k, v in fields.items()}}.items():
        config_lib.set_field(cfg, path, value)
    return cfg


# ----------------------------------------------------------------------------------------------
# numpy reference MLP: layers = [[W, b], ...], ReLU between layers, softmax cross-entropy.


def layers_of(params) -> list[list[np.ndarray]]:
    """The dense layers of an MLP param tree as float64 [[kernel, bias], ...]."""
    return [[np.asarray(l["kernel"], np.float64), np.asarray(l["bias"], np.float64)]
            for l in dense_chain_layers(params)]


def params_of(template, layers):
    """A param tree shaped like ``template`` holding ``layers`` (float32)."""
    return with_dense_chain_layers(template, [
        {"kernel": np.asarray(w, np.float32), "bias": np.asarray(b, np.float32)} for w, b in layers])


def mlp_params(features=6, hidden=(8,), classes=3, seed=0, clients=None):
    """Random MLP params in the tree layout of ``models.mlp(..., head_layers=1)`` (numpy, so
    no Flax init has to compile); ``clients``: a stacked [C, ...] tree of distinct models."""
    rng = np.random.default_rng(seed)
    widths = [features, *hidden, classes]
    lead = () if clients is None else (clients,)

    def dense(fan_in, fan_out):
        return {"kernel": (rng.normal(size=(*lead, fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32),
                "bias": (0.1 * rng.normal(size=(*lead, fan_out))).astype(np.float32)}

    layers = [dense(a, b) for a, b in zip(widths[:-1], widths[1:])]
    return {"body": {"mlp": {f"dense_{i}": l for i, l in enumerate(layers[:-1])}},
            "head": {"mlp": {"dense_0": layers[-1]}}}


def client(tree, c):
    """Client c's slice of a stacked tree (as numpy)."""
    return jax.tree.map(lambda a: np.asarray(a)[c], tree)


# jitted once per (N_max, schedule): eager dispatch would compile many tiny programs
_batch_indices = jax.jit(batch_indices, static_argnums=(2, 3))


def ref_batches(key, n, max_n, schedule):
    """`core.local.batch_indices` of one client: (idx [S, B], mask [S, B]) as numpy."""
    return tuple(np.asarray(a) for a in _batch_indices(key, jnp.int32(n), max_n, schedule))


def ref_logits(layers, x):
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def ref_loss_and_grads(layers, x, y):
    """Mean cross-entropy over the rows of x [m, ...], y [m] (m >= 1) and its gradient, by hand."""
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    inputs, pre = [], []
    for i, (w, b) in enumerate(layers):
        inputs.append(h)
        z = h @ w + b
        pre.append(z)
        h = np.maximum(z, 0.0) if i < len(layers) - 1 else z
    logits = h - h.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    m = len(y)
    loss = -logp[np.arange(m), y].mean()
    dz = np.exp(logp)
    dz[np.arange(m), y] -= 1.0
    dz /= m
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        grads[i] = [inputs[i].T @ dz, dz.sum(axis=0)]
        if i > 0:
            dz = (dz @ layers[i][0].T) * (pre[i - 1] > 0)
    return loss, grads


def tree_add(a, b, scale=1.0):
    return [[wa + scale * wb, ba + scale * bb] for (wa, ba), (wb, bb) in zip(a, b)]


def tree_scale(a, s):
    return [[w * s, b * s] for w, b in a]


def tree_zeros(a):
    return [[np.zeros_like(w), np.zeros_like(b)] for w, b in a]


def ref_local_sgd(layers, x, y, n, key, schedule: Schedule, max_n: int, lr: float,
                  momentum: float | None = None, trace=None, correction=None):
    """One client's local training as a Python loop over the engine's batches.

    Each step uses only the valid rows of its batch (a step with none is skipped, optimizer
    state included). ``momentum``: optax-style heavy ball, trace <- g + m * trace,
    w <- w - lr * trace. ``correction(layers, grads) -> grads`` adds e.g. a proximal term.

    Returns (layers, trace, number of non-empty steps).
    """
    idx, mask = ref_batches(key, n, max_n, schedule)
    x, y = np.asarray(x), np.asarray(y)
    if momentum is not None and trace is None:
        trace = tree_zeros(layers)
    steps = 0
    for t in range(schedule.num_steps):
        rows = idx[t][mask[t]]
        if len(rows) == 0:
            continue
        assert rows.max() < int(n), "the reference must never see a padded row"
        steps += 1
        _, grads = ref_loss_and_grads(layers, x[rows], y[rows])
        if correction is not None:
            grads = correction(layers, grads)
        if momentum is not None:
            trace = tree_add(grads, trace, momentum)
            grads = trace
        layers = tree_add(layers, grads, -lr)
    return layers, trace, steps


def ref_cohort(key, num_clients: int, cohort: int):
    """The cohort ids and per-client training keys of one round, derived as a round documents:
    split the round key into (sample, train), sample the ids, split the train key per client."""
    k_sample, k_train = jax.random.split(key)
    idx = np.asarray(sample_cohort(k_sample, num_clients, cohort))
    return idx, jax.random.split(k_train, len(idx))


def weighted_average(trees, weights):
    w = np.asarray(weights, np.float64) / np.sum(weights)
    out = tree_scale(trees[0], w[0])
    for tree, wi in zip(trees[1:], w[1:]):
        out = tree_add(out, tree, wi)
    return out


def assert_config_error(capsys, rc, field, value):
    """Bad input: exit code 2 and exactly one stderr line naming the field and the value."""
    captured = capsys.readouterr()
    lines = [l for l in captured.err.splitlines() if l.strip()]
    assert rc == 2, captured.err
    assert len(lines) == 1, captured.err
    assert field in lines[0] and value in lines[0], lines[0]
    return lines[0]
