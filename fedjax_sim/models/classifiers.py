"""Flax classifiers with a body/head split.

Every classifier is ``logits = head(body(x))``: the body is the feature extractor, the head the
classifier, so personalized algorithms (FedPer, FedRep, FedReMa, ...) can aggregate them
differently. Parameters are ``{"body": ..., "head": ...}``; models stay free of training logic.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any


def haiku_linear_init(key, shape, dtype=jnp.float32):
    """Haiku's ``hk.Linear`` default: a normal truncated at 2 std, std 1/sqrt(fan_in), not
    rescaled for the truncation (Flax's lecun_normal rescales it, about 1.14x wider)."""
    return jax.nn.initializers.truncated_normal(1.0 / math.sqrt(shape[0]))(key, shape, dtype)


INITS = {"lecun_normal": nn.initializers.lecun_normal(), "glorot_uniform": nn.initializers.glorot_uniform(),
         "haiku_linear": haiku_linear_init}


class DenseStack(nn.Module):
    """Dense layers with ReLU between them; ``relu_last`` also activates the last one.
    ``dropout`` > 0 drops after every activated layer when ``train``; ``init_name``: a key of INITS."""

    widths: Sequence[int]
    relu_last: bool = True
    dropout: float = 0.0
    init_name: str = "lecun_normal"

    @nn.compact
    def __call__(self, h, train: bool = False):
        for i, width in enumerate(self.widths):
            h = nn.Dense(width, kernel_init=INITS[self.init_name], name=f"dense_{i}")(h)
            if self.relu_last or i < len(self.widths) - 1:
                h = nn.relu(h)
                if self.dropout:
                    h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return h


CONV_IMPLS = ("auto", "xla", "patches")


def conv_patches(x: jax.Array, kh: int, kw: int, padding: str) -> jax.Array:
    """x [B, H, W, C] -> [B, H', W', kh*kw*C]: every stride-1 receptive field as one row, built
    from kh*kw static shifted slices (no convolution op). Column (i*kw + j)*C + c holds
    x[b, h+i, w+j, c], the order of a [kh, kw, C, F] kernel reshaped to [kh*kw*C, F]. ``SAME``
    pads as XLA does ((k-1)//2 before, the rest after); ``VALID`` does not pad."""
    if padding == "SAME":
        pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in (kh, kw)]
        x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    elif padding != "VALID":
        raise ValueError(f"padding {padding!r}: SAME or VALID")
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return jnp.concatenate([x[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)


def _pool_taps(x: jax.Array, window: tuple) -> list:
    """The kh*kw strided views of x [B, H, W, C] for non-overlapping windows, in row-major
    window order (rows and columns past the last whole window dropped, as VALID pooling does)."""
    kh, kw = window
    x = x[:, : x.shape[1] // kh * kh, : x.shape[2] // kw * kw]
    return [x[:, i::kh, j::kw] for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: tuple) -> jax.Array:
    """Max-pooling over non-overlapping ``window`` = (kh, kw) windows, VALID, stride = window:
    x [B, H, W, C] -> [B, H // kh, W // kw, C], with `nn.max_pool`'s values *and gradients*: the
    gradient of a window goes to its first maximum in row-major order, as XLA's select-and-scatter
    does, also on ties (constant image regions make exact ties common).

    Why not `nn.max_pool`: its ``reduce_window`` and gradient ``select_and_scatter`` run slowly on
    CPU inside the local-training loop (issue "speed"); strided slices and selects are plain
    element-wise work that XLA fuses."""
    return functools.reduce(jnp.maximum, _pool_taps(x, window))


def _max_pool_fwd(x, window):
    out = max_pool(x, window)
    return out, (x, out)


def _max_pool_bwd(window, res, g):
    x, out = res
    kh, kw = window
    taken = jnp.zeros(out.shape, bool)
    parts = []
    for tap in _pool_taps(x, window):  # the first maximum of each window takes the gradient
        hit = (tap == out) & ~taken
        parts.append(jnp.where(hit, g, 0.0).astype(x.dtype))
        taken = taken | hit
    b, h, w, c = out.shape
    grid = jnp.stack(parts).reshape(kh, kw, b, h, w, c).transpose(2, 3, 0, 4, 1, 5).reshape(b, h * kh, w * kw, c)
    return (jnp.pad(grid, [(0, 0), (0, x.shape[1] - h * kh), (0, x.shape[2] - w * kw), (0, 0)]),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class PatchConv(nn.Module):
    """A stride-1 2-D convolution as patches x matmul (`conv_patches`), with `nn.Conv`'s
    parameters (``kernel`` [kh, kw, C, F], lecun-normal; ``bias`` [F], zeros) and outputs.

    Why: XLA's CPU backend picks slow convolution layouts inside loops (a local-training
    ``lax.scan``; measured 243 ms vs 17.7 ms per SGD step of the peers' CNN, issue "speed"),
    while a matmul stays on its fast path; vmapped over clients it becomes a batched matmul."""

    features: int
    kernel_size: tuple
    padding: str = "SAME"
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv_patches(x, kh, kw, self.padding) @ kernel.reshape(-1, self.features) + bias


def resolve_conv(impl: str) -> str:
    """``auto`` -> ``patches`` on CPU (measured: docs/performance.md), ``xla`` elsewhere."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv implementation {impl!r}; expected one of {CONV_IMPLS}")
    return ("patches" if jax.default_backend() == "cpu" else "xla") if impl == "auto" else impl


class ConvFeatures(nn.Module):
    """Conv -> ReLU (-> 2x2 max-pool) blocks, then flatten: [B, H, W, C] -> [B, F].

    ``pool_after[i]``: a pool after conv i (empty: after every conv). ``conv``: ``xla``
    (`nn.Conv`, `nn.max_pool`) or ``patches`` (`PatchConv`, `max_pool`: the same parameters,
    outputs and gradients, built from matmuls and element-wise ops). ``init_name``: the kernels'
    initializer (a key of INITS); biases start at zero. ``dropout`` > 0 drops after the last block
    when ``train``."""

    channels: Sequence[int]
    kernel: int
    padding: str = "SAME"
    conv: str = "xla"
    pool_after: Sequence[bool] = ()
    init_name: str = "lecun_normal"
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        pools = tuple(self.pool_after) or (True,) * len(self.channels)
        for i, ch in enumerate(self.channels):
            size = (self.kernel, self.kernel)
            layer = (PatchConv(ch, size, self.padding, kernel_init=INITS[self.init_name], name=f"conv_{i}")
                     if self.conv == "patches" else
                     nn.Conv(ch, size, padding=self.padding, kernel_init=INITS[self.init_name], name=f"conv_{i}"))
            x = nn.relu(layer(x))
            if pools[i]:
                x = max_pool(x, (2, 2)) if self.conv == "patches" else nn.max_pool(x, (2, 2), strides=(2, 2))
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x.reshape(x.shape[0], -1)


class Body(nn.Module):
    """Feature extractor: optional conv features, flatten, then ReLU dense layers. ``dropout`` =
    (rate after the conv features, rate after each dense layer); active only when ``train``."""

    conv_channels: Sequence[int]
    kernel: int
    padding: str
    dense_widths: Sequence[int]
    conv: str = "xla"
    pool_after: Sequence[bool] = ()
    conv_init: str = "lecun_normal"
    dense_init: str = "lecun_normal"
    dropout: tuple = (0.0, 0.0)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.conv_channels:
            x = ConvFeatures(self.conv_channels, self.kernel, self.padding, self.conv, tuple(self.pool_after),
                             self.conv_init, self.dropout[0], name="features")(x, train)
        else:
            x = x.reshape(x.shape[0], -1)
        if self.dense_widths:
            x = DenseStack(self.dense_widths, relu_last=True, dropout=self.dropout[1], init_name=self.dense_init,
                           name="mlp")(x, train)
        return x


class Head(nn.Module):
    """Classifier: dense layers with ReLU between them, the last one giving logits. ``dropout``
    after each hidden layer, only when ``train``."""

    widths: Sequence[int]
    dropout: float = 0.0
    init_name: str = "lecun_normal"

    @nn.compact
    def __call__(self, f, train: bool = False):
        return DenseStack(self.widths, relu_last=False, dropout=self.dropout, init_name=self.init_name, name="mlp")(f, train)


class Model(NamedTuple):
    """A classifier as pure functions.

    init(key) -> {"body", "head"} params; apply(params, x [B, *feature_shape]) -> logits [B, K];
    body_apply(body_params, x) -> features [B, feature_dim]; head_apply(head_params, f) -> logits.
    ``dense_chain`` is True when the whole model is dense layers with ReLU between them (an MLP),
    which lets `core.factored` train it without materializing per-client weights; then
    ``layers_of`` / ``with_layers`` read and replace its layers (`dense_chain_layers`).
    ``num_outputs`` is the width of the last layer (classes, or regression outputs).
    ``train_apply(params, x, key) -> logits``: the training-mode forward pass (dropout drawn from
    ``key``); None when the model has no dropout, i.e. it equals ``apply``.
    ``convolutional``: the model has conv layers (picks the measured client mapping).
    """

    name: str
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    body_apply: Callable[[Params, jax.Array], jax.Array]
    head_apply: Callable[[Params, jax.Array], jax.Array]
    feature_dim: int
    dense_chain: bool
    num_outputs: int = 0
    layers_of: Callable | None = None
    with_layers: Callable | None = None
    train_apply: Callable | None = None
    convolutional: bool = False


def _split(widths: Sequence[int], head_layers: int):
    if head_layers > len(widths):
        raise ValueError(f"head_layers={head_layers} > {len(widths)} dense layers")
    return list(widths[: len(widths) - head_layers]), list(widths[len(widths) - head_layers:])


def split_functions(body: nn.Module, head: nn.Module, body_sample, head_sample):
    """(init, apply, body_apply, head_apply) of a body/head pair of Flax modules (`Model`):
    params ``{"body", "head"}``, each initialized on its sample input."""
    def init(key):
        kb, kh = jax.random.split(key)
        # a body without layers (every dense layer in the head) has no "params" collection
        return {"body": body.init(kb, body_sample).get("params", {}),
                "head": head.init(kh, head_sample).get("params", {})}

    def body_apply(p, x):
        return body.apply({"params": p}, x)

    def head_apply(p, f):
        return head.apply({"params": p}, f)

    def apply(p, x):
        return head_apply(p["head"], body_apply(p["body"], x))

    return init, apply, body_apply, head_apply


def make_classifier(name: str, feature_shape: tuple[int, ...], num_classes: int,
                    conv_channels: Sequence[int] = (), kernel: int = 3, padding: str = "SAME",
                    dense_widths: Sequence[int] = (), head_layers: int = 1, conv: str = "auto",
                    pool_after: Sequence[bool] = (), conv_init: str = "lecun_normal",
                    dense_init: str = "lecun_normal", dropout: tuple = (0.0, 0.0)) -> Model:
    """Builds a split classifier: conv features + dense ``dense_widths`` + a ``num_classes`` layer.

    The last ``head_layers`` dense layers (counting the logits layer) form the head. ``conv``:
    how convolutions run (`resolve_conv`); every choice has the same parameters and outputs.
    ``pool_after``: which convs a 2x2 max-pool follows (empty: all). ``dropout``: (rate after
    the conv features, rate after each hidden dense layer), used by ``train_apply`` only.
    """
    body_widths, head_widths = _split([*dense_widths, num_classes], head_layers)
    body = Body(tuple(conv_channels), kernel, padding, tuple(body_widths), resolve_conv(conv), tuple(pool_after),
                conv_init, dense_init, tuple(dropout))
    head = Head(tuple(head_widths), dropout[1], dense_init)
    sample = jnp.zeros((1, *feature_shape), jnp.float32)
    feature_dim = int(jax.eval_shape(lambda: body.init_with_output(
        jax.random.PRNGKey(0), sample)[0]).shape[-1])

    init, apply, body_apply, head_apply = split_functions(body, head, sample,
                                                          jnp.zeros((1, feature_dim), jnp.float32))

    def train_apply(p, x, key):
        kb, kh = jax.random.split(key)
        f = body.apply({"params": p["body"]}, x, True, rngs={"dropout": kb})
        return head.apply({"params": p["head"]}, f, True, rngs={"dropout": kh})

    dense = not conv_channels
    return Model(name, init, apply, body_apply, head_apply, feature_dim, dense, num_classes,
                 dense_chain_layers if dense else None, with_dense_chain_layers if dense else None,
                 train_apply if any(dropout) else None, bool(conv_channels))


def mlp(feature_shape, num_classes, hidden=(200, 200), head_layers=1) -> Model:
    """MLP on flattened inputs: hidden ReLU layers + logits layer."""
    return make_classifier("mlp", feature_shape, num_classes, dense_widths=hidden,
                           head_layers=head_layers)


def cnn(feature_shape, num_classes, head_layers=1, conv="auto") -> Model:
    """The FedAvg CNN (McMahan et al. 2017): two conv+pool blocks (32, 64), fc 512, logits.

    28x28 inputs use 5x5 kernels as in the paper; small inputs (8x8 digits) use 3x3 kernels. With
    ``head_layers=2`` the head is fc512-ReLU-logits, the split FedReMa's "cnn" uses.
    """
    kernel = 5 if min(feature_shape[:2]) >= 16 else 3
    return make_classifier("cnn", feature_shape, num_classes, conv_channels=(32, 64),
                           kernel=kernel, dense_widths=(512,), head_layers=head_layers, conv=conv)


def cifar_cnn(feature_shape, num_classes, head_layers=1, conv="auto") -> Model:
    """A small CIFAR CNN: conv32 3x3 SAME-pool-conv64 3x3 SAME-pool-fc128-logits (the FedAvg CNN's
    block layout with 3x3 kernels and a narrower dense layer; pfl-research's simple_cnn, with
    both convs before one pool, is `simple_cnn`)."""
    return make_classifier("cifar_cnn", feature_shape, num_classes, conv_channels=(32, 64),
                           kernel=3, dense_widths=(128,), head_layers=head_layers, conv=conv)


# FedJAX's EMNIST CNN and pfl-research's simple_cnn share one layout: conv32 3x3 VALID, conv64 3x3
# VALID, one 2x2 max-pool, [dropout 0.25], fc128, [dropout 0.5], logits.
_CONV_CONV_POOL = dict(conv_channels=(32, 64), kernel=3, padding="VALID", dense_widths=(128,),
                       pool_after=(False, True))
CONV_CONV_POOL_DROPOUT = (0.25, 0.5)


def emnist_cnn(feature_shape, num_classes, head_layers=1, conv="auto", dropout=False) -> Model:
    """FedJAX's EMNIST CNN (official code: ``fedjax.models.emnist.create_conv_model``, Haiku
    ``ConvDropoutModule``): conv32 3x3 VALID-ReLU, conv64 3x3 VALID-ReLU, 2x2 max-pool, dropout
    0.25, flatten, fc128-ReLU, dropout 0.5, logits (1,206,590 parameters at 28x28x1, 62 classes).

    Initializers as Haiku's defaults: conv kernels lecun normal (Haiku's ``Conv2D``), dense
    kernels `haiku_linear_init`, zero biases. ``dropout``: False (default) leaves both dropouts out,
    as the peers' benchmark CNN does, and training is deterministic; True trains with them.
    """
    return make_classifier("emnist_cnn", feature_shape, num_classes, head_layers=head_layers, conv=conv,
                           dense_init="haiku_linear", dropout=CONV_CONV_POOL_DROPOUT if dropout else (0.0, 0.0),
                           **_CONV_CONV_POOL)


def simple_cnn(feature_shape, num_classes, head_layers=1, conv="auto", dropout=False) -> Model:
    """pfl-research's ``simple_cnn`` (official code: ``benchmarks/model/pytorch/cnn.py`` and its
    TF2 twin): the layout of `emnist_cnn` with Glorot-uniform kernels ("to match the TF2 model")
    and zero biases (the TF2 model's; the PyTorch twin keeps torch's default uniform biases).
    ``dropout``: as for `emnist_cnn` (pfl-research trains with them)."""
    return make_classifier("simple_cnn", feature_shape, num_classes, head_layers=head_layers, conv=conv,
                           conv_init="glorot_uniform", dense_init="glorot_uniform",
                           dropout=CONV_CONV_POOL_DROPOUT if dropout else (0.0, 0.0), **_CONV_CONV_POOL)


MODELS = {"mlp": mlp, "cnn": cnn, "cifar_cnn": cifar_cnn, "emnist_cnn": emnist_cnn, "simple_cnn": simple_cnn}
DROPOUT_MODELS = ("emnist_cnn", "simple_cnn")
MODEL_DESCRIPTIONS = {
    "mlp": "MLP on flattened inputs: model.hidden ReLU layers, then logits",
    "cnn": "the FedAvg CNN (McMahan et al. 2017): conv32-pool-conv64-pool (5x5 SAME; 3x3 below 16x16), fc512",
    "cifar_cnn": "conv32-pool-conv64-pool (3x3 SAME), fc128",
    "emnist_cnn": "FedJAX's EMNIST CNN: conv32-conv64 (3x3 VALID)-pool, fc128, Haiku initializers",
    "simple_cnn": "pfl-research's simple_cnn: emnist_cnn's layout with Glorot-uniform kernels",
}


def dense_chain_layers(params: Params) -> list[dict]:
    """The dense layers of a ``dense_chain`` model in forward order: [{"kernel", "bias"}, ...]."""
    layers = []
    for part in ("body", "head"):
        stack = params[part].get("mlp", {})
        layers += [stack[f"dense_{i}"] for i in range(len(stack))]
    return layers


def with_dense_chain_layers(params: Params, layers: list[dict]) -> Params:
    """Inverse of `dense_chain_layers`: the same params tree with ``layers`` put in place."""
    out = {"body": dict(params["body"]), "head": dict(params["head"])}
    i = 0
    for part in ("body", "head"):
        stack = params[part].get("mlp", {})
        if stack:
            out[part]["mlp"] = {f"dense_{j}": layers[i + j] for j in range(len(stack))}
            i += len(stack)
    return out
