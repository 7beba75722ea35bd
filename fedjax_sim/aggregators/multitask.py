"""Aggregators of hetero-client multi-task FL (FedHCA2, Lu et al. CVPR 2024; specs/fedhca2.md).

Every client holds its own model, so these aggregators are *personalized*: ``client_results``
are the clients' updates Delta [C, ...] (trained - last), ``params`` their models after the last
aggregation [C, ...], and the output is each client's new model [C, ...]. Decoder and head leaves
carry a task axis after the client axis, [C, T, ...]; ``slot_mask`` [C, T] marks the real slots
(client c holds task t). A slot that is not real is returned unchanged.

* `apply_deltas`: each client keeps its own update (Local; local heads).
* `model_mean`: every client gets the unweighted mean of all trained models (the official
  code's FedAvg ``get_model_soup``).
* `slot_mean`: decoders averaged over the clients holding the same task (``same_task``) or over
  every real decoder slot across tasks (the official code's ``--decoder_agg fedavg``).
* `conflict_averse`: Hyper Conflict-Averse encoder aggregation (spec section 2): one CAGrad solve
  over the flattened encoders, homogeneous-group mean, personalized additive step with learnable
  alpha [C].
* `cross_attention`: Hyper Cross-Attention decoder aggregation (spec section 3): per parameter
  tensor, softmax(D D^T / sqrt(d_p)) over all real decoders, additive step with learnable beta
  [L, C, T] per decoder layer.

The learnable weights follow the official update (spec section 4): at round r >= 1, *before*
aggregating, the previous aggregation's output is back-propagated with upstream gradient
(last - trained) = -Delta_r through ``clip01`` (PyTorch clamp semantics), then one step of
`hyper_optimizer` (SGD with momentum and weight decay, as torch.optim.SGD).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from fedjax_sim.aggregators.base import Aggregator
from fedjax_sim.aggregators.conflict_averse import ca_direction, group_matrix, worst_case_gain


def _stateless(update) -> Aggregator:
    return Aggregator(lambda params: optax.EmptyState(), update)


def _add(params, deltas):
    return jax.tree.map(jnp.add, params, deltas)


@jax.custom_vjp
def clip01(x):
    """clip(x, 0, 1) whose gradient passes where 0 <= x <= 1 *inclusive* and is 0 outside, as
    PyTorch's clamp (``jnp.clip`` gives half a gradient at the bounds; spec section 8.8)."""
    return jnp.clip(x, 0.0, 1.0)


def _clip01_fwd(x):
    return jnp.clip(x, 0.0, 1.0), x


def _clip01_bwd(x, g):
    return (g * ((x >= 0.0) & (x <= 1.0)).astype(g.dtype),)


clip01.defvjp(_clip01_fwd, _clip01_bwd)


def hyper_optimizer(lr=0.01, momentum=0.9, weight_decay=1e-4) -> optax.GradientTransformation:
    """torch.optim.SGD(lr, momentum, weight_decay) as optax: ``buf <- m buf + (g + wd x)``
    (the first buf is the first gradient, as PyTorch), ``x <- x - lr buf`` (official
    ``Hyperweight`` config: 0.01, 0.9, 1e-4)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum))


def apply_deltas() -> Aggregator:
    """new [C, ...] = params + results: every client keeps its own update (Local)."""
    return _stateless(lambda results, weights, state, params, **extras: (_add(params, results), state, {}))


def model_mean() -> Aggregator:
    """new_c = (1/C) sum_j (params_j + results_j) for every client c: the unweighted mean of the
    trained models (the official code's FedAvg is unweighted, spec section 8.10)."""

    def update(results, weights, state, params, **extras):
        trained = _add(params, results)
        return jax.tree.map(lambda a: jnp.broadcast_to(jnp.mean(a, 0), a.shape), trained), state, {}

    return _stateless(update)


def _slot_weights(mask: jax.Array, ndim: int) -> jax.Array:
    return mask.reshape(*mask.shape, *([1] * (ndim - 2))).astype(jnp.float32)


def slot_mean(slot_mask: np.ndarray, same_task: bool = True) -> Aggregator:
    """Decoder averaging over real slots (leaves [C, T, ...]); slots that are not real unchanged.

    same_task: slot (c, t) gets the mean of task t's trained decoders over the clients holding
      t (the usual FMTL FedAvg); False: every real slot gets the mean over *all* real slots across
      tasks (the official code's ``--decoder_agg fedavg``, spec section 8.10).
    """
    mask = jnp.asarray(slot_mask, bool)

    def update(results, weights, state, params, **extras):
        def one(p, d):
            trained = p + d
            w = _slot_weights(mask, trained.ndim)
            if same_task:
                avg = jnp.sum(trained * w, 0, keepdims=True) / jnp.maximum(jnp.sum(w, 0, keepdims=True), 1.0)
            else:
                avg = jnp.sum(trained * w, (0, 1), keepdims=True) / jnp.maximum(jnp.sum(w), 1.0)
            return jnp.where(w > 0, jnp.broadcast_to(avg, trained.shape), p)
        return jax.tree.map(one, params, results), state, {}

    return _stateless(update)


# ---------------------------------------------------------------------------------------------
# Hyper Conflict-Averse Aggregation (encoders)


class ConflictAverseState(NamedTuple):
    """alpha [C] learnable weights (used through clip01); opt: their optimizer state;
    u_prev [D]: the previous round's CA direction; has_prev: whether there was a previous
    aggregation to differentiate (no hyper step in round 0)."""

    alpha: jax.Array
    opt: Any
    u_prev: jax.Array
    has_prev: jax.Array


def _flat_clients(tree):
    """Leaves [C, ...] -> ([C, D], unravel of one client's [D] vector)."""
    one = jax.tree.map(lambda a: a[0], tree)
    _, unravel = ravel_pytree(one)
    return jax.vmap(lambda t: ravel_pytree(t)[0])(tree), unravel


def conflict_averse(group_id: np.ndarray, c=0.4, rescale: int = 1, iters: int = 500,
                    alpha_init: float = 0.1, hyper: optax.GradientTransformation | None = None,
                    uniform: bool = False) -> Aggregator:
    """FedHCA2's encoder aggregation (spec sections 2 and 4).

    Per round, with Delta [C, D] the flattened encoder updates and last [C, D]:
      1. (round >= 1, ``hyper`` given) alpha <- hyper step on
         grad_alpha sum_i <last_i + Dbar_i + clip01(alpha_i) U_prev, -Delta_i>
         = -<U_prev, Delta_i> 1[0 <= alpha_i <= 1];
      2. U = CA direction of all C raw updates (`conflict_averse.ca_direction`, c, rescale);
      3. Dbar = M Delta with M the homogeneous-group mean (``group_id`` [C]; spec 2b);
      4. new_i = last_i + Dbar_i + clip01(alpha_i) U.

    Args:
      group_id: [C] static group of each client (`types.MultiTaskSpec.group_ids`).
      c: ball radius factor (may be traced). rescale: 1 = /(1 + c^2) (official), 0 = none,
        2 = /(1 + c). iters: dual solver iterations. alpha_init: initial alpha (official 0.1).
      hyper: optimizer of alpha (`hyper_optimizer`); None keeps alpha fixed (frozen ablation).
      uniform: use uniform dual weights (the official SLSQP's stall on tiny updates, spec 8.1).

    Metrics: ``ca_alpha_mean``, ``ca_alpha_outside`` (fraction of alpha outside [0, 1]),
    ``ca_weight_max`` (largest dual weight), ``ca_gain`` (min_i <Delta_i, U> minus the same for
    the mean update, >= 0 when the direction helps the worst client at least as much).
    """
    groups = jnp.asarray(group_matrix(np.asarray(group_id)), jnp.float32)
    num = len(group_id)

    def init(params):
        flat, _ = _flat_clients(params)
        alpha = jnp.full((num,), alpha_init, jnp.float32)
        opt = hyper.init(alpha) if hyper is not None else optax.EmptyState()
        return ConflictAverseState(alpha, opt, jnp.zeros(flat.shape[1:], jnp.float32), jnp.array(False))

    def update(results, weights, state, params, **extras):
        delta, unravel = _flat_clients(results)
        last, _ = _flat_clients(params)
        alpha, opt = state.alpha, state.opt
        if hyper is not None:
            grad = jax.grad(lambda a: jnp.sum(clip01(a)[:, None] * state.u_prev[None, :] * -delta))(alpha)
            steps, new_opt = hyper.update(grad, opt, alpha)
            alpha = jnp.where(state.has_prev, optax.apply_updates(alpha, steps), alpha)
            opt = jax.tree.map(lambda n, o: jnp.where(state.has_prev, n, o), new_opt, opt)
        u, w = ca_direction(delta, c, iters, rescale, uniform)
        new = last + groups @ delta + clip01(alpha)[:, None] * u[None, :]
        g0 = jnp.mean(delta, 0)
        metrics = {"ca_alpha_mean": jnp.mean(alpha),
                   "ca_alpha_outside": jnp.mean(((alpha < 0) | (alpha > 1)).astype(jnp.float32)),
                   "ca_weight_max": jnp.max(w),
                   "ca_gain": worst_case_gain(delta, u) - worst_case_gain(delta, g0)}
        out = jax.vmap(unravel)(new)
        return out, ConflictAverseState(alpha, opt, u, jnp.array(True)), metrics

    return Aggregator(init, update)


# ---------------------------------------------------------------------------------------------
# Hyper Cross-Attention Aggregation (decoders)


class CrossAttentionState(NamedTuple):
    """beta [L, C, T] learnable weights per (decoder layer, slot); opt: their optimizer state;
    out_prev: the previous round's attention outputs (decoder-shaped, [C, T, ...] leaves);
    has_prev; attention [P, C*T, C*T]: the last round's attention matrix of every decoder
    parameter tensor (rows and columns of slots that are not real are 0), for plots."""

    beta: jax.Array
    opt: Any
    out_prev: Any
    has_prev: jax.Array
    attention: jax.Array


def _layer_index(path, layers: tuple) -> int:
    """The decoder layer a leaf belongs to: the first path key that *equals* a layer name (exact
    match; the official substring match would put ``l10.weight`` in layer ``l1``, spec 8.6)."""
    for entry in path:
        name = getattr(entry, "key", None)
        if name in layers:
            return layers.index(name)
    raise ValueError(f"decoder leaf {jax.tree_util.keystr(path)} is in none of the layers {layers}")


def attention_outputs(delta: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Cross attention of one parameter tensor over all real decoders (spec section 3).

    Args:
      delta: [K, d_p] flattened updates of the K = C*T slots; mask: [K] bool real slots.

    Returns:
      (Out [K, d_p] = softmax(delta delta^T / sqrt(d_p)) delta over real keys, 0 on rows that
      are not real; A [K, K] the attention, 0 outside real rows and columns).
    """
    d = delta.shape[-1]
    scores = delta @ delta.T / jnp.sqrt(jnp.float32(d))
    scores = jnp.where(mask[None, :], scores, -jnp.inf)
    attn = jax.nn.softmax(scores, axis=-1)
    attn = jnp.where(mask[:, None] & mask[None, :], attn, 0.0)
    return attn @ delta, attn


def cross_attention(slot_mask: np.ndarray, layers: tuple, beta_init: float = 0.1,
                    hyper: optax.GradientTransformation | None = None) -> Aggregator:
    """FedHCA2's decoder aggregation (spec sections 3 and 4) over decoder leaves [C, T, ...].

    Per parameter tensor p of layer l: Out_p = `attention_outputs` of the slots' updates;
    new_{k,p} = last_{k,p} + Delta_{k,p} + clip01(beta_{l,k}) Out_{k,p} on real slots k.
    With ``hyper``, round >= 1 first steps beta on
    grad_beta sum_p sum_k <last + Delta + clip01(beta_{l(p),k}) Out_prev_{k,p}, -Delta_now_{k,p}>.

    Args:
      slot_mask: [C, T] static real slots. layers: the decoder's layer names (beta's L axis).
      beta_init: initial beta (official 0.1). hyper: beta's optimizer; None = fixed (frozen).

    Metrics: ``xattn_entropy`` (mean attention-row entropy over real rows and tensors, in nats;
    log K is uniform), ``xattn_self`` (mean attention a slot pays itself), ``xattn_beta_mean``.
    """
    mask = jnp.asarray(slot_mask, bool)
    c, t = slot_mask.shape
    flat_mask = mask.reshape(-1)

    def leaves_of(tree):
        return jax.tree_util.tree_flatten_with_path(tree)[0]

    def beta_of(beta, path):
        return clip01(beta[_layer_index(path, layers)])  # [C, T]

    def init(params):
        num_leaves = len(leaves_of(params))
        beta = jnp.full((len(layers), c, t), beta_init, jnp.float32)
        opt = hyper.init(beta) if hyper is not None else optax.EmptyState()
        zeros = jax.tree.map(jnp.zeros_like, params)
        return CrossAttentionState(beta, opt, zeros, jnp.array(False),
                                   jnp.zeros((num_leaves, c * t, c * t), jnp.float32))

    def update(results, weights, state, params, **extras):
        beta, opt = state.beta, state.opt
        if hyper is not None:
            def hyper_loss(b):
                total = 0.0
                for (path, out), d in zip(leaves_of(state.out_prev), jax.tree.leaves(results)):
                    w = beta_of(b, path).reshape(c, t, *([1] * (d.ndim - 2)))
                    total = total + jnp.sum(w * out * -d)
                return total
            grad = jax.grad(hyper_loss)(beta)
            steps, new_opt = hyper.update(grad, opt, beta)
            beta = jnp.where(state.has_prev, optax.apply_updates(beta, steps), beta)
            opt = jax.tree.map(lambda n, o: jnp.where(state.has_prev, n, o), new_opt, opt)

        attentions = []

        def one(path, p, d):
            out, attn = attention_outputs(d.reshape(c * t, -1), flat_mask)
            attentions.append(attn)
            out = out.reshape(d.shape)
            w = beta_of(beta, path).reshape(c, t, *([1] * (d.ndim - 2)))
            real = _slot_weights(mask, d.ndim) > 0
            return jnp.where(real, p + d + w * out, p), out

        pairs = jax.tree_util.tree_map_with_path(one, params, results)
        is_pair = lambda x: type(x) is tuple  # noqa: E731  (optax.MaskedNode is a tuple subclass)
        new = jax.tree.map(lambda pair: pair[0], pairs, is_leaf=is_pair)
        outs = jax.tree.map(lambda pair: pair[1], pairs, is_leaf=is_pair)
        attn = jnp.stack(attentions)  # [P, K, K]
        rows = flat_mask.astype(jnp.float32)
        entropy = -jnp.sum(attn * jnp.log(jnp.where(attn > 0, attn, 1.0)), -1)  # [P, K]
        real_rows = jnp.maximum(jnp.sum(rows), 1.0) * attn.shape[0]
        metrics = {"xattn_entropy": jnp.sum(entropy * rows) / real_rows,
                   "xattn_self": jnp.sum(jnp.diagonal(attn, axis1=1, axis2=2) * rows) / real_rows,
                   "xattn_beta_mean": jnp.sum(beta * mask[None]) / (jnp.maximum(jnp.sum(mask), 1) * len(layers))}
        return new, CrossAttentionState(beta, opt, outs, jnp.array(True), attn), metrics

    return Aggregator(init, update)
