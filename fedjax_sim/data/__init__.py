"""Federated data: sources, leak-free train/test pools, partitioners, and the stacked
`FederatedData` a run trains on."""
from __future__ import annotations

import numpy as np

from fedjax_sim.data.build import (MULTITASK_SOURCES, Assignment, all_partitions, build_federated, resolve_partition,
                                   resolve_seed, validate_data_config)
from fedjax_sim.data.federated import FederatedData, make_federated, stack_clients, stack_trials
from fedjax_sim.data.partition import PARTITIONS, TRANSFORM_PARTITIONS
from fedjax_sim.data.build import all_sources  # every single-task source (DATASETS + natural files)
from fedjax_sim.data.sources import DATASETS


def _stats(n: np.ndarray) -> dict:
    return {"min": int(n.min()), "mean": float(n.mean()), "max": int(n.max()), "total": int(n.sum())}


def describe(data: FederatedData) -> dict:
    """Sizes for summaries: per-client train/test row stats, padding, global test size, the
    target kind/shape (``class`` with num_classes, or ``real`` with num_classes 0), and the
    number of clusters (distinct `FederatedData.cluster` ids; None without cluster structure)."""
    n_train, n_test = np.asarray(data.n_train), np.asarray(data.n_test)
    num_clusters = None if data.cluster is None else int(len(np.unique(np.asarray(data.cluster))))
    return {
        "name": data.name,
        "num_clients": data.num_clients,
        "num_classes": data.num_classes,
        "target_kind": data.target_kind,
        "target_shape": list(data.target_shape),
        "feature_shape": list(data.feature_shape),
        "train_per_client": _stats(n_train),
        "test_per_client": _stats(n_test),
        "max_train": data.max_train,
        # how training rows are held (`FederatedData.packed`); padding_fraction: the share of the
        # padded [C, N_max] view that is padding (held in memory only when padded)
        "layout": "packed" if data.packed else "padded",
        "padding_fraction": float(1.0 - n_train.sum() / max(n_train.size * data.max_train, 1)),
        # stacked seeds pad the global set: count its valid rows
        "global_test": (int(np.sum(data.global_test["mask"])) if "mask" in data.global_test
                        else data.global_size),
        "num_clusters": num_clusters,
        "proxy": None if data.proxy is None else int(data.proxy["x"].shape[-1 - len(data.feature_shape)]),
        "public": None if data.public is None else int(np.shape(data.public["y"])[-1]),
        # FedGC: generated rows per client (train_per_client counts real + generated)
        **({"generated_per_client": _stats(np.asarray(data.train["generated"]).sum(-1))}
           if "generated" in data.train else {}),
        **({} if data.tasks is None else {"multitask": _describe_tasks(data.tasks)}),
    }


def _describe_tasks(spec) -> dict:
    """The multi-task structure: tasks (kind, outputs), each client's domain and task set."""
    return {"tasks": {n: {"kind": k, "outputs": o, "lower_is_better": k == "real"}
                      for n, k, o in zip(spec.task_names, spec.task_kinds, spec.task_outputs)},
            "clients": [{"domain": spec.domain_names[d],
                         "tasks": [n for n, held in zip(spec.task_names, ts) if held]}
                        for d, ts in zip(spec.domains, spec.task_sets)],
            "groups": spec.group_ids.tolist(), "decoders": len(spec.slots())}


__all__ = [
    "DATASETS",
    "all_sources",
    "MULTITASK_SOURCES",
    "PARTITIONS",
    "TRANSFORM_PARTITIONS",
    "Assignment",
    "all_partitions",
    "FederatedData",
    "build_federated",
    "describe",
    "make_federated",
    "resolve_partition",
    "resolve_seed",
    "validate_data_config",
    "stack_clients",
    "stack_trials",
]
