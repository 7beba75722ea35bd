"""Config -> run directory (config.json, metrics.jsonl, summary.json, plots, checkpoints).

Everything that can be wrong with the input is checked in `prepare`, before any directory is
created and before anything compiles.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from fedjax_sim import config as config_lib
from fedjax_sim import tasks as tasks_lib
from fedjax_sim.algorithms import Algorithm, BuildContext, build, check_name
from fedjax_sim.core.driver import count_compiles, make_block, round_inputs
from fedjax_sim.core.evaluate import evaluate_clients, evaluate_global
from fedjax_sim.core.local import Schedule
from fedjax_sim.core.mapping import ClientMapping
from fedjax_sim.core.optim import make_optimizer
from fedjax_sim.errors import ConfigError, DivergedError
from fedjax_sim.models import MODELS, Model, build_model

SUMMARY_KEYS = ("algorithm", "dataset", "config", "rounds_completed", "final", "timing")


class Prepared(NamedTuple):
    config: config_lib.Config
    data: Any
    model: Model
    task: tasks_lib.Task
    schedule: Schedule
    mapping: ClientMapping
    algorithm: Algorithm


def resolve_task(cfg: config_lib.Config, data, model: Model) -> tasks_lib.Task:
    """The task for ``cfg.task.name`` and the data's targets; ConfigError on a mismatch."""
    name = cfg.task.name
    if name not in tasks_lib.TASKS:
        raise ConfigError("task.name", name, "one of " + ", ".join(tasks_lib.TASKS))
    if name == "auto":
        name = "classification" if data.target_kind == "class" else "regression_mse"
    if name == "classification" and data.target_kind != "class":
        raise ConfigError("task.name", cfg.task.name,
                          f"regression_mse or regression_mae for the real-valued targets of "
                          f"data.dataset={data.name}")
    if name != "classification" and data.target_kind == "class":
        raise ConfigError("task.name", cfg.task.name,
                          f"classification for the class labels of data.dataset={data.name}")
    if name == "classification":
        return tasks_lib.classification(model.apply, data.num_classes)
    return tasks_lib.regression(model.apply, name.split("_", 1)[1])


def _build_model(cfg: config_lib.Config, data) -> Model:
    if cfg.model.name not in ("auto", *MODELS):
        raise ConfigError("model.name", cfg.model.name, "one of auto, " + ", ".join(MODELS))
    if cfg.model.name in ("cnn", "cifar_cnn") and len(data.feature_shape) != 3:
        raise ConfigError("model.name", cfg.model.name, f"mlp for vector inputs of shape {data.feature_shape}")
    dense = len(cfg.model.hidden) + 1 if cfg.model.name in ("auto", "mlp") else 2
    if cfg.model.head_layers > dense:
        raise ConfigError("model.head_layers", cfg.model.head_layers, f"at most {dense} for this model")
    outputs = data.num_classes if data.target_kind == "class" else int(np.prod(data.target_shape, dtype=int))
    return build_model(cfg.model.name, data.feature_shape, outputs, cfg.model.hidden,
                       cfg.model.head_layers)


def prepare(cfg: config_lib.Config, data=None) -> Prepared:
    """Validates ``cfg`` and builds data, task, model, optimizers and algorithm (host side,
    nothing compiled). ``data`` may be given (a `FederatedData`) to skip building it."""
    from fedjax_sim.data import build_federated, validate_data_config

    config_lib.validate(cfg)
    check_name(cfg.algorithm)
    if data is None:
        validate_data_config(cfg.data)
        data = build_federated(cfg.data, cfg.seed)
    if cfg.cohort > data.num_clients:
        raise ConfigError("cohort", cfg.cohort, f"at most the number of clients ({data.num_clients})")
    model = _build_model(cfg, data)
    task = resolve_task(cfg, data, model)
    params0 = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    loc, srv = cfg.local, cfg.server
    client_opt = make_optimizer(loc.optimizer, loc.lr, momentum=loc.momentum, weight_decay=loc.weight_decay,
                                clip_norm=loc.clip_norm, args=loc.optimizer_args, field="local",
                                params_example=params0)
    server_opt = make_optimizer(srv.optimizer, srv.lr, momentum=srv.momentum, args=srv.optimizer_args,
                                field="server", params_example=params0)
    schedule = Schedule.make(data.max_train, loc.batch_size, loc.epochs, loc.steps)
    mapping = ClientMapping(cfg.client_mapping, cfg.chunk_size)
    cohort = cfg.cohort or data.num_clients
    ctx = BuildContext(task, model, client_opt, server_opt, schedule, data.max_train, loc.batch_size,
                       mapping, loc.formulation, srv.weighting, cohort, data.num_clients)
    algorithm = build(cfg.algorithm, ctx, cfg)
    return Prepared(cfg, data, model, task, schedule, mapping, algorithm)


def make_evaluator(prep: Prepared):
    """evaluate(state, data, key) -> dict of metrics (global and personalized), jittable."""
    alg, task = prep.algorithm, prep.task
    mapping = prep.mapping.resolved()

    def evaluate(state, data, key):
        out = {}
        if alg.global_params is not None:
            out.update(evaluate_global(task.metrics, alg.global_params(state), data.global_test))
        if alg.client_params is not None:
            params, stacked = alg.client_params(state, data, key), True
        else:
            params, stacked = alg.global_params(state), False
        out.update(evaluate_clients(task.metrics, params, data.test, data.n_test, stacked,
                                    task.headline, mapping))
        return out

    return evaluate


def _host(tree) -> dict:
    def conv(v):
        a = np.asarray(v)
        return a.tolist() if a.ndim else float(a)
    return {k: conv(v) for k, v in tree.items()}


def _default_out(cfg) -> str:
    return os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.algorithm}-{cfg.data.dataset.replace('/', '_')}")


RESULT_FILES = ("metrics.jsonl", "summary.json", "results.md", "comparison.png")


def check_out_dir(out: str) -> None:
    """A run never overwrites another run's or comparison's results, and its directory can be
    created (checked before anything is written or compiled)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError("--out", out, "a directory path (it is a file)")
    if path.exists() and any((path / f).exists() for f in RESULT_FILES):
        raise ConfigError("--out", out, "a new or empty directory (it holds another run's results)")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError("--out", out, f"a path whose existing part is a directory ({ancestor} is a file)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError("--out", out, f"a path this user can create ({ancestor} is not writable)")


def headline_keys(task: tasks_lib.Task) -> tuple[str, str, str]:
    """(global, personalized, per-client) metric names of the task's headline metric."""
    h = task.headline
    return f"global_{h}", f"personalized_{h}", f"personalized_{h}_per_client"


def run(cfg: config_lib.Config, progress: bool = True, data=None, prep: Prepared | None = None) -> dict:
    """Runs one experiment and writes its run directory; returns the summary."""
    prep = prep or prepare(cfg, data)
    cfg = prep.config
    out = Path(cfg.out or _default_out(cfg))
    check_out_dir(str(out))
    out.mkdir(parents=True, exist_ok=True)
    alg = prep.algorithm
    resolved = config_lib.to_dict(cfg)
    resolved["out"] = str(out)
    resolved["resolved"] = {"local_steps": prep.schedule.num_steps,
                            "batch_size": prep.schedule.batch_size,
                            "cohort": cfg.cohort or prep.data.num_clients,
                            "model": prep.model.name, "task": prep.task.name, **alg.info,
                            "backend": jax.default_backend()}
    (out / "config.json").write_text(json.dumps(resolved, indent=2))
    g_key, p_key, per_client_key = headline_keys(prep.task)
    from fedjax_sim.data import describe

    with count_compiles() as all_compiles:
        data = jax.device_put(prep.data)
        key = jax.random.PRNGKey(cfg.seed)
        k_init, k_rounds, k_eval, k_events = jax.random.split(key, 4)
        state = jax.jit(alg.init)(k_init, data)
        block_len = min(cfg.eval_every, cfg.rounds)
        round_keys = jax.random.split(k_rounds, cfg.rounds)
        events = None if alg.events is None else alg.events(k_events, cfg.rounds)
        example = jax.tree.map(lambda a: a[0], round_inputs(round_keys, 0, 1, 1, events))
        block = jax.jit(make_block(alg.round, state, data, example), donate_argnums=0)
        evaluate = jax.jit(make_evaluator(prep))

        metrics_path = out / "metrics.jsonl"
        history: list[dict] = []
        train_s, samples, done, block_compiles = 0.0, 0.0, 0, 0
        status, message = "ok", ""

        def log_eval(rnd: int, extra: dict):
            m = _host(evaluate(state, data, jax.random.fold_in(k_eval, rnd)))
            per_client = m.pop(per_client_key)
            rec = {"round": rnd, **extra, **m}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            history.append(rec)
            return rec, per_client

        rec, per_client = log_eval(0, {})
        bar = _progress(cfg.rounds, progress, f"{cfg.algorithm}")
        for b in range(math.ceil(cfg.rounds / block_len)):
            lo = b * block_len
            count = min(block_len, cfg.rounds - lo)
            inputs = round_inputs(round_keys, lo, count, block_len, events)
            jax.block_until_ready(inputs)
            t = time.perf_counter()
            with count_compiles() as compiles:
                state, metrics = block(state, data, inputs)
                losses = np.asarray(metrics["train_loss"])[:count]
            train_s += time.perf_counter() - t - compiles.seconds
            block_compiles += compiles.compiles
            if b > 0 and compiles.compiles:
                print(f"fedjax-sim: warning: the round block recompiled in block {b + 1} (a state or "
                      f"input changed shape or dtype); see timing.round_block_compiles", file=sys.stderr)
            samples += float(np.sum(np.asarray(metrics["samples"])[:count]))
            if not np.all(np.isfinite(losses)):
                bad = lo + int(np.argmin(np.isfinite(losses))) + 1
                status = "diverged"
                message = (f"training diverged at round {bad}: the training loss is {losses[bad - lo - 1]}; "
                           f"stopped, results up to round {done} are in {out} "
                           f"(try a smaller local.lr, now {cfg.local.lr})")
                with open(metrics_path, "a") as f:
                    f.write(json.dumps({"round": bad, "train_loss": None, "status": "diverged"}) + "\n")
                break
            done = lo + count
            logged = {}
            for name, values in metrics.items():
                values = np.asarray(values)[:count]
                if name != "samples" and values.ndim == 1:
                    logged[name] = float(values[-1])
                    logged[f"{name}_mean"] = float(np.mean(values))
            rec, per_client = log_eval(done, logged)
            if bar is not None:
                bar.update(count)
                bar.set_postfix({prep.task.headline[:12]: f"{rec.get(g_key, rec[p_key]):.3f}"})
        if bar is not None:
            bar.close()

        final = {k: v for k, v in rec.items() if k != "round"}
        # a client without test rows has no score: null, not a 0 that reads as perfect MSE
        has_test = np.asarray(prep.data.n_test) > 0
        final[per_client_key] = [v if h else None for v, h in zip(per_client, has_test)]
        final["loss"] = rec.get("global_loss", rec.get("personalized_loss"))
        if alg.report is not None:
            final.update(_host(jax.jit(alg.report)(state)))
    summary = {
        "algorithm": cfg.algorithm,
        "dataset": cfg.data.dataset,
        "task": {"name": prep.task.name, "headline": prep.task.headline,
                 "higher_is_better": prep.task.higher_is_better},
        "config": resolved,
        "rounds_completed": done,
        "data": describe(prep.data),
        "final": final,
        "timing": {"compile_seconds": all_compiles.seconds, "train_seconds": train_s,
                   "samples_per_second": samples / train_s if train_s > 0 else 0.0,
                   "compiles": all_compiles.compiles, "round_block_compiles": block_compiles},
        "status": status,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_history(history, out / "accuracy.png", cfg.algorithm, prep.task.headline)
    if cfg.checkpoint:
        save_checkpoint(state, out / "checkpoint.npz")
    if status == "diverged":
        raise DivergedError(message)
    return summary


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="round", leave=False)


def save_checkpoint(state, path: Path) -> None:
    """The final algorithm state, one array per pytree path (load with ``np.load``)."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(path, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})


def plot_history(history: list[dict], path: Path, title: str, headline: str = "accuracy") -> None:
    """The task's headline metric per evaluated round (global and personalized where present)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    rounds = [h["round"] for h in history]
    for key, label in ((f"global_{headline}", "global model, global test"),
                       (f"personalized_{headline}", "own model, own test (mean over clients)")):
        if all(key in h for h in history):
            ax.plot(rounds, [h[key] for h in history], marker="o", ms=3, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel(headline)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def with_out(cfg: config_lib.Config, out: str) -> config_lib.Config:
    new = config_lib.copy_config(cfg)
    new.out = out
    return new
