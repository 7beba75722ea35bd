"""FedReMa's relevance matching for classifier heads (specs/fedrema.md §3, §4, §6).

Pure, jittable functions of arrays and pytrees; K is the cohort (clients of this round), C the
population, Kc the number of classes, d the head's input (feature) width. Stacked pytrees have a
leading client axis on every leaf.

Pipeline of one round (`relevance_matching` composes it as an Aggregator):
  probes / prototypes -> similarity S [K, K] -> MDS relevant sets R [K, K] and gaps [K]
  -> CCP state update -> weights W [K, K] (uniform over R during the CCP, row-normalised
  dependency counts G after it) -> heads_i <- sum_j W[i, j] heads_j (from the pre-mix copy).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_sim.aggregators.base import Aggregator

Params = Any
ABLATIONS = ("none", "no_ccp", "no_history", "random_peers")
SIM_TYPES = ("probe", "proto")


# ---------------------------------------------------------------------------------------------
# probes and similarity


def uniform_probes(key: jax.Array, k: int, d: int, scale: float = 0.5) -> jax.Array:
    """One feature-space probe per reference client, z_r ~ Uniform[0, scale)^d: [K, d].

    (The official code calls it "gaussian" but draws uniform values; spec §7.4.)
    """
    return jax.random.uniform(key, (k, d), minval=0.0, maxval=scale)


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity over the last axis (broadcasting)."""
    num = jnp.sum(a * b, -1)
    den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return num / jnp.maximum(den, 1e-12)


@functools.partial(jax.jit, static_argnames=("head_apply",))
def probe_similarity(head_apply: Callable, heads: Params, probes: jax.Array,
                     t_ref: float = 0.5, t_peer: float = 1.0) -> jax.Array:
    """S [K, K], S[r, j] = cos(softmax(h_r(z_r) / t_ref), softmax(h_j(z_r) / t_peer)), S[r, r] = 1.

    Args:
      head_apply: ``head_apply(head_params, f [..., d]) -> logits [..., Kc]``.
      heads: stacked [K, ...] head parameters.
      probes: [K, d], probe r belongs to reference client r.
    """
    # logits[j, r] = head_j(z_r): every head sees every probe
    logits = jax.vmap(lambda h: head_apply(h, probes))(heads)  # [K_heads, K_probes, Kc]
    logits = jnp.swapaxes(logits, 0, 1)  # [r, j, Kc]
    k = logits.shape[0]
    own = logits[jnp.arange(k), jnp.arange(k)]  # [r, Kc] = h_r(z_r)
    p_ref = jax.nn.softmax(own / t_ref, -1)
    p_peer = jax.nn.softmax(logits / t_peer, -1)
    sim = _cosine(p_ref[:, None, :], p_peer)
    return jnp.where(jnp.eye(k, dtype=bool), 1.0, sim)


@functools.partial(jax.jit, static_argnames=("body_apply", "num_classes"))
def class_prototypes(body_apply: Callable, body: Params, x: jax.Array, y: jax.Array,
                     n: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """One client's per-class feature means of its (trained) body: (protos [Kc, d], counts [Kc]).

    x [N_max, ...], y [N_max], n [] valid rows; classes without rows get a zero prototype.
    """
    feats = body_apply(body, x)  # [N_max, d]
    valid = (jnp.arange(x.shape[0]) < n).astype(feats.dtype)
    onehot = jax.nn.one_hot(y, num_classes, dtype=feats.dtype) * valid[:, None]  # [N, Kc]
    counts = jnp.sum(onehot, 0)
    protos = onehot.T @ feats / jnp.maximum(counts, 1.0)[:, None]
    return protos, counts


@jax.jit
def global_prototypes(protos: jax.Array, counts: jax.Array,
                      part: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per class, the unweighted mean over participating clients that have it: (g [Kc, d], present [Kc]).

    protos [K, Kc, d], counts [K, Kc], part [K] bool.
    """
    has = (counts > 0) & part[:, None]  # [K, Kc]
    num = jnp.sum(has, 0)
    g = jnp.einsum("kc,kcd->cd", has.astype(protos.dtype), protos) / jnp.maximum(num, 1)[:, None]
    return g, num > 0


@functools.partial(jax.jit, static_argnames=("head_apply",))
def proto_similarity(head_apply: Callable, heads: Params, g: jax.Array,
                     present: jax.Array) -> jax.Array:
    """S [K, K], S[i, j] = masked mean over present classes k of cos(softmax(h_i(g_k)), softmax(h_j(g_k))).

    Temperature 1 for both; diagonal set to 1. (Masked mean = the intended "mean over classes
    seen this round"; the official code divides by Kc, identical when every class is present.)
    """
    probs = jax.nn.softmax(jax.vmap(lambda h: head_apply(h, g))(heads), -1)  # [K, Kc_probe, Kc]
    cos = _cosine(probs[:, None], probs[None, :])  # [K, K, Kc_probe]
    w = present.astype(cos.dtype)
    sim = jnp.sum(cos * w, -1) / jnp.maximum(jnp.sum(w), 1.0)
    k = sim.shape[0]
    return jnp.where(jnp.eye(k, dtype=bool), 1.0, sim)


# ---------------------------------------------------------------------------------------------
# MDS, CCP, dependency, weights


@jax.jit
def mds_select(sim: jax.Array, part: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Maximum Difference Segmentation (spec §3.2): (R [K, K] bool, gap [K]).

    Per participating row i: sort S[i, participants] ascending (self forced last), take the gaps
    between neighbours, drop the last one (self vs best peer), k* = first argmax of the rest;
    R_i = clients above the gap (self included), |R_i| in [2, n-1]. Needs n >= 3 participants.
    Rows of non-participants are all False with gap 0.
    """
    k = sim.shape[0]
    eye = jnp.eye(k, dtype=bool)
    vals = jnp.where(part[None, :], sim, -jnp.inf)
    vals = jnp.where(eye, jnp.inf, vals)  # self is the top entry, whatever its stored value
    order = jnp.argsort(vals, axis=1, stable=True)
    sorted_vals = jnp.take_along_axis(vals, order, axis=1)
    rank = jnp.argsort(order, axis=1)  # sorted position of each client id
    n = jnp.sum(part)
    gaps = sorted_vals[:, 1:] - sorted_vals[:, :-1]  # [K, K-1], gap g between positions g, g+1
    pos = jnp.arange(k - 1)
    # participants occupy positions k-n .. k-1; the last gap (position k-2) touches self
    valid = (pos >= k - n) & (pos <= k - 3)
    gaps = jnp.where(valid[None, :], gaps, -jnp.inf)
    cut = jnp.argmax(gaps, axis=1)  # first index on ties -> larger set
    gap = jnp.take_along_axis(gaps, cut[:, None], axis=1)[:, 0]
    rel = (rank > cut[:, None]) & part[None, :] & part[:, None]
    return rel, jnp.where(part, gap, 0.0)


def _row_normalize(m: jax.Array) -> jax.Array:
    """Rows divided by their sums; an all-zero row becomes the identity row."""
    m = m.astype(jnp.float32)
    s = jnp.sum(m, 1, keepdims=True)
    eye = jnp.eye(m.shape[0], m.shape[1], dtype=m.dtype)
    return jnp.where(s > 0, m / jnp.where(s > 0, s, 1.0), eye)


@jax.jit
def ccp_weights(rel: jax.Array) -> jax.Array:
    """W = R / R.sum(1), uniform over each relevant set; empty rows -> identity: [K, K]."""
    return _row_normalize(rel)


@jax.jit
def history_weights(dep: jax.Array) -> jax.Array:
    """W = G / G.sum(1), frequency of being chosen during the CCP; zero rows -> identity."""
    return _row_normalize(dep)


@jax.jit
def update_dependency(dep: jax.Array, rel: jax.Array, idx: jax.Array,
                      is_ccp: jax.Array) -> jax.Array:
    """G [C, C] += is_ccp * R [K, K] at the cohort's (idx[i], idx[j]) entries (self included)."""
    add = rel.astype(dep.dtype) * is_ccp.astype(dep.dtype)
    return dep.at[idx[:, None], idx[None, :]].add(add)


class CCPState(NamedTuple):
    """is_ccp [] bool, m_max [] running max of the mean MDS gap, end_round [] int32 (-1: never)."""

    is_ccp: jax.Array
    m_max: jax.Array
    end_round: jax.Array


def ccp_init() -> CCPState:
    return CCPState(jnp.array(True), jnp.array(-jnp.inf, jnp.float32), jnp.array(-1, jnp.int32))


@jax.jit
def ccp_step(state: CCPState, gap: jax.Array, part: jax.Array, delta: float,
             round_idx: jax.Array) -> tuple[CCPState, jax.Array]:
    """CCP end rule (spec §3.3): m_t = masked mean of gaps; end (for good) when m_t < delta * max m.

    Only updates while the CCP is active. ``round_idx`` (1-based) is recorded as the end round.
    Returns (new state, m_t).
    """
    w = part.astype(jnp.float32)
    m_t = jnp.sum(gap * w) / jnp.maximum(jnp.sum(w), 1.0)
    m_max = jnp.maximum(state.m_max, m_t)
    ends = state.is_ccp & (m_t < delta * m_max)
    return CCPState(is_ccp=state.is_ccp & ~ends,
                    m_max=jnp.where(state.is_ccp, m_max, state.m_max),
                    end_round=jnp.where(ends, round_idx.astype(jnp.int32), state.end_round)), m_t


@jax.jit
def random_relevant_sets(key: jax.Array, rel: jax.Array, part: jax.Array) -> jax.Array:
    """Ablation: per row, self plus random participating peers, as many as MDS chose: [K, K] bool."""
    k = rel.shape[0]
    size = jnp.sum(rel, 1)
    score = jax.random.uniform(key, (k, k))
    score = jnp.where(part[None, :], score, -1.0)
    score = jnp.where(jnp.eye(k, dtype=bool), 2.0, score)
    rank_desc = jnp.argsort(jnp.argsort(-score, axis=1, stable=True), axis=1)
    return (rank_desc < size[:, None]) & part[None, :] & part[:, None]


# ---------------------------------------------------------------------------------------------
# head mixing


@jax.jit
def mix_heads(weights: jax.Array, heads: Params, part: jax.Array) -> Params:
    """heads_i <- sum_j W[i, j] heads_j from the pre-mix copy; non-participant rows unchanged.

    weights [K, K]; heads stacked [K, ...]; part [K] bool.
    """
    w = weights.astype(jnp.float32)

    def one(h):
        mixed = jnp.einsum("ij,j...->i...", w, h.astype(jnp.float32)).astype(h.dtype)
        keep = part.reshape((-1,) + (1,) * (h.ndim - 1))
        return jnp.where(keep, mixed, h)

    return jax.tree.map(one, heads)


@jax.jit
def mix_heads_inplace(weights: jax.Array, heads: Params, part: jax.Array) -> Params:
    """The official code's bug (spec §7.2): clients mixed one after another in id order, each
    reading heads already overwritten by earlier clients. A ``lax.scan`` over the rows."""
    w = weights.astype(jnp.float32)

    def step(h, i):
        def one(leaf):
            mixed = jnp.einsum("j,j...->...", w[i], leaf.astype(jnp.float32)).astype(leaf.dtype)
            return leaf.at[i].set(jnp.where(part[i], mixed, leaf[i]))
        return jax.tree.map(one, h), None

    out, _ = jax.lax.scan(step, heads, jnp.arange(w.shape[0]))
    return out


def upload_order_bug(key: jax.Array, weights: jax.Array) -> jax.Array:
    """The official code's bug (spec §7.1): the weight meant for client j is applied to the head at
    upload position j of a random upload order ``perm``; as a weight matrix on heads by id,
    W_eff[:, m] = W[:, perm^-1[m]]."""
    perm = jax.random.permutation(key, weights.shape[1])
    return weights[:, jnp.argsort(perm)]


# ---------------------------------------------------------------------------------------------
# the composed aggregator


class RelevanceState(NamedTuple):
    """dep: G [C, C] float32 dependency counts; ccp: `CCPState`; round: [] int32 rounds done."""

    dep: jax.Array
    ccp: CCPState
    round: jax.Array


def relevance_matching(num_clients: int, delta: float = 0.5, ablation: str = "none",
                       official_index_bug: bool = False,
                       official_inplace_mixing: bool = False) -> Aggregator:
    """FedReMa's head aggregator: client results are the cohort's freshly trained heads [K, ...];
    the output is each participant's mixed head [K, ...] (non-participants' rows unchanged).

    ``init(params) -> RelevanceState`` (G [C, C] zeros, CCP active, round 0; params unused).
    ``update(heads, weights, state, params, *, similarity, cohort_idx, key, participation=None)``:
    ``similarity`` S [K, K] of the trained heads (`probe_similarity` / `proto_similarity`),
    ``cohort_idx`` [K] client ids, ``participation`` [K] bool (default all), ``key`` for the
    ablations and the upload-order bug. ``weights`` are not used (relevance replaces them).
    Metrics: ``mds_gap_mean``, ``ccp_active`` (1 while the CCP is on at the start of this round;
    its end rule runs in every ablation), ``mds_weights`` (1 if MDS weights were used this round:
    during the CCP, and every round with ``no_ccp``),
    ``relevant_set_size_{mean,min,max}`` (support of the weight rows used) and ``ccp_ended``
    (1 in the round the CCP ended).

    Ablations: ``no_ccp`` uses MDS every round; ``no_history`` after the CCP uses uniform weights
    over every peer ever chosen during the CCP (G > 0) instead of frequencies; ``random_peers``
    replaces each MDS set with self + random peers of the same size (G counts those).
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; expected one of {ABLATIONS}")

    def init(params) -> RelevanceState:
        del params
        return RelevanceState(jnp.zeros((num_clients, num_clients), jnp.float32), ccp_init(),
                              jnp.array(0, jnp.int32))

    def update(heads, weights, state: RelevanceState, params, *, similarity, cohort_idx, key,
               participation=None, **extras):
        del weights, params, extras
        part = jnp.ones(cohort_idx.shape, bool) if participation is None else participation
        k_rand, k_bug = jax.random.split(key)
        rel, gap = mds_select(similarity, part)
        if ablation == "random_peers":
            rel = random_relevant_sets(k_rand, rel, part)
        was_ccp = state.ccp.is_ccp if ablation != "no_ccp" else jnp.array(True)
        dep = update_dependency(state.dep, rel, cohort_idx, state.ccp.is_ccp)
        rnd = state.round + 1
        ccp, m_t = ccp_step(state.ccp, gap, part, delta, rnd)
        sub = dep[cohort_idx[:, None], cohort_idx[None, :]] * (part[:, None] & part[None, :])
        if ablation == "no_history":
            sub = (sub > 0).astype(jnp.float32)
        w = jnp.where(was_ccp, ccp_weights(rel), history_weights(sub))
        if official_index_bug:
            w = upload_order_bug(k_bug, w)
        mixed = (mix_heads_inplace if official_inplace_mixing else mix_heads)(w, heads, part)
        size = jnp.sum(w > 0, 1).astype(jnp.float32)
        pf = part.astype(jnp.float32)
        big = jnp.float32(w.shape[0] + 1)
        stats = {"mds_gap_mean": m_t,
                 # the critical co-learning period itself (its end rule runs in every ablation) ...
                 "ccp_active": state.ccp.is_ccp.astype(jnp.float32),
                 # ... and whether this round's head weights were MDS sets (always, without the CCP)
                 "mds_weights": was_ccp.astype(jnp.float32),
                 "ccp_ended": (state.ccp.is_ccp & ~ccp.is_ccp).astype(jnp.float32),
                 "relevant_set_size_mean": jnp.sum(size * pf) / jnp.maximum(jnp.sum(pf), 1.0),
                 "relevant_set_size_min": jnp.min(jnp.where(part, size, big)),
                 "relevant_set_size_max": jnp.max(jnp.where(part, size, 0.0))}
        return mixed, RelevanceState(dep, ccp, rnd), stats

    return Aggregator(init, update)
