"""On-device evaluation: the global model on the global test set, each client's own model on
its own test split."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_sim.core.mapping import map_clients


def _scores(apply_fn, params, x, y, mask):
    """(correct, loss_sum, count) of ``params`` on rows x [M, ...], y [M], mask [M]."""
    logits = apply_fn(params, x)
    correct = jnp.sum((jnp.argmax(logits, -1) == y) * mask)
    loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * mask)
    return correct, loss, jnp.sum(mask)


def evaluate_global(apply_fn: Callable, params, x: jax.Array, y: jax.Array,
                    batch_size: int = 512) -> dict:
    """Accuracy and mean loss of one model on x [T, ...], y [T], in fixed-size batches."""
    t = x.shape[0]
    nb = -(-t // batch_size)
    pad = nb * batch_size - t
    xb = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(nb, batch_size, *x.shape[1:])
    yb = jnp.pad(y, (0, pad)).reshape(nb, batch_size)
    mb = (jnp.arange(nb * batch_size) < t).reshape(nb, batch_size)
    correct, loss, count = jax.lax.map(lambda b: _scores(apply_fn, params, *b), (xb, yb, mb))
    count = jnp.maximum(jnp.sum(count), 1)
    return {"global_accuracy": jnp.sum(correct) / count, "global_loss": jnp.sum(loss) / count}


def evaluate_clients(apply_fn: Callable, params, x: jax.Array, y: jax.Array, n: jax.Array,
                     stacked: bool, strategy: str = "vmap", chunk_size: int = 0) -> dict:
    """Each client's model on its own test split.

    Args:
      params: one model shared by all clients (``stacked=False``) or [C, ...] per-client models.
      x: [C, M_max, ...], y: [C, M_max], n: [C] valid test rows.

    Returns:
      ``personalized_accuracy``: mean over clients with test rows of their accuracy;
      ``personalized_accuracy_per_client`` [C] (NaN-free: 0 where a client has no test rows);
      ``pooled_accuracy``: all clients' correct / all rows; ``personalized_loss``: pooled loss.
    """
    mask = jnp.arange(x.shape[1])[None, :] < n[:, None]
    one = lambda p, xc, yc, mc: _scores(apply_fn, p, xc, yc, mc)
    mapped = map_clients(one, (0 if stacked else None, 0, 0, 0), strategy, chunk_size)
    correct, loss, count = mapped(params, x, y, mask)
    has = count > 0
    acc = jnp.where(has, correct / jnp.maximum(count, 1), 0.0)
    total = jnp.maximum(jnp.sum(count), 1)
    return {
        "personalized_accuracy": jnp.sum(acc) / jnp.maximum(jnp.sum(has), 1),
        "personalized_accuracy_per_client": acc,
        "pooled_accuracy": jnp.sum(correct) / total,
        "personalized_loss": jnp.sum(loss) / total,
    }
