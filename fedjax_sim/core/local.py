"""Local training of one client: a ``lax.scan`` over a static number of masked steps.

Clients have unequal sizes; every client runs the same static number of steps S and a step whose
batch mask is empty leaves parameters and optimizer state untouched. Batches are drawn on device
from the client's key (no host round-trip). ``core.mapping`` maps these functions over clients.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any


class Schedule(NamedTuple):
    """Static shape of local training: S steps of batch B, E epochs (0 = fixed steps)."""

    batch_size: int
    num_steps: int
    epochs: int

    @staticmethod
    def make(max_n: int, batch_size: int, epochs: int, steps: int) -> "Schedule":
        """``steps > 0``: fixed steps; else ``epochs`` passes over each client's data.

        In epoch mode S = epochs * ceil(max_n / B); a client with n < max_n has fewer non-empty
        steps (ceil(n / B) per epoch), the rest are masked no-ops. The last batch of an epoch
        may be partial (no drop_last): its loss is the mean over its valid rows.
        """
        batch_size = min(batch_size, max_n) if steps == 0 else batch_size
        if steps > 0:
            return Schedule(batch_size, steps, 0)
        return Schedule(batch_size, epochs * math.ceil(max_n / batch_size), epochs)


def batch_indices(key: jax.Array, n: jax.Array, max_n: int, schedule: Schedule):
    """Row indices and validity mask of every local batch of one client.

    Args:
      key: the client's PRNG key for this round.
      n: [] number of valid rows of this client.
      max_n: static padded length N_max.

    Returns:
      idx [S, B] int32 rows into the client's [N_max] arrays; mask [S, B] bool.
      Epoch mode: a fresh permutation of the valid rows per epoch. Fixed-steps mode: one
      permutation, read cyclically (sample t*B+b is row perm[(t*B+b) mod n]).
    """
    b, s = schedule.batch_size, schedule.num_steps
    valid = jnp.arange(max_n) < n

    def permutation(k):
        # padding rows sort last, so perm[:n] is a uniform permutation of the valid rows
        return jnp.argsort(jnp.where(valid, jax.random.uniform(k, (max_n,)), 2.0))

    if schedule.epochs == 0:
        pos = jnp.arange(s * b) % jnp.maximum(n, 1)
        return permutation(key)[pos].reshape(s, b).astype(jnp.int32), jnp.ones((s, b), bool)
    per_epoch = s // schedule.epochs
    perms = jax.vmap(permutation)(jax.random.split(key, schedule.epochs))  # [E, N_max]
    pad = per_epoch * b - max_n
    perms = jnp.pad(perms, ((0, 0), (0, pad)))
    pos = jnp.arange(per_epoch * b)
    mask = jnp.broadcast_to(pos < n, (schedule.epochs, per_epoch * b))
    return perms.reshape(s, b).astype(jnp.int32), mask.reshape(s, b)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over valid rows: logits [B, K], labels [B], mask [B]."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1)


class LocalStats(NamedTuple):
    """loss: mean training loss over the non-empty steps; steps: how many there were;
    samples: how many valid rows were trained on (forward+backward passes)."""

    loss: jax.Array
    steps: jax.Array
    samples: jax.Array


def summarize(losses: jax.Array, active: jax.Array, mask: jax.Array) -> LocalStats:
    """LocalStats from per-step masked losses [S], step activity [S] and batch masks [S, B]."""
    steps = jnp.sum(active)
    return LocalStats(jnp.sum(losses) / jnp.maximum(steps, 1), steps, jnp.sum(mask))


GradCorrection = Callable[[Params, Params, Any], Params]


def make_local_train(apply_fn: Callable, optimizer: optax.GradientTransformation,
                     schedule: Schedule, max_n: int,
                     grad_correction: GradCorrection | None = None,
                     clip_norm: float = 0.0) -> Callable:
    """Builds ``train(params, opt_state, x, y, n, key, aux) -> (params, opt_state, LocalStats)``.

    Shapes (one client): x [N_max, ...], y [N_max], n []. ``aux`` is passed to
    ``grad_correction(params, grads, aux) -> grads`` (FedProx's proximal pull, SCAFFOLD's control
    variates); it may be ``None``.
    """

    def loss_fn(params, xb, yb, mb):
        return masked_cross_entropy(apply_fn(params, xb), yb, mb)

    grad_fn = jax.value_and_grad(loss_fn)

    def train(params, opt_state, x, y, n, key, aux=None):
        idx, mask = batch_indices(key, n, max_n, schedule)

        def step(carry, batch):
            params, opt_state = carry
            bidx, bmask = batch
            loss, grads = grad_fn(params, x[bidx], y[bidx], bmask)
            if grad_correction is not None:
                grads = grad_correction(params, grads, aux)
            if clip_norm > 0:
                grads = clip_by_global_norm(grads, clip_norm)
            updates, new_opt = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            active = jnp.any(bmask)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
            return (keep(new_params, params), keep(new_opt, opt_state)), (loss * active, active)

        (params, opt_state), (losses, active) = jax.lax.scan(step, (params, opt_state), (idx, mask))
        return params, opt_state, summarize(losses, active, mask)

    return train


def clip_by_global_norm(tree, max_norm: float):
    """Scales ``tree`` so its global L2 norm is at most ``max_norm``."""
    norm = optax.global_norm(tree)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
    return jax.tree.map(lambda g: g * scale, tree)


def make_optimizer(name: str, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Client or server optimizer by name: ``sgd`` | ``momentum`` | ``adam``."""
    if name == "sgd":
        opt = optax.sgd(lr)
    elif name == "momentum":
        opt = optax.sgd(lr, momentum=momentum)
    elif name == "adam":
        opt = optax.adam(lr)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    if weight_decay > 0:
        opt = optax.chain(optax.add_decayed_weights(weight_decay), opt)
    return opt
