"""Config -> `FederatedData`: load the pool, partition it, split each client, stack.

All of it runs on the host in numpy, seeded from one integer (the data seed, or the run seed
when ``data.seed == -1``), so the same config and seed give identical arrays on every machine.
The arrays are returned as numpy; the caller decides where they live (`jax.device_put`, sharding).
"""
from __future__ import annotations

import inspect

import numpy as np

from fedjax_sim.config import DataConfig
from fedjax_sim.data.federated import FederatedData, stack_clients
from fedjax_sim.data.partition import PARTITIONS, stratified_split
from fedjax_sim.data.sources import DATASETS, check_finite
from fedjax_sim.errors import ConfigError

NATURAL_SOURCES = ("synthetic",)  # sources whose clients come from the generator


def resolve_partition(cfg: DataConfig) -> str:
    """``auto`` -> ``natural`` for sources with their own clients, else ``dirichlet_label``."""
    if cfg.partition != "auto":
        return cfg.partition
    return "natural" if cfg.dataset in NATURAL_SOURCES else "dirichlet_label"


def resolve_seed(cfg: DataConfig, run_seed: int) -> int:
    """The data seed: ``data.seed``, or the run seed when it is -1."""
    if cfg.seed < -1:
        raise ConfigError("data.seed", cfg.seed, "an integer >= 0, or -1 for the run seed")
    seed = run_seed if cfg.seed == -1 else cfg.seed
    if seed < 0:
        raise ConfigError("seed", run_seed, "an integer >= 0")
    return int(seed)


def validate_data_config(cfg: DataConfig) -> None:
    """Checks the dataset and partition names and that they go together (no data is loaded)."""
    if cfg.dataset not in DATASETS:
        raise ConfigError("data.dataset", cfg.dataset, "one of " + ", ".join(DATASETS))
    if cfg.partition != "auto" and cfg.partition not in PARTITIONS:
        raise ConfigError("data.partition", cfg.partition, "auto or one of " + ", ".join(PARTITIONS))
    partition = resolve_partition(cfg)
    pooled = [p for p in PARTITIONS if p != "natural"]
    if partition == "natural" and cfg.dataset not in NATURAL_SOURCES:
        raise ConfigError("data.partition", partition,
                          f"one of auto, {', '.join(pooled)} for data.dataset={cfg.dataset} "
                          f"(natural only with {', '.join(NATURAL_SOURCES)})")
    if partition != "natural" and cfg.dataset in NATURAL_SOURCES:
        raise ConfigError("data.partition", partition,
                          f"auto or natural for data.dataset={cfg.dataset} "
                          "(its clients come from the generator)")


def _knobs(fn, cfg: DataConfig, **extra) -> dict:
    """The DataConfig fields (and extras) that `fn` takes as keyword-only arguments."""
    params = inspect.signature(fn).parameters
    wanted = [p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    values = {**{k: getattr(cfg, k) for k in wanted if hasattr(cfg, k)}, **extra}
    return {k: v for k, v in values.items() if k in wanted}


def build_federated(cfg: DataConfig, run_seed: int) -> FederatedData:
    """Builds the federated dataset a run trains on.

    1. Load the source's pool (and test split). Without a test split (`digits`) a stratified
       `global_test_fraction` of the pool is held out as the global test set. For
       `dominant_class` the pool is train and test merged (FedReMa [C]); its global test set is
       then the union of the clients' test rows that are in no client's train rows.
    2. Partition the pool over `num_clients` clients (`PARTITIONS[resolve_partition(cfg)]`).
    3. Split each client into train/test with `test_fraction`, stratified by label within the
       client (`stratified_split`: test follows the client's own mix, >= 1 train row each, a
       single-example client has no test rows). `synthetic` keeps FedProx's own 90/10 split.
    4. Pad and stack (`stack_clients`, min_rows=1).

    Randomness: one `np.random.SeedSequence(seed)` spawns independent streams for the source,
    the global hold-out, the partition and the per-client splits.

    Args:
      cfg: the data section of the run config.
      run_seed: `Config.seed`, used when `cfg.seed == -1`.

    Returns:
      FederatedData with numpy leaves: x_train [C, N_max, ...], y_train/n_train, x_test
      [C, M_max, ...], y_test/n_test, x_global [T, ...], y_global [T].
    """
    validate_data_config(cfg)
    partition = resolve_partition(cfg)
    streams = np.random.SeedSequence(resolve_seed(cfg, run_seed)).spawn(4)
    source_rng, holdout_rng, partition_rng, split_rng = (np.random.default_rng(s) for s in streams)

    src = DATASETS[cfg.dataset](cfg, source_rng)
    x, y = src.x_pool, src.y_pool
    x_global, y_global = src.x_test, src.y_test
    merged = partition == "dominant_class"
    if merged:
        if x_global is not None:
            x, y = np.concatenate([x, x_global]), np.concatenate([y, y_global])
    elif x_global is None:
        keep, held = stratified_split(y, cfg.global_test_fraction, holdout_rng)
        x_global, y_global, x, y = x[held], y[held], x[keep], y[keep]
    check_finite(x, x_global)
    if cfg.num_clients > len(y):
        raise ConfigError("data.num_clients", cfg.num_clients,
                          f"at most {len(y)} (the examples in the {cfg.dataset} pool)")

    fn = PARTITIONS[partition]
    clients = fn(y, cfg.num_clients, partition_rng, **_knobs(fn, cfg, groups=src.client_ids))

    train_idx, test_idx = [], []
    for idx in clients:
        if src.test_mask is not None:
            in_test = src.test_mask[idx]
            train_idx.append(idx[~in_test])
            test_idx.append(idx[in_test])
        else:
            train_pos, test_pos = stratified_split(y[idx], cfg.test_fraction, split_rng)
            train_idx.append(idx[train_pos])
            test_idx.append(idx[test_pos])

    x_train, y_train, n_train = stack_clients([x[i] for i in train_idx], [y[i] for i in train_idx])
    x_test, y_test, n_test = stack_clients([x[i] for i in test_idx], [y[i] for i in test_idx])
    if merged:
        tested = np.unique(np.concatenate(test_idx))
        unseen = np.setdiff1d(tested, np.concatenate(train_idx))
        global_rows = unseen if len(unseen) else tested
        x_global, y_global = x[global_rows], y[global_rows]
    return FederatedData(
        x_train=x_train, y_train=y_train, n_train=n_train,
        x_test=x_test, y_test=y_test, n_test=n_test,
        x_global=np.asarray(x_global, np.float32), y_global=np.asarray(y_global, np.int32),
        num_classes=int(src.num_classes), name=cfg.dataset)
