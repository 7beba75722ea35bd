"""Client and server optimizers: any optax optimizer, hyper-parameters injected as arrays.

Every optimizer is built with `optax.inject_hyperparams`, so its learning rate (and momentum,
betas, ...) live in the optimizer *state* as arrays: a sweep can set or `vmap` them without
rebuilding the program. Corrections that need server context are gradient transformations that
read extra arguments (`optax.GradientTransformationExtraArgs`): `proximal` (FedProx) and
`control_variates` (SCAFFOLD). Chain them in front of the optimizer with `optax.chain`; the
client program passes the extras to ``update``.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_sim.errors import ConfigError

# optax optimizers that take ``learning_rate`` first (``momentum`` is SGD with momentum).
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "adagrad", "adabelief", "adamax", "amsgrad",
              "lamb", "lion", "nadam", "novograd", "radam", "rmsprop", "yogi", "fedadagrad", "fedadam",
              "fedyogi")


class FedAdagradState(NamedTuple):
    sum_of_squares: Any  # v: the running sum of squared updates, one per parameter


def fedadagrad(learning_rate, initial_accumulator_value: float = 0.0, eps: float = 1e-3
               ) -> optax.GradientTransformation:
    """Adagrad with ``eps`` outside the square root: ``v += g^2``, ``w -= lr g / (sqrt(v) +
    eps)``. This is FedAdagrad's server update in Reddi et al. 2021, "Adaptive Federated
    Optimization", Algorithm 2 [paper] (``eps`` is their tau). Their code is Keras' ``Adagrad``,
    which computes the same, with ``initial_accumulator_value=0.0`` and eps 10^-3 by default
    (google-research/federated, ``optimization/``) [official code]; Algorithm 2 starts ``v`` at
    some ``v_{-1} >= tau^2`` (``initial_accumulator_value``). optax's ``adagrad`` puts
    ``eps`` inside the square root and starts the sum at 0.1: a different optimizer wherever
    ``sqrt(v)`` is not much larger than ``eps``."""

    def init(params):
        return FedAdagradState(jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params))

    def update(updates, state, params=None):
        del params
        v = jax.tree.map(lambda g, s: s + jnp.square(g), updates, state.sum_of_squares)
        return jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, v), FedAdagradState(v)

    return optax.chain(optax.GradientTransformation(init, update), optax.scale_by_learning_rate(learning_rate))


class FedMomentsState(NamedTuple):
    count: jax.Array  # t: server steps taken, int32 []
    mu: Any  # m: the first moment, one per parameter
    nu: Any  # v: the second moment, one per parameter


def _fed_moments(second_moment, learning_rate, b1, b2, eps, initial_accumulator_value,
                 bias_correction) -> optax.GradientTransformation:
    """FedAdam / FedYogi: ``m = b1 m + (1 - b1) g``, ``v = second_moment(v, g^2, b2)``, ``w -= lr_t m
    / (sqrt(v) + eps)`` with ``lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)`` (``bias_correction``) or
    ``lr``. ``eps`` is added to the root of the *uncorrected* ``v``, as Keras and TFF do; optax's
    ``adam`` / ``yogi`` add it to the corrected root, so this ``eps`` acts as optax's ``eps /
    sqrt(1 - b2^t)``: larger in early steps."""

    def init(params):
        return FedMomentsState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params),
                               jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params))

    def update(updates, state, params=None):
        del params
        t = state.count + 1
        m = jax.tree.map(lambda mu, g: b1 * mu + (1 - b1) * g, state.mu, updates)
        v = jax.tree.map(lambda nu, g: second_moment(nu, jnp.square(g), b2), state.nu, updates)
        scale = 1.0
        if bias_correction:
            step = t.astype(jnp.float32)
            scale = jnp.sqrt(1 - b2 ** step) / (1 - b1 ** step)
        out = jax.tree.map(lambda mu, nu: scale * mu / (jnp.sqrt(nu) + eps), m, v)
        return out, FedMomentsState(t, m, v)

    return optax.chain(optax.GradientTransformation(init, update), optax.scale_by_learning_rate(learning_rate))


def fedadam(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3,
            initial_accumulator_value: float = 0.0, bias_correction: bool = True) -> optax.GradientTransformation:
    """FedAdam's server update: ``v = b2 v + (1 - b2) g^2`` (Reddi et al. 2021, "Adaptive
    Federated Optimization", Algorithm 2 [paper], ``eps`` their tau). Their experiments ran Keras'
    ``Adam`` (google-research/federated ``optimization/``, whose hyper-parameter notes give eps
    10^-3 as the recommended default and b1, b2 at Keras' 0.9, 0.999) [official code], which
    corrects the moments' bias in the learning rate (`_fed_moments`). Algorithm 2 as printed does
    not, and starts ``v`` at some ``v_{-1} >= tau^2``: ``bias_correction=false`` with
    ``initial_accumulator_value`` = ``eps^2`` or more."""
    return _fed_moments(lambda nu, g2, b2: nu + (1 - b2) * (g2 - nu), learning_rate, b1, b2, eps,
                        initial_accumulator_value, bias_correction)


def fedyogi(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3,
            initial_accumulator_value: float = 0.0, bias_correction: bool = True) -> optax.GradientTransformation:
    """FedYogi's server update: ``v = v - (1 - b2) g^2 sign(v - g^2)`` (Reddi et al. 2021,
    Algorithm 2 [paper]). Their code ran a Keras Yogi with the initial accumulator at 0 (their
    notes' flag ``server_yogi_initial_accumulator_value=0.0``; TFF's and TensorFlow Addons' default
    is 10^-6) and the bias correction of Keras' Adam [official code]; see `fedadam`."""
    return _fed_moments(lambda nu, g2, b2: nu - (1 - b2) * g2 * jnp.sign(nu - g2), learning_rate, b1, b2, eps,
                        initial_accumulator_value, bias_correction)


# optimizers of our own (OPTIMIZERS' other names are optax's)
OWN = {"fedadagrad": fedadagrad, "fedadam": fedadam, "fedyogi": fedyogi}


def signature_text(factory) -> str:
    """``factory``'s hyper-parameters other than the learning rate with their defaults, as
    ``*.optimizer_args`` takes them: ``"b1=0.9, eps=0.001, bias_correction=true"``."""
    show = lambda v: str(v).lower() if isinstance(v, bool) else f"{v:g}"  # noqa: E731
    return ", ".join(f"{k}={show(p.default)}" for k, p in inspect.signature(factory).parameters.items()
                     if k != "learning_rate")


def static_zero(value) -> bool:
    """True for a concrete 0 (a switched-off term). A traced value, i.e. a hyper-parameter swept
    as a vmapped axis (`fedjax_sim.trials`), counts as non-zero: the term stays in the program
    and its value decides, so grid points that differ only in it share one compiled program."""
    return isinstance(value, (int, float)) and value == 0


def _number(value):
    """Python floats for config values, arrays (swept values) kept as they are."""
    return float(value) if isinstance(value, (int, float)) else value


class OptimizerSpec(NamedTuple):
    """An optax transform plus the facts other code needs to reason about it.

    transform: `optax.GradientTransformationExtraArgs` (clipping and weight decay chained in).
    name: the optimizer's name; hyperparams: the injected values (floats);
    clip_norm / weight_decay: 0 when off; static_args: the non-numeric arguments given to the
    optax function (``nesterov``, dtypes), fixed at build time.
    """

    transform: optax.GradientTransformationExtraArgs
    name: str
    hyperparams: dict
    clip_norm: float = 0.0
    weight_decay: float = 0.0
    static_args: dict = {}

    @property
    def learning_rate(self) -> float:
        return self.hyperparams["learning_rate"]

    @property
    def linear_sgd(self) -> bool:
        """SGD with or without (Nesterov) momentum and nothing else: every update is linear in
        the step gradients (what the factored client program needs)."""
        return (self.name in ("sgd", "momentum") and static_zero(self.clip_norm)
                and static_zero(self.weight_decay) and set(self.static_args) <= {"nesterov"})

    @property
    def momentum(self):
        """The momentum coefficient (0.0 without), a float or a traced value."""
        value = self.hyperparams.get("momentum", 0.0)
        return 0.0 if value is None else value

    @property
    def nesterov(self) -> bool:
        return bool(self.static_args.get("nesterov", False))

    @property
    def plain_sgd(self) -> bool:
        """w <- w - lr * g exactly (what SCAFFOLD's control-variate update assumes)."""
        return (self.name == "sgd" and static_zero(self.hyperparams.get("momentum", 0.0))
                and static_zero(self.clip_norm) and static_zero(self.weight_decay))


# ranges of hyper-parameters that optax's optimizers and ours share: (test, what is allowed)
_RANGES = {"b1": (lambda v: 0 <= v < 1, "in [0, 1)"), "b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
           "eps": (lambda v: v >= 0, ">= 0"), "initial_accumulator_value": (lambda v: v >= 0, ">= 0")}


def _check_value(key: str, value, default, field: str, text: str) -> None:
    """ConfigError naming ``field`` unless ``value`` suits hyper-parameter ``key`` (whose default is
    ``default``): true/false where the default is a bool, else a finite number in `_RANGES`."""
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) != isinstance(value, bool):
            raise ConfigError(field, text, f"{'true or false' if isinstance(default, bool) else 'a number'} for {key}")
        return
    test, allowed = _RANGES.get(key, (lambda v: True, ""))
    if not (math.isfinite(value) and test(value)):
        raise ConfigError(field, text, f"{key} a finite number {allowed}".rstrip())


def parse_optimizer_args(text: str, field: str) -> dict:
    """``"b1=0.9,eps=1e-6,nesterov=true"`` -> {"b1": 0.9, "eps": 1e-6, "nesterov": True}."""
    out: dict[str, Any] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        if "=" not in item:
            raise ConfigError(field, text, "comma-separated key=value hyper-parameters, e.g. b1=0.9,eps=1e-6")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key in out:
            raise ConfigError(field, text, f"each hyper-parameter once ({key} is given twice)")
        low = raw.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
            continue
        try:
            out[key] = float(raw)
        except ValueError:
            raise ConfigError(field, text, f"numbers or true/false as values ({key}={raw!r} is neither)") from None
    return out


def make_optimizer(name: str, learning_rate: float, *, momentum: float = 0.0,
                   weight_decay: float = 0.0, clip_norm: float = 0.0, args: str = "",
                   field: str = "local", params_example=None) -> OptimizerSpec:
    """An optax optimizer by name with injected hyper-parameters.

    ``name``: one of `OPTIMIZERS` (``momentum`` = SGD with ``momentum``); ``args``: extra keyword
    hyper-parameters of the optax function (``"b1=0.9,eps=1e-6"``). Gradients are clipped to
    ``clip_norm`` (global norm) and weight decay is added before the optimizer. With
    ``params_example`` the transform is traced once on it (`jax.eval_shape`, nothing compiles), so
    a hyper-parameter that optax rejects fails here. Errors name ``<field>.optimizer`` or
    ``<field>.optimizer_args``.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"{field}.optimizer", name, "one of " + ", ".join(OPTIMIZERS))
    extra = parse_optimizer_args(args, f"{field}.optimizer_args")
    factory = optax.sgd if name in ("sgd", "momentum") else OWN.get(name) or getattr(optax, name)
    origin = "fedjax_sim.core.optim" if name in OWN else "optax"
    hyper: dict[str, Any] = {"learning_rate": _number(learning_rate)}
    if name == "momentum":
        hyper["momentum"] = _number(momentum)
    params = inspect.signature(factory).parameters
    allowed = [p for p in params if p != "learning_rate"]
    for key, value in extra.items():
        if key not in allowed or key in hyper:
            raise ConfigError(f"{field}.optimizer_args", args,
                              f"hyper-parameters of {origin}.{factory.__name__} other than learning_rate "
                              f"(set by {field}.lr)" + (f" and momentum (set by {field}.momentum)"
                                                        if name == "momentum" else "") + f": {', '.join(allowed)}")
        _check_value(key, value, params[key].default, f"{field}.optimizer_args", args)
        hyper[key] = value
    if name in OWN and hyper.get("eps", params["eps"].default) == 0 and not hyper.get(
            "initial_accumulator_value", params["initial_accumulator_value"].default):
        raise ConfigError(f"{field}.optimizer_args", args, "eps > 0, or initial_accumulator_value > 0 (v starts "
                                                           "at it: with both 0, a coordinate whose updates have all "
                                                           "been 0 divides 0 by 0)")
    static = tuple(k for k, v in hyper.items() if isinstance(v, (bool, str)))
    try:
        inner = optax.inject_hyperparams(factory, static_args=static)(**hyper)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{field}.optimizer_args", args, f"values {origin}.{factory.__name__} accepts ({e})") from None
    parts = []
    if not static_zero(clip_norm):
        parts.append(optax.clip_by_global_norm(clip_norm))
    if not static_zero(weight_decay):
        parts.append(optax.add_decayed_weights(weight_decay))
    transform = optax.chain(*parts, inner)
    if params_example is not None:
        check_transform(transform, params_example, f"{field}.optimizer_args", args)
    return OptimizerSpec(transform, name, {k: v for k, v in hyper.items() if k not in static},
                         clip_norm, weight_decay, {k: hyper[k] for k in static})


def check_transform(transform, params_example, field: str, value) -> None:
    """Traces init + one update on ``params_example`` shapes; ConfigError if optax rejects it."""
    try:
        state = jax.eval_shape(transform.init, params_example)
        jax.eval_shape(lambda g, s, p: transform.update(g, s, p), params_example, state, params_example)
    except Exception as e:  # noqa: BLE001 - optax raises many types for bad hyper-parameters
        raise ConfigError(field, value, f"hyper-parameters optax accepts ({type(e).__name__}: "
                                        f"{str(e).splitlines()[0][:160]})") from None


def proximal(mu) -> optax.GradientTransformationExtraArgs:
    """FedProx: adds the gradient of mu/2 ||w - anchor||^2, i.e. ``g + mu (w - anchor)``.

    Extra argument ``anchor``: the model the client started from (the global model).
    ``mu`` may be an array (a swept hyper-parameter).
    """

    def update(updates, state, params=None, *, anchor=None, **extra):
        del extra
        return jax.tree.map(lambda g, w, w0: g + mu * (w - w0), updates, params, anchor), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def masked_slots(groups=("decoders", "heads")) -> optax.GradientTransformationExtraArgs:
    """Zeroes the updates of the task slots a client does not hold, so they never change (not
    even through weight decay or optimizer momentum): chain it *last*.

    Extra argument ``slot_mask`` [T] bool: the client's tasks. Every leaf under a top-level key
    of ``groups`` has a leading task axis [T, ...] (`models.multitask`); other leaves pass.
    """

    def update(updates, state, params=None, *, slot_mask=None, **extra):
        del params, extra
        if slot_mask is None:
            return updates, state

        def mask(u):
            return u * slot_mask.reshape(-1, *([1] * (u.ndim - 1))).astype(u.dtype)

        return {k: jax.tree.map(mask, v) if k in groups else v for k, v in updates.items()}, state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def control_variates() -> optax.GradientTransformationExtraArgs:
    """SCAFFOLD: ``g + c - c_i`` with extra arguments ``control`` (c) and ``client_control`` (c_i)."""

    def update(updates, state, params=None, *, control=None, client_control=None, **extra):
        del params, extra
        return jax.tree.map(lambda g, c, ci: g + c - ci, updates, control, client_control), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)



def lora_preconditioner(eps: float = 1e-5) -> optax.GradientTransformation:
    """FLoRAL's ScaledGD-style preconditioning of low-rank adaptor gradients [code:
    ``PrecondLoRATrainer``], applied before the optimizer step.

    Works on every dict of the tree holding ``A`` and ``B`` arrays with M stacked adaptors
    (`models.mixture` layouts; other leaves, `optax.MaskedNode` included, pass unchanged):
      dense ``A [M, r, d_in]``, ``B [M, d_out, r]``:
        ``gA <- (B^T B + eps I)^-1 gA``,  ``gB <- gB (A A^T + eps I)^-1``   (per adaptor m);
      conv ``A [M, r, C_in, k]``, ``B [M, C_out, r, k]``: each gradient is divided by the
        Frobenius norm of the other factor's Gram tensor plus eps,
        ``gA / (||sum_o B[o]^T B[o]||_F + eps)``, ``gB / (||sum_i A_i A_i^T||_F + eps)``.
    Biases (``beta``) and the router are not preconditioned. Needs ``params``.
    """

    def dense(g, a, b):
        r = a.shape[1]
        eye = eps * jnp.eye(r, dtype=a.dtype)
        p_in = jnp.einsum("mor,mos->mrs", b, b) + eye
        p_out = jnp.einsum("mri,msi->mrs", a, a) + eye
        ga = jnp.linalg.solve(p_in, g["A"])
        gb = jnp.swapaxes(jnp.linalg.solve(jnp.swapaxes(p_out, 1, 2), jnp.swapaxes(g["B"], 1, 2)), 1, 2)
        return ga, gb

    def conv(g, a, b):
        norm = lambda t: jnp.sqrt(jnp.sum(jnp.square(t), axis=(1, 2, 3)))[:, None, None, None]
        p_in = jnp.einsum("morh,mosh->mrsh", b, b)
        p_out = jnp.einsum("mriw,msiw->mrsw", a, a)
        return g["A"] / (norm(p_in) + eps), g["B"] / (norm(p_out) + eps)

    def walk(g, p):
        if not isinstance(g, dict):
            return g
        if "A" in g and "B" in g and not isinstance(g["A"], optax.MaskedNode):
            a, b = p["A"], p["B"]
            ga, gb = dense(g, a, b) if a.ndim == 3 else conv(g, a, b)
            return {**g, "A": ga, "B": gb}
        return {k: walk(v, p[k]) for k, v in g.items()}

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("lora_preconditioner needs params")
        return walk(updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
