"""Mixture-weighted aggregation of stacked components (FLoRAL's adaptors, Ensemble's models).

Each participant k reports its router mixture ``pi_k`` [M] (softmax of its logits, no noise,
no clamp [code]); component m is averaged over the cohort with weights
``p_{k|m} = p_k pi_km / sum_j p_j pi_jm``, ``p_k`` the client weights normalized over the cohort
(spec specs/floral.md section 3 step 5). Factors of a low-rank adaptor are averaged separately
(the server never forms the products B A). The router itself is never an input.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_sim.aggregators.base import Aggregator


def conditional_weights(weights: jax.Array, mixture: jax.Array) -> jax.Array:
    """``p_{k|m}`` [K, M] from client weights [K] (e.g. sample counts) and mixtures [K, M]; each
    column sums to one over the clients with non-zero weight."""
    p = weights / jnp.maximum(jnp.sum(weights), 1e-30)
    joint = p[:, None] * mixture
    return joint / jnp.maximum(jnp.sum(joint, axis=0, keepdims=True), 1e-30)


def mixture_mean() -> Aggregator:
    """Client results with leaves [K, M, ...] -> [M, ...]: component m's ``p_{k|m}``-weighted
    mean (`conditional_weights`). Extra argument ``mixture`` [K, M]. Metrics:
    ``component_mass_min`` / ``component_mass_max``, the smallest and largest total mass
    ``p_m = sum_k p_k pi_km`` (a component nobody routes to has mass near 0)."""

    def update(results, weights, state, params, *, mixture, **extras):
        del params, extras
        w = conditional_weights(weights, mixture)
        out = jax.tree.map(lambda r: jnp.einsum("km,km...->m...", w, r).astype(r.dtype), results)
        mass = jnp.sum((weights / jnp.maximum(jnp.sum(weights), 1e-30))[:, None] * mixture, axis=0)
        return out, state, {"component_mass_min": jnp.min(mass), "component_mass_max": jnp.max(mass)}

    return Aggregator(lambda params: optax.EmptyState(), update)


__all__ = ["conditional_weights", "mixture_mean"]
