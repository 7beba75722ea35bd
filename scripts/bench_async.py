"""Asynchronous replay throughput against the synchronous round on the same cohort size.

    python scripts/bench_async.py [--clients 1000] [--cohort 10,100] [--rounds 20] [--reps 5]

Workload: `fedjax-sim bench`'s (N(0,1) features 784, 10 classes, MLP 200-200, 64 examples per
client, batch 16, one local epoch, plain SGD), on CPU unless a GPU is present. For each cohort
size K, in one process and interleaved repetition by repetition:

  * ``fedavg``: the synchronous round (K sampled clients from one global model), in the
    formulation `auto` picks and forced ``materialized``;
  * ``fedbuff``: K buffered arrivals per server update, each trained from its own stale version
    read from the ring (concurrency 2K, lognormal speeds), always materialized;
  * ``fedasync``: one arrival per server update (the same concurrency), reported per arrival;
  * ``fedadt``: FedBuff plus the server-side distillation at its defaults (10 steps on proxy
    batches of 256 from a 512-row proxy set, lambda_max 1 with a constant schedule, so every
    update is corrected): the distillation's cost on top of the replay.

Each variant's round block (``--rounds`` rounds, one compile) is timed ``--reps`` times; the
medians give samples/s and the ratio fedbuff / fedavg (materialized) is the replay overhead.
Prints a markdown table and writes it to <out>/async.md, with the raw times in
<out>/async-<stamp>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from fedjax_sim import config as config_lib  # noqa: E402
from fedjax_sim.bench import synthetic_workload  # noqa: E402
from fedjax_sim.core.driver import make_block, round_inputs  # noqa: E402
from fedjax_sim.runner import prepare  # noqa: E402


def variant(name: str, algorithm: str, data, clients: int, cohort: int, rounds: int, formulation: str):
    """A compiled round block and its samples per call."""
    cfg = config_lib.Config(algorithm=algorithm, rounds=rounds, cohort=cohort)
    cfg.model.name, cfg.model.hidden = "mlp", (200, 200)
    cfg.local.lr, cfg.local.batch_size, cfg.local.formulation = 0.05, 16, formulation
    cfg.server.weighting = "uniform"
    cfg.data.num_clients = clients
    cfg.clock.speed, cfg.clock.concurrency = "lognormal", min(2 * cohort, clients)
    config_lib.set_field(cfg, "fedbuff.buffer_size", cohort)
    if algorithm == "fedadt":
        cfg.data.proxy_fraction = 0.05  # checked by prepare; the rows come with ``data``
        config_lib.set_field(cfg, "fedadt.lambda_max", 1.0)
        config_lib.set_field(cfg, "fedadt.schedule", "constant")
        config_lib.set_field(cfg, "fedadt.gate", "one")
    prep = prepare(cfg, data)
    alg = prep.algorithm
    key = jax.random.PRNGKey(0)
    state = jax.jit(alg.init)(key, data)
    events = jax.tree.map(jax.numpy.asarray, alg.events(0, data, rounds)) if alg.events else None
    inputs = round_inputs(jax.random.split(key, rounds), 0, rounds, rounds, events)
    fn = make_block(alg.round, state, data, jax.tree.map(lambda a: a[0], inputs))
    t0 = time.perf_counter()
    block = jax.jit(fn).lower(state, data, inputs).compile()
    compile_s = time.perf_counter() - t0
    per_round = 1 if algorithm == "fedasync" else cohort
    samples = rounds * per_round * int(data.n_train[0])
    holder = {"state": state}

    def call():
        holder["state"], _ = block(holder["state"], data, inputs)
        jax.block_until_ready(holder["state"])

    call()  # warm-up
    return {"name": name, "call": call, "samples": samples, "compile_s": compile_s,
            "formulation": alg.info.get("formulation"), "times": []}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--cohort", default="10,100")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    a = p.parse_args(argv)
    data = synthetic_workload(a.clients, 64, 784, 10)
    proxy = np.random.default_rng(1).standard_normal((512, 784), dtype=np.float32)
    data = jax.device_put(data.replace(proxy={"x": proxy}))
    rows, record = [], {"backend": jax.default_backend(), "cpus": os.cpu_count(), "clients": a.clients,
                        "rounds": a.rounds, "reps": a.reps, "results": []}
    for k in (int(x) for x in a.cohort.split(",")):
        vs = [variant("fedavg (auto)", "fedavg", data, a.clients, k, a.rounds, "auto"),
              variant("fedavg (materialized)", "fedavg", data, a.clients, k, a.rounds, "materialized"),
              variant("fedbuff replay", "fedbuff", data, a.clients, k, a.rounds, "materialized"),
              variant("fedasync replay", "fedasync", data, a.clients, k, a.rounds * k, "materialized"),
              variant("fedadt (fedbuff + distillation)", "fedadt", data, a.clients, k, a.rounds, "materialized")]
        for _ in range(a.reps):  # interleaved: the machine's noise hits every variant alike
            for v in vs:
                t = time.perf_counter()
                v["call"]()
                v["times"].append(time.perf_counter() - t)
        base = next(v for v in vs if v["name"] == "fedavg (materialized)")
        base_sps = base["samples"] / statistics.median(base["times"])
        for v in vs:
            sps = v["samples"] / statistics.median(v["times"])
            rows.append(f"| {k} | {v['name']} [{v['formulation']}] | {sps:,.0f} | {sps / base_sps:.2f} | "
                        f"{v['compile_s']:.1f} |")
            record["results"].append({"cohort": k, "variant": v["name"], "formulation": v["formulation"],
                                      "samples_per_second": sps, "ratio_to_sync_materialized": sps / base_sps,
                                      "compile_seconds": v["compile_s"], "seconds_runs": v["times"]})
    table = "\n".join([
        f"Generated by `python scripts/bench_async.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"({time.strftime('%Y-%m-%d')}): backend {record['backend']}, {record['cpus']} CPUs, C={a.clients}, "
        f"{a.rounds} server updates per timed block (FedAsync: {a.rounds} x K), median of {a.reps} "
        "interleaved repetitions, samples/s = trained samples / wall time of the block.", "",
        "| K | variant [formulation] | samples/s | ratio to sync (materialized) | compile s |",
        "|---|---|---|---|---|", *rows])
    print(table)
    os.makedirs(a.out, exist_ok=True)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    path = os.path.join(a.out, f"async-{stamp}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(a.out, "async.md"), "w") as f:
        f.write(table + "\n")
    print(f"wrote {path} and {os.path.join(a.out, 'async.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
