"""Config -> run directory (config.json, metrics.jsonl, summary.json, plots, checkpoints).

Everything that can be wrong with the input is checked in `prepare`, before any directory is
created and before anything compiles.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_sim import config as config_lib
from fedjax_sim.algorithms import Algorithm, BuildContext, build
from fedjax_sim.core.cohort import LocalSpec, choose_formulation, factored_eligible
from fedjax_sim.core.driver import make_block
from fedjax_sim.core.evaluate import evaluate_clients, evaluate_global
from fedjax_sim.core.local import Schedule
from fedjax_sim.core.mapping import resolve
from fedjax_sim.errors import ConfigError, DivergedError
from fedjax_sim.models import Model, build_model

SUMMARY_KEYS = ("algorithm", "dataset", "config", "rounds_completed", "final", "timing")


class Prepared(NamedTuple):
    config: config_lib.Config
    data: Any
    model: Model
    local: LocalSpec
    algorithm: Algorithm


def prepare(cfg: config_lib.Config, data=None) -> Prepared:
    """Validates ``cfg`` and builds data, model and algorithm (host side, nothing compiled).

    ``data`` may be given (a `FederatedData`) to skip building it from ``cfg.data``.
    """
    from fedjax_sim.data import build_federated, validate_data_config

    config_lib.validate(cfg)
    if data is None:
        validate_data_config(cfg.data)
        data = build_federated(cfg.data, cfg.seed)
    if cfg.cohort > data.num_clients:
        raise ConfigError("cohort", cfg.cohort, f"at most the number of clients ({data.num_clients})")
    from fedjax_sim.models import MODELS
    if cfg.model.name not in ("auto", *MODELS):
        raise ConfigError("model.name", cfg.model.name, "one of auto, " + ", ".join(MODELS))
    if cfg.model.name in ("cnn", "cifar_cnn") and len(data.feature_shape) != 3:
        raise ConfigError("model.name", cfg.model.name, f"mlp for vector inputs of shape {data.feature_shape}")
    dense = len(cfg.model.hidden) + 1 if cfg.model.name in ("auto", "mlp") else 2
    if cfg.model.head_layers > dense:
        raise ConfigError("model.head_layers", cfg.model.head_layers, f"at most {dense} for this model")
    model = build_model(cfg.model.name, data.feature_shape, data.num_classes, cfg.model.hidden,
                        cfg.model.head_layers)
    strategy, chunk = resolve(cfg.client_mapping, cfg.chunk_size)
    schedule = Schedule.make(data.max_train, cfg.local.batch_size, cfg.local.epochs, cfg.local.steps)
    spec = LocalSpec(cfg.local.optimizer, cfg.local.lr, cfg.local.momentum, cfg.local.weight_decay,
                     cfg.local.clip_norm, schedule, data.max_train, strategy, chunk,
                     cfg.local.formulation)
    if cfg.client_mapping == "auto" and choose_formulation(
            model, spec, jax.eval_shape(model.init, jax.random.PRNGKey(0))) == "factored":
        # measured: the factored formulation is fastest under plain vmap on every backend, since
        # its shared GEMMs then see the whole cohort (docs/bench/mapping-cpu.md)
        spec = spec._replace(strategy="vmap", chunk_size=0)
    if cfg.local.formulation == "factored" and not factored_eligible(model, spec):
        raise ConfigError("local.formulation", "factored",
                          "auto or materialized unless the model is an mlp trained with plain sgd "
                          "(no momentum, weight decay or clipping)")
    cohort = cfg.cohort or data.num_clients
    algorithm = build(cfg.algorithm, BuildContext(cfg, model, data, spec, cohort))
    return Prepared(cfg, data, model, spec, algorithm)


def make_evaluator(prep: Prepared):
    """evaluate(state, data, key) -> dict of metrics (global and personalized), jittable."""
    alg, model, spec = prep.algorithm, prep.model, prep.local

    def evaluate(state, data, key):
        out = {}
        if alg.global_params is not None:
            out.update(evaluate_global(model.apply, alg.global_params(state), data.x_global, data.y_global))
        if alg.client_params is not None:
            params, stacked = alg.client_params(state, data, key), True
        else:
            params, stacked = alg.global_params(state), False
        out.update(evaluate_clients(model.apply, params, data.x_test, data.y_test, data.n_test,
                                    stacked, spec.strategy, spec.chunk_size))
        return out

    return evaluate


def _host(tree) -> dict:
    def conv(v):
        a = np.asarray(v)
        return a.tolist() if a.ndim else float(a)
    return {k: conv(v) for k, v in tree.items()}


def _default_out(cfg) -> str:
    return os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.algorithm}-{cfg.data.dataset.replace('/', '_')}")


def check_out_dir(out: str) -> None:
    """A run never overwrites another run's results."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or (path / "metrics.jsonl").exists() or (path / "summary.json").exists()):
        raise ConfigError("--out", out, "a new or empty directory (it holds another run's results)")


def run(cfg: config_lib.Config, progress: bool = True, data=None, prep: Prepared | None = None) -> dict:
    """Runs one experiment and writes its run directory; returns the summary."""
    prep = prep or prepare(cfg, data)
    cfg = prep.config
    out = Path(cfg.out or _default_out(cfg))
    check_out_dir(str(out))
    out.mkdir(parents=True, exist_ok=True)
    resolved = config_lib.to_dict(cfg)
    resolved["out"] = str(out)
    resolved["resolved"] = {"client_mapping": prep.local.strategy, "chunk_size": prep.local.chunk_size,
                            "local_steps": prep.local.schedule.num_steps,
                            "batch_size": prep.local.schedule.batch_size,
                            "cohort": cfg.cohort or prep.data.num_clients,
                            "model": prep.model.name, **prep.algorithm.info,
                            "backend": jax.default_backend()}
    (out / "config.json").write_text(json.dumps(resolved, indent=2))

    data = jax.device_put(prep.data)
    alg = prep.algorithm
    key = jax.random.PRNGKey(cfg.seed)
    k_init, k_rounds, k_eval = jax.random.split(key, 3)
    state = jax.jit(alg.init)(k_init, data)
    block_len = min(cfg.eval_every, cfg.rounds)
    block_fn = make_block(alg.round, state, data, k_rounds)
    keys_ex = jnp.zeros((block_len, *k_rounds.shape), k_rounds.dtype)
    active_ex = jnp.ones((block_len,), bool)
    t0 = time.perf_counter()
    block = jax.jit(block_fn, donate_argnums=0).lower(state, data, keys_ex, active_ex).compile()
    evaluate = jax.jit(make_evaluator(prep)).lower(state, data, k_eval).compile()
    compile_s = time.perf_counter() - t0

    round_keys = jax.random.split(k_rounds, cfg.rounds)
    metrics_path = out / "metrics.jsonl"
    history: list[dict] = []
    train_s, samples, done = 0.0, 0.0, 0
    status, message = "ok", ""

    def log_eval(rnd: int, extra: dict):
        m = _host(evaluate(state, data, jax.random.fold_in(k_eval, rnd)))
        per_client = m.pop("personalized_accuracy_per_client")
        rec = {"round": rnd, **extra, **m}
        with open(metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        history.append(rec)
        return rec, per_client

    rec, per_client = log_eval(0, {})
    bar = _progress(cfg.rounds, progress, f"{cfg.algorithm}")
    nblocks = math.ceil(cfg.rounds / block_len)
    for b in range(nblocks):
        lo = b * block_len
        count = min(block_len, cfg.rounds - lo)
        keys = jnp.concatenate([round_keys[lo:lo + count],
                                jnp.zeros((block_len - count, *k_rounds.shape), k_rounds.dtype)])
        active = jnp.arange(block_len) < count
        t = time.perf_counter()
        state, metrics = block(state, data, keys, active)
        losses = np.asarray(metrics["train_loss"])[:count]
        train_s += time.perf_counter() - t
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
            bar.set_postfix(acc=f"{rec.get('global_accuracy', rec['personalized_accuracy']):.3f}")
    if bar is not None:
        bar.close()

    final = {k: v for k, v in rec.items() if k != "round"}
    final["personalized_accuracy_per_client"] = per_client
    final["loss"] = rec.get("global_loss", rec.get("personalized_loss"))
    if alg.report is not None:
        final.update(_host(jax.jit(alg.report)(state)))
    summary = {
        "algorithm": cfg.algorithm,
        "dataset": cfg.data.dataset,
        "config": resolved,
        "rounds_completed": done,
        "final": final,
        "timing": {"compile_seconds": compile_s, "train_seconds": train_s,
                   "samples_per_second": samples / train_s if train_s > 0 else 0.0},
        "status": status,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_history(history, out / "accuracy.png", cfg.algorithm)
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


def plot_history(history: list[dict], path: Path, title: str) -> None:
    """Accuracy per evaluated round (global and personalized where present)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    rounds = [h["round"] for h in history]
    for key, label in (("global_accuracy", "global model, global test"),
                       ("personalized_accuracy", "own model, own test (mean over clients)")):
        if all(key in h for h in history):
            ax.plot(rounds, [h[key] for h in history], marker="o", ms=3, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def with_out(cfg: config_lib.Config, out: str) -> config_lib.Config:
    return dataclasses.replace(cfg, out=out)
