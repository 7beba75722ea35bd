"""HC-FMTL-lite: a small hetero-client multi-task benchmark (specs/fedhca2.md section 6) [ours].

The spec's CPU analogue of FedHCA2's PASCAL-Context + NYUD-v2 setting, generated on the host in
numpy from one seed (``data.seed``, or the run seed when it is -1), which draws the fixed
projection matrices and task directions as well as every sample:

* latent z in R^8, z ~ N(mu_d, I) with mu_A = 0 and mu_B = 0.5 * 1 (two input domains);
* input x = tanh(P_d z) + 0.1 eps in R^32 with P_d = P_shared + 0.5 P_d,specific;
* five tasks defined on z, identical across domains:
  T1 = v1.z, T2 = sin(v2.z) + 0.5 (v3.z)^2, T3 = 1[v4.z > 0] (2 classes),
  T4 = argmax(W z) (4 classes), T5 = v1.z + 0.3 v4.z - 0.5 v3.z; regression targets are
  standardized (train-pool statistics of each domain pooled) and get N(0, 0.1^2) noise;
* domain A holds {T1, T2, T3, T4} (like PASCAL), domain B {T1, T3, T5} (like NYUD).

Scenarios (``data.scenario``):
  s1 ("1c"): 4 single-task A clients (one per task, 150 training rows each, disjoint) and one
      multi-task B client (its 3 tasks, 300 rows); N = 5, K = 7 decoders.
  s2 ("2c"): 8 single-task A clients (2 per task, consecutive, 75 rows each) and 2 multi-task B
      clients (150 each); N = 10, K = 14 (exercises FedHCA2's homogeneous-group averaging).

Each client's test split is its domain's test set (2000 rows, shared by the domain's clients),
with ``y_mask`` marking the client's own tasks; the global test set is both domains' rows.
With ``data.validation_fraction`` f > 0 (a tuning run) each client keeps 1 - f of its training
rows, and the validation set of a domain is every row carved from that domain's clients (all of
the domain's task labels; no client trains on them); the test sets are not built.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fedjax_sim.data.federated import FederatedData
from fedjax_sim.errors import ConfigError
from fedjax_sim.types import MultiTaskSpec

TASKS = ("T1", "T2", "T3", "T4", "T5")
TASK_KINDS = ("real", "real", "class", "class", "real")
TASK_OUTPUTS = (1, 1, 2, 4, 1)
DOMAINS = ("A", "B")
DOMAIN_TASKS = {"A": ("T1", "T2", "T3", "T4"), "B": ("T1", "T3", "T5")}
LATENT, FEATURES = 8, 32
TEST_ROWS = 2000
NOISE = 0.1
# scenario -> (single-task A clients per task, rows each, multi-task B clients, rows each)
SCENARIOS = {"s1": (1, 150, 1, 300), "s2": (2, 75, 2, 150)}


def scenario_clients(scenario: str) -> int:
    per_task, _, multi, _ = SCENARIOS[scenario]
    return per_task * len(DOMAIN_TASKS["A"]) + multi


def check_config(cfg: Any) -> None:
    """ConfigError for a scenario that does not exist, a partition other than auto / natural, or
    a ``data.num_clients`` that is neither the default (20: the scenario decides) nor the
    scenario's client count."""
    scenario = getattr(cfg, "scenario", "s1")
    if scenario not in SCENARIOS:
        raise ConfigError("data.scenario", scenario, "one of " + ", ".join(SCENARIOS) + " for data.dataset=hcfmtl_lite")
    if cfg.partition not in ("auto", "natural"):
        raise ConfigError("data.partition", cfg.partition,
                          "auto or natural for data.dataset=hcfmtl_lite (the scenario fixes its clients)")
    n = scenario_clients(scenario)
    if cfg.num_clients not in (20, n):
        raise ConfigError("data.num_clients", cfg.num_clients,
                          f"{n} for data.scenario={scenario} (hcfmtl_lite's scenario fixes the clients; "
                          "leave data.num_clients unset)")
    if getattr(cfg, "with_replacement", False):
        raise ConfigError("data.with_replacement", True, "false for data.dataset=hcfmtl_lite")


class _Generator:
    """The fixed random structure of one instance: projections and task directions."""

    def __init__(self, rng: np.random.Generator):
        shared = rng.normal(size=(FEATURES, LATENT)) / np.sqrt(LATENT)
        self.proj = {d: shared + 0.5 * rng.normal(size=(FEATURES, LATENT)) / np.sqrt(LATENT) for d in DOMAINS}
        self.mu = {"A": np.zeros(LATENT), "B": np.full(LATENT, 0.5)}
        self.v = rng.normal(size=(4, LATENT)) / np.sqrt(LATENT)  # v1..v4
        self.w = rng.normal(size=(4, LATENT))  # T4's class directions

    def sample(self, domain: str, n: int, rng: np.random.Generator):
        """(x [n, 32] float32, raw targets {task: [n]}) of n fresh rows of ``domain``."""
        z = self.mu[domain] + rng.normal(size=(n, LATENT))
        x = np.tanh(z @ self.proj[domain].T) + NOISE * rng.normal(size=(n, FEATURES))
        p = z @ self.v.T  # [n, 4]: v1.z .. v4.z
        y = {"T1": p[:, 0], "T2": np.sin(p[:, 1]) + 0.5 * p[:, 2] ** 2, "T3": (p[:, 3] > 0).astype(np.int32),
             "T4": np.argmax(z @ self.w.T, -1).astype(np.int32), "T5": p[:, 0] + 0.3 * p[:, 3] - 0.5 * p[:, 2]}
        return x.astype(np.float32), y


def _client_layout(scenario: str) -> list[tuple[str, tuple, int]]:
    """[(domain, tasks, training rows)] per client, single-task clients first, consecutive."""
    per_task, rows_a, multi, rows_b = SCENARIOS[scenario]
    out = [("A", (t,), rows_a) for t in DOMAIN_TASKS["A"] for _ in range(per_task)]
    return out + [("B", DOMAIN_TASKS["B"], rows_b)] * multi


def multitask_spec(scenario: str) -> MultiTaskSpec:
    layout = _client_layout(scenario)
    return MultiTaskSpec(
        task_names=TASKS, task_kinds=TASK_KINDS, task_outputs=TASK_OUTPUTS,
        task_sets=tuple(tuple(t in tasks for t in TASKS) for _, tasks, _ in layout),
        domains=tuple(DOMAINS.index(d) for d, _, _ in layout), domain_names=DOMAINS,
        loss_weights=(1.0,) * len(TASKS))


def _stack(blocks: list[dict], masks: list[dict]) -> tuple[dict, dict, np.ndarray]:
    """Per-client {"x", task targets} row blocks -> padded [C, N_max, ...] arrays + y_mask."""
    n = np.asarray([len(b["x"]) for b in blocks], np.int32)
    n_max = max(int(n.max()), 1)
    c = len(blocks)
    x = np.zeros((c, n_max, FEATURES), np.float32)
    y = {t: np.zeros((c, n_max), np.int32 if k == "class" else np.float32) for t, k in zip(TASKS, TASK_KINDS)}
    y_mask = {t: np.zeros((c, n_max), bool) for t in TASKS}
    for i, (b, m) in enumerate(zip(blocks, masks)):
        x[i, : n[i]] = b["x"]
        for t in TASKS:
            y[t][i, : n[i]] = b[t]
            y_mask[t][i, : n[i]] = m[t]
    return {"x": x, "y": y, "y_mask": y_mask}, n


def build_hcfmtl_lite(cfg: Any, seed: int) -> FederatedData:
    """The federated HC-FMTL-lite data of ``cfg.scenario`` from ``seed`` (module docstring).

    Returns FederatedData with train {"x" [C, N_max, 32], "y" {task: [C, N_max]} (float32 for
    T1, T2, T5; int32 for T3, T4), "y_mask" {task: [C, N_max] bool}}, test likewise [C, M, ...]
    (each client's domain test set, or validation set), global_test [T, ...] (both domains),
    target_kind "multi" and ``tasks`` the `MultiTaskSpec`.
    """
    check_config(cfg)
    scenario = getattr(cfg, "scenario", "s1")
    structure_rng, sample_rng, test_rng, split_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    gen = _Generator(structure_rng)
    layout = _client_layout(scenario)
    train = [gen.sample(d, rows, sample_rng) for d, _, rows in layout]
    tests = {d: gen.sample(d, TEST_ROWS, test_rng) for d in DOMAINS}
    # standardize each regression task with the train pool's statistics (both domains pooled)
    stats = {}
    for t, kind in zip(TASKS, TASK_KINDS):
        if kind == "real":
            pooled = np.concatenate([y[t] for _, y in train])
            stats[t] = (pooled.mean(), pooled.std() or 1.0)

    def finish(x, y, rng):
        out = {"x": x}
        for t, kind in zip(TASKS, TASK_KINDS):
            if kind == "real":
                mean, std = stats[t]
                out[t] = ((y[t] - mean) / std + NOISE * rng.normal(size=len(x))).astype(np.float32)
            else:
                out[t] = y[t]
        return out

    train = [finish(x, y, sample_rng) for x, y in train]
    tests = {d: finish(*tests[d], test_rng) for d in DOMAINS}
    fraction = getattr(cfg, "validation_fraction", 0.0)
    if fraction > 0:  # validation rows carved from each client's training rows, pooled per domain
        held_by_domain: dict[str, list] = {d: [] for d in DOMAINS}
        kept = []
        for (d, _, _), block in zip(layout, train):
            n = len(block["x"])
            perm = split_rng.permutation(n)
            k = min(max(int(round(fraction * n)), 1), n - 1)
            held_by_domain[d].append({key: v[perm[:k]] for key, v in block.items()})
            kept.append({key: v[np.sort(perm[k:])] for key, v in block.items()})
        train = kept
        tests = {d: {key: np.concatenate([b[key] for b in held_by_domain[d]]) for key in held_by_domain[d][0]}
                 for d in DOMAINS}
    own = [{t: t in tasks for t in TASKS} for _, tasks, _ in layout]
    domain_tasks = {d: {t: t in DOMAIN_TASKS[d] for t in TASKS} for d in DOMAINS}
    train_arrays, n_train = _stack(train, own)
    test_arrays, n_test = _stack([tests[d] for d, _, _ in layout], own)
    glob, _ = _stack([tests[d] for d in DOMAINS], [domain_tasks[d] for d in DOMAINS])
    glob = {"x": glob["x"].reshape(-1, FEATURES), "y": {t: v.reshape(-1) for t, v in glob["y"].items()},
            "y_mask": {t: v.reshape(-1) for t, v in glob["y_mask"].items()}}
    sizes = [len(tests[d]["x"]) for d in DOMAINS]
    keep_rows = np.concatenate([np.arange(s) + i * max(sizes) for i, s in enumerate(sizes)])
    glob = {"x": glob["x"][keep_rows], "y": {t: v[keep_rows] for t, v in glob["y"].items()},
            "y_mask": {t: v[keep_rows] for t, v in glob["y_mask"].items()}}
    return FederatedData(train_arrays, n_train, test_arrays, n_test, glob, num_classes=0,
                         target_kind="multi", name="hcfmtl_lite", tasks=multitask_spec(scenario))


def check_spec(spec: MultiTaskSpec, num_clients: int | None = None) -> None:
    """ConfigError (field ``data.tasks``) for a multi-task structure no algorithm can train: a
    client that holds no task, a task no client holds, per-client fields of the wrong length,
    or a task with no output."""
    t = spec.num_tasks
    for name, values in (("task_kinds", spec.task_kinds), ("task_outputs", spec.task_outputs),
                         ("loss_weights", spec.loss_weights)):
        if len(values) != t:
            raise ConfigError("data.tasks", f"{len(values)} {name}", f"{t}, one per task")
    if len(spec.domains) != spec.num_clients or any(len(row) != t for row in spec.task_sets):
        raise ConfigError("data.tasks", f"{len(spec.domains)} domains for {spec.num_clients} task sets",
                          f"one domain and one task set of {t} flags per client")
    if num_clients is not None and spec.num_clients != num_clients:
        raise ConfigError("data.tasks", f"task sets for {spec.num_clients} clients",
                          f"one per client of the data ({num_clients})")
    mask = spec.task_mask
    for c in np.flatnonzero(~mask.any(1)):
        raise ConfigError("data.tasks", f"client {c} holds no task", "every client holding at least one task")
    for i in np.flatnonzero(~mask.any(0)):
        raise ConfigError("data.tasks", f"task {spec.task_names[i]} is held by no client",
                          "every task held by at least one client")
    if any(o < 1 for o in spec.task_outputs) or any(k not in ("class", "real") for k in spec.task_kinds):
        raise ConfigError("data.tasks", f"outputs {spec.task_outputs}, kinds {spec.task_kinds}",
                          "outputs >= 1 and kinds class or real")
