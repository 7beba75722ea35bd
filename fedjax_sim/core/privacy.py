"""Loss-based membership inference (Yeom et al. 2018; specs/fedgc.md section 4 [D]).

The attacker scores every row by its negative loss under the attacked model: members (a client's
own real training rows; generated rows never count) should have lower loss than non-members (the
client's own held-out test rows, drawn from its own label mix, so label skew alone does not
separate them). Per client: the threshold-free AUC (Mann-Whitney, ties counted half) and the best
balanced accuracy over thresholds. AUC does not depend on the two sets' sizes, so all rows are
used instead of subsampling members to the non-members' count (less variance, same expectation).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fedjax_sim.core.mapping import ClientMapping


def per_row_loss(metrics_fn: Callable, params, rows: dict) -> jax.Array:
    """[N] the task's loss of each row (leaves [N, ...]) under ``params``, through the task's
    ``metrics`` protocol on one-row batches (works for any single- or multi-output task): the
    loss sum over the row's count, i.e. a sequence row's mean token loss, whatever its length."""
    def one(r):
        m = metrics_fn(params, {**jax.tree.map(lambda a: a[None], r), "mask": jnp.ones(1, bool)})
        return m["loss"] / jnp.maximum(m.get("count", 1.0), 1.0)

    return jax.vmap(one)(rows)


def loss_attack(l_mem: jax.Array, m_mem: jax.Array, l_non: jax.Array, m_non: jax.Array):
    """(auc [], balanced_accuracy []) of the loss-threshold attack on one client: members' losses
    [N] with mask [N], non-members' [M] with mask [M]. NaN when either set is empty.

    AUC via mid-ranks of the score -loss among the valid rows of both sets; balanced accuracy =
    max over thresholds t of (P(member score >= t) + P(non-member score < t)) / 2 (0.5 = chance).
    """
    s_mem, s_non = -l_mem, -l_non
    n_m, n_n = jnp.sum(m_mem), jnp.sum(m_non)
    inf = jnp.inf
    all_sorted = jnp.sort(jnp.concatenate([jnp.where(m_mem, s_mem, inf), jnp.where(m_non, s_non, inf)]))
    left = jnp.searchsorted(all_sorted, s_mem, side="left")
    right = jnp.searchsorted(all_sorted, s_mem, side="right")
    midrank = (left + right + 1) / 2.0
    u = jnp.sum(jnp.where(m_mem, midrank, 0.0)) - n_m * (n_m + 1) / 2.0
    auc = u / (n_m * n_n)
    mem_sorted = jnp.sort(jnp.where(m_mem, s_mem, inf))
    non_sorted = jnp.sort(jnp.where(m_non, s_non, inf))
    thresholds = jnp.concatenate([s_mem, s_non])
    valid_t = jnp.concatenate([m_mem, m_non])
    tpr = (n_m - jnp.searchsorted(mem_sorted, thresholds, side="left")) / n_m  # members >= t
    tnr = jnp.searchsorted(non_sorted, thresholds, side="left") / n_n  # non-members < t
    bal = jnp.max(jnp.where(valid_t, (tpr + tnr) / 2.0, 0.5))
    empty = (n_m == 0) | (n_n == 0)
    return jnp.where(empty, jnp.nan, auc), jnp.where(empty, jnp.nan, jnp.maximum(bal, 0.5))


def client_attack(metrics_fn: Callable, params, data, stacked: bool,
                  mapping: ClientMapping = ClientMapping("vmap")) -> tuple[jax.Array, jax.Array]:
    """(auc [C], balanced_accuracy [C]) of the attack on each client (`loss_attack`; NaN where a
    client lacks members or non-members) under ``params`` (shared, or [C, ...] with ``stacked``):
    members = each client's real training rows (``train["generated"]`` False), non-members = its
    test rows."""
    view = data.train_view()
    train = {k: v for k, v in view.items() if k != "generated"}
    gen = view.get("generated")
    n_max, m_max = jax.tree.leaves(train)[0].shape[1], data.max_test
    m_mem = jnp.arange(n_max)[None, :] < data.n_train[:, None]
    if gen is not None:
        m_mem = m_mem & ~gen
    m_non = jnp.arange(m_max)[None, :] < data.n_test[:, None]

    def client(p, tr, mm, te, mn):
        return loss_attack(per_row_loss(metrics_fn, p, tr), mm, per_row_loss(metrics_fn, p, te), mn)

    return mapping.map(client, (0 if stacked else None, 0, 0, 0, 0))(params, train, m_mem, data.test, m_non)


def attack_summary(auc: jax.Array, bal: jax.Array) -> dict:
    """{"mia_auc": [], "mia_balanced_accuracy": []}: means over the clients with both sets, and
    the per-client [C] arrays (``*_per_client``, NaN where undefined)."""
    ok = ~jnp.isnan(auc)
    mean = lambda v: jnp.sum(jnp.where(ok, v, 0.0)) / jnp.maximum(jnp.sum(ok), 1)  # noqa: E731
    return {"mia_auc": mean(auc), "mia_balanced_accuracy": mean(bal),
            "mia_auc_per_client": auc, "mia_balanced_accuracy_per_client": bal}


def membership_inference(metrics_fn: Callable, params, data, stacked: bool,
                         mapping: ClientMapping = ClientMapping("vmap")) -> dict:
    """The per-client attack (`client_attack`) on ``params`` and its summary (`attack_summary`)."""
    return attack_summary(*client_attack(metrics_fn, params, data, stacked, mapping))
