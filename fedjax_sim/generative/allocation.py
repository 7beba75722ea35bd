"""Budget allocation (specs/fedgc.md section 2.1): how many samples each client generates, and of
which classes. Host-side numpy (it runs once, before generation, on [K, C] counts).

Two stages [D]: the client stage splits the total budget M = round(budget * sum_k n_k) over clients
(m_k), the class stage splits each m_k over classes with weights w[k, c] (rows sum to 1); both
round by the largest-remainder rule, so every total is exact.
"""
from __future__ import annotations

import numpy as np

from fedjax_sim.config import FEDGC_CHOICES

CLIENT_RULES = FEDGC_CHOICES["client_allocation"]
CLASS_RULES = FEDGC_CHOICES["allocation"]


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers [n] >= 0 summing to ``total`` and proportional to ``weights`` [n] (>= 0): floors of
    the exact shares, then one more for the largest remainders (ties to the lower index). All-zero
    weights share equally."""
    w = np.asarray(weights, np.float64)
    if total <= 0 or w.size == 0:
        return np.zeros(w.shape, np.int64)
    w = np.ones_like(w) if w.sum() <= 0 else w
    exact = total * w / w.sum()
    base = np.floor(exact).astype(np.int64)
    rest = int(total - base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:rest]] += 1
    return base


def client_budgets(n: np.ndarray, budget: float, rule: str) -> np.ndarray:
    """m_k [K]: the total M = round(budget * sum(n)) split over clients by ``rule``: ``equal``
    (M / K each, the paper's recommended "same amount for each client"), ``proportional``
    (budget * n_k: a generated-to-real ratio per client), ``inverse_size`` (proportional to 1 / n_k,
    small clients get more; clients without data get none)."""
    n = np.asarray(n, np.float64)
    total = int(round(budget * n.sum()))
    if rule == "equal":
        return largest_remainder(total, np.ones_like(n))
    if rule == "proportional":
        return largest_remainder(total, n)
    if rule == "inverse_size":
        return largest_remainder(total, np.where(n > 0, 1.0 / np.maximum(n, 1), 0.0))
    raise ValueError(f"unknown client rule {rule!r}; expected one of {CLIENT_RULES}")


def class_weights(counts: np.ndarray, rule: str, gamma: float = 1.0, rho: float = 0.5,
                  available: np.ndarray | None = None) -> np.ndarray:
    """w [K, C], rows summing to 1 (specs/fedgc.md section 2.1 table).

    ``equal``: 1 / C. ``inverse``: proportional to max_c' n[k, c'] - n[k, c] (fill every class up to
    the client's largest; flat counts fall back to equal). ``inverse_pow``: proportional to
    (n[k, c] + 1) ** -gamma (gamma 0 = equal). ``mixed``: rho * equal + (1 - rho) * inverse.
    ``available`` [C] bool: classes the generator can produce; the others get weight 0 (rows
    renormalized).
    """
    counts = np.asarray(counts, np.float64)
    k, c = counts.shape
    avail = np.ones(c, bool) if available is None else np.asarray(available, bool)
    equal = np.broadcast_to(avail / max(avail.sum(), 1), (k, c)).astype(np.float64)

    def normalized(raw):
        raw = raw * avail
        s = raw.sum(1, keepdims=True)
        return np.where(s > 0, raw / np.where(s > 0, s, 1), equal)

    if rule == "equal":
        return equal.copy()
    gap = counts.max(1, keepdims=True) - counts
    inverse = normalized(gap)
    if rule == "inverse":
        return inverse
    if rule == "inverse_pow":
        return normalized((counts + 1.0) ** (-gamma))
    if rule == "mixed":
        return rho * equal + (1 - rho) * inverse
    raise ValueError(f"unknown class rule {rule!r}; expected one of {CLASS_RULES}")


def allocate_budget(counts: np.ndarray, budget: float, client_rule: str = "equal",
                    class_rule: str = "equal", gamma: float = 1.0, rho: float = 0.5,
                    available: np.ndarray | None = None) -> np.ndarray:
    """m [K, C] int64: samples client k generates of class c. ``counts`` [K, C] real class counts.
    sum(m) = round(budget * counts.sum()) and every row sums to its client's budget exactly."""
    m_k = client_budgets(np.asarray(counts).sum(1), budget, client_rule)
    w = class_weights(counts, class_rule, gamma, rho, available)
    return np.stack([largest_remainder(int(t), row) for t, row in zip(m_k, w)]) if len(m_k) else \
        np.zeros(np.shape(counts), np.int64)


def budget_to_labels(m: np.ndarray, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels [K, G] int32, valid [K, G] bool) of the samples ``m`` [K, C] asks for, class-sorted
    within each client; G = ``size`` or the largest row sum (at least 1, so shapes stay static)."""
    m = np.asarray(m, np.int64)
    totals = m.sum(1)
    g = max(int(totals.max(initial=0)), 1) if size is None else size
    if g < totals.max(initial=0):
        raise ValueError(f"size {g} < the largest client budget {totals.max()}")
    labels = np.zeros((m.shape[0], g), np.int32)
    valid = np.arange(g)[None, :] < totals[:, None]
    for k, row in enumerate(m):
        ys = np.repeat(np.arange(m.shape[1], dtype=np.int32), row)
        labels[k, : len(ys)] = ys
    return labels, valid


def class_counts(y: np.ndarray, n: np.ndarray, num_classes: int) -> np.ndarray:
    """counts [K, C] of the valid rows (``y`` [K, N] class ids, ``n`` [K])."""
    y, n = np.asarray(y), np.asarray(n)
    valid = np.arange(y.shape[1])[None, :] < n[:, None]
    return np.stack([np.bincount(row[v], minlength=num_classes) for row, v in zip(y, valid)]) if len(y) \
        else np.zeros((0, num_classes), np.int64)


def label_heterogeneity(counts: np.ndarray) -> float:
    """Mean Jensen-Shannon divergence (nats) between each client's label distribution and the pooled
    one (clients without rows skipped): 0 = every client has the global mix."""
    counts = np.asarray(counts, np.float64)
    keep = counts.sum(1) > 0
    if not keep.any():
        return 0.0
    p = counts[keep] / counts[keep].sum(1, keepdims=True)
    q = counts.sum(0) / counts.sum()
    mid = 0.5 * (p + q)

    def kl(a, b):
        return np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0.0), 1)

    return float(np.mean(0.5 * kl(p, mid) + 0.5 * kl(q[None, :], mid)))
