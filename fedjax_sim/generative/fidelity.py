"""Judging generated data: a reference classifier, fidelity, diversity and the optional filter
(specs/fedgc.md sections 2.4 and 6: ``gen_fidelity``, ``filter_generated``).

The reference classifier is multinomial logistic regression on flattened features (standardized
with the training rows' moments), fitted full-batch with Adam on weighted rows, so the same code
fits one classifier on the public split and, vmapped, one per client on its own real rows.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_sim.config import FEDGC_CHOICES

FILTERS = FEDGC_CHOICES["filter"]


class Linear(NamedTuple):
    """Softmax regression: logits = ((x - mean) / std) @ w + b; w [D, C], b [C]."""

    w: jax.Array
    b: jax.Array
    mean: jax.Array
    std: jax.Array


def logits(clf: Linear, x: jax.Array) -> jax.Array:
    """[N, C] logits of rows x [N, ...]."""
    flat = x.reshape(x.shape[0], -1)
    return ((flat - clf.mean) / clf.std) @ clf.w + clf.b


def fit_linear(x: jax.Array, y: jax.Array, weight: jax.Array, num_classes: int, steps: int = 300,
               l2: float = 1e-3) -> Linear:
    """Softmax regression on rows x [N, ...], labels y [N], row weights [N] (0 = padding); pure and
    vmappable over a leading client axis."""
    flat = x.reshape(x.shape[0], -1)
    wsum = jnp.maximum(jnp.sum(weight), 1e-6)
    mean = jnp.sum(flat * weight[:, None], 0) / wsum
    std = jnp.sqrt(jnp.sum(jnp.square(flat - mean) * weight[:, None], 0) / wsum) + 1e-3
    clf = Linear(jnp.zeros((flat.shape[1], num_classes)), jnp.zeros(num_classes), mean, std)
    opt = optax.adam(0.05)

    def loss(p):
        ce = optax.softmax_cross_entropy_with_integer_labels(logits(clf._replace(w=p[0], b=p[1]), x), y)
        return jnp.sum(ce * weight) / wsum + l2 * jnp.sum(jnp.square(p[0]))

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    p = (clf.w, clf.b)
    (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
    return clf._replace(w=p[0], b=p[1])


def accuracy(clf: Linear, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked accuracy of ``clf`` on rows x [N, ...], y [N]."""
    hit = (jnp.argmax(logits(clf, x), -1) == y) & mask
    return jnp.sum(hit) / jnp.maximum(jnp.sum(mask), 1)


def passes(clf: Linear, x: jax.Array, y: jax.Array, threshold: float) -> jax.Array:
    """[N] bool: the classifier agrees with the intended label (``threshold == 0``: its argmax is
    the label; else the label's probability is at least ``threshold``)."""
    lg = logits(clf, x)
    if threshold <= 0:
        return jnp.argmax(lg, -1) == y
    prob = jnp.take_along_axis(jax.nn.softmax(lg, -1), y[:, None], -1)[:, 0]
    return prob >= threshold


def diversity(x: jax.Array, y: jax.Array, mask: jax.Array, limit: int = 256) -> jax.Array:
    """Mean pairwise Euclidean distance between valid same-class rows among the first ``limit``
    rows of x [N, ...] (labels y [N], mask [N]), averaged over the pairs: a within-class spread
    score (0 = copies). Generated rows are class-sorted, so past ``limit`` rows the later classes
    are not scored."""
    x, y, mask = x[:limit].reshape(min(limit, x.shape[0]), -1), y[:limit], mask[:limit]
    sq = jnp.sum(jnp.square(x), -1)
    # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: [n, n] memory, not [n, n, D]
    d = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None] - 2.0 * x @ x.T, 0.0))
    same = (y[:, None] == y[None]) & mask[:, None] & mask[None] & ~jnp.eye(x.shape[0], dtype=bool)
    return jnp.sum(d * same) / jnp.maximum(jnp.sum(same), 1)
