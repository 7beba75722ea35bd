"""Bag-of-words logistic regression: TFF's Stack Overflow tag-prediction model as a `Model`.

TensorFlow Federated (``tensorflow_federated/python/simulation/baselines/stackoverflow/
tag_prediction_tasks.py``): one ``Dense(num_tags, activation='sigmoid')`` layer on the
normalized bag of words of a post ([V] word frequencies over its in-vocabulary words), Keras'
default initializers (Glorot-uniform kernel, zero bias). Here a row arrives sparse, as its
distinct in-vocabulary words: x [L, 2] of (word id, frequency) pairs, zero-frequency pairs
padding (`data.stackoverflow`); the layer reads it as ``sum_l f_l * W[id_l] + b``, which is the
dense layer's product with the [V] frequency vector without building it. The model returns
logits; the task applies the sigmoid inside its cross-entropy (`tasks.multilabel`).

The whole model is the head (the body passes x through and has no parameters): body/head
algorithms (FedPer, FedRep, ...) need a body with parameters and exit 2 on it, as for any model
whose every layer is in the head.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fedjax_sim.models.classifiers import Model, split_functions

DESCRIPTION = ("TFF's Stack Overflow tag predictor: logistic regression (one sigmoid layer) on a post's "
               "normalized bag of words (bag-of-words data only)")


class Passthrough(nn.Module):
    """The empty body: x as is."""

    @nn.compact
    def __call__(self, x):
        return x


class BagOfWordsDense(nn.Module):
    """Dense(num_outputs) on a sparse bag of words x [B, L, 2] (word id, weight) -> [B, K]."""

    vocab_size: int
    num_outputs: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.glorot_uniform(), (self.vocab_size, self.num_outputs))
        bias = self.param("bias", nn.initializers.zeros, (self.num_outputs,))
        ids = jnp.clip(x[..., 0].astype(jnp.int32), 0, self.vocab_size - 1)
        return jnp.einsum("...l,...lk->...k", x[..., 1], jnp.take(kernel, ids, axis=0)) + bias


def bow_logreg(feature_shape, num_classes: int, vocab_size: int) -> Model:
    """Logistic regression over a ``vocab_size``-word bag of words x [B, L, 2] -> logits
    [B, num_classes] (`BagOfWordsDense`)."""
    if len(feature_shape) != 2 or feature_shape[-1] != 2:
        raise ValueError(f"bow_logreg reads x [L, 2] (word id, weight) rows, not {list(feature_shape)}")
    init, apply, body_apply, head_apply = split_functions(
        Passthrough(), BagOfWordsDense(vocab_size, num_classes), jnp.zeros((1, *feature_shape), jnp.float32),
        jnp.zeros((1, *feature_shape), jnp.float32))
    # feature_dim: the width of the bag the head reads (the body passes the sparse [L, 2] through)
    return Model("bow_logreg", init, apply, body_apply, head_apply, vocab_size, False, num_classes)

