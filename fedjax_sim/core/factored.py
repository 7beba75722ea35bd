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

Momentum keeps this form: heavy-ball and Nesterov updates (optax's ``sgd(momentum=beta)``) are
linear in the step gradients, so every kernel delta stays ``-(A^T diag(c) G)``, with one scalar
coefficient per stored row that the steps update (`_momentum_step`); the same holds for the FedProx pull
``mu (w - w_start)``, itself a combination of earlier rows.

Eligible: a ``dense_chain`` model (MLP), a task with an ``output_loss``, SGD with or without
(Nesterov) momentum (no Adam, weight decay or clipping: those are not linear in the gradients),
gradient corrections that are a uniform pull to the start point (FedProx: ``prox_mu``). The
model's layer layout comes in as two functions
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


def _momentum_step(coef, mom, fresh, lr, prox_mu, beta, nesterov):
    """One optimizer step in coefficient space; works for the per-row kernel coefficients
    (``fresh``: 1 on this step's rows) and, elementwise, for the dense biases (``fresh``: the
    lr-scaled bias gradient). ``coef`` represents the delta -coef (rows) / +coef (biases) from
    the start; ``mom`` the lr-scaled momentum. optax: trace = g' + beta trace; update = trace
    (heavy ball) or g' + beta trace (Nesterov); w -= lr update; g' = g + mu (w - w_start)."""
    grad = fresh - lr * prox_mu * coef  # lr g' in coefficient space (the delta is -coef)
    mom = beta * mom + grad
    return coef + (grad + beta * mom if nesterov else mom), mom


def make_factored_train(output_loss, layers_of, with_layers, schedule: Schedule, max_n: int,
                        lr, prox_mu: float = 0.0, momentum: float = 0.0, nesterov: bool = False):
    """Builds ``train(params, data, n, key) -> (delta, LocalStats)`` for one client.

    ``output_loss(outputs [B, ...], batch) -> scalar`` is the task's loss on the model outputs;
    ``data`` leaves are [N_max, ...] with inputs ``x``.

    ``params`` is the shared starting model (map it with in_axes None). ``delta`` has the
    params' structure: kernels are `LowRankDelta` (a [R, in], g [R, out], R = S*B), biases dense
    [out]; it equals (params after S local steps of optax ``sgd(lr, momentum, nesterov)``, the
    momentum starting at zero) - params. With ``prox_mu`` the gradient is the FedProx
    ``g + mu (w - w_start)``.

    Plain SGD without prox (static zeros) keeps every row's coefficient at 1, so the G factor
    holds the delta directly and no coefficients are carried (the fastest form). Otherwise each
    layer carries row coefficients c [R] and momentum coefficients [R] (`_momentum_step`), the
    forward pass weights the thin product ``h A^T`` [B, R] by c, and G is scaled by c once at
    the end.
    """
    b_size, steps = schedule.batch_size, schedule.num_steps
    rank = steps * b_size
    plain = static_zero(prox_mu) and static_zero(momentum)
    # the same coefficient vector serves every layer: all rows of a step get the same updates
    step_fn = lambda c, m, fresh: _momentum_step(c, m, fresh, lr, prox_mu, momentum, nesterov)  # noqa: E731

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
        zeros_b = [jnp.zeros_like(b) for b in bias0]
        dtype = layers[0]["kernel"].dtype
        coef0 = (jnp.zeros((rank,), dtype), jnp.zeros((rank,), dtype))

        def step(carry, batch):
            a_fac, g_fac, bias_c, coefs = carry
            t, bidx, bmask = batch
            eps = [jnp.zeros((b_size, l["kernel"].shape[1]), l["kernel"].dtype) for l in layers]
            batch = {**jax.tree.map(lambda a: a[bidx], data), "mask": bmask}
            # forward with the current kernels: G rows weighted by their coefficients
            g_eff = g_fac if plain else [g * coefs[0][:, None] for g in g_fac]
            biases = [b0 + c for b0, c in zip(bias0, bias_c[0])]
            (loss, inputs), grads = grad_fn(eps, layers, a_fac, g_eff, biases, batch)
            # an empty batch leaves weights and momentum untouched (as core.local's masked step)
            active = jnp.any(bmask)
            for i, (h, g) in enumerate(zip(inputs, grads)):
                a_fac[i] = jax.lax.dynamic_update_slice(a_fac[i], h, (t * b_size, 0))
                g_fac[i] = jax.lax.dynamic_update_slice(g_fac[i], lr * g, (t * b_size, 0))
            fresh_b = [-lr * jnp.sum(g, 0) for g in grads]  # bias deltas move against the gradient
            if plain:
                new_bias_c = ([c + f for c, f in zip(bias_c[0], fresh_b)], bias_c[1])
                new_coefs = coefs
            else:
                fresh = (jnp.arange(rank) // b_size == t).astype(dtype)
                new_coefs = step_fn(*coefs, fresh)
                # biases: the same recursion on dense values, with the sign of a delta (+)
                pairs = [_momentum_step(-c, -m, -f, lr, prox_mu, momentum, nesterov)
                         for c, m, f in zip(bias_c[0], bias_c[1], fresh_b)]
                new_bias_c = ([-c for c, _ in pairs], [-m for _, m in pairs])
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)  # noqa: E731
            return (a_fac, g_fac, keep(new_bias_c, bias_c), keep(new_coefs, coefs)), (loss * active, active)

        carry = (a0, g0, (zeros_b, zeros_b), coef0)
        (a_fac, g_fac, bias_c, coefs), (losses, active) = jax.lax.scan(
            step, carry, (jnp.arange(steps), idx, mask))
        if not plain:
            g_fac = [g * coefs[0][:, None] for g in g_fac]
        deltas = [{"kernel": LowRankDelta(a, g), "bias": c}
                  for a, g, c in zip(a_fac, g_fac, bias_c[0])]
        return with_layers(params, deltas), summarize(losses, active, mask)

    return train
