"""Aggregators of asynchronous FL: staleness weights (FedAsync, FedBuff), the re-basing of stale
updates onto the current model (FedAsync's mixing), and FedADT's server-side distillation of each
stale update toward the latest global model (specs/async_kd.md).

Server context arrives as ``extras`` (`base.chain` hands every aggregator the same ones):
``bases`` [K, ...] the model each arrival trained from, ``staleness`` [K] int versions it
missed, ``progress`` [] the training stage in [0, 1], ``proxy`` [N_p, ...] unlabeled inputs and
``key`` a PRNG key for proxy batches.

FedAsync = ``chain(rebase(), staleness_weighted(...), mean(), server_optimizer(sgd(alpha)))``:
``w + alpha * s(t - tau) * (w_new - w)``. FedBuff = ``chain(staleness_weighted(...), mean(),
server_optimizer(opt))`` over K buffered deltas with equal weights: ``w + eta_g * sum_k
s_k * u_k / K`` with sgd(eta_g). FedADT puts ``distillation_correction(...)`` first: it acts on
the raw update, as in the spec's ``omega(s) * (u_i + c_i)``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_sim.aggregators.base import Aggregator

STALENESS = ("constant", "polynomial", "hinge")
SCHEDULES = ("constant", "linear", "sigmoid", "maturity")
GATES = ("one", "stale", "sqrt")


def staleness_weight(s: jax.Array, kind: str, a=0.5, b=10.0) -> jax.Array:
    """FedAsync's staleness functions [code: Plato examples/async/fedasync; FedBuff uses the
    polynomial one with a = 1/2]: s [K] int -> [K] float32.

    constant: 1; polynomial: (s + 1)^-a; hinge: 1 if s <= b else 1 / (a (s - b) + 1).
    """
    s = jnp.asarray(s, jnp.float32)
    if kind == "constant":
        return jnp.ones_like(s)
    if kind == "polynomial":
        return (s + 1.0) ** (-jnp.asarray(a, jnp.float32))
    if kind == "hinge":
        return jnp.where(s <= b, 1.0, 1.0 / (a * (s - b) + 1.0)).astype(jnp.float32)
    raise ValueError(f"unknown staleness function {kind!r}")


def lambda_schedule(progress, kind: str, lam_max, k=10.0, p0=0.3, confidence=None, c0=0.3, c1=0.8):
    """FedADT's stage weight lambda(p) in [0, lam_max] [ours: the abstract fixes only its purpose,
    weak early and strong late; specs/async_kd.md section 2.4].

    constant: lam_max; linear: lam_max * p; sigmoid: lam_max * sigmoid(k (p - p0));
    maturity: lam_max * clip((conf - c0) / (c1 - c0), 0, 1) with ``confidence`` = the global
    model's mean max-softmax on the proxy batch.
    """
    p = jnp.asarray(progress, jnp.float32)
    if kind == "constant":
        stage = jnp.ones_like(p)
    elif kind == "linear":
        stage = p
    elif kind == "sigmoid":
        stage = jax.nn.sigmoid(k * (p - p0))
    elif kind == "maturity":
        stage = jnp.clip((confidence - c0) / (c1 - c0), 0.0, 1.0)
    else:
        raise ValueError(f"unknown lambda schedule {kind!r}")
    return lam_max * stage


def staleness_gate(s: jax.Array, kind: str) -> jax.Array:
    """g(s) [K]: ``one`` 1, ``stale`` 1[s > 0] (a fresh update needs no correction), ``sqrt``
    1 - (1 + s)^-1/2 [ours, specs/async_kd.md section 2.4]."""
    s = jnp.asarray(s, jnp.float32)
    if kind == "one":
        return jnp.ones_like(s)
    if kind == "stale":
        return (s > 0).astype(jnp.float32)
    if kind == "sqrt":
        return 1.0 - (1.0 + s) ** -0.5
    raise ValueError(f"unknown staleness gate {kind!r}")


def _stateless(update) -> Aggregator:
    return Aggregator(lambda params: optax.EmptyState(), update)


def staleness_weighted(kind: str, a=0.5, b=10.0) -> Aggregator:
    """Scales each client result [K, ...] by its staleness weight (extra ``staleness`` [K])."""

    def update(results, weights, state, params, *, staleness, **extras):
        w = staleness_weight(staleness, kind, a, b)
        scaled = jax.tree.map(lambda r: r * w.reshape((-1,) + (1,) * (r.ndim - 1)).astype(r.dtype), results)
        return scaled, state, {"staleness_weight": jnp.mean(w)}

    return _stateless(update)


def rebase() -> Aggregator:
    """Client deltas from their own bases [K, ...] -> deltas from the current model:
    ``bases + u - params`` (extra ``bases`` [K, ...]), FedAsync's ``x_new - x``."""

    def update(results, weights, state, params, *, bases, **extras):
        return jax.tree.map(lambda u, b, p: (b + u) - p, results, bases, params), state, {}

    return _stateless(update)


def kd_targets(teacher_logits, anchor_logits, lam, temperature):
    """p_bar = lam * softmax(t / T) + (1 - lam) * softmax(a / T): teacher [B, C], anchors
    [M, B, C], lam [M] -> [M, B, C]."""
    pt = jax.nn.softmax(teacher_logits / temperature, -1)
    pa = jax.nn.softmax(anchor_logits / temperature, -1)
    lam = lam[:, None, None]
    return lam * pt[None] + (1.0 - lam) * pa


def kd_loss(logits, p_bar, temperature):
    """T^2 * CE(p_bar, softmax(logits / T)), mean over the batch: logits, p_bar [B, C]."""
    logq = jax.nn.log_softmax(logits / temperature, -1)
    return temperature ** 2 * jnp.mean(-jnp.sum(p_bar * logq, -1))


def kl_to(p_logits, q_logits) -> jax.Array:
    """Mean over rows of KL(softmax(p) || softmax(q)) (temperature 1): [B, C], [B, C] -> []."""
    logp, logq = jax.nn.log_softmax(p_logits, -1), jax.nn.log_softmax(q_logits, -1)
    return jnp.mean(jnp.sum(jnp.exp(logp) * (logp - logq), -1))


def distillation_correction(apply_fn: Callable, *, lam_max, schedule: str = "sigmoid", k=10.0, p0=0.3,
                            gate: str = "stale", temperature=2.0, steps: int = 10, batch: int = 256,
                            lr=0.05, c0=0.3, c1=0.8) -> Aggregator:
    """FedADT-R's server-side correction [reconstruction, specs/async_kd.md section 2.3].

    Each arrival's trained model ``theta0 = bases + u`` is the student; the frozen teacher is the
    current global model ``params``. With ``lam_i = lambda(progress) * g(s_i)``, ``steps`` SGD
    steps at ``lr`` minimize ``T^2 CE(p_bar, softmax(f(theta; x) / T))`` on fresh proxy batches x
    [B, ...], where ``p_bar = lam_i * softmax(f(w; x) / T) + (1 - lam_i) * softmax(f(theta0; x)
    / T)`` (the second teacher anchors the student at its own knowledge). Output: the corrected
    deltas ``u + (theta_K - theta0)`` [K, ...]; an arrival with ``lam_i == 0`` keeps ``u`` bit for
    bit. All K students share the teacher's logits and train under one vmap.

    ``apply_fn(params, x [B, ...]) -> logits [B, C]``; extras: ``bases`` [K, ...], ``staleness``
    [K], ``progress`` [], ``proxy`` [N_p, ...], ``key``. Metrics: ``kd_lambda`` (mean lam_i),
    ``kd_kl_before`` / ``kd_kl_after``: mean KL(teacher || student) on the first proxy batch
    before and after the correction.
    """

    def update(results, weights, state, params, *, bases, staleness, progress, proxy, key, **extras):
        n_proxy = proxy.shape[0]
        b = min(batch, n_proxy)
        xs = jax.vmap(lambda i: proxy[jax.random.choice(jax.random.fold_in(key, i), n_proxy, (b,),
                                                        replace=False)])(jnp.arange(steps))  # [S, B, ...]
        teacher0 = apply_fn(params, xs[0])
        confidence = jnp.mean(jnp.max(jax.nn.softmax(teacher0, -1), -1))
        lam = lambda_schedule(progress, schedule, lam_max, k, p0, confidence, c0, c1) * staleness_gate(staleness, gate)
        students0 = jax.tree.map(jnp.add, bases, results)

        def step(thetas, x):
            teacher = apply_fn(params, x)
            anchors = jax.vmap(apply_fn, (0, None))(students0, x)
            targets = kd_targets(teacher, anchors, lam, temperature)

            def one(theta, target):
                grad = jax.grad(lambda th: kd_loss(apply_fn(th, x), target, temperature))(theta)
                return jax.tree.map(lambda t, g: t - lr * g, theta, grad)

            return jax.vmap(one)(thetas, targets), None

        thetas, _ = jax.lax.scan(step, students0, xs)
        on = lam > 0
        corrected = jax.tree.map(
            lambda u, t, t0: jnp.where(on.reshape((-1,) + (1,) * (u.ndim - 1)), u + (t - t0), u),
            results, thetas, students0)
        kl = lambda th: jax.vmap(lambda p: kl_to(teacher0, apply_fn(p, xs[0])))(th)  # noqa: E731
        return corrected, state, {"kd_lambda": jnp.mean(lam), "kd_kl_before": jnp.mean(kl(students0)),
                                  "kd_kl_after": jnp.mean(kl(thetas))}

    return _stateless(update)


__all__ = ["GATES", "SCHEDULES", "STALENESS", "distillation_correction", "kd_loss", "kd_targets",
           "kl_to", "lambda_schedule", "rebase", "staleness_gate", "staleness_weight",
           "staleness_weighted"]
