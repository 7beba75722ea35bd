"""Config -> `FederatedData`: load a source, split it into pools, partition, draw tests, stack.

Leak-free by construction: every source is split into a TRAIN POOL and a TEST POOL before any
partitioning. Clients' training rows come only from the train pool, their test rows and the
global test set only from the test pool, so no client's test example is in any client's training
set (checked on row indices in tests/test_data.py; digits holds duplicate images, so comparing
contents would not prove it).

All of it runs on the host in numpy, seeded from one integer (the data seed, or the run seed
when ``data.seed == -1``), so the same config and seed give identical arrays on every machine.
The arrays are returned as numpy; the caller decides where they live (`jax.device_put`, sharding).

`cfg` is a DataConfig-like object (`fedjax_sim.config.DataConfig`): only its attributes are read,
and `data` does not import `fedjax_sim.config` (it sits on a lower floor).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, NamedTuple

import numpy as np

from fedjax_sim.data.clusters import (CLUSTER_TRANSFORMS, FLORAL_VARIANTS, apply_cluster_transform,
                                     cluster_of, transform_rows)
from fedjax_sim.data.federated import FederatedData, make_federated, pack_clients, stack_clients
from fedjax_sim.data.multitask import build_hcfmtl_lite
from fedjax_sim.data.multitask import check_config as check_hcfmtl_lite
from fedjax_sim.data.partition import (PARTITIONS, TRANSFORM_PARTITIONS, draw_client_tests,
                                       stratified_split)
from fedjax_sim.data.natural import NATURAL_DATASETS
from fedjax_sim.data.sources import DATASETS, Source, check_finite
from fedjax_sim.errors import ConfigError

MULTITASK_SOURCES = {"hcfmtl_lite": build_hcfmtl_lite}  # multi-task data, built whole by their own builder


def all_sources() -> dict:
    """Every single-task source by name: the built-in and TFDS ones (`sources.DATASETS`, read
    at call time so a source registered there counts) and the natural-client files."""
    return {**DATASETS, **NATURAL_DATASETS}


# sources with their own clients: from the generator, or real clients read from files
NATURAL_SOURCES = ("synthetic", "floral_synthetic", *NATURAL_DATASETS)
# `auto` for the other sources: label-wise Dirichlet, except where noted. diabetes: iid, because
# its train pool (~354 rows) is too small for dirichlet_label's default min_size over 20 clients,
# and a regression sanity source is most useful with a centralized-equivalent split; label skew
# over its target strata is one `data.partition=` away.
AUTO_PARTITION = {"synthetic": "natural", "floral_synthetic": "natural", "diabetes": "iid",
                  **{name: "natural" for name in NATURAL_DATASETS}}
REPLACEMENT_PARTITIONS = ("dominant_class",)  # partitioners with a with-replacement mode
# What is known about a source before loading it, for the `clusters` checks in
# `validate_data_config` (the same checks run on the loaded arrays for every other source).
VECTOR_SOURCES = ("diabetes", "synthetic", "floral_synthetic")  # inputs are not images [H, W, C]
REGRESSION_SOURCES = ("diabetes", "floral_synthetic")  # real-valued targets, no class labels


class Assignment(NamedTuple):
    """Which source rows went where: host-side indices behind a `FederatedData` [I].

    Attributes:
      train: C int64 arrays; client c's training rows as indices into the train pool, in the order
        of ``data.train`` row 0..n_train[c]-1.
      test: C int64 arrays; client c's test rows as indices into the test pool, in the order of
        ``data.test``. Pairwise disjoint.
      train_source_ids: [n] int64 source-level id of each train-pool row.
      test_source_ids: [T] int64 source-level id of each test-pool row; ``data.global_test`` row t
        is test-pool row t.
      public_source_ids: [P] int64 source-level ids of the labeled public split
        (``data.public_fraction``, `FederatedData.public`) in its row order; empty without one.

    Source-level ids number the source's rows once: for a source without a test split (digits,
    diabetes) the row in the loaded dataset; with one (TFDS, synthetic) train rows 0..n-1, then
    test rows n..n+T-1. The two id sets are disjoint by construction, which is the leak check.
    """

    train: list
    test: list
    train_source_ids: np.ndarray
    test_source_ids: np.ndarray
    public_source_ids: np.ndarray = np.zeros(0, np.int64)

    def client_train_ids(self, c: int) -> np.ndarray:
        return self.train_source_ids[self.train[c]]

    def client_test_ids(self, c: int) -> np.ndarray:
        return self.test_source_ids[self.test[c]]


class Pools(NamedTuple):
    """A source split into train and test pools (x, y, strata, natural client ids, source ids)."""

    x: np.ndarray
    y: np.ndarray
    strata: np.ndarray
    groups: Any
    ids: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_strata: np.ndarray
    test_groups: Any
    test_ids: np.ndarray


def all_partitions() -> dict:
    """Every partition name a run accepts: `PARTITIONS` plus the `TRANSFORM_PARTITIONS`
    (``clusters``), whose clients see transformed rows."""
    return {**PARTITIONS, **TRANSFORM_PARTITIONS}


def resolve_partition(cfg: DataConfig) -> str:
    """``auto`` -> ``natural`` for sources with their own clients (synthetic, floral_synthetic),
    ``iid`` for ``diabetes`` (see AUTO_PARTITION), else ``dirichlet_label``."""
    if cfg.partition != "auto":
        return cfg.partition
    return AUTO_PARTITION.get(cfg.dataset, "dirichlet_label")


def resolve_seed(cfg: DataConfig, run_seed: int) -> int:
    """The data seed: ``data.seed``, or the run seed when it is -1."""
    if cfg.seed < -1:
        raise ConfigError("data.seed", cfg.seed, "an integer >= 0, or -1 for the run seed")
    seed = run_seed if cfg.seed == -1 else cfg.seed
    if seed < 0:
        raise ConfigError("seed", run_seed, "an integer >= 0")
    return int(seed)


def _check_cluster_source(cfg: DataConfig, image: bool, classes: bool, inputs: str) -> None:
    """ConfigError on ``data.cluster_transform`` when the source cannot take it: ``rotate`` needs
    image inputs [H, W, C], ``label_shift`` class labels. `inputs` describes the source's inputs."""
    transform = getattr(cfg, "cluster_transform", "rotate")
    if (transform == "rotate" and image) or (transform == "label_shift" and classes):
        return
    if image or classes:
        other = "rotate" if image else "label_shift"
        allowed = (f"{other} for data.dataset={cfg.dataset} ("
                   + (f"rotate needs image inputs [H, W, C]; its inputs are {inputs}" if transform == "rotate"
                      else "label_shift needs class labels; its targets are real-valued") + ")")
    else:
        allowed = (f"an image classification source for data.partition=clusters (data.dataset="
                   f"{cfg.dataset} has {inputs} inputs and real-valued targets: neither rotate nor "
                   "label_shift applies)")
    raise ConfigError("data.cluster_transform", transform, allowed)


def _check_clusters(cfg: DataConfig) -> None:
    """The `clusters` partition's knobs (before any data is loaded)."""
    transform = getattr(cfg, "cluster_transform", "rotate")
    num_clusters = getattr(cfg, "num_clusters", 4)
    if transform not in CLUSTER_TRANSFORMS:
        raise ConfigError("data.cluster_transform", transform, "one of " + ", ".join(CLUSTER_TRANSFORMS))
    if num_clusters < 1:
        raise ConfigError("data.num_clusters", num_clusters, "an integer >= 1")
    if num_clusters > cfg.num_clients:
        raise ConfigError("data.num_clusters", num_clusters,
                          f"at most data.num_clients={cfg.num_clients} (num_clusters larger than "
                          "the number of clients leaves a cluster without clients)")
    if cfg.dataset in VECTOR_SOURCES or cfg.dataset in REGRESSION_SOURCES:
        _check_cluster_source(cfg, cfg.dataset not in VECTOR_SOURCES,
                              cfg.dataset not in REGRESSION_SOURCES, "vectors")


def _check_floral_synthetic(cfg: DataConfig) -> None:
    """``floral_synthetic``'s knobs: its variant, and K a multiple of C."""
    variant = getattr(cfg, "floral_variant", "mlp")
    num_clusters = getattr(cfg, "num_clusters", 4)
    if variant not in FLORAL_VARIANTS:
        raise ConfigError("data.floral_variant", variant, "one of " + ", ".join(FLORAL_VARIANTS))
    if num_clusters < 1:
        raise ConfigError("data.num_clusters", num_clusters, "an integer >= 1")
    if cfg.num_clients < 1 or cfg.num_clients % num_clusters:
        raise ConfigError("data.num_clients", cfg.num_clients,
                          f"a positive multiple of data.num_clusters={num_clusters} (floral_synthetic "
                          "needs the number of clients divisible by the number of clusters: every "
                          "cluster gets num_clients / num_clusters clients)")


def validate_data_config(cfg: DataConfig) -> None:
    """Checks the dataset and partition names and that they go together, and the knobs of the
    `clusters` partition and of ``floral_synthetic`` (no data is loaded)."""
    if cfg.dataset not in all_sources() and cfg.dataset not in MULTITASK_SOURCES:
        raise ConfigError("data.dataset", cfg.dataset, "one of " + ", ".join([*all_sources(), *MULTITASK_SOURCES]))
    if cfg.dataset in MULTITASK_SOURCES:
        check_hcfmtl_lite(cfg)
        return
    if getattr(cfg, "scenario", "s1") != "s1":
        raise ConfigError("data.scenario", cfg.scenario, "s1 (the default) for data.dataset="
                          f"{cfg.dataset} (scenarios are hcfmtl_lite's)")
    names = all_partitions()
    if cfg.partition != "auto" and cfg.partition not in names:
        raise ConfigError("data.partition", cfg.partition, "auto or one of " + ", ".join(names))
    partition = resolve_partition(cfg)
    pooled = [p for p in names if p != "natural"]
    if partition == "natural" and cfg.dataset not in NATURAL_SOURCES:
        raise ConfigError("data.partition", partition,
                          f"one of auto, {', '.join(pooled)} for data.dataset={cfg.dataset} "
                          f"(natural only with {', '.join(NATURAL_SOURCES)})")
    if partition != "natural" and cfg.dataset in NATURAL_SOURCES:
        raise ConfigError("data.partition", partition,
                          f"auto or natural for data.dataset={cfg.dataset} "
                          "(the source has its own clients)")
    if getattr(cfg, "validation_fraction", 0.0) > 0 and getattr(cfg, "with_replacement", False):
        raise ConfigError("data.validation_fraction", cfg.validation_fraction,
                          "0 with data.with_replacement=true (a reused training example could be "
                          "one client's validation row and another's training row); for a sweep set "
                          "data.with_replacement=false and data.samples_per_client=0 (the largest "
                          "size without reuse)")
    if getattr(cfg, "with_replacement", False) and partition not in REPLACEMENT_PARTITIONS:
        raise ConfigError("data.with_replacement", cfg.with_replacement,
                          f"false for data.partition={partition} (only "
                          f"{', '.join(REPLACEMENT_PARTITIONS)} has a with-replacement mode)")
    if partition == "clusters":
        _check_clusters(cfg)
    if cfg.dataset == "floral_synthetic":
        _check_floral_synthetic(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else {}
    for name in ("vocab_size", "tag_vocab_size", "bow_denominator"):
        if name in defaults and getattr(cfg, name) != defaults[name] and cfg.dataset != "stackoverflow":
            raise ConfigError(f"data.{name}", getattr(cfg, name), f"its default ({defaults[name]}) for data.dataset="
                              f"{cfg.dataset} (it sizes Stack Overflow's vocabularies)")
    if getattr(cfg, "max_examples", 0) and cfg.dataset not in NATURAL_DATASETS:
        raise ConfigError("data.max_examples", cfg.max_examples, f"0 for data.dataset={cfg.dataset} (it caps the "
                          f"rows of the natural-client files: {', '.join(NATURAL_DATASETS)})")


def resolve_layout(cfg: DataConfig) -> str:
    """``data.layout``: ``auto`` is ``packed`` for the natural-client files (clients of very
    unequal sizes), ``padded`` otherwise."""
    layout = getattr(cfg, "layout", "auto")
    return layout if layout != "auto" else ("packed" if cfg.dataset in NATURAL_DATASETS else "padded")


def rows_bytes(rows: list, packed: bool = False) -> int:
    """Bytes of the arrays `stack_clients` ([C, N_max, ...]) or, ``packed``, `pack_clients`
    ([R, ...]) makes of per-client (x, y) rows."""
    n = [len(y) for _, y in rows]
    per_row = sum(int(np.prod(a.shape[1:], dtype=np.int64)) * 4 for a in rows[0]) if rows else 0
    return (sum(n) if packed else len(rows) * max(n + [1])) * per_row


def check_rows_fit(cfg: DataConfig, train_rows: list, test_rows: list, packed: bool = False) -> None:
    """ConfigError (data.num_clients) when the clients' training rows (padded to the largest
    client's, or ``packed``) and test rows (padded) would not fit the host's available memory: a
    clear line instead of an out-of-memory kill."""
    try:
        import psutil
    except ImportError:  # cannot tell: try
        return
    need = rows_bytes(train_rows, packed) + rows_bytes(test_rows)
    available = int(psutil.virtual_memory().available)
    if need > available:
        n_max = max([len(y) for _, y in train_rows] + [1])
        cap = (" or a smaller data.max_examples" if cfg.dataset in NATURAL_DATASETS else "")
        held = "back to back" if packed else f"padded to the largest client's ({n_max} training rows)"
        raise ConfigError("data.num_clients", cfg.num_clients,
                          f"fewer clients{cap}: their rows {held} need {need / 2**30:.1f} GiB, more than the "
                          f"{available / 2**30:.1f} GiB of memory available")


def _knobs(fn, cfg: DataConfig, **extra) -> dict:
    """The DataConfig fields (and extras) that `fn` takes as keyword-only arguments."""
    params = inspect.signature(fn).parameters
    wanted = [p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    values = {**{k: getattr(cfg, k) for k in wanted if hasattr(cfg, k)}, **extra}
    return {k: v for k, v in values.items() if k in wanted}


def split_pools(src: Source, global_test_fraction: float, rng: np.random.Generator) -> Pools:
    """The source's train and test pools, before any partitioning.

    With a test split (TFDS, synthetic) the pools are the source's own train and test rows. Without
    one (digits, diabetes) a stratified `global_test_fraction` of the rows (by strata: labels, or
    target bins) is held out as the test pool and the rest is the train pool. A `standardize`
    source is then standardized with train-pool statistics (per-feature x; y), the same affine map
    applied to the test pool.
    """
    if src.target_kind != "class" and (src.strata is None
                                       or (src.x_test is not None and src.test_strata is None)):
        raise ValueError("a source with real-valued targets must give strata for both pools")
    strata = src.y_pool if src.strata is None else src.strata
    if src.x_test is None:
        keep, held = stratified_split(strata, global_test_fraction, rng, field="data.global_test_fraction")
        groups = src.client_ids
        pools = Pools(src.x_pool[keep], src.y_pool[keep], np.asarray(strata)[keep],
                      None if groups is None else groups[keep], keep.astype(np.int64),
                      src.x_pool[held], src.y_pool[held], np.asarray(strata)[held],
                      None if groups is None else groups[held], held.astype(np.int64))
    else:
        n, t = len(src.y_pool), len(src.y_test)
        test_strata = src.y_test if src.test_strata is None else src.test_strata
        pools = Pools(src.x_pool, src.y_pool, np.asarray(strata), src.client_ids,
                      np.arange(n, dtype=np.int64), src.x_test, src.y_test, np.asarray(test_strata),
                      src.test_client_ids, np.arange(n, n + t, dtype=np.int64))
    if src.standardize:
        x_mean, x_std = _moments(pools.x)
        y_mean, y_std = _moments(pools.y)
        pools = pools._replace(x=(pools.x - x_mean) / x_std, x_test=(pools.x_test - x_mean) / x_std,
                               y=(pools.y - y_mean) / y_std, y_test=(pools.y_test - y_mean) / y_std)
    return pools


def _moments(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (ddof 0, float64) over axis 0; a constant column gets std 1."""
    a = np.asarray(a, np.float64)
    mean, std = a.mean(axis=0), a.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def _by_group(groups: np.ndarray, num_clients: int) -> list[np.ndarray]:
    return [np.flatnonzero(groups == c).astype(np.int64) for c in range(num_clients)]


def build_federated(cfg: DataConfig, run_seed: int, return_assignment: bool = False):
    """Builds the federated dataset a run trains on, with no train/test leak.

    1. Load the source and split it into a train pool and a test pool (`split_pools`) BEFORE
       partitioning: the source's own train/test splits, or for `digits` / `diabetes` (no test
       split) a stratified `global_test_fraction` hold-out as the test pool. `diabetes` is then
       standardized (x and y) with train-pool statistics.
    2. Partition only the train pool over `num_clients` clients
       (`PARTITIONS[resolve_partition(cfg)]`, on the pool's strata: class ids, or target bins for
       regression). Every partitioner uses each example at most once, except `dominant_class` with
       ``data.with_replacement=true`` (training rows reused across clients, as FedReMa's code).
    3. Draw each client's test rows from the test pool (`draw_client_tests`): without replacement,
       disjoint across clients, following the client's own training mix. `data.test_fraction` = f
       means: per class k, a client asks for train_count[c, k] · f / (1 - f) test rows (so about
       f of its train + test rows are test); when the pool's class k cannot meet the total demand,
       what it has is apportioned in proportion to demand. `synthetic` keeps FedProx's per-device
       90/10 split instead: its train rows are the train pool, its test rows the test pool, and
       both are partitioned `natural`.
       ``floral_synthetic`` does the same with torch's per-client random_split(0.8, 0.2).
    4. Global test set = the whole test pool (so the client test sets are subsets of it).
    5. Partition ``clusters`` (FLoRAL, ``specs/floral.md`` §5): steps 2-4 as `iid`, then client
       k is in cluster c = k mod ``data.num_clusters`` (M) and every row it sees (training rows,
       its own test rows, its validation rows when ``data.validation_fraction > 0``) is
       transformed by c (`clusters.apply_cluster_transform`): ``rotate`` turns the image by
       (360 // M) · c degrees counter-clockwise, ``label_shift`` maps y -> (y + c) mod classes.
       Client test rows are drawn on the original strata (step 3) and transformed afterwards.
       Global test row t gets cluster t mod M [I] (the official code evaluates per client only;
       interleaving gives every cluster a near-equal share of the global set, independent of the
       seed), so a client's test rows are no longer rows of the global set. With a validation
       split the global validation set is every client's transformed validation rows (each in its
       client's cluster). `FederatedData.cluster` = arange(C) % M; ``floral_synthetic`` sets it
       too (its generator's clusters); every other source and partition leaves it None.
    6. Pad and stack (`stack_clients`, min_rows=1).

    Randomness: one `np.random.SeedSequence(seed)` spawns independent streams for the source,
    the hold-out, the partition and the test draw (``floral_synthetic`` seeds its generator from
    the data seed itself, as the official code: ``seed + 27`` and ``seed + 11``).

    Args:
      cfg: the data section of the run config (DataConfig-like; attributes are only read).
      run_seed: `Config.seed`, used when `cfg.seed == -1`.
      return_assignment: also return the `Assignment` (row indices behind the arrays).

    Returns:
      FederatedData with numpy leaves: train {"x" [C, N_max, ...] float32, "y" [C, N_max] int32
      class ids or float32 targets}, n_train [C], test {"x", "y"} [C, M_max, ...], n_test [C],
      global_test {"x", "y"} [T, ...], cluster [C] int32 or None; or (FederatedData, Assignment)
      with `return_assignment` (its indices name the source rows before any cluster transform).
    """
    validate_data_config(cfg)
    if cfg.dataset in MULTITASK_SOURCES:
        if return_assignment:
            raise ValueError(f"{cfg.dataset} generates its rows: it has no source assignment")
        return MULTITASK_SOURCES[cfg.dataset](cfg, resolve_seed(cfg, run_seed))
    partition = resolve_partition(cfg)
    # spawn(k)'s first children do not depend on k: adding the validation stream kept the others
    seed = resolve_seed(cfg, run_seed)
    streams = np.random.SeedSequence(seed).spawn(7)
    source_rng, holdout_rng, partition_rng, test_rng, validation_rng, proxy_rng, public_rng = (
        np.random.default_rng(s) for s in streams)

    loader = all_sources()[cfg.dataset]
    src = loader(cfg, source_rng, **_knobs(loader, cfg, seed=seed))
    pools = split_pools(src, cfg.global_test_fraction, holdout_rng)
    real = src.target_kind == "real"
    if partition == "clusters":
        feature_shape = tuple(pools.x.shape[1:])
        _check_cluster_source(cfg, len(feature_shape) == 3, not real, f"of shape {list(feature_shape)}")
    check_finite(pools.x, pools.x_test, *((pools.y, pools.y_test) if real else ()))
    pools, proxy = carve_proxy(pools, getattr(cfg, "proxy_fraction", 0.0), proxy_rng)
    pools, public, public_ids = carve_public(pools, getattr(cfg, "public_fraction", 0.0), public_rng)
    if cfg.num_clients > len(pools.y):
        raise ConfigError("data.num_clients", cfg.num_clients,
                          f"at most {len(pools.y)} (the examples in the {cfg.dataset} train pool)")

    fn = all_partitions()[partition]
    train_idx = fn(pools.strata, cfg.num_clients, partition_rng,
                   **_knobs(fn, cfg, groups=pools.groups))
    if partition == "natural" and pools.test_groups is not None:
        test_idx = _by_group(pools.test_groups, cfg.num_clients)
    else:
        test_idx = draw_client_tests(pools.strata, train_idx, pools.test_strata, cfg.test_fraction,
                                     test_rng)

    ydtype = np.float32 if real else np.int32
    y, y_test = pools.y.astype(ydtype), pools.y_test.astype(ydtype)
    x, x_test = pools.x.astype(np.float32, copy=False), pools.x_test.astype(np.float32, copy=False)
    fraction = getattr(cfg, "validation_fraction", 0.0)
    if fraction > 0:  # a tuning run: validation rows stand in for the test rows, never seen
        train_idx, test_idx = carve_validation(pools.strata, train_idx, fraction, validation_rng)
        x_test, y_test = x, y
    train_rows = [(x[i], y[i]) for i in train_idx]
    test_rows = [(x_test[i], y_test[i]) for i in test_idx]
    cluster = None
    if partition == "clusters":  # each client's rows as its cluster sees them
        num_clusters, transform = cfg.num_clusters, cfg.cluster_transform
        cluster = cluster_of(cfg.num_clients, num_clusters)
        view = lambda rows, c: apply_cluster_transform(*rows, int(c), transform, num_clusters,
                                                       int(src.num_classes))
        train_rows = [view(rows, c) for rows, c in zip(train_rows, cluster)]
        test_rows = [view(rows, c) for rows, c in zip(test_rows, cluster)]
        if fraction == 0:  # global test row t is in cluster t mod M
            x_test, y_test = transform_rows(x_test, y_test, cluster_of(len(y_test), num_clusters),
                                            transform, num_clusters, int(src.num_classes))
    elif src.clusters is not None:
        cluster = np.asarray(src.clusters, np.int32)
    packed = resolve_layout(cfg) == "packed"
    check_rows_fit(cfg, train_rows, test_rows, packed)
    if packed:
        x_train, y_train, n_train, train_start = pack_clients([r[0] for r in train_rows], [r[1] for r in train_rows])
    else:
        x_train, y_train, n_train = stack_clients([r[0] for r in train_rows], [r[1] for r in train_rows])
    x_ctest, y_ctest, n_test = stack_clients([r[0] for r in test_rows], [r[1] for r in test_rows])
    if fraction > 0:  # the global validation set: every client's validation rows, as it sees them
        x_test = np.concatenate([r[0] for r in test_rows])
        y_test = np.concatenate([r[1] for r in test_rows])
    data = make_federated(x_train, y_train, n_train, x_ctest, y_ctest, n_test, x_test, y_test,
                          num_classes=int(src.num_classes), target_kind=src.target_kind,
                          name=cfg.dataset, cluster=cluster)
    if packed:
        data = data.replace(train_start=train_start, packed_rows=max(int(n_train.max(initial=0)), 1))
    if proxy is not None:
        data = data.replace(proxy=proxy)
    if public is not None:
        data = data.replace(public=public)
    if not return_assignment:
        return data
    if fraction > 0:  # test rows index the train pool here (they are validation rows)
        return data, Assignment(list(train_idx), list(test_idx), pools.ids, pools.ids, public_ids)
    return data, Assignment(list(train_idx), list(test_idx), pools.ids, pools.test_ids, public_ids)


def _hold_out(pools: Pools, fraction: float, rng: np.random.Generator, field: str):
    """(the pools without a stratified ``fraction`` of the train pool, the held-out train-pool
    indices, sorted)."""
    keep, held = stratified_split(pools.strata, fraction, rng, field=field)
    keep = np.sort(keep)
    sub = lambda a: None if a is None else a[keep]  # noqa: E731
    rest = pools._replace(x=pools.x[keep], y=pools.y[keep], strata=pools.strata[keep],
                          groups=sub(pools.groups), ids=pools.ids[keep])
    return rest, np.sort(held)


def carve_proxy(pools: Pools, fraction: float, rng: np.random.Generator) -> tuple[Pools, Any]:
    """Holds out a stratified ``fraction`` of the train pool, before any partitioning, as the
    unlabeled proxy set (FedADT's distillation data, specs/async_kd.md section 2.3): its rows
    are never given to a client and are disjoint from the test pool. Returns (the remaining
    pools, ``{"x": [N_p, ...] float32}``), or (pools, None) for ``fraction == 0``."""
    if fraction <= 0:
        return pools, None
    rest, held = _hold_out(pools, fraction, rng, "data.proxy_fraction")
    return rest, {"x": pools.x[held].astype(np.float32)}


def carve_public(pools: Pools, fraction: float, rng: np.random.Generator):
    """Holds out a stratified ``fraction`` of the train pool (after the proxy set, before any
    partitioning) as the LABELED public split a generator is fitted on (FedGC,
    specs/fedgc.md section 5.1: "pretrained elsewhere", disjoint from every client's data and
    from the test set). Returns (the remaining pools, ``{"x": [P, ...] float32, "y": [P]}``,
    [P] int64 source ids of its rows), or (pools, None, empty ids) for ``fraction == 0``."""
    if fraction <= 0:
        return pools, None, np.zeros(0, np.int64)
    rest, held = _hold_out(pools, fraction, rng, "data.public_fraction")
    ydtype = np.int32 if np.issubdtype(pools.y.dtype, np.integer) else np.float32
    return rest, {"x": pools.x[held].astype(np.float32), "y": pools.y[held].astype(ydtype)}, pools.ids[held]


def carve_validation(strata: np.ndarray, train_idx: list, fraction: float,
                     rng: np.random.Generator) -> tuple[list, list]:
    """Splits every client's training rows into (train, validation), stratified by the client's
    own strata (`stratified_split`: round(fraction · n_c) rows, at least one row stays in train).

    The validation rows are a subset of the client's own training rows, so they are disjoint from
    every test row (the test pool) and, since partitions without ``with_replacement`` give each
    training example to one client, from every other client's training rows. Hyper-parameters
    selected on them never saw the test split.

    Args:
      strata: [n] train-pool strata; train_idx: C arrays of train-pool indices.

    Returns:
      (train, validation): C arrays each, indices into the train pool.
    """
    train, validation = [], []
    for rows in train_idx:
        keep, held = stratified_split(strata[rows], fraction, rng, field="data.validation_fraction")
        train.append(rows[np.sort(keep)])
        validation.append(rows[np.sort(held)])
    return train, validation
