"""The federated dataset: every client-level array stacked on a leading client axis.

Clients have unequal sizes; arrays are padded to the largest client and `n_*` holds the number
of valid rows, so every shape is static and a whole population lives on device as a handful of
arrays. Examples are pytrees (``{"x": ..., "y": ...}``; a multi-task source has one target per
task), so nothing here assumes labels are class ids.

Training rows may instead be *packed* (``data.layout``): every client's rows back to back,
``train`` leaves [R, ...] with R the total rows, and ``train_start`` [C] where each client's rows
begin. Memory then grows with the rows, not with C x N_max. Readers take the padded view of a
cohort through `FederatedData.cohort` (gathered rows, zeros past each client's count: the same
arrays the padded layout holds) or of everyone through `FederatedData.train_view`.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

TARGET_KINDS = ("class", "real", "multilabel", "multi")


@flax.struct.dataclass
class FederatedData:
    """Stacked per-client data plus a global test set.

    Attributes:
      train: dict of [C, N_max, ...] leaves, at least ``x`` (inputs) and ``y`` (targets: int32
        class ids [C, N_max] or float32 values [C, N_max, ...]); padding rows are 0. Packed
        (``train_start`` set): [R, ...] leaves, every client's rows back to back.
      n_train: [C] int32 valid training rows per client.
      test: dict of [C, M_max, ...] leaves, the same keys: each client's own test split, drawn
        from its own distribution and disjoint from every client's training rows.
      n_test: [C] int32.
      global_test: dict of [T, ...] leaves, the same keys.
      num_classes: static number of classes (0 for real-valued targets).
      target_kind: static ``class`` (y holds class ids) or ``real`` (y holds real values).
      name: static dataset name (for summaries).
      cluster: [C] int32 true cluster id of each client (``[S, C]`` when stacked over seeds), or
        None when the data has no cluster structure. Set by the `clusters` partition (client k
        in cluster k mod M) and by ``floral_synthetic``; for oracle routers and diagnostics.
      tasks: static `types.MultiTaskSpec` of multi-task data (``target_kind`` "multi": ``y`` is
        ``{task: [C, N_max]}`` and ``y_mask`` ``{task: [C, N_max] bool}`` marks the rows that carry
        each task), else None.
      proxy: ``{"x": [N_p, ...]}`` unlabeled rows held out of the train pool before partitioning
        (``data.proxy_fraction``; ``[S, N_p, ...]`` when stacked), or None.
      public: ``{"x": [P, ...], "y": [P]}`` labeled rows held out of the train pool before
        partitioning (``data.public_fraction``): the split a generator is fitted on (FedGC), never
        any client's data, never test data; ``[S, P, ...]`` when stacked; or None.
      n_early: [C] int32 valid training rows during the first ``early_rounds`` rounds (a staged
        data schedule: FedGC's gen_first / real_first / gen_only / real_only strategies order each
        client's rows so that the early phase trains on a prefix of them), or None. `at_round`
        applies it; with it, ``train["generated"]`` [C, N_max] bool marks generated rows.
      early_rounds: static number of rounds that use ``n_early``.
      train_start: [C] int32 first row of each client in packed ``train`` leaves [R, ...]
        (``[S, C]`` when stacked), or None when ``train`` is padded [C, N_max, ...].
      packed_rows: static N_max of the padded view of packed training rows (0 when padded).
      client_ids: [C] int32 the population ids of these clients when this is a part of a
        population (`clients`), or None for a whole population.
      population: static size of that population (0 for a whole population).
    """

    train: dict
    n_train: jax.Array
    test: dict
    n_test: jax.Array
    global_test: dict
    num_classes: int = flax.struct.field(pytree_node=False, default=10)
    target_kind: str = flax.struct.field(pytree_node=False, default="class")
    name: str = flax.struct.field(pytree_node=False, default="")
    cluster: Any = None
    tasks: Any = flax.struct.field(pytree_node=False, default=None)
    proxy: Any = None
    public: Any = None
    n_early: Any = None
    early_rounds: int = flax.struct.field(pytree_node=False, default=0)
    train_start: Any = None
    packed_rows: int = flax.struct.field(pytree_node=False, default=0)
    client_ids: Any = None
    population: int = flax.struct.field(pytree_node=False, default=0)

    @property
    def packed(self) -> bool:
        return self.train_start is not None

    def cohort(self, idx):
        """(rows: ``train`` leaves [K, N_max, ...] of the clients ``idx`` [K], n [K]); packed rows
        are zeros past each client's ``n_train``, as the padded layout's padding."""
        n = self.n_train[idx]
        if not self.packed:
            return jax.tree.map(lambda a: a[idx], self.train), n
        steps = jnp.arange(self.packed_rows)
        valid = steps[None, :] < n[:, None]  # [K, N_max]
        pos = jnp.where(valid, self.train_start[idx][:, None] + steps[None, :], 0)

        def take(a):
            rows = jnp.take(a, pos, axis=0)  # [K, N_max, ...]
            return jnp.where(valid.reshape(valid.shape + (1,) * (a.ndim - 1)), rows, jnp.zeros((), a.dtype))

        return jax.tree.map(take, self.train), n

    def train_view(self) -> dict:
        """Every client's training rows as padded leaves [C, N_max, ...] (packed data gathers
        them: the memory of the padded layout, for as long as the caller holds them)."""
        return self.train if not self.packed else self.cohort(jnp.arange(self.num_clients))[0]

    def clients(self, idx) -> "FederatedData":
        """The clients ``idx`` [S] as data of their own: their training rows (padded leaves [S,
        N_max, ...]), test rows, counts, clusters and staged counts; the global test set as it
        is. `client_ids` remembers who they are, so what is drawn per client (`client_keys`) is
        what the whole population draws for them."""
        rows, n = self.cohort(idx)
        take = lambda t: None if t is None else jax.tree.map(lambda a: a[idx], t)  # noqa: E731
        return self.replace(train=rows, n_train=n, test=take(self.test), n_test=self.n_test[idx],
                            cluster=take(self.cluster), n_early=take(self.n_early), train_start=None,
                            packed_rows=0, client_ids=idx if self.client_ids is None else self.client_ids[idx],
                            population=self.population or self.num_clients)

    def client_keys(self, key) -> jax.Array:
        """One PRNG key per client [C, ...]: ``jax.random.split(key, population)``, the rows of
        these clients for a part of a population (`clients`)."""
        keys = jax.random.split(key, self.population or self.num_clients)
        return keys if self.client_ids is None else keys[self.client_ids]

    def at_round(self, index):
        """The data round ``index`` ([] int, traced) trains on: ``n_train`` replaced by
        ``n_early`` while ``index < early_rounds`` (itself when there is no staged schedule)."""
        if self.n_early is None or self.early_rounds <= 0:
            return self
        return self.replace(n_train=jnp.where(index < self.early_rounds, self.n_early, self.n_train))

    @property
    def num_clients(self) -> int:
        return int(self.n_train.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.train["x"].shape[1 if self.packed else 2:])

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Per-example target shape: () for class ids, scalar regression and multi-task data."""
        if isinstance(self.train["y"], dict):
            return ()
        return tuple(self.train["y"].shape[1 if self.packed else 2:])

    @property
    def max_train(self) -> int:
        return self.packed_rows if self.packed else int(self.train["x"].shape[1])

    @property
    def max_test(self) -> int:
        """M_max: the test rows held per client (the longest test split)."""
        return int(jax.tree.leaves(self.test)[0].shape[1])

    @property
    def global_size(self) -> int:
        return int(jax.tree.leaves(self.global_test)[0].shape[0])


def make_federated(x_train, y_train, n_train, x_test, y_test, n_test, x_global, y_global, *,
                   num_classes: int = 10, target_kind: str = "class", name: str = "",
                   cluster=None) -> FederatedData:
    """FederatedData from (x, y) arrays, the common single-target case (``cluster``: [C] int
    true cluster of each client, or None)."""
    if isinstance(cluster, (list, tuple, np.ndarray)):
        cluster = np.asarray(cluster, np.int32)
    return FederatedData({"x": x_train, "y": y_train}, n_train, {"x": x_test, "y": y_test}, n_test,
                         {"x": x_global, "y": y_global}, num_classes=num_classes,
                         target_kind=target_kind, name=name, cluster=cluster)


def stack_clients(xs: list[np.ndarray], ys: list[np.ndarray], min_rows: int = 1):
    """Pads per-client arrays to a common length and stacks them.

    Args:
      xs: C arrays [n_c, *feature_shape].
      ys: C arrays [n_c, *target_shape] (int class ids or float values; the dtype is kept).
      min_rows: the padded length is at least this (so clients with no test rows still give a
        non-empty axis).

    Returns:
      (x [C, N_max, ...] float32, y [C, N_max, ...], n [C] int32) as numpy arrays; padding is 0.
    """
    n = np.array([len(y) for y in ys], dtype=np.int32)
    n_max = max(int(n.max(initial=0)), min_rows)
    feat = xs[0].shape[1:]
    ydtype = _target_dtype(ys)
    x = np.zeros((len(xs), n_max, *feat), dtype=np.float32)
    y = np.zeros((len(ys), n_max, *np.asarray(ys[0]).shape[1:]), dtype=ydtype)
    for c, (xc, yc) in enumerate(zip(xs, ys)):
        x[c, : len(yc)] = xc
        y[c, : len(yc)] = yc
    return x, y, n


def _target_dtype(ys: list):
    """int32 for class ids, float32 for real values (of the first client's targets)."""
    return np.int32 if np.issubdtype(np.asarray(ys[0]).dtype, np.integer) else np.float32


def pack_clients(xs: list[np.ndarray], ys: list[np.ndarray]):
    """Per-client arrays back to back (the packed layout).

    Args:
      xs, ys: C arrays [n_c, ...] each, as for `stack_clients`.

    Returns:
      (x [R, ...] float32, y [R, ...], n [C] int32, start [C] int32) as numpy arrays, R the total
      rows (at least 1: a population without rows keeps one zero row to gather from).
    """
    n = np.array([len(y) for y in ys], dtype=np.int32)
    start = (np.cumsum(n) - n).astype(np.int32)
    rows = max(int(n.sum()), 1)
    x = np.zeros((rows, *xs[0].shape[1:]), np.float32)
    y = np.zeros((rows, *np.asarray(ys[0]).shape[1:]), _target_dtype(ys))
    for c, (xc, yc) in enumerate(zip(xs, ys)):
        x[start[c]:start[c] + n[c]], y[start[c]:start[c] + n[c]] = xc, yc
    return x, y, n, start


def padded(data: FederatedData, stacked: bool = False) -> FederatedData:
    """``data`` with its training rows in the padded layout [C, N_max, ...] (itself when already
    padded; ``stacked``: seeds on a leading axis, `stack_trials`): for consumers that need whole
    clients, FedGC's augmentation (which rewrites each client's rows) and a mesh that splits the
    data by client."""
    if not data.packed:
        return data
    view = jax.vmap(FederatedData.train_view)(data) if stacked else data.train_view()
    return data.replace(train=view, train_start=None, packed_rows=0)


def _pad_axis(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    a = np.asarray(a)
    width = [(0, 0)] * a.ndim
    width[axis] = (0, size - a.shape[axis])
    return np.pad(a, width)


def stack_trials(datas: list[FederatedData]) -> FederatedData:
    """Stacks the datasets of several seeds on a new leading trial axis [S].

    Seeds partition differently, so their padded lengths differ: every dataset is padded to the
    largest N_max, M_max and global size T of the set (padding rows are 0 and masked: `n_train`
    / `n_test` count the valid rows, and ``global_test["mask"]`` [S, T] marks the valid global
    rows). Training is padding-invariant (`core.local.batch_indices`), so a seed's numbers do not
    depend on which other seeds it is stacked with.

    Returns:
      FederatedData whose leaves are [S, C, N_max, ...] (train), [S, C] (n_train), [S, C, M_max,
      ...] (test), [S, C] (n_test), [S, T, ...] (global_test, with ``mask``), [S, C] (cluster,
      when the datasets have one); packed training rows are [S, R_max, ...] with ``train_start``
      [S, C]. ValueError when the datasets differ in anything but their padded lengths and
      cluster ids (clients, features, targets, classes, having clusters, layout).
    """
    first = datas[0]
    signature = lambda d: (d.num_clients, d.feature_shape, d.target_shape, d.num_classes,
                           d.target_kind, d.name, tuple(sorted(d.train)), d.cluster is None, d.tasks,
                           None if d.proxy is None else d.proxy["x"].shape,
                           None if d.public is None else d.public["x"].shape, d.n_early is None,
                           d.early_rounds, d.packed)
    for d in datas[1:]:
        if signature(d) != signature(first):
            raise ValueError(f"seeds give datasets of different structure: {signature(d)} vs {signature(first)}")
    n_max = max(d.max_train for d in datas)
    r_max = max(jax.tree.leaves(d.train)[0].shape[0] for d in datas)  # packed: rows of the largest
    m_max = max(jax.tree.leaves(d.test)[0].shape[1] for d in datas)
    t_max = max(d.global_size for d in datas)

    def common(d: FederatedData):  # d padded to the set's common lengths
        t = d.global_size
        glob = {k: jax.tree.map(lambda a: _pad_axis(a, 0, t_max), v)
                for k, v in d.global_test.items() if k != "mask"}
        glob["mask"] = np.arange(t_max) < t if "mask" not in d.global_test else _pad_axis(d.global_test["mask"], 0, t_max)
        cluster = None if d.cluster is None else np.asarray(d.cluster)
        train = jax.tree.map(lambda a: _pad_axis(a, 0, r_max) if d.packed else _pad_axis(a, 1, n_max), d.train)
        return (train, np.asarray(d.n_train),
                jax.tree.map(lambda a: _pad_axis(a, 1, m_max), d.test), np.asarray(d.n_test), glob,
                cluster, d.proxy, d.public, None if d.n_early is None else np.asarray(d.n_early),
                None if d.train_start is None else np.asarray(d.train_start))

    parts = [common(d) for d in datas]
    train, n_train, test, n_test, glob, cluster, proxy, public, n_early, start = jax.tree.map(
        lambda *xs: np.stack(xs), *parts)
    return FederatedData(train, n_train, test, n_test, glob, num_classes=first.num_classes,
                         target_kind=first.target_kind, name=first.name, cluster=cluster,
                         tasks=first.tasks, proxy=proxy, public=public, n_early=n_early,
                         early_rounds=first.early_rounds, train_start=start,
                         packed_rows=n_max if first.packed else 0)


def trial(data: FederatedData, s: int) -> FederatedData:
    """Seed ``s`` of stacked data (`stack_trials`), still padded to the set's common lengths."""
    return jax.tree.map(lambda a: a[s], data)
