"""Convolution as patches x matmul (`models.classifiers.PatchConv`): the same parameters, outputs
and gradients as `flax.linen.Conv`, for every padding and kernel the models use; and the conv
models give the same numbers with either implementation."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_sim.models import build_model
from fedjax_sim.models.classifiers import PatchConv, conv_patches


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (2, 4)])
def test_patch_conv_equals_flax_conv_values_and_gradients(padding, kernel):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 8, 2))
    ref, ours = nn.Conv(5, kernel, padding=padding), PatchConv(5, kernel, padding)
    params = ref.init(jax.random.PRNGKey(1), x)
    chex_params = ours.init(jax.random.PRNGKey(1), x)
    jax.tree.map(np.testing.assert_array_equal, params, chex_params)  # same names, shapes, init
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))  # noqa: E731
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), g_ours, g_ref)


def test_patches_follow_the_kernel_layout():
    """Column (i*kw + j)*C + c of a patch row is x[h+i, w+j, c] (VALID), a loop reference."""
    x = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
    got = np.asarray(conv_patches(jnp.asarray(x), 2, 3, "VALID"))
    for b in range(2):
        for h in range(3):
            for w in range(3):
                row = [x[b, h + i, w + j, c] for i in range(2) for j in range(3) for c in range(3)]
                np.testing.assert_array_equal(got[b, h, w], row)


@pytest.mark.parametrize("name,shape", [("cnn", (28, 28, 1)), ("cnn", (8, 8, 1)), ("cifar_cnn", (32, 32, 3)),
                                        ("emnist_cnn", (28, 28, 1)), ("emnist_cnn", (8, 8, 1)),
                                        ("simple_cnn", (12, 12, 3))])
def test_conv_models_agree_across_implementations(name, shape):
    x = jax.random.normal(jax.random.PRNGKey(2), (4, *shape))
    xla, patches = build_model(name, shape, 10, conv="xla"), build_model(name, shape, 10, conv="patches")
    params = xla.init(jax.random.PRNGKey(3))
    jax.tree.map(np.testing.assert_array_equal, params, patches.init(jax.random.PRNGKey(3)))
    np.testing.assert_allclose(patches.apply(params, x), xla.apply(params, x), rtol=1e-4, atol=1e-4)
    g = lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(params)  # noqa: E731
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), g(patches), g(xla))
