"""Mixture models over a base model: FLoRAL's low-rank adaptor mixtures and full-model ensembles.

A `MixtureModel` has parameters ``{"shared": ..., "components": ...}``: ``shared`` is federated
with plain sample weights, ``components`` are M stacked members ``[M, ...]`` that a router's
mixture ``probs [M]`` (on the simplex) combines. Two kinds:

* `floral_model` (FLoRAL, Almansoori et al. 2025; spec specs/floral.md section 2): ``shared`` is
  the base model, ``components`` one low-rank adaptor per dense/conv layer (`plan_adaptors`).
  The mixture is applied per layer *in parameter space* [code]:
  ``W_k = W + sum_m p~_m B_m A_m``, ``b_k = b + sum_m p~_m beta_m`` with ``p~ = max(p, min_prob)``
  (a clamp without renormalization, train and eval alike [code]). Computing the merged weights
  and running the base model on them is exactly the official forward hooks' output sum
  ``W x + b + sum_m p~_m (B_m A_m x + beta_m)``.
* `ensemble_model` (the paper's Ensemble baseline [code]): ``components`` are M full models,
  mixed at the *output* ``sum_m p_m f_m(x)``, members with ``p_m < 1e-3`` dropped.

Router helpers: `mixture_probs` (softmax of logits plus uniform noise U[0, sigma) in training
[code]) and `clamp_probs`. Shapes: adaptors of a dense layer ``A [M, r, d_in]``,
``B [M, d_out, r]``, ``beta [M, d_out]``; of a square-kernel conv ``A [M, r, C_in, k]``
(the (1 x k) first conv), ``B [M, C_out, r, k]`` (the (k x 1) second conv), ``beta [M, C_out]``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_sim.errors import ConfigError

Params = Any
BIAS_INITS = ("torch_default", "zero", "none")
CONV_RANK_RULES = ("fixed", "official_bug")
ENSEMBLE_CUTOFF = 1e-3  # official Ensemble skips members below this mixture weight


class LayerAdaptor(NamedTuple):
    """One adapted layer (static). ``path``: keys to the layer's dict in the params tree (the
    dict holding ``kernel``); ``kind``: dense | conv; ``d_in`` / ``d_out``: input / output
    features (channels for conv); ``kernel``: k of a k x k conv (0 for dense); ``rank``;
    ``fan_in``: the A init's fan-in; ``bias``: whether the adaptor has a bias ``beta``;
    ``bias_fan_in``: fan-in of the bias init (PyTorch's default of the second factor)."""

    path: tuple
    kind: str
    d_in: int
    d_out: int
    kernel: int
    rank: int
    fan_in: int
    bias: bool
    bias_fan_in: int

    @property
    def name(self) -> str:
        return "/".join(self.path)


class MixtureModel(NamedTuple):
    """init(key) -> {"shared", "components" [M, ...]}; apply(params, x [B, ...], probs [M]) ->
    outputs [B, ...]. ``base`` is the wrapped `models.Model`; ``num_components`` M; ``layers``
    the adapted layers (FLoRAL) or ()."""

    name: str
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array, jax.Array], jax.Array]
    base: Any
    num_components: int
    layers: tuple = ()


def resolve_rank(rho: float, d_in: int, d_out: int, min_rank: int = 1) -> int:
    """FLoRAL's rank rule [code]: ``rho < 1`` gives ``max(min_rank, floor(rho d_in d_out /
    (d_in + d_out)))`` (each adaptor then holds about ``rho`` times the layer's weights);
    ``rho >= 1`` gives ``round(rho)``."""
    if rho >= 1:
        return int(round(rho))
    return max(min_rank, int(math.floor(rho * d_in * d_out / (d_in + d_out))))


def _layers(params, path=()):
    """(path, layer dict) of every dict holding a ``kernel`` leaf, in tree order."""
    if not isinstance(params, dict):
        return []
    if "kernel" in params:
        return [(path, params)]
    out = []
    for key in params:
        out += _layers(params[key], (*path, key))
    return out


def plan_adaptors(params, rho: float = 0.01, rank: int = 0, bias: str = "torch_default",
                  conv_rank_rule: str = "fixed") -> tuple[LayerAdaptor, ...]:
    """The adaptor of every dense (kernel ``[d_in, d_out]``) and square-kernel 2-D conv (kernel
    ``[k, k, C_in, C_out]``) layer of a Flax params tree (shapes, e.g. from `jax.eval_shape`).

    ``rank`` > 0 fixes every layer's rank; 0 takes `resolve_rank` with ``rho`` on the layer's
    effective dimensions: dense ``(d_in, d_out)``; conv (``balanced_2d`` [code]: a (1 x k) conv
    C_in -> r then a (k x 1) conv r -> C_out) ``(C_in k, C_out k)`` with ``conv_rank_rule=fixed``,
    or the official code's ``(2 C_in, 2 C_out)`` with ``official_bug`` (it counts the kernel's
    dimensions instead of its size; spec section 8.7), which also sets the A init's fan-in.

    Raises ConfigError (field ``model.name``) for a layer the wrapper cannot adapt: a kernel that
    is neither 2-D nor 4-D, or a conv with a non-square kernel (the spec's separable form would
    not match the base kernel's orientation).
    """
    if conv_rank_rule not in CONV_RANK_RULES:
        raise ConfigError("floral.conv_rank_rule", conv_rank_rule, "one of " + ", ".join(CONV_RANK_RULES))
    plan = []
    for path, layer in _layers(params):
        shape = tuple(layer["kernel"].shape)
        has_bias = bias != "none" and "bias" in layer
        name = "/".join(path)
        if len(shape) == 2:
            d_in, d_out = shape
            r = rank or resolve_rank(rho, d_in, d_out)
            plan.append(LayerAdaptor(path, "dense", d_in, d_out, 0, r, d_in, has_bias, r))
        elif len(shape) == 4 and shape[0] == shape[1]:
            k, _, c_in, c_out = shape
            if conv_rank_rule == "fixed":
                eff_in, eff_out = c_in * k, c_out * k
            else:
                eff_in, eff_out = 2 * c_in, 2 * c_out
            r = rank or resolve_rank(rho, eff_in, eff_out)
            plan.append(LayerAdaptor(path, "conv", c_in, c_out, k, r, eff_in, has_bias, r * k))
        else:
            what = (f"a {shape[0]}x{shape[1]} (non-square) conv kernel" if len(shape) == 4
                    else f"a {len(shape)}-D kernel {shape}")
            raise ConfigError("model.name", name, "a model whose layers FLoRAL can adapt: dense "
                                                  f"and square-kernel 2-D conv layers (layer {name} has {what})")
    if not plan:
        raise ConfigError("model.name", "?", "a model with at least one dense or conv layer to adapt")
    return tuple(plan)


def init_adaptors(key: jax.Array, plan: tuple[LayerAdaptor, ...], num_components: int,
                  bias_init: str = "torch_default") -> dict:
    """Adaptors ``{layer name: {"A", "B"[, "beta"]}}`` with M stacked members [code]:
    ``A ~ U(+-sqrt(6 / fan_in))``, ``B = 0``; ``beta ~ U(+-1/sqrt(bias_fan_in))`` (PyTorch's
    default bias init of the second factor, so the initial model is NOT the base model, spec
    section 8.2) or 0 with ``bias_init=zero``. Distinct random A's break the symmetry."""
    if bias_init not in BIAS_INITS:
        raise ConfigError("floral.adaptor_bias", bias_init, "one of " + ", ".join(BIAS_INITS))
    m = num_components
    out = {}
    for i, layer in enumerate(plan):
        ka, kb = jax.random.split(jax.random.fold_in(key, i))
        bound = math.sqrt(6.0 / layer.fan_in)
        if layer.kind == "dense":
            a_shape, b_shape = (m, layer.rank, layer.d_in), (m, layer.d_out, layer.rank)
        else:
            a_shape = (m, layer.rank, layer.d_in, layer.kernel)
            b_shape = (m, layer.d_out, layer.rank, layer.kernel)
        ad = {"A": jax.random.uniform(ka, a_shape, jnp.float32, -bound, bound),
              "B": jnp.zeros(b_shape, jnp.float32)}
        if layer.bias:
            if bias_init == "zero":
                ad["beta"] = jnp.zeros((m, layer.d_out), jnp.float32)
            else:
                bb = 1.0 / math.sqrt(layer.bias_fan_in)
                ad["beta"] = jax.random.uniform(kb, (m, layer.d_out), jnp.float32, -bb, bb)
        out[layer.name] = ad
    return out


def adaptor_delta(layer: LayerAdaptor, adaptor: dict, probs: jax.Array):
    """The mixed adaptor's change to the layer, in Flax's kernel layout.

    Dense: ``dK [d_in, d_out] = sum_m p_m (B_m A_m)^T``; conv: ``dK [k, k, C_in, C_out]`` with
    ``dK[h, w, i, o] = sum_m p_m sum_r B[m, o, r, h] A[m, r, i, w]`` (the (1 x k) conv A followed
    by the (k x 1) conv B is this one k x k conv, padding and stride included, spec section 7.6).
    Bias: ``p @ beta`` [d_out] (None without). ``probs`` [M] as used in the forward pass.
    """
    pb = adaptor["B"] * probs.reshape((-1,) + (1,) * (adaptor["B"].ndim - 1))
    if layer.kind == "dense":
        dk = jnp.einsum("mri,mor->io", adaptor["A"], pb)
    else:
        dk = jnp.einsum("mriw,morh->hwio", adaptor["A"], pb)
    db = probs @ adaptor["beta"] if "beta" in adaptor else None
    return dk, db


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    if not path:
        return value
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def merge_adaptors(params, plan: tuple[LayerAdaptor, ...], adaptors: dict, probs: jax.Array):
    """The base params with every adapted layer's kernel (and bias) moved by its mixed adaptor:
    one client's personalized model, in the base model's own layout."""
    for layer in plan:
        dk, db = adaptor_delta(layer, adaptors[layer.name], probs)
        old = _get(params, layer.path)
        new = {**old, "kernel": old["kernel"] + dk}
        if db is not None:
            new["bias"] = old["bias"] + db
        params = _set(params, layer.path, new)
    return params


def clamp_probs(probs: jax.Array, min_prob: float = 0.01) -> jax.Array:
    """``max(probs, min_prob)`` without renormalization [code] (forward pass only)."""
    return jnp.maximum(probs, min_prob)


def mixture_probs(logits: jax.Array, key: jax.Array | None = None, noise: float = 1.0,
                  temperature: float = 1.0) -> jax.Array:
    """Router mixture ``softmax((logits + noise * U[0, 1)) / temperature)`` over the last axis
    [code]: uniform (not Gaussian) noise, fresh per minibatch in training; ``key=None`` (eval)
    adds none. logits [..., M] -> probs [..., M]."""
    if key is not None:
        logits = logits + noise * jax.random.uniform(key, logits.shape, logits.dtype)
    return jax.nn.softmax(logits / temperature, axis=-1)


def floral_model(base, num_components: int, rho: float = 0.01, rank: int = 0,
                 bias_init: str = "torch_default", conv_rank_rule: str = "fixed",
                 min_prob: float = 0.01) -> MixtureModel:
    """FLoRAL over ``base`` (a `models.Model`): every dense and conv layer gets M adaptors."""
    shapes = jax.eval_shape(base.init, jax.random.PRNGKey(0))
    bias = "none" if bias_init == "none" else bias_init
    plan = plan_adaptors(shapes, rho, rank, bias, conv_rank_rule)

    def init(key):
        kb, ka = jax.random.split(key)
        return {"shared": base.init(kb), "components": init_adaptors(ka, plan, num_components, bias)}

    def apply(params, x, probs):
        merged = merge_adaptors(params["shared"], plan, params["components"], clamp_probs(probs, min_prob))
        return base.apply(merged, x)

    return MixtureModel("floral", init, apply, base, num_components, plan)


def ensemble_model(base, num_components: int, cutoff: float = ENSEMBLE_CUTOFF) -> MixtureModel:
    """M full copies of ``base`` (independent initializations), mixed at the output:
    ``sum_m [p_m >= cutoff] p_m f_m(x)`` [code]."""

    def init(key):
        keys = jax.random.split(key, num_components)
        return {"shared": {}, "components": jax.vmap(base.init)(keys)}

    def apply(params, x, probs):
        outs = jax.vmap(lambda p: base.apply(p, x))(params["components"])  # [M, B, ...]
        w = jnp.where(probs >= cutoff, probs, 0.0)
        return jnp.tensordot(w, outs, axes=1)

    return MixtureModel("ensemble", init, apply, base, num_components)


def count_floats(tree) -> int:
    """Number of scalars in a pytree of arrays or shape structs."""
    return int(sum(math.prod(a.shape) for a in jax.tree.leaves(tree)))


__all__ = ["BIAS_INITS", "CONV_RANK_RULES", "LayerAdaptor", "MixtureModel", "adaptor_delta",
           "clamp_probs", "count_floats", "ensemble_model", "floral_model", "init_adaptors",
           "merge_adaptors", "mixture_probs", "plan_adaptors", "resolve_rank"]
