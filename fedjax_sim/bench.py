"""`fedjax-sim bench`: FedAvg round throughput on a synthetic workload, and, measured in the same
process on the same samples, centralized training at batch = cohort x local batch.

The workload matches ../shared/peers (N(0,1) features, uniform labels, plain SGD, plain average),
so its samples/s can be compared side by side with FedJAX and Flower.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_sim import config as config_lib
from fedjax_sim.core.driver import make_block, round_inputs
from fedjax_sim.core.local import Schedule, make_local_train
from fedjax_sim.core.optim import make_optimizer
from fedjax_sim.data.federated import make_federated
from fedjax_sim.errors import ConfigError
from fedjax_sim.runner import prepare


def synthetic_workload(clients: int, examples: int, features: int, classes: int, seed: int = 0):
    """N(0,1) features and uniform labels, generated as ../shared/peers/common.py does."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((clients, examples, features), dtype=np.float32)
    y = rng.integers(0, classes, size=(clients, examples), dtype=np.int32)
    n = np.full((clients,), examples, np.int32)
    one = np.ones((clients,), np.int32)
    return make_federated(x, y, n, x[:, :1], y[:, :1], one, x[0, :1], y[0, :1],
                          num_classes=classes, name="bench-synthetic")


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


def bench(model: str = "mlp", features: int = 784, hidden=(200, 200), classes: int = 10,
          clients: int = 1000, cohort: int = 100, examples_per_client: int = 64,
          batch_size: int = 16, local_epochs: int = 1, lr: float = 0.05, rounds: int = 5,
          repeats: int = 5, client_mapping: str = "auto", chunk_size: int = 0,
          formulation: str = "auto", seed: int = 0, optimizer: str = "sgd",
          momentum: float = 0.9) -> dict:
    for name, value, low in (("--features", features, 1), ("--classes", classes, 2),
                             ("--clients", clients, 1), ("--cohort", cohort, 1),
                             ("--examples-per-client", examples_per_client, 1),
                             ("--batch-size", batch_size, 1), ("--local-epochs", local_epochs, 1),
                             ("--rounds", rounds, 1), ("--repeats", repeats, 1)):
        if value < low:
            raise ConfigError(name, value, f"an integer >= {low}")
    if cohort > clients:
        raise ConfigError("--cohort", cohort, f"at most --clients={clients}")
    if model != "mlp":
        raise ConfigError("--model", model, "mlp (the bench workload is a vector MLP)")
    cfg = config_lib.Config(algorithm="fedavg", rounds=rounds, cohort=cohort, seed=seed,
                            client_mapping=client_mapping, chunk_size=chunk_size)
    cfg.model.name, cfg.model.hidden = "mlp", tuple(hidden)
    cfg.local.optimizer, cfg.local.lr, cfg.local.batch_size = optimizer, lr, batch_size
    cfg.local.momentum = momentum
    cfg.local.epochs, cfg.local.formulation = local_epochs, formulation
    cfg.server.optimizer, cfg.server.lr, cfg.server.weighting = "sgd", 1.0, "uniform"
    cfg.data.num_clients = clients
    data = synthetic_workload(clients, examples_per_client, features, classes, seed)
    prep = prepare(cfg, data)
    data = jax.device_put(data)
    alg = prep.algorithm
    key = jax.random.PRNGKey(seed)
    state = jax.jit(alg.init)(key, data)
    inputs = round_inputs(jax.random.split(key, rounds), 0, rounds, rounds)
    block_fn = make_block(alg.round, state, data, jax.tree.map(lambda a: a[0], inputs))

    t0 = time.perf_counter()
    block = jax.jit(block_fn).lower(state, data, inputs).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def fl_call():
        holder["state"], m = block(holder["state"], data, inputs)
        return holder["state"]

    jax.block_until_ready(fl_call())  # warm-up
    fl_times = _time(fl_call, repeats)
    samples = rounds * cohort * examples_per_client * local_epochs

    # Centralized: the same model, optimizer and step on the pooled samples of `cohort` clients,
    # batch = cohort x local batch, as many steps as the FL rounds took.
    pooled = cohort * examples_per_client
    rows = {"x": data.train["x"][:cohort].reshape(pooled, features),
            "y": data.train["y"][:cohort].reshape(pooled)}
    sched = Schedule.make(pooled, cohort * batch_size, rounds * local_epochs, 0)
    opt = make_optimizer(optimizer, lr, momentum=momentum).transform
    central = make_local_train(prep.task.loss, opt, sched, pooled)
    params = alg.global_params(state)
    c_fn = jax.jit(lambda p, k: central(p, opt.init(p), rows, jnp.int32(pooled), k)[0])
    t0 = time.perf_counter()
    c_comp = c_fn.lower(params, key).compile()
    central_compile = time.perf_counter() - t0
    jax.block_until_ready(c_comp(params, key))
    c_times = _time(lambda: c_comp(params, key), repeats)

    fl_s = statistics.median(fl_times)
    c_s = statistics.median(c_times)
    fl_sps, c_sps = samples / fl_s, samples / c_s
    return {
        "samples_per_second": fl_sps,
        "compile_seconds": compile_s,
        "seconds_per_round": fl_s / rounds,
        "centralized_samples_per_second": c_sps,
        "efficiency": fl_sps / c_sps,
        "centralized_compile_seconds": central_compile,
        "fl_seconds_runs": fl_times, "centralized_seconds_runs": c_times,
        "workload": {"model": model, "features": features, "hidden": list(hidden), "classes": classes,
                     "clients": clients, "cohort": cohort, "examples_per_client": examples_per_client,
                     "batch_size": batch_size, "local_epochs": local_epochs, "lr": lr,
                     "rounds": rounds, "repeats": repeats},
        "engine": {"client_mapping": alg.info.get("client_mapping"), "chunk_size": alg.info.get("chunk_size"),
                   "formulation": alg.info.get("formulation"), "local_steps": prep.schedule.num_steps,
                   "optimizer": optimizer},
        "platform": {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
                     "jax": jax.__version__, "cpus": os.cpu_count(), "python": platform.python_version()},
    }


def format_human(r: dict) -> str:
    w, e = r["workload"], r["engine"]
    return (f"fedjax_sim FedAvg C={w['clients']} K={w['cohort']} R={w['rounds']} "
            f"[{e['client_mapping']}/{e['chunk_size']}, {e['formulation']}] on {r['platform']['backend']}: "
            f"{r['samples_per_second']:,.0f} samples/s, {r['seconds_per_round'] * 1e3:.1f} ms/round, "
            f"compile {r['compile_seconds']:.2f} s; centralized {r['centralized_samples_per_second']:,.0f} "
            f"samples/s; efficiency {r['efficiency']:.2f}")


def to_json(r: dict) -> str:
    return json.dumps(r)
