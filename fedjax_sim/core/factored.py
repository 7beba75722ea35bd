"""Local SGD for dense networks without materializing per-client weights.

Plain SGD on a dense layer changes its kernel by one outer product per step,
``W <- W - lr * h^T g`` (h: the layer's [B, in] input, g: the [B, out] gradient of the loss
w.r.t. the layer's output), so after s steps a client's kernel is ``W - A_s^T G_s`` with
``A_s`` [s*B, in] the stacked inputs and ``G_s`` [s*B, out] the stacked lr-scaled gradients.
When every client of a cohort starts from the same global model this gives, for a cohort of K
clients and a layer with shared kernel W:

  forward   h W  - (h A^T) G    : one large shared GEMM [K*B, in] x [in, out] plus two thin
                                  per-client products with inner size S*B;
  aggregate mean_k(-A_k^T G_k)  : one [in, K*S*B] x [K*S*B, out] GEMM (`LowRankDelta`).

Per-client [in, out] kernels, their gradients and their updates are never formed; that memory
traffic is what makes plain vmap of per-client training slow on CPU (docs/performance.md). The
result is the same model as `core.local` up to float reassociation (tests/test_core.py).

Eligible: a ``dense_chain`` model (MLP), a task with an ``output_loss``, plain SGD (no
momentum/Adam/weight decay/clipping), gradient corrections that are a uniform pull to the start
point (FedProx: ``prox_mu``). The model's layer layout comes in as two functions
(``layers_of(params) -> [{"kernel", "bias"}, ...]`` and ``with_layers(params, layers)``), so this
module knows nothing about models.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fedjax_sim.core.local import Schedule, batch_indices, summarize
from fedjax_sim.core.optim import static_zero
from fedjax_sim.types import LowRankDelta

Params = Any


def _forward(layers, a_fac, g_fac, biases, xb, eps):
    """Logits and each layer's input; ``eps`` are zero offsets whose gradient is dL/d(output)."""
    h = xb.reshape(xb.shape[0], -1)
    inputs = []
    last = len(layers) - 1
    for i, (layer, a, g, b, e) in enumerate(zip(layers, a_fac, g_fac, biases, eps)):
        inputs.append(h)
        z = h @ layer["kernel"] - (h @ a.T) @ g + b + e
        h = jax.nn.relu(z) if i < last else z
    return h, inputs


def make_factored_train(output_loss, layers_of, with_layers, schedule: Schedule, max_n: int,
                        lr, prox_mu: float = 0.0):
    """Builds ``train(params, data, n, key) -> (delta, LocalStats)`` for one client.

    ``output_loss(outputs [B, ...], batch) -> scalar`` is the task's loss on the model outputs;
    ``data`` leaves are [N_max, ...] with inputs ``x``.

    ``params`` is the shared starting model (map it with in_axes None). ``delta`` has the
    params' structure: kernels are `LowRankDelta` (a [R, in], g [R, out], R = S*B), biases dense
    [out]; it equals (params after S local SGD steps) - params.
    With ``prox_mu`` the FedProx gradient ``g + mu (w - w_start)`` shrinks the accumulated delta
    by (1 - lr*mu) each step, applied to the G factor.
    """
    b_size, steps = schedule.batch_size, schedule.num_steps
    rank = steps * b_size
    shrink = 1.0 - lr * prox_mu

    def loss_fn(eps, layers, a_fac, g_fac, biases, batch):
        logits, inputs = _forward(layers, a_fac, g_fac, biases, batch["x"], eps)
        return output_loss(logits, batch), inputs

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train(params, data, n, key):
        layers = layers_of(params)
        idx, mask = batch_indices(key, n, max_n, schedule)
        a0 = [jnp.zeros((rank, l["kernel"].shape[0]), l["kernel"].dtype) for l in layers]
        g0 = [jnp.zeros((rank, l["kernel"].shape[1]), l["kernel"].dtype) for l in layers]
        bias0 = [l["bias"] for l in layers]

        def step(carry, batch):
            a_fac, g_fac, biases = carry
            t, bidx, bmask = batch
            eps = [jnp.zeros((b_size, l["kernel"].shape[1]), l["kernel"].dtype) for l in layers]
            batch = {**jax.tree.map(lambda a: a[bidx], data), "mask": bmask}
            (loss, inputs), grads = grad_fn(eps, layers, a_fac, g_fac, biases, batch)
            # an empty batch has zero gradients, so the step is a no-op except for the prox shrink
            active = jnp.any(bmask)
            decay = jnp.where(active, shrink, 1.0)
            new_biases = []
            for i, (h, g) in enumerate(zip(inputs, grads)):
                a_fac[i] = jax.lax.dynamic_update_slice(a_fac[i], h, (t * b_size, 0))
                # (the static check skips a full [R, out] rescale per step when there is no prox)
                old_g = g_fac[i] * decay if not static_zero(prox_mu) else g_fac[i]
                g_fac[i] = jax.lax.dynamic_update_slice(old_g, lr * g, (t * b_size, 0))
                start = bias0[i]
                new_biases.append(start + decay * (biases[i] - start) - lr * jnp.sum(g, 0))
            return (a_fac, g_fac, new_biases), (loss * active, active)

        carry = (a0, g0, bias0)
        (a_fac, g_fac, biases), (losses, active) = jax.lax.scan(
            step, carry, (jnp.arange(steps), idx, mask))
        deltas = [{"kernel": LowRankDelta(a, g), "bias": b - b0}
                  for a, g, b, b0 in zip(a_fac, g_fac, biases, bias0)]
        return with_layers(params, deltas), summarize(losses, active, mask)

    return train
