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
import numpy as np
import optax

Params = Any


PADDING = ("masked", "trim")


class Schedule(NamedTuple):
    """Static shape of local training: S steps of batch B, E epochs (0 = fixed steps).

    ``trim`` (epoch mode): a client runs only its own ceil(n / B) steps per epoch, a loop with a
    per-client trip count, instead of all S with the rest masked. Mapped over clients, a vmapped
    group runs as many steps as its largest member, so one client at a time wastes nothing and a
    chunk wastes what its sizes differ by. The numbers are the same: the steps it skips are
    no-ops (`padding_waste` measures what masking costs)."""

    batch_size: int
    num_steps: int
    epochs: int
    trim: bool = False

    @staticmethod
    def make(max_n: int, batch_size: int, epochs: int, steps: int, trim: bool = False) -> "Schedule":
        """``steps > 0``: fixed steps; else ``epochs`` passes over each client's data.

        In epoch mode S = epochs * ceil(max_n / B); a client with n < max_n has fewer non-empty
        steps (ceil(n / B) per epoch), the rest are masked no-ops (or skipped: ``trim``). The
        last batch of an epoch may be partial (no drop_last): its loss is the mean over its
        valid rows.
        """
        batch_size = min(batch_size, max_n) if steps == 0 else batch_size
        if steps > 0:
            return Schedule(batch_size, steps, 0)
        return Schedule(batch_size, epochs * math.ceil(max_n / batch_size), epochs, trim)


def trims(schedule: Schedule) -> bool:
    """Whether clients run only their own steps (`Schedule.trim`; epoch mode only)."""
    return schedule.trim and schedule.epochs > 0


def size_order(schedule: Schedule, position: int) -> int | None:
    """`core.mapping.map_clients`'s ``sort_by`` for a client program whose row count ``n`` is
    argument ``position``: group clients by size where the schedule trims (else None)."""
    return position if trims(schedule) else None


def client_steps(n, schedule: Schedule, epochs=None):
    """The non-empty local steps of clients with ``n`` rows (numpy or jax, any shape): E *
    ceil(n / B) in epoch mode (``epochs``: per-client epoch counts, at most E), S with fixed
    steps."""
    if schedule.epochs == 0:
        return n * 0 + schedule.num_steps
    e = schedule.epochs if epochs is None else epochs
    return e * (-(-n // schedule.batch_size))


def padding_waste(n, schedule: Schedule, group: int = 0, by_size: bool = False) -> float:
    """Local steps run per non-empty step, over clients with ``n`` [K] rows: masked padding
    runs S for every client (``group`` 0); trimmed, a group of ``group`` clients mapped together
    runs its largest member's count (1: one at a time, no waste), in the given order or, with
    ``by_size``, grouped by size (`core.mapping.map_clients`'s ``sort_by``). 1.0 = no waste."""
    steps = np.asarray(client_steps(np.asarray(n), schedule), np.float64)
    real = max(float(steps.sum()), 1.0)
    if group <= 0:
        return len(steps) * schedule.num_steps / real
    if by_size:
        steps = np.sort(steps)
    chunks = [steps[i:i + group] for i in range(0, len(steps), group)]
    return sum(len(c) * c.max() for c in chunks) / real


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

    Padding-invariant: each row's sort key comes from ``fold_in(key, row)``, not from one draw of
    shape [N_max], so the valid rows' order does not depend on N_max. A seed therefore trains the
    same whether its data is padded to its own largest client or to the largest client of a
    stacked set of seeds (`fedjax_sim.trials`).
    """
    b, s = schedule.batch_size, schedule.num_steps
    rows = jnp.arange(max_n)
    valid = rows < n

    def permutation(k):
        u = jax.vmap(lambda r: jax.random.uniform(jax.random.fold_in(k, r)))(rows)
        # padding rows sort last, so perm[:n] is a uniform permutation of the valid rows
        return jnp.argsort(jnp.where(valid, u, 2.0))

    if schedule.epochs == 0:
        pos = jnp.arange(s * b) % jnp.maximum(n, 1)
        return permutation(key)[pos].reshape(s, b).astype(jnp.int32), jnp.ones((s, b), bool)
    per_epoch = s // schedule.epochs
    perms = jax.vmap(lambda e: permutation(jax.random.fold_in(key, e)))(jnp.arange(schedule.epochs))
    pad = per_epoch * b - max_n
    perms = jnp.pad(perms, ((0, 0), (0, pad)))
    pos = jnp.arange(per_epoch * b)
    mask = jnp.broadcast_to(pos < n, (schedule.epochs, per_epoch * b))
    return perms.reshape(s, b).astype(jnp.int32), mask.reshape(s, b)


def step_key_schedule(key: jax.Array, schedule: Schedule) -> jax.Array:
    """[S, 2] per-step keys; step j of epoch e gets ``fold_in(fold_in(key, e), j)`` (fixed-steps
    mode: ``fold_in(key, t)``), so the keys of the non-empty steps do not depend on how many
    masked steps padding adds (see `batch_indices`)."""
    t = jnp.arange(schedule.num_steps)
    if schedule.epochs == 0:
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(t)
    per_epoch = schedule.num_steps // schedule.epochs
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i // per_epoch), i % per_epoch))(t)


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


def make_local_train(loss_fn: Callable, optimizer: optax.GradientTransformation,
                     schedule: Schedule, max_n: int) -> Callable:
    """The client program: builds ``train(params, opt_state, data, n, key, extras=None) ->
    (params, opt_state, LocalStats)``, a masked ``lax.scan`` over the schedule's S steps.

    Args:
      loss_fn: a task's ``loss(params, batch, key) -> (scalar, aux)``; the batch is ``data``'s
        rows of the step (leaves [B, ...]) plus ``mask`` [B].
      optimizer: any optax transformation; ``extras`` (a dict) is passed to its ``update`` as
        keyword arguments, which is how corrections read server context (`core.optim.proximal`
        reads ``anchor``, `core.optim.control_variates` reads ``control``/``client_control``).
      schedule, max_n: the static step count, batch size and padded length N_max.

    The returned ``train`` works on one client: ``data`` leaves [N_max, ...], ``n`` [] valid rows;
    ``epochs`` [] (optional, epoch schedules only): this client's number of local epochs, at most
    the schedule's (heterogeneous local schedules, e.g. FedHCA2's per-domain epochs).
    A step whose batch is empty leaves params and optimizer state untouched. Batch rows come from
    ``key`` (`batch_indices`); the per-step loss keys (dropout, sampling) from ``fold_in(key, 1)``.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train(params, opt_state, data, n, key, extras=None, epochs=None):
        extras = extras or {}
        idx, mask = batch_indices(key, n, max_n, schedule)
        if epochs is not None:  # this client's own epoch count (<= the schedule's): later epochs are no-ops
            if schedule.epochs == 0:
                raise ValueError("per-client epochs need an epoch schedule (local.steps == 0)")
            per_epoch = schedule.num_steps // schedule.epochs
            mask = mask & (jnp.arange(schedule.num_steps)[:, None] // per_epoch < epochs)
        step_keys = step_key_schedule(jax.random.fold_in(key, 1), schedule)

        def step(carry, inp):
            params, opt_state = carry
            bidx, bmask, k = inp
            batch = {**jax.tree.map(lambda a: a[bidx], data), "mask": bmask}
            (loss, _), grads = grad_fn(params, batch, k)
            updates, new_opt = optimizer.update(grads, opt_state, params, **extras)
            new_params = optax.apply_updates(params, updates)
            active = jnp.any(bmask)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
            return (keep(new_params, params), keep(new_opt, opt_state)), (loss * active, active)

        if trims(schedule):
            return _trimmed(step, params, opt_state, idx, mask, step_keys, n, epochs)
        (params, opt_state), (losses, active) = jax.lax.scan(
            step, (params, opt_state), (idx, mask, step_keys))
        return params, opt_state, summarize(losses, active, mask)

    def _trimmed(step, params, opt_state, idx, mask, step_keys, n, epochs):
        """The same steps as the masked scan, only the non-empty ones: step j of the client's
        own count is epoch j // m, batch j % m of it (m = ceil(n / B)), schedule row
        (j // m) * S_e + j % m, with that row's batch, mask and key."""
        per_epoch = schedule.num_steps // schedule.epochs
        own = jnp.minimum(client_steps(n, schedule._replace(epochs=1)), per_epoch)
        total = own * (schedule.epochs if epochs is None else jnp.minimum(epochs, schedule.epochs))

        def body(j, carry):
            params, opt_state, losses = carry
            t = (j // jnp.maximum(own, 1)) * per_epoch + j % jnp.maximum(own, 1)
            (params, opt_state), (loss, _) = step((params, opt_state), (idx[t], mask[t], step_keys[t]))
            return params, opt_state, losses.at[t].set(loss)

        # the losses land where the masked scan puts them, so the mean sums in the same order
        losses = jnp.zeros(schedule.num_steps, jnp.float32)
        params, opt_state, losses = jax.lax.fori_loop(0, total, body, (params, opt_state, losses))
        return params, opt_state, LocalStats(jnp.sum(losses) / jnp.maximum(total, 1), total, jnp.sum(mask))

    return train
