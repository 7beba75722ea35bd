"""Multi-task models: a shared-architecture encoder, one decoder per task and a head per task.

FedHCA2's model layout (specs/fedhca2.md sections 1 and 6): every client has the same encoder
architecture; every task's decoder has the same architecture (so decoders of different tasks can
be aggregated with each other); heads are task-specific and never aggregated. Decoders and heads
of all T tasks are stacked on a leading task axis ``[T, ...]`` so every client has the same
static shapes and all clients `vmap` together; a client simply never uses (nor changes) the
slots of tasks it does not hold. Heads are padded to the widest task output; task t reads its
first ``outputs[t]`` columns.

Params: ``{"encoder": {"dense_i": {kernel, bias}}, "decoders": {"l0": {kernel [T, F, H0], bias
[T, H0]}, "l1": ...}, "heads": {kernel [T, H_last, O_max], bias [T, O_max]}}``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_sim.models.classifiers import DenseStack

Params = Any


class MultiTaskModel(NamedTuple):
    """init(key) -> params; apply(params, x [B, *features]) -> {task: outputs [B, outputs[t]]}.

    ``decoder_layers``: names of the decoder's parameter-owning layers in forward order (the
    layers FedHCA2's beta is defined per, spec section 3); ``task_names`` / ``task_outputs``: [T].
    """

    name: str
    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], dict]
    task_names: tuple
    task_outputs: tuple
    decoder_layers: tuple


class _Decoder(nn.Module):
    widths: Sequence[int]

    @nn.compact
    def __call__(self, f):
        for i, w in enumerate(self.widths):
            f = nn.relu(nn.Dense(w, name=f"l{i}")(f))
        return f


def multitask_mlp(feature_shape, task_names: Sequence[str], task_outputs: Sequence[int],
                  encoder: Sequence[int] = (64, 64), decoder: Sequence[int] = (32, 32)) -> MultiTaskModel:
    """MLP encoder (ReLU ``encoder`` widths), per-task decoders (ReLU ``decoder`` widths, layers
    ``l0``, ``l1``, ...) and per-task linear heads; HC-FMTL-lite's model is the default
    (32 -> 64 -> 64; 64 -> 32 -> 32; 32 -> outputs)."""
    if not encoder or not decoder:
        raise ValueError("a multi-task model needs at least one encoder and one decoder layer")
    names, outputs = tuple(task_names), tuple(int(o) for o in task_outputs)
    t, o_max = len(names), max(outputs)
    enc = DenseStack(tuple(encoder), relu_last=True)
    dec = _Decoder(tuple(decoder))
    head = nn.Dense(o_max)
    sample = jnp.zeros((1, *feature_shape), jnp.float32)

    def init(key):
        k_enc, k_dec, k_head = jax.random.split(key, 3)
        f = jnp.zeros((1, encoder[-1]), jnp.float32)
        h = jnp.zeros((1, decoder[-1]), jnp.float32)
        return {"encoder": enc.init(k_enc, sample.reshape(1, -1))["params"],
                "decoders": jax.vmap(lambda k: dec.init(k, f)["params"])(jax.random.split(k_dec, t)),
                "heads": jax.vmap(lambda k: head.init(k, h)["params"])(jax.random.split(k_head, t))}

    def apply(params, x):
        f = enc.apply({"params": params["encoder"]}, x.reshape(x.shape[0], -1))
        z = jax.vmap(lambda p: dec.apply({"params": p}, f))(params["decoders"])  # [T, B, H]
        out = jax.vmap(lambda p, h: head.apply({"params": p}, h))(params["heads"], z)  # [T, B, O_max]
        return {n: out[i, :, : outputs[i]] for i, n in enumerate(names)}

    return MultiTaskModel("multitask_mlp", init, apply, names, outputs,
                          tuple(f"l{i}" for i in range(len(decoder))))
