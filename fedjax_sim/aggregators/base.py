"""The Aggregator protocol, its combinators, and the weighted mean every aggregator builds on.

Aggregators are pure server-side functions shaped like optax's GradientTransformation:

  init(params) -> state
  update(client_results, weights [K], state, params, **extras) -> (output, state, metrics)

``client_results`` is a pytree of stacked per-client values with leading axis K (the cohort:
deltas, trained models, heads, ...), ``params`` the server's current model, ``extras`` any
server context an aggregator needs (each takes what it knows and ignores the rest). ``output`` is
what the next aggregator of a `chain` receives; the last one's output is the aggregate the
algorithm uses (a new global model, or per-client [K, ...] values for personalized parts).
``metrics`` is a dict of scalars. States are typed (NamedTuples, optax states); never
string-keyed dicts. Aggregators import nothing from ``core`` or ``algorithms``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_sim.types import LowRankDelta, is_low_rank

Params = Any
AggState = Any


class Aggregator(NamedTuple):
    """init(params) -> state; update(results [K, ...], weights [K], state, params, **extras) ->
    (output, state, metrics)."""

    init: Callable[[Params], AggState]
    update: Callable[..., tuple[Any, AggState, dict]]


def weighted_mean(updates, weights: jax.Array):
    """Weighted mean over the leading (client) axis of every leaf.

    Args:
      updates: pytree with [K, ...] leaves (``LowRankDelta`` leaves are reduced in factored form).
      weights: [K] non-negative weights; zero-weight clients do not contribute.

    Returns:
      pytree with the leading axis reduced.
    """
    total = jnp.sum(weights)

    def reduce(u):
        if is_low_rank(u):
            return u.weighted_mean(weights)
        return jnp.tensordot(weights / total, u, axes=1).astype(u.dtype)

    return jax.tree.map(reduce, updates, is_leaf=is_low_rank)


def densify(updates):
    """Turns every LowRankDelta leaf into its dense [K, in, out] stack."""
    return jax.tree.map(lambda u: u.dense() if is_low_rank(u) else u, updates, is_leaf=is_low_rank)


def _merge_metrics(parts: list[dict]) -> dict:
    out: dict = {}
    for m in parts:
        clash = set(out) & set(m)
        if clash:
            raise ValueError(f"two aggregators report the same metrics: {sorted(clash)}")
        out.update(m)
    return out


def chain(*aggregators: Aggregator) -> Aggregator:
    """Applies aggregators in order: each one's output is the next one's ``client_results``
    (e.g. ``chain(mean(), server_optimizer(optax.adam(1e-2)))``). State: a tuple of states."""

    def init(params):
        return tuple(a.init(params) for a in aggregators)

    def update(results, weights, state, params, **extras):
        states, metrics = [], []
        for agg, s in zip(aggregators, state):
            results, s, m = agg.update(results, weights, s, params, **extras)
            states.append(s)
            metrics.append(m)
        return results, tuple(states), _merge_metrics(metrics)

    return Aggregator(init, update)


def _labels_for(labels, params):
    """A tree shaped like ``params`` with one label string per leaf. ``labels`` is a callable
    ``params -> label tree`` or a prefix of ``params`` (e.g. ``{"body": "body", "head": "head"}``)."""
    if callable(labels):
        return labels(params)
    return jax.tree.map(lambda label, sub: jax.tree.map(lambda _: label, sub), labels, params)


def _select(label_tree, tree, label):
    """``tree`` with every leaf not labelled ``label`` replaced by an empty `optax.MaskedNode`.
    (``tree`` may hold `LowRankDelta` subtrees where ``label_tree`` has one leaf.)"""
    return jax.tree.map(lambda l, x: x if l == label else optax.MaskedNode(), label_tree, tree)


def partition(aggregators: Mapping[str, Aggregator], labels) -> Aggregator:
    """Aggregates parameter groups with different aggregators (optax.multi_transform's shape).

    ``labels``: a prefix of the params tree holding group names, or a callable ``params -> labels``.
    Each aggregator sees only its group (other leaves are `optax.MaskedNode`) and the same
    weights, params group and extras; the outputs are merged back into one tree. State: a dict
    from group name to that group's state. Metrics of all groups are merged.
    """
    names = tuple(aggregators)

    def init(params):
        label_tree = _labels_for(labels, params)
        return {n: aggregators[n].init(_select(label_tree, params, n)) for n in names}

    def update(results, weights, state, params, **extras):
        label_tree = _labels_for(labels, params)
        outputs, states, metrics = {}, {}, []
        for n in names:
            out, s, m = aggregators[n].update(_select(label_tree, results, n), weights, state[n],
                                              _select(label_tree, params, n), **extras)
            outputs[n], states[n] = out, s
            metrics.append(m)
        merged = jax.tree.map(lambda l, *outs: outs[names.index(l)], label_tree,
                              *(outputs[n] for n in names))
        return merged, states, _merge_metrics(metrics)

    return Aggregator(init, update)


__all__ = ["AggState", "Aggregator", "LowRankDelta", "chain", "densify", "partition", "weighted_mean"]
