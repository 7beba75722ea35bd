"""`fedjax-sim bench`: FedAvg round throughput on a synthetic workload, and, measured in the same
process on the same samples, centralized training at batch = cohort x local batch.

The workload matches ../shared/peers (N(0,1) features, uniform labels, plain SGD, plain average),
so its samples/s can be compared side by side with FedJAX, pfl-research, Flower and a PyTorch
loop: ``--model mlp`` is their MLP (784-200-200-10), ``--model cnn`` their CNN (FedJAX's EMNIST
CNN without dropout, `models.emnist_cnn`, on the same features read as 28x28x1 images).
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
from fedjax_sim import parallel
from fedjax_sim.core.clients import holds_host_memory, to_host_memory
from fedjax_sim.core.driver import compiler_options, make_block, round_inputs
from fedjax_sim.core.local import Schedule, make_local_train
from fedjax_sim.core.mapping import STRATEGIES
from fedjax_sim.core.optim import OPTIMIZERS, make_optimizer
from fedjax_sim.data.federated import make_federated
from fedjax_sim.errors import ConfigError
from fedjax_sim.models.classifiers import resolve_conv
from fedjax_sim.runner import prepare


# --model -> (built-in model name, input kind); ``cnn`` is the peers' CNN
BENCH_MODELS = {"mlp": ("mlp", "vector"), "cnn": ("emnist_cnn", "image"), "emnist_cnn": ("emnist_cnn", "image"),
                "simple_cnn": ("simple_cnn", "image"), "cifar_cnn": ("cifar_cnn", "image"),
                "fedavg_cnn": ("cnn", "image")}
PEERS_IMAGE = (28, 28, 1)
BENCH_FLAGS = {"client_mapping": "--client-mapping", "chunk_size": "--chunk-size", "mesh_devices": "--mesh-devices",
               "local.formulation": "--formulation", "cohort": "--cohort", "algorithm": "--algorithm",
               "state_memory": "--state-memory", "local.optimizer_args": "--momentum"}
# FedAvg, and the stateful algorithms whose per-client store state_memory places
BENCH_ALGORITHMS = ("fedavg", "scaffold", "local")


def synthetic_workload(clients: int, examples: int, features: int | tuple, classes: int, seed: int = 0):
    """N(0,1) features and uniform labels, generated as ../shared/peers/common.py does;
    ``features``: a width, or an image shape whose rows are the same draws reshaped."""
    shape = tuple(features) if isinstance(features, (tuple, list)) else (features,)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((clients, examples, int(np.prod(shape))), dtype=np.float32)
    x = x.reshape(clients, examples, *shape)
    y = rng.integers(0, classes, size=(clients, examples), dtype=np.int32)
    n = np.full((clients,), examples, np.int32)
    one = np.ones((clients,), np.int32)
    return make_federated(x, y, n, x[:, :1], y[:, :1], one, x[0, :1], y[0, :1],
                          num_classes=classes, name="bench-synthetic")


def _peak_rss() -> int | None:
    """This process's peak resident set size in bytes (None where `resource` is missing)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)  # macOS: bytes; Linux: KiB


def _device_memory() -> dict:
    """The default device's allocator statistics: peak and limit in bytes (None where the backend
    keeps none, as XLA's CPU client does: there the peak RSS is the measure)."""
    stats = jax.devices()[0].memory_stats() or {}
    return {"device_peak_bytes": stats.get("peak_bytes_in_use"), "device_bytes_limit": stats.get("bytes_limit")}


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


def bench(model: str = "mlp", features: int | None = None, hidden=(200, 200), classes: int = 10,
          clients: int = 1000, cohort: int | None = None, examples_per_client: int = 64,
          batch_size: int = 16, local_epochs: int = 1, lr: float = 0.05, rounds: int = 5,
          repeats: int = 5, client_mapping: str = "auto", chunk_size: int = 0, mesh_devices: int = 0,
          formulation: str = "auto", seed: int = 0, optimizer: str = "sgd",
          momentum: float = 0.9, image_shape: tuple | None = None, conv: str = "auto",
          centralized: bool = True, algorithm: str = "fedavg", state_memory: str = "device") -> dict:
    """Times ``rounds`` rounds of ``algorithm`` (FedAvg by default) compiled as one block (median
    of ``repeats`` calls after a warm-up call) and, unless ``centralized`` is False, centralized
    training on the same samples. ``state_memory``: where a stateful algorithm's per-client
    store lives (device | host: pinned host memory, the cohort's rows moved each round).
    ConfigError (naming the flag) for a bad workload, before anything compiles."""
    cohort = min(100, clients) if cohort is None else cohort  # the default fits any population
    if algorithm not in BENCH_ALGORITHMS:
        raise ConfigError("--algorithm", algorithm, "one of " + ", ".join(BENCH_ALGORITHMS))
    if state_memory not in ("device", "host"):
        raise ConfigError("--state-memory", state_memory, "device or host")
    if model not in BENCH_MODELS:
        raise ConfigError("--model", model, "one of " + ", ".join(BENCH_MODELS))
    model_name, kind = BENCH_MODELS[model]
    if kind == "vector":
        if image_shape is not None:
            raise ConfigError("--image-shape", ",".join(map(str, image_shape)), f"unset for --model {model} "
                                                                                "(use --features)")
        features = 784 if features is None else features
        feature_shape = (features,)
    else:
        if features is not None:
            raise ConfigError("--features", features, f"unset for --model {model} (use --image-shape H,W,C)")
        image_shape = tuple(image_shape or PEERS_IMAGE)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ConfigError("--image-shape", ",".join(map(str, image_shape)), "three integers >= 1: H,W,C")
        if min(image_shape[:2]) < 6:
            raise ConfigError("--image-shape", ",".join(map(str, image_shape)), "H and W >= 6 for a conv model")
        feature_shape, features = image_shape, int(np.prod(image_shape))
    if conv not in ("auto", "xla", "patches"):
        raise ConfigError("--conv", conv, "one of auto, xla, patches")
    if optimizer not in OPTIMIZERS:
        raise ConfigError("--optimizer", optimizer, "one of " + ", ".join(OPTIMIZERS))
    for name, value, low in (("--features", features, 1), ("--classes", classes, 2),
                             ("--clients", clients, 1), ("--cohort", cohort, 1),
                             ("--examples-per-client", examples_per_client, 1),
                             ("--batch-size", batch_size, 1), ("--local-epochs", local_epochs, 1),
                             ("--rounds", rounds, 1), ("--repeats", repeats, 1)):
        if value < low:
            raise ConfigError(name, value, f"an integer >= {low}")
    if cohort > clients:
        raise ConfigError("--cohort", cohort, f"at most --clients={clients}")
    mappings = ("auto",) + STRATEGIES
    if client_mapping not in mappings:
        raise ConfigError("--client-mapping", client_mapping, "one of " + ", ".join(mappings))
    for name, value in (("--chunk-size", chunk_size), ("--mesh-devices", mesh_devices)):
        if value < 0:
            raise ConfigError(name, value, "an integer >= 0 (0 = default)")
    cfg = config_lib.Config(algorithm=algorithm, rounds=rounds, cohort=cohort, seed=seed,
                            client_mapping=client_mapping, chunk_size=chunk_size, mesh_devices=mesh_devices,
                            state_memory=state_memory)
    cfg.model.name, cfg.model.hidden, cfg.model.conv = model_name, tuple(hidden), conv
    cfg.local.optimizer, cfg.local.lr, cfg.local.batch_size = optimizer, lr, batch_size
    cfg.local.momentum = momentum
    cfg.local.epochs, cfg.local.formulation = local_epochs, formulation
    cfg.server.optimizer, cfg.server.lr, cfg.server.weighting = "sgd", 1.0, "uniform"
    cfg.data.num_clients = clients
    data = synthetic_workload(clients, examples_per_client, feature_shape, classes, seed)
    data_bytes = int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(data)))
    try:
        prep = prepare(cfg, data)
    except ConfigError as e:  # a config field the bench sets from a flag: name the flag
        raise ConfigError(BENCH_FLAGS.get(e.field, e.field), e.value, e.allowed) from None
    mesh = prep.mapping.mesh
    whole = {} if mesh is None else {"out_shardings": parallel.replicated(mesh)}
    put = jax.device_put if mesh is None else (lambda tree: parallel.put_replicated(tree, mesh))
    data = jax.device_put(data) if mesh is None else parallel.put_clients(data, mesh, clients)
    alg = prep.algorithm
    key = jax.random.PRNGKey(seed)
    host_store = alg.client_store if state_memory == "host" else ()
    state = jax.jit(lambda k, d: to_host_memory(alg.init(k, d), host_store), **whole)(put(key), data)
    inputs = put(round_inputs(jax.random.split(key, rounds), 0, rounds, rounds))
    block_fn = make_block(alg.round, state, data, jax.tree.map(lambda a: a[0], inputs))

    t0 = time.perf_counter()
    block = jax.jit(block_fn, compiler_options=compiler_options(), donate_argnums=0,
                    **whole).lower(state, data, inputs).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def fl_call():
        holder["state"], m = block(holder["state"], data, inputs)
        return holder["state"]

    jax.block_until_ready(fl_call())  # warm-up
    fl_times = _time(fl_call, repeats)
    samples = rounds * cohort * examples_per_client * local_epochs

    state = holder["state"]  # the first state was donated to the first call
    # a personalized algorithm has no global model: count (and time centralized training from) one
    # client's model, a fresh initialization, without copying the clients' store anywhere
    params = alg.global_params(state) if alg.global_params is not None else prep.model.init(key)
    fl_s = statistics.median(fl_times)
    fl_sps = samples / fl_s
    c_sps = c_times = central_compile = None
    if centralized:
        c_sps, c_times, central_compile = _centralized(prep, data, params, key, cohort, examples_per_client,
                                                       feature_shape, batch_size, rounds, local_epochs, optimizer,
                                                       lr, momentum, samples, repeats)
    return {
        "samples_per_second": fl_sps,
        "compile_seconds": compile_s,
        "seconds_per_round": fl_s / rounds,
        "centralized_samples_per_second": c_sps,
        "efficiency": fl_sps / c_sps if c_sps else None,
        "centralized_compile_seconds": central_compile,
        "fl_seconds_runs": fl_times, "centralized_seconds_runs": c_times,
        "workload": {"model": model, "model_name": model_name, "features": features,
                     "input_shape": list(feature_shape),
                     "hidden": list(hidden) if kind == "vector" else None, "classes": classes,
                     "parameters": int(sum(np.size(a) for a in jax.tree.leaves(params))),
                     "clients": clients, "cohort": cohort, "examples_per_client": examples_per_client,
                     "batch_size": batch_size, "local_epochs": local_epochs, "lr": lr,
                     "rounds": rounds, "repeats": repeats},
        # the process's peak resident memory (host RAM; on CPU this includes the device's arrays)
        "memory": {"peak_rss_bytes": _peak_rss(), **_device_memory(), "data_bytes": data_bytes,
                   "state_bytes": int(sum(a.nbytes for a in jax.tree.leaves(state))),
                   "client_state_bytes": int(sum(a.nbytes for f in alg.client_store
                                                 for a in jax.tree.leaves(getattr(state, f)))),
                   # measured: where the store's arrays are after the timed calls
                   "state_memory": "host" if holds_host_memory(state, alg.client_store) else "device",
                   "state_memory_reason": "requested" if alg.client_store else "no per-client store"},
        "engine": {"algorithm": algorithm, "client_mapping": alg.info.get("client_mapping"), "chunk_size": alg.info.get("chunk_size"),
                   "devices": 1 if mesh is None else mesh.size,
                   "data_placement": "device" if mesh is None else parallel.data_placement(clients, mesh),
                   "formulation": alg.info.get("formulation"), "local_steps": prep.schedule.num_steps,
                   "optimizer": optimizer,
                   "conv": resolve_conv(conv) if kind == "image" else None},
        "platform": {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
                     "jax": jax.__version__, "cpus": os.cpu_count(), "python": platform.python_version()},
    }


def _centralized(prep, data, params, key, cohort, examples_per_client, feature_shape, batch_size, rounds,
                 local_epochs, optimizer, lr, momentum, samples, repeats):
    """Centralized training: the same model, optimizer and step on the pooled samples of
    ``cohort`` clients, batch = cohort x local batch, as many steps as the FL rounds took.
    Returns (samples/s, the timed runs, compile seconds)."""
    pooled = cohort * examples_per_client
    rows = {"x": data.train["x"][:cohort].reshape(pooled, *feature_shape),
            "y": data.train["y"][:cohort].reshape(pooled)}
    sched = Schedule.make(pooled, cohort * batch_size, rounds * local_epochs, 0)
    opt = make_optimizer(optimizer, lr, momentum=momentum).transform
    central = make_local_train(prep.task.loss, opt, sched, pooled)
    c_fn = jax.jit(lambda p, k: central(p, opt.init(p), rows, jnp.int32(pooled), k)[0],
                   compiler_options=compiler_options())
    t0 = time.perf_counter()
    c_comp = c_fn.lower(params, key).compile()
    central_compile = time.perf_counter() - t0
    jax.block_until_ready(c_comp(params, key))
    c_times = _time(lambda: c_comp(params, key), repeats)
    return samples / statistics.median(c_times), c_times, central_compile


def format_human(r: dict) -> str:
    w, e = r["workload"], r["engine"]
    return (f"fedjax_sim FedAvg {w['model']} C={w['clients']} K={w['cohort']} R={w['rounds']} "
            f"[{e['client_mapping']}/{e['chunk_size']}, {e['formulation']}] on {r['platform']['backend']}: "
            f"{r['samples_per_second']:,.0f} samples/s, {r['seconds_per_round'] * 1e3:.1f} ms/round, "
            f"compile {r['compile_seconds']:.2f} s" + (
                f"; centralized {r['centralized_samples_per_second']:,.0f} samples/s; efficiency "
                f"{r['efficiency']:.2f}" if r["efficiency"] is not None else ""))


def to_json(r: dict) -> str:
    return json.dumps(r)
