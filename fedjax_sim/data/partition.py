"""Host-side partitioners: which train-pool examples each client holds.

Every partitioner is a pure numpy function

    fn(labels [n] int, num_clients C, rng: np.random.Generator, *, <knobs>) -> list of C int64 arrays

returning, per client, indices into the *train pool* (`build_federated` splits every source into
a train pool and a test pool before any partitioning; client test sets come from the test pool,
see `draw_client_tests`). `labels` are the pool's strata: class ids for classification, quantile
bins of the target for regression sources. Knob names are the `DataConfig` field names, and a bad
knob raises `ConfigError` naming that field (``data.<knob>``). Which convention each one follows is
in its docstring (tags as in ``specs/datasets.md``: [C] = taken from the cited code, [I] = our
choice). Every client gets at least one example.

At most once: every partitioner assigns each pool example to at most one client. `iid`,
`dirichlet_label`, `pathological`, `quantity_skew` and `natural` place every example in exactly
one client; `dirichlet_client` and `dominant_class` draw a subset. The only exception is the
documented with-replacement mode of `dominant_class` (``data.with_replacement=true``), which
reuses training examples across clients the way the official FedReMa code does.
"""
from __future__ import annotations

import math

import numpy as np

from fedjax_sim.errors import ConfigError

MAX_DIRICHLET_TRIES = 1000


def _check_population(n: int, num_clients: int) -> None:
    if num_clients < 1 or num_clients > n:
        raise ConfigError("data.num_clients", num_clients,
                          f"an integer in [1, {n}] (the pool has {n} examples)")


def _classes(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct labels (sorted) and, per label, its pool indices in pool order."""
    classes = np.unique(labels)
    return classes, [np.flatnonzero(labels == k) for k in classes]


def _even_parts(total: int, parts: int) -> np.ndarray:
    """Splits `total` into `parts` near-equal ints; the remainder goes to the *last* parts.

    (So 400 over 3 gives 133/133/134, as in the FedReMa code.)
    """
    base, extra = divmod(total, parts)
    return base + (np.arange(parts) >= parts - extra).astype(np.int64)


def apportion(total: int, weights: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Largest-remainder rounding: non-negative ints proportional to `weights`, summing to `total`.

    Ties between equal fractional parts are broken at random when `rng` is given (so no class or
    client is favoured systematically), else by position.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if total <= 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=np.int64)
    quota = total * weights / weights.sum()
    counts = np.floor(quota).astype(np.int64)
    frac = quota - counts
    tiebreak = rng.random(len(weights)) if rng is not None else -np.arange(len(weights), dtype=float)
    order = np.lexsort((-tiebreak, -frac))
    counts[order[: total - counts.sum()]] += 1
    return counts


def iid(labels, num_clients, rng):
    """Uniform shuffle, then near-equal contiguous chunks (sizes differ by at most 1)."""
    n = len(labels)
    _check_population(n, num_clients)
    return [c.astype(np.int64) for c in np.array_split(rng.permutation(n), num_clients)]


def dirichlet_label(labels, num_clients, rng, *, alpha, min_size, balance=True):
    """Label-wise Dirichlet over clients ("LDA", NIID-Bench `noniid-labeldir`).

    For each class k: p_k ~ Dir_C(alpha); shuffle the class and cut it across the C clients at
    the cumulative proportions. With `balance` (NIID-Bench / PFLlib / FedLab convention [C]) a
    client already holding >= n/C examples gets no share of the remaining classes (its p is zeroed
    and p renormalised); Flower's `DirichletPartitioner` defaults to no balancing. The whole split is
    redrawn until every client holds >= max(min_size, 1) examples (NIID-Bench `min_require_size`,
    Flower `min_partition_size`); the floor of 1 is ours [I] so no client is empty. After
    MAX_DIRICHLET_TRIES draws it raises ConfigError instead of looping forever (PFLlib #130).

    Args:
      labels: [n] int labels of the pool.
      num_clients: C.
      rng: numpy Generator.
      alpha: concentration > 0 (smaller = more skew).
      min_size: required examples per client (>= 0).
      balance: the self-balancing cap at the mean client size.

    Returns:
      C int64 index arrays; every pool example is in exactly one.
    """
    n = len(labels)
    _check_population(n, num_clients)
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ConfigError("data.alpha", alpha, "a finite number > 0")
    if min_size < 0:
        raise ConfigError("data.min_size", min_size, "an integer >= 0")
    need = max(int(min_size), 1)
    if need * num_clients > n:
        raise ConfigError("data.min_size", min_size,
                          f"at most {n // num_clients} (pool of {n} examples over {num_clients} clients)")
    _, by_class = _classes(labels)
    best = 0
    for _ in range(MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for members in by_class:
            members = rng.permutation(members)
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            if balance:
                open_clients = sizes < n / num_clients
                p = p * open_clients
                # Tiny alpha can put all the mass on capped clients: fall back to uniform there.
                p = p / p.sum() if p.sum() > 0 else open_clients / open_clients.sum()
            cuts = (np.cumsum(p) * len(members)).astype(np.int64)[:-1]
            for c, chunk in enumerate(np.split(members, cuts)):
                parts[c].append(chunk)
                sizes[c] += len(chunk)
        if sizes.min() >= need:
            return [np.concatenate(p_c).astype(np.int64) for p_c in parts]
        best = max(best, int(sizes.min()))
    raise ConfigError(
        "data.min_size", min_size,
        f"a size every one of the {num_clients} clients reaches under data.alpha={alpha}: no split "
        f"in {MAX_DIRICHLET_TRIES} draws gave all clients >= {need} (the best gave {best}); lower "
        f"data.min_size to <= {best}, raise data.alpha, or use fewer data.num_clients")


def dirichlet_client(labels, num_clients, rng, *, alpha, samples_per_client=0):
    """Client-wise Dirichlet over classes (Hsu et al. 2019; pfl, Flower `InnerDirichletPartitioner`).

    Each client j draws q_j ~ Dir_K(alpha) over the K classes present, then takes
    `samples_per_client` examples (0 = n // C) without replacement, each example's class drawn
    from q_j; when a class runs out, q_j is renormalised over the classes that remain. Clients are
    filled one after another (client 0 first). We draw the class counts in multinomial rounds
    (draw the shortfall from q_j restricted to non-exhausted classes, cap at what is left, repeat),
    which has the same distribution as drawing one example at a time with rejection [I]. Within a
    class examples are taken in a random order.

    Returns:
      C int64 index arrays, each of `samples_per_client` distinct examples; disjoint.
    """
    n = len(labels)
    _check_population(n, num_clients)
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ConfigError("data.alpha", alpha, "a finite number > 0")
    per_client = int(samples_per_client) or n // num_clients
    if per_client < 1 or per_client * num_clients > n:
        raise ConfigError("data.samples_per_client", samples_per_client,
                          f"0 (= pool // clients) or an integer in [1, {n // num_clients}] "
                          f"({num_clients} clients share {n} examples)")
    _, by_class = _classes(labels)
    queues = [rng.permutation(m) for m in by_class]
    left = np.array([len(q) for q in queues], dtype=np.int64)
    clients = []
    for _ in range(num_clients):
        q = rng.dirichlet(np.full(len(queues), float(alpha)))
        take = np.zeros(len(queues), dtype=np.int64)
        short = per_client
        while short > 0:
            open_classes = take < left
            p = q * open_classes
            p = p / p.sum() if p.sum() > 0 else open_classes / open_classes.sum()
            draw = np.minimum(rng.multinomial(short, p), left - take)
            take += draw
            short -= int(draw.sum())
        start = [len(queues[k]) - left[k] for k in range(len(queues))]
        clients.append(np.concatenate(
            [queues[k][start[k]:start[k] + take[k]] for k in range(len(queues))]).astype(np.int64))
        left -= take
    return clients


def pathological(labels, num_clients, rng, *, classes_per_client):
    """k classes per client from label-sorted shards (McMahan et al. 2017).

    Sort the pool by label (random order within a label), cut it into C·k shards, deal k shards
    to each client at random ([C] McMahan: 200 shards of 300 for 100 clients, k = 2). Deviation
    [I]: shards are cut *within* classes (class k gets a number of shards proportional to its size,
    at least one) so that no shard straddles two labels and every client has <= k classes (McMahan's
    fixed-size shards can straddle a class boundary and give a client up to 2k labels). Requires
    C·k >= K (every class reaches some client).

    Returns:
      C int64 index arrays; every pool example is in exactly one; each client has <= k labels.
    """
    n = len(labels)
    _check_population(n, num_clients)
    _, by_class = _classes(labels)
    num_classes = len(by_class)
    k = int(classes_per_client)
    lowest = -(-num_classes // num_clients)
    if not lowest <= k <= num_classes:
        raise ConfigError("data.classes_per_client", classes_per_client,
                          f"an integer in [{lowest}, {num_classes}] (the pool has {num_classes} classes "
                          f"over {num_clients} clients)")
    num_shards = num_clients * k
    if num_shards > n:
        raise ConfigError("data.num_clients", num_clients,
                          f"at most {n // k} with data.classes_per_client={k} (pool of {n})")
    sizes = np.array([len(m) for m in by_class])
    # One shard per class first, the rest proportional to (size - 1): never more shards than rows.
    shards_per_class = 1 + apportion(num_shards - num_classes, sizes - 1, rng)
    shards = [s.astype(np.int64)
              for members, s_k in zip(by_class, shards_per_class)
              for s in np.array_split(rng.permutation(members), s_k)]
    deal = rng.permutation(num_shards).reshape(num_clients, k)
    return [np.concatenate([shards[s] for s in row]) for row in deal]


def dominant_class_groups(num_classes: int, classes_per_group: int) -> list[list[int]]:
    """FedReMa's dominant-class groups, generalised [I].

    G = K // (m - 1) groups of m consecutive classes, group g = [(g·(m-1) + j) mod K for j < m],
    so neighbouring groups share one class. K = 10, m = 3 gives exactly the hard-coded [C] groups
    [0,1,2], [2,3,4], [4,5,6], [6,7,8], [8,9,0]. m = 1 gives one group per class.
    """
    step = max(classes_per_group - 1, 1)
    return [[(g * step + j) % num_classes for j in range(classes_per_group)]
            for g in range(num_classes // step)]


def _dominant_counts(per_client: int, num_classes: int, dominant_fraction: float,
                     dominant_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One client's (iid_counts [K], group_counts [m]) for `dominant_class` at size `per_client`."""
    num_iid = int(per_client * dominant_fraction)
    return (_even_parts(num_iid, num_classes), _even_parts(per_client - num_iid, dominant_classes))


def _dominant_need(per_client: int, num_clients: int, num_classes: int, dominant_fraction: float,
                   dominant_classes: int) -> np.ndarray:
    """[K] examples of each class that `dominant_class` hands out over all clients at one size."""
    groups = dominant_class_groups(num_classes, dominant_classes)
    iid_counts, group_counts = _dominant_counts(per_client, num_classes, dominant_fraction,
                                                dominant_classes)
    need = num_clients * iid_counts
    for c in range(num_clients):
        np.add.at(need, groups[c * len(groups) // num_clients], group_counts)
    return need


def dominant_class_max_size(labels, num_clients: int, *, dominant_fraction: float = 0.2,
                            dominant_classes: int = 3) -> int:
    """The largest `samples_per_client` for which `dominant_class` needs no example twice [I].

    The per-class demand of the partition (`_dominant_need`) is non-decreasing in the client size
    (both shares only grow), so this is a bisection over [0, n // C] for the largest size whose
    demand fits every class block. 0 means that not even one example per client fits.
    """
    _, by_class = _classes(np.asarray(labels))
    sizes = np.array([len(b) for b in by_class], dtype=np.int64)
    num_classes = len(sizes)

    def fits(npc: int) -> bool:
        return bool((_dominant_need(npc, num_clients, num_classes, dominant_fraction,
                                    int(dominant_classes)) <= sizes).all())

    lo, hi = 0, len(labels) // max(num_clients, 1)  # fits(0) holds; find the last size that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def dominant_class(labels, num_clients, rng, *, samples_per_client=0, dominant_fraction=0.2,
                   dominant_classes=3, with_replacement=False):
    """FedReMa's "by_s" partition (``specs/datasets.md`` §5) [C], applied to the train pool.

    Each client takes `samples_per_client` (npc) training examples: s = floor(npc ·
    dominant_fraction) spread over all K classes, the other npc - s over the `dominant_classes`
    classes of its group (`dominant_class_groups`); client c uses group floor(c·G/C) (the code's
    floor(c·5/20)). Both shares are split evenly with the remainder on the last classes
    (400 -> 133/133/134 [C]; the code puts the whole IID remainder on the last class, we spread it
    [I]; identical when npc · s is a multiple of K, as in the paper's 500 · 0.2).

    Each class is a block of its examples, shuffled with `rng` [I] (the code walks the blocks in
    dataset order, so its partition never changes with the seed; shuffling makes a seed vary
    which examples each client holds, with the same class counts). One cursor per class walks
    its block sequentially across clients.

    Reuse (the leak fix) [I]:
      * ``with_replacement=False`` (default): the cursor never wraps, so no example is given
        twice. ``samples_per_client=0`` means the largest size that needs no example twice
        (`dominant_class_max_size`, e.g. 55 on the digits train pool with 20 clients,
        s = 0.2, m = 3); a larger explicit size raises ConfigError naming
        ``data.samples_per_client`` with that maximum.
      * ``with_replacement=True``: the cursor wraps around modulo the block size, as the
        official code does, so later clients reuse earlier clients' *training* examples
        (``samples_per_client=0`` then means train pool // C). Test rows are drawn afterwards
        from the disjoint test pool, so reuse never puts a test example into training.

    Deviations [I]: the code merges the dataset's train and test splits into one pool and splits
    each client 80/20 afterwards, which (with wrap-around) put 19-23% of the client test images
    of digits into another client's training set; here only the train pool is partitioned, so
    `samples_per_client` counts *training* rows (the paper's 500 at 80/20 is
    ``samples_per_client=400, test_fraction=0.2``). The code starts every cursor at offset 2000
    (sized for CIFAR-10's 6000 per class) and, when a request does not fit, restarts at 0 skipping
    the tail; we start at 0 (small pools such as digits have ~144 training rows per class) and
    wrap exactly. Classes are the distinct labels present, ranked (the code assumes equal class
    sizes and class ids 0..K-1).

    Returns:
      C int64 index arrays of npc examples each; disjoint unless `with_replacement`.
    """
    n = len(labels)
    _check_population(n, num_clients)
    class_ids, by_class = _classes(labels)
    num_classes = len(by_class)
    m = int(dominant_classes)
    if not 1 <= m <= num_classes:
        raise ConfigError("data.dominant_classes", dominant_classes,
                          f"an integer in [1, {num_classes}] (classes in the pool)")
    if not 0 <= dominant_fraction <= 1:
        raise ConfigError("data.dominant_fraction", dominant_fraction, "a number in [0, 1]")
    if samples_per_client < 0:
        raise ConfigError("data.samples_per_client", samples_per_client, "an integer >= 0")
    if with_replacement:
        per_client = int(samples_per_client) or n // num_clients
    else:
        largest = dominant_class_max_size(labels, num_clients, dominant_fraction=dominant_fraction,
                                          dominant_classes=m)
        reuse = ("or set data.with_replacement=true to reuse training examples across clients "
                 "as the FedReMa code does")
        if largest < 1:
            raise ConfigError("data.samples_per_client", samples_per_client,
                              f"none fits: even 1 example per client would use an example twice "
                              f"({num_clients} clients); use fewer data.num_clients, {reuse}")
        per_client = int(samples_per_client) or largest
        if per_client > largest:
            raise ConfigError("data.samples_per_client", samples_per_client,
                              f"0 (= the largest size without reuse) or an integer in [1, {largest}] "
                              f"(larger sizes would give some training example to two clients), "
                              f"{reuse}")
    groups = dominant_class_groups(num_classes, m)
    iid_counts, group_counts = _dominant_counts(per_client, num_classes, dominant_fraction, m)
    sizes = np.array([len(b) for b in by_class], dtype=np.int64)
    for group in groups:  # only reachable with replacement: one client would hold a row twice
        one_client = iid_counts.copy()
        np.add.at(one_client, group, group_counts)
        k = int(np.argmax(one_client - sizes))
        if one_client[k] > sizes[k]:
            raise ConfigError("data.samples_per_client", samples_per_client,
                              f"small enough that one client never needs more than the {sizes[k]} "
                              f"examples of class {class_ids[k]} in the pool (it needs {one_client[k]})")
    by_class = [rng.permutation(block) for block in by_class]
    cursor = np.zeros(num_classes, dtype=np.int64)

    def take(k: int, count: int) -> np.ndarray:
        block = by_class[k]
        if with_replacement:
            rows = block[(cursor[k] + np.arange(count)) % len(block)]
            cursor[k] = (cursor[k] + count) % len(block)
        else:  # dominant_class_max_size guarantees the block is never exhausted
            assert cursor[k] + count <= len(block)
            rows = block[cursor[k]:cursor[k] + count]
            cursor[k] += count
        return rows

    clients = []
    for c in range(num_clients):
        group = groups[c * len(groups) // num_clients]
        rows = [take(k, int(iid_counts[k])) for k in range(num_classes)]
        rows += [take(k, int(cnt)) for k, cnt in zip(group, group_counts)]
        clients.append(np.concatenate(rows).astype(np.int64))
    return clients


def quantity_skew(labels, num_clients, rng, *, quantity_sigma):
    """IID labels with log-normal client sizes (FedLab "unbalance" style).

    Sizes w_c ~ LogNormal(0, quantity_sigma), normalised so they sum to the pool, each >= 1
    (1 + largest-remainder share of n - C); sigma = 0 gives equal sizes. Then a uniform shuffle is
    cut at those sizes.

    Returns:
      C int64 index arrays; every pool example is in exactly one.
    """
    n = len(labels)
    _check_population(n, num_clients)
    if not (quantity_sigma >= 0 and math.isfinite(quantity_sigma)):
        raise ConfigError("data.quantity_sigma", quantity_sigma, "a finite number >= 0")
    weights = rng.lognormal(0.0, float(quantity_sigma), num_clients)
    sizes = 1 + apportion(n - num_clients, weights, rng)
    cuts = np.cumsum(sizes)[:-1]
    return [c.astype(np.int64) for c in np.split(rng.permutation(n), cuts)]


def natural(labels, num_clients, rng, *, groups=None):
    """The source's own clients: client c holds the examples with groups == c.

    Only for sources with their own clients (`synthetic`, `floral_synthetic`, and the files of
    `data.natural`: `femnist`, `cifar100_fed`): `groups` [n] int ids in [0, C).
    """
    if groups is None:
        raise ConfigError("data.partition", "natural",
                          "natural only for a source with its own clients (synthetic, floral_synthetic, "
                          "femnist, cifar100_fed)")
    groups = np.asarray(groups)
    if len(groups) != len(labels) or groups.min(initial=0) < 0 or groups.max(initial=-1) + 1 != num_clients:
        raise ConfigError("data.num_clients", num_clients,
                          f"the source's own {int(groups.max(initial=-1)) + 1} clients")
    return [np.flatnonzero(groups == c).astype(np.int64) for c in range(num_clients)]


PARTITIONS = {
    "iid": iid,
    "dirichlet_label": dirichlet_label,
    "dirichlet_client": dirichlet_client,
    "pathological": pathological,
    "dominant_class": dominant_class,
    "quantity_skew": quantity_skew,
    "natural": natural,
}


def clusters(labels, num_clients, rng):
    """FLoRAL's cluster partition (``specs/floral.md`` §5) [C]: the rows are an `iid` partition;
    client k belongs to cluster k mod ``data.num_clusters``, and the builder transforms its
    rows by its cluster (``data.cluster_transform``: rotate or label_shift; see
    `build.build_federated` and `clusters.apply_cluster_transform`).

    Returns:
      C int64 index arrays, as `iid`; every pool example is in exactly one.
    """
    return iid(labels, num_clients, rng)


# Partitioners whose clients see *transformed* source rows (the builder applies the transform
# after choosing the rows). Kept apart from PARTITIONS, whose clients hold the source's rows as
# they are (the contract the generic partition tests check row by row); `build` accepts both.
TRANSFORM_PARTITIONS = {
    "clusters": clusters,
}


def stratified_split(labels, test_fraction, rng, field="data.test_fraction"):
    """Splits positions 0..n-1 into (train, test), stratified by label.

    Used for the global hold-out of sources without a test split (`digits`, `diabetes`): the
    test side becomes the test pool. The test size is min(round(test_fraction · n), n - 1), so at
    least one row stays in train and a single-example set has no test row; it is apportioned over
    the labels in proportion to their counts (largest remainder, ties broken at random), so test
    follows the set's own label mix.

    Args:
      labels: [n] int labels (or strata).
      test_fraction: in (0, 1).
      rng: numpy Generator.
      field: the config field named when `test_fraction` is out of range.

    Returns:
      (train_pos, test_pos): int64 arrays of positions into `labels`, each in random order.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < test_fraction < 1:
        raise ConfigError(field, test_fraction, "a number in (0, 1)")
    num_test = min(int(round(test_fraction * n)), max(n - 1, 0))
    classes, members = _classes(labels)
    counts = np.array([len(m) for m in members], dtype=np.int64)
    test_counts = apportion(num_test, counts, rng) if len(classes) else counts
    train, test = [], []
    for idx, t in zip(members, test_counts):
        idx = rng.permutation(idx)
        test.append(idx[:t])
        train.append(idx[t:])
    train_pos = rng.permutation(np.concatenate(train).astype(np.int64)) if train else np.zeros(0, np.int64)
    test_pos = rng.permutation(np.concatenate(test).astype(np.int64)) if test else np.zeros(0, np.int64)
    return train_pos, test_pos


def draw_client_tests(train_labels, clients, test_labels, test_fraction, rng):
    """Each client's test rows, drawn from the test pool following its own training mix [I].

    Per class (stratum) k, client c asks for d[c, k] = train_count[c, k] · f / (1 - f) test rows
    (f = `test_fraction`, so a client's test rows are about f of its train + test rows, the
    meaning the per-client 80/20 split had). Class k hands out T_k = min(round(sum_c d[c, k]),
    S_k) rows, S_k being the test pool's class-k supply, apportioned over the clients in
    proportion to d[:, k] (`apportion`: largest remainder, random tie-break): each client gets
    about its demand when the pool suffices, and the same share of its demand as every other
    client when it does not. Rows are taken from a random permutation of the class-k pool and cut
    into consecutive chunks, so they are drawn without replacement and no test-pool row goes to two
    clients; training reuse (with-replacement `dominant_class`) counts with its multiplicity.

    Args:
      train_labels: [n] int strata of the train pool.
      clients: C int arrays of train-pool indices (the partition).
      test_labels: [T] int strata of the test pool.
      test_fraction: f in (0, 1).
      rng: numpy Generator.

    Returns:
      C int64 arrays of test-pool indices, pairwise disjoint (a client may get none).
    """
    if not 0 < test_fraction < 1:
        raise ConfigError("data.test_fraction", test_fraction, "a number in (0, 1)")
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    classes = np.unique(np.concatenate([train_labels, test_labels]))
    ratio = test_fraction / (1.0 - test_fraction)
    demand = np.stack([
        np.bincount(np.searchsorted(classes, train_labels[idx]), minlength=len(classes))
        for idx in clients]).astype(np.float64) * ratio  # [C, K]
    parts: list[list[np.ndarray]] = [[] for _ in clients]
    for k, label in enumerate(classes):
        supply = rng.permutation(np.flatnonzero(test_labels == label))
        total = min(int(np.floor(demand[:, k].sum() + 0.5)), len(supply))
        counts = apportion(total, demand[:, k], rng)
        for c, chunk in enumerate(np.split(supply[:total], np.cumsum(counts)[:-1])):
            parts[c].append(chunk)
    return [rng.permutation(np.concatenate(p).astype(np.int64)) for p in parts]
