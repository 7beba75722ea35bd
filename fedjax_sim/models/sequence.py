"""Sequence models: FedJAX's Shakespeare character LSTM as a body/head `Model`.

FedJAX (google/fedjax ``fedjax/models/shakespeare.py``, McMahan et al. 2017's model): an
embedding of 8 per token, two LSTM layers of 256 each followed by ``tanh``, and a linear layer to
the full vocabulary (86 characters + PAD, BOS, EOS, OOV = 90), applied at every position.
Here the body is the embedding and the LSTMs ([B, T] tokens -> [B, T, 256]) and the head is the
output layer, so the personalization baselines can keep it local. [reconstruction] Flax's
``LSTMCell`` and initializers stand in for Haiku's: Haiku's LSTM adds 1 to the forget gate
inside the cell and initializes its weights differently; the layer sizes and the computation
otherwise match.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fedjax_sim.models.classifiers import Model, split_functions

DESCRIPTION = ("FedJAX's Shakespeare character LSTM: embed 8, 2 x LSTM 256 (+tanh), per-token logits "
               "(token-sequence data only)")


class LSTMBody(nn.Module):
    vocab_size: int
    embed_size: int
    hidden: int
    layers: int

    @nn.compact
    def __call__(self, x):
        h = nn.Embed(self.vocab_size, self.embed_size, name="embed")(x.astype(jnp.int32))
        for i in range(self.layers):
            h = jnp.tanh(nn.RNN(nn.OptimizedLSTMCell(self.hidden), name=f"lstm_{i}")(h))
        return h


def char_lstm(feature_shape, num_classes: int, embed_size: int = 8, hidden: int = 256, layers: int = 2) -> Model:
    """The character LSTM over token sequences ``x`` [B, T] (ids in [0, num_classes), given as
    float or int) -> logits [B, T, num_classes]."""
    body = LSTMBody(num_classes, embed_size, hidden, layers)
    head = nn.Dense(num_classes)
    init, apply, body_apply, head_apply = split_functions(body, head, jnp.zeros((1, *feature_shape), jnp.int32),
                                                          jnp.zeros((1, 1, hidden), jnp.float32))
    return Model("char_lstm", init, apply, body_apply, head_apply, hidden, False, num_classes)
