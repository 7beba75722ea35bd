"""Flax classifiers with a body/head split.

Every classifier is ``logits = head(body(x))``: the body is the feature extractor, the head the
classifier, so personalized algorithms (FedPer, FedRep, FedReMa, ...) can aggregate them
differently. Parameters are ``{"body": ..., "head": ...}``; models stay free of training logic.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any


class DenseStack(nn.Module):
    """Dense layers with ReLU between them; ``relu_last`` also activates the last one."""

    widths: Sequence[int]
    relu_last: bool = True

    @nn.compact
    def __call__(self, h):
        for i, width in enumerate(self.widths):
            h = nn.Dense(width, name=f"dense_{i}")(h)
            if self.relu_last or i < len(self.widths) - 1:
                h = nn.relu(h)
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


class PatchConv(nn.Module):
    """A stride-1 2-D convolution as patches x matmul (`conv_patches`), with `nn.Conv`'s
    parameters (``kernel`` [kh, kw, C, F], lecun-normal; ``bias`` [F], zeros) and outputs.

    Why: XLA's CPU backend picks slow convolution layouts inside loops (a local-training
    ``lax.scan``; measured 243 ms vs 17.7 ms per SGD step of the peers' CNN, issue "speed"),
    while a matmul stays on its fast path; vmapped over clients it becomes a batched matmul."""

    features: int
    kernel_size: tuple
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv_patches(x, kh, kw, self.padding) @ kernel.reshape(-1, self.features) + bias


def resolve_conv(impl: str) -> str:
    """``auto`` -> ``patches`` on CPU (measured: docs/performance.md), ``xla`` elsewhere."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv implementation {impl!r}; expected one of {CONV_IMPLS}")
    return ("patches" if jax.default_backend() == "cpu" else "xla") if impl == "auto" else impl


class ConvFeatures(nn.Module):
    """Conv -> ReLU -> 2x2 max-pool blocks, then flatten: [B, H, W, C] -> [B, F]. ``conv``:
    ``xla`` (`nn.Conv`) or ``patches`` (`PatchConv`: the same parameters and outputs)."""

    channels: Sequence[int]
    kernel: int
    padding: str = "SAME"
    conv: str = "xla"

    @nn.compact
    def __call__(self, x):
        for i, ch in enumerate(self.channels):
            size = (self.kernel, self.kernel)
            layer = (PatchConv(ch, size, self.padding, name=f"conv_{i}") if self.conv == "patches"
                     else nn.Conv(ch, size, padding=self.padding, name=f"conv_{i}"))
            x = layer(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        return x.reshape(x.shape[0], -1)


class Body(nn.Module):
    """Feature extractor: optional conv features, flatten, then ReLU dense layers."""

    conv_channels: Sequence[int]
    kernel: int
    padding: str
    dense_widths: Sequence[int]
    conv: str = "xla"

    @nn.compact
    def __call__(self, x):
        if self.conv_channels:
            x = ConvFeatures(self.conv_channels, self.kernel, self.padding, self.conv, name="features")(x)
        else:
            x = x.reshape(x.shape[0], -1)
        if self.dense_widths:
            x = DenseStack(self.dense_widths, relu_last=True, name="mlp")(x)
        return x


class Head(nn.Module):
    """Classifier: dense layers with ReLU between them, the last one giving logits."""

    widths: Sequence[int]

    @nn.compact
    def __call__(self, f):
        return DenseStack(self.widths, relu_last=False, name="mlp")(f)


class Model(NamedTuple):
    """A classifier as pure functions.

    init(key) -> {"body", "head"} params; apply(params, x [B, *feature_shape]) -> logits [B, K];
    body_apply(body_params, x) -> features [B, feature_dim]; head_apply(head_params, f) -> logits.
    ``dense_chain`` is True when the whole model is dense layers with ReLU between them (an MLP),
    which lets `core.factored` train it without materializing per-client weights; then
    ``layers_of`` / ``with_layers`` read and replace its layers (`dense_chain_layers`).
    ``num_outputs`` is the width of the last layer (classes, or regression outputs).
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


def _split(widths: Sequence[int], head_layers: int):
    if head_layers > len(widths):
        raise ValueError(f"head_layers={head_layers} > {len(widths)} dense layers")
    return list(widths[: len(widths) - head_layers]), list(widths[len(widths) - head_layers:])


def make_classifier(name: str, feature_shape: tuple[int, ...], num_classes: int,
                    conv_channels: Sequence[int] = (), kernel: int = 3, padding: str = "SAME",
                    dense_widths: Sequence[int] = (), head_layers: int = 1, conv: str = "auto") -> Model:
    """Builds a split classifier: conv features + dense ``dense_widths`` + a ``num_classes`` layer.

    The last ``head_layers`` dense layers (counting the logits layer) form the head. ``conv``:
    how convolutions run (`resolve_conv`); every choice has the same parameters and outputs.
    """
    body_widths, head_widths = _split([*dense_widths, num_classes], head_layers)
    body = Body(tuple(conv_channels), kernel, padding, tuple(body_widths), resolve_conv(conv))
    head = Head(tuple(head_widths))
    sample = jnp.zeros((1, *feature_shape), jnp.float32)
    feature_dim = int(jax.eval_shape(lambda: body.init_with_output(
        jax.random.PRNGKey(0), sample)[0]).shape[-1])

    def init(key):
        kb, kh = jax.random.split(key)
        # a body without layers (every dense layer in the head) has no "params" collection
        return {"body": body.init(kb, sample).get("params", {}),
                "head": head.init(kh, jnp.zeros((1, feature_dim), jnp.float32)).get("params", {})}

    def body_apply(p, x):
        return body.apply({"params": p}, x)

    def head_apply(p, f):
        return head.apply({"params": p}, f)

    def apply(p, x):
        return head_apply(p["head"], body_apply(p["body"], x))

    dense = not conv_channels
    return Model(name, init, apply, body_apply, head_apply, feature_dim, dense, num_classes,
                 dense_chain_layers if dense else None, with_dense_chain_layers if dense else None)


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
    """Small CIFAR CNN (pfl-research's simple_cnn shape): conv32-pool-conv64-pool-fc128-logits."""
    return make_classifier("cifar_cnn", feature_shape, num_classes, conv_channels=(32, 64),
                           kernel=3, dense_widths=(128,), head_layers=head_layers, conv=conv)


MODELS = {"mlp": mlp, "cnn": cnn, "cifar_cnn": cifar_cnn}


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
