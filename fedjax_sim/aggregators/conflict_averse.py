"""The conflict-averse direction of FedHCA2's encoder aggregation (CAGrad, Liu et al. NeurIPS 2021,
applied to client updates; specs/fedhca2.md section 2a), as pure JAX.

Primal: U maximizing min_i <Delta_i, U> subject to ||U - g0|| <= c ||g0||, g0 the mean update.
Dual (one solve over the flattened whole encoder):

  w* = argmin_{w in simplex} w^T A b + rho sqrt(w^T A w + eps),   A = G G^T [N, N], b = 1/N,
  rho = c ||g0||,  U = (g0 + rho g_w / ||g_w||) / (1 + c^2),  g_w = sum_i w*_i Delta_i.

The official code solves the dual with scipy's SLSQP from uniform w (ftol 1e-6), which stalls at
the uniform start when the updates are tiny (spec section 8.1). Here [ours, spec 2a]: the problem
is normalized by s = trace(A) / N (the argmin is scale-free), then solved by accelerated
projected gradient (FISTA) on the simplex with step 1 / lambda_max(A_n), a fixed number of
iterations, keeping the best iterate; jittable and vmappable, ``c`` may be traced.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-8  # the official eps inside sqrt and the norm denominators
NORMALIZED_EPS = 1e-12  # keeps the normalized sqrt differentiable at w^T A_n w = 0


def project_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection of v [N] onto the probability simplex (sort-based, Held et al. 1974;
    Duchi et al. 2008): [N] -> [N], non-negative, summing to 1."""
    n = v.shape[-1]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u)
    k = jnp.arange(1, n + 1, dtype=v.dtype)
    support = u - (css - 1.0) / k > 0
    r = jnp.max(jnp.where(support, jnp.arange(1, n + 1), 1))
    theta = (css[r - 1] - 1.0) / r.astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def _objective(w, a, b, rho):
    return w @ a @ b + rho * jnp.sqrt(jnp.maximum(w @ a @ w, 0.0) + NORMALIZED_EPS)


def ca_dual_weights(gram: jax.Array, c, iters: int = 500) -> jax.Array:
    """The dual weights w* [N] of the conflict-averse problem for Gram matrix ``gram`` [N, N].

    Normalized (A_n = A / (trace(A) / N); all-zero updates give uniform w), FISTA with step
    1 / lambda_max(A_n) and sort-based simplex projection for ``iters`` iterations from uniform
    w, best iterate by objective value.
    """
    n = gram.shape[0]
    uniform = jnp.full((n,), 1.0 / n, gram.dtype)
    scale = jnp.trace(gram) / n
    a = gram / jnp.where(scale > 0, scale, 1.0)
    b = uniform
    rho = c * jnp.sqrt(jnp.maximum(jnp.mean(a), 0.0))
    lam = jnp.max(jnp.linalg.eigvalsh(a))
    step = 1.0 / jnp.where(lam > 0, lam, 1.0)

    def grad(w):
        aw = a @ w
        return a @ b + rho * aw / jnp.sqrt(jnp.maximum(w @ aw, 0.0) + NORMALIZED_EPS)

    def body(_, carry):
        w, y, t, best, best_f = carry
        w_next = project_simplex(y - step * grad(y))
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        y_next = w_next + ((t - 1.0) / t_next) * (w_next - w)
        f = _objective(w_next, a, b, rho)
        better = f < best_f
        return (w_next, y_next, t_next, jnp.where(better, w_next, best), jnp.where(better, f, best_f))

    init = (uniform, uniform, jnp.ones((), gram.dtype), uniform, _objective(uniform, a, b, rho))
    best = jax.lax.fori_loop(0, iters, body, init)[3]
    return jnp.where(scale > 0, best, uniform)


def ca_direction(deltas: jax.Array, c, iters: int = 500, rescale: int = 1,
                 uniform: bool = False) -> tuple[jax.Array, jax.Array]:
    """The conflict-averse update U [D] of client updates ``deltas`` [N, D] and its dual weights w [N].

    U_raw = g0 + rho / (||g_w|| + 1e-8) g_w with rho = c sqrt(mean(A) + 1e-8) (the official
    ||g0||); rescale 1: U = U_raw / (1 + c^2) (official default), 0: U_raw, 2: U_raw / (1 + c).
    ``uniform`` skips the solve (w = 1/N, the official solver's stall on tiny updates).
    """
    n = deltas.shape[0]
    gram = deltas @ deltas.T
    w = jnp.full((n,), 1.0 / n, deltas.dtype) if uniform else ca_dual_weights(gram, c, iters)
    g0 = jnp.mean(deltas, 0)
    rho = c * jnp.sqrt(jnp.mean(gram) + EPS)
    gw = w @ deltas
    u = g0 + rho / (jnp.linalg.norm(gw) + EPS) * gw
    if rescale == 1:
        u = u / (1.0 + c * c)
    elif rescale == 2:
        u = u / (1.0 + c)
    return u, w


def group_matrix(group_id) -> np.ndarray:
    """[N, N] row-stochastic homogeneous-group mean: M_ij = 1/|g| when i and j share group g
    (``group_id`` int [N], host-side)."""
    g = np.asarray(group_id)
    same = (g[:, None] == g[None, :]).astype(np.float32)
    return same / same.sum(1, keepdims=True)


def worst_case_gain(deltas: jax.Array, u: jax.Array) -> jax.Array:
    """min_i <Delta_i, u> over the rows of ``deltas`` [N, D] (the primal objective)."""
    return jnp.min(deltas @ u)
