"""Scale on this machine: the same bench workloads on 1, 2 and 4 (forced host) devices, and the
bench MLP over populations up to 100,000 clients with its peak memory.

    python scripts/scale_bench.py [--reps 3] [--out docs/bench] [--parts devices,cohort,population,collectives,state]
                                  [--merge docs/bench/scale-cpu-<stamp>.jsonl ...]

Every measurement is `fedjax-sim bench --json` in a fresh process (a device count is fixed when
JAX starts: ``XLA_FLAGS=--xla_force_host_platform_device_count=D``; peak memory is per process),
repetitions interleaved. ``devices``: each workload on one device with the default mapping, then
sharded over D devices; the ratio is samples/s against the one-device default of the same
repetition. ``population``: C clients x 16 examples each (784 features, float32), a 1,000-client
cohort, FedAvg (stateless): peak resident memory, the data's bytes and samples/s.
``state``: SCAFFOLD and Local with their per-client state in device vs host memory
(``--state-memory``), samples/s and peak memory. ``cohort``: the factored MLP's client mappings at cohorts 100 to 10,000 (one device, and sharded
over 2). ``collectives``: the time of the cross-device mean of 0.8 / 4.8 / 20 MB over 4 host devices (the
sizes one round of the sharded MLP / CNN / a 100-client cohort's rows all-reduces). Writes
<out>/scale-cpu.md (medians over the repetitions) and <out>/scale-cpu-<stamp>.jsonl; ``--merge``
adds the records of earlier runs' .jsonl files to the table (parts measured separately).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> bench flags (the peers' workloads, bench.py); the CNN times one round per call
DEVICE_WORKLOADS = {
    "mlp C=1000 K=100": ["--model", "mlp", "--clients", "1000", "--cohort", "100", "--rounds", "5"],
    "mlp C=1000 K=1000": ["--model", "mlp", "--clients", "1000", "--cohort", "1000", "--rounds", "2"],
    "mlp materialized C=1000 K=100": ["--model", "mlp", "--clients", "1000", "--cohort", "100", "--rounds", "5",
                                      "--formulation", "materialized"],
    "cnn C=100 K=10": ["--model", "cnn", "--classes", "62", "--clients", "100", "--cohort", "10", "--rounds", "2"],
    "cnn C=1000 K=100": ["--model", "cnn", "--classes", "62", "--clients", "1000", "--cohort", "100",
                         "--rounds", "1"],
}
DEVICES = (1, 2, 4)
# the factored MLP's client mapping x cohort on C = 10,000 clients (one device, plus sharded over 2
# host devices): the data behind core/mapping.py's FACTORED_CHUNK. (cohort, examples per client,
# rounds per timed call): the bench's 64 examples (4 local steps), and 16 (1 step) at 10,000
COHORTS = ((100, 64, 5), (1000, 64, 2), (1000, 16, 2), (10000, 16, 1))
COHORT_MAPPINGS = {"vmap": (["--client-mapping", "vmap"], 1), "chunked 10 (default)": ([], 1),
                   "chunked 100": (["--client-mapping", "chunked", "--chunk-size", "100"], 1),
                   "sharded over 2 (default)": ([], 2),
                   "sharded over 2, vmap on each": (["--client-mapping", "sharded", "--chunk-size", "100000"], 2)}
POPULATIONS = (1_000, 10_000, 100_000)
# stateful algorithms' per-client store in device vs host memory (state_memory), one device:
# name -> bench flags; on CPU both memories are the same RAM, so this measures the cost of moving
# the cohort's rows one at a time, not a memory saving
STATE_WORKLOADS = {
    "scaffold C=1000 K=100": ["--algorithm", "scaffold", "--clients", "1000", "--cohort", "100", "--rounds", "5"],
    "scaffold C=5000 K=1000": ["--algorithm", "scaffold", "--clients", "5000", "--cohort", "1000",
                               "--examples-per-client", "16", "--rounds", "2"],
    "local C=1000 K=100": ["--algorithm", "local", "--clients", "1000", "--cohort", "100", "--rounds", "5"],
}
STATE_MEMORIES = ("device", "host")


def bench(flags: list[str], devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "fedjax_sim.cli", "bench", "--json", "--no-centralized",
                          "--repeats", "3", *flags], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


COLLECTIVE_MB = (0.8, 4.8, 20.0)
COLLECTIVES = f"""
import os, statistics, time, json
import jax, numpy as np
from fedjax_sim import parallel
mesh = parallel.client_mesh(4)
out = {{}}
for mb in {COLLECTIVE_MB}:
    x = jax.device_put(np.ones((4, int(mb * 2**20 / 4)), np.float32), parallel.client_sharding(mesh))
    mean = jax.jit(lambda a: a.mean(0), out_shardings=parallel.replicated(mesh))
    jax.block_until_ready(mean(x))
    times = []
    for _ in range(20):
        t = time.perf_counter()
        jax.block_until_ready(mean(x))
        times.append(time.perf_counter() - t)
    out[str(mb)] = statistics.median(times)
print(json.dumps(out))
"""


def collectives() -> dict:
    """{MB: seconds} of a cross-device mean over 4 host devices (median of 20 calls)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", COLLECTIVES], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--parts", default="devices,cohort,population,collectives,state")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--merge", nargs="*", default=[], help="earlier runs' .jsonl records to add to the table")
    a = ap.parse_args()
    parts = a.parts.split(",")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    os.makedirs(a.out, exist_ok=True)
    runs: list[dict] = []
    for path in a.merge:
        with open(path) as f:
            runs += [json.loads(line) for line in f if line.strip()]
    stamps = [os.path.basename(p)[len("scale-cpu-"):-len(".jsonl")] for p in a.merge] + [stamp]
    with open(os.path.join(a.out, f"scale-cpu-{stamp}.jsonl"), "w") as log:
        def record(rec):
            runs.append(rec)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps({k: v for k, v in rec.items() if k != "result"}), flush=True)

        for rep in range(a.reps):
            if "collectives" in parts:
                for mb, seconds in collectives().items():
                    record({"part": "collectives", "megabytes": float(mb), "rep": rep, "seconds": seconds})
            if "devices" in parts:
                for name, flags in DEVICE_WORKLOADS.items():
                    for d in DEVICES:
                        mapping = ["--client-mapping", "sharded"] if d > 1 else []
                        r = bench(flags + mapping, d)
                        record({"part": "devices", "workload": name, "devices": d, "rep": rep,
                                "samples_per_s": r["samples_per_second"], "peak_rss": r["memory"]["peak_rss_bytes"],
                                "mapping": f"{r['engine']['client_mapping']}/{r['engine']['chunk_size']}",
                                "placement": r["engine"]["data_placement"], "result": r})
            if "cohort" in parts:
                for k, examples, rounds in COHORTS:
                    for name, (flags, d) in COHORT_MAPPINGS.items():
                        r = bench(["--model", "mlp", "--clients", "10000", "--cohort", str(k), "--examples-per-client",
                                   str(examples), "--rounds", str(rounds), *flags], d)
                        record({"part": "cohort", "cohort": k, "examples": examples, "mapping_name": name,
                                "devices": d, "rep": rep,
                                "samples_per_s": r["samples_per_second"], "peak_rss": r["memory"]["peak_rss_bytes"],
                                "mapping": f"{r['engine']['client_mapping']}/{r['engine']['chunk_size']}",
                                "result": r})
            if "state" in parts:
                for name, flags in STATE_WORKLOADS.items():
                    for memory in STATE_MEMORIES:
                        r = bench(["--model", "mlp", *flags, "--state-memory", memory], 1)
                        record({"part": "state", "workload": name, "memory": r["memory"]["state_memory"], "rep": rep,
                                "samples_per_s": r["samples_per_second"], "peak_rss": r["memory"]["peak_rss_bytes"],
                                "client_state_bytes": r["memory"]["client_state_bytes"], "result": r})
            if "population" in parts:
                for c in POPULATIONS:
                    r = bench(["--model", "mlp", "--clients", str(c), "--cohort", "1000", "--examples-per-client",
                               "16", "--rounds", "3"], 1)
                    record({"part": "population", "clients": c, "rep": rep, "samples_per_s": r["samples_per_second"],
                            "peak_rss": r["memory"]["peak_rss_bytes"], "data_bytes": r["memory"]["data_bytes"],
                            "state_bytes": r["memory"]["state_bytes"], "result": r})
    log_path = os.path.join(a.out, f"scale-cpu-{stamp}.jsonl")
    if os.path.getsize(log_path) == 0:  # nothing measured (a --merge only): no empty log, no stamp
        os.remove(log_path)
        stamps.pop()
    write_table(runs, os.path.join(a.out, "scale-cpu.md"), ", ".join(stamps))


def _median(rows, key):
    return statistics.median(r[key] for r in rows)


def _speed_cells(rows, base) -> str:
    """"samples/s | ratio | peak RSS GiB" of ``rows``: medians, the ratio taken per repetition
    against the ``base`` run of the same repetition."""
    base_speed = {r["rep"]: r["samples_per_s"] for r in base}
    ratio = statistics.median(r["samples_per_s"] / base_speed[r["rep"]] for r in rows if r["rep"] in base_speed)
    return f"{_median(rows, 'samples_per_s'):,.0f} | {ratio:.2f} | {_median(rows, 'peak_rss') / 2**30:.2f}"


def write_table(runs: list[dict], path: str, stamp: str) -> None:
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    lines = [f"# Scale on CPU (scripts/scale_bench.py, runs {stamp}; medians over repetitions)", ""]
    dev = [r for r in runs if r["part"] == "devices"]
    if dev:
        plat = dev[0]["result"]["platform"]
        lines += [f"Forced host devices (`--xla_force_host_platform_device_count`) on {plat['cpus']} CPU cores, "
                  f"jax {plat['jax']}; ratio = samples/s against one device with the default mapping, "
                  "per repetition, then the median.", "",
                  "| workload | devices | mapping (per device) | data | samples/s | ratio to 1 device | peak RSS GiB |",
                  "|---|---|---|---|---|---|---|"]
        for name in DEVICE_WORKLOADS:
            for d in DEVICES:
                rows = [r for r in dev if r["workload"] == name and r["devices"] == d]
                if not rows:
                    continue
                base = [r for r in dev if r["workload"] == name and r["devices"] == 1]
                lines.append(f"| {name} | {d} | {rows[0]['mapping']} | {rows[0]['placement']} | {_speed_cells(rows, base)} |")
        lines.append("")
    coh = [r for r in runs if r["part"] == "cohort"]
    if coh:
        lines += ["Cohort: the factored MLP (plain SGD, batch 16), C = 10,000 clients, by client mapping; ratio "
                  "against plain vmap on one device in the same repetition.", "",
                  "| cohort | examples (local steps) | mapping | devices | ran as | samples/s | ratio to vmap | "
                  "peak RSS GiB |", "|---|---|---|---|---|---|---|---|"]
        for k, examples, _ in COHORTS:
            same = [r for r in coh if r["cohort"] == k and r["examples"] == examples]
            base = [r for r in same if r["mapping_name"] == "vmap"]
            for name in COHORT_MAPPINGS:
                rows = [r for r in same if r["mapping_name"] == name]
                if rows:
                    lines.append(f"| {k:,} | {examples} ({examples // 16}) | {name} | {rows[0]['devices']} | "
                                 f"{rows[0]['mapping']} | {_speed_cells(rows, base)} |")
        lines.append("")
    coll = [r for r in runs if r["part"] == "collectives"]
    if coll:
        lines += ["Collectives: a cross-device mean of an [4, n] float32 array split over 4 host devices, replicated "
                  "result (median of 20 calls per repetition). One sharded round all-reduces the summed client "
                  "deltas (0.8 MB for the MLP, 4.8 MB for the CNN) and, with split data, the cohort's rows "
                  "(20 MB for 100 clients x 64 x 784 float32).", "",
                  "| MB | ms |", "|---|---|"]
        for mb in COLLECTIVE_MB:
            rows = [r for r in coll if r["megabytes"] == mb]
            if rows:
                lines.append(f"| {mb:g} | {_median(rows, 'seconds') * 1e3:.2f} |")
        lines.append("")
    pop = [r for r in runs if r["part"] == "population"]
    if pop:
        lines += ["Population: the bench MLP (784-200-200-10), C clients x 16 examples, cohort 1,000, FedAvg "
                  "(stateless: the device holds the data and the global model), one device. Beyond the data = "
                  "peak RSS minus twice the data (the host copy the bench generates and the device copy).", "",
                  "| clients | data GiB | model state MiB | peak RSS GiB | beyond the data GiB | samples/s |",
                  "|---|---|---|---|---|---|"]
        for c in POPULATIONS:
            rows = [r for r in pop if r["clients"] == c]
            if rows:
                peak, data = _median(rows, "peak_rss"), rows[0]["data_bytes"]
                lines.append(f"| {c:,} | {gib(data)} | {rows[0]['state_bytes'] / 2**20:.1f} | {gib(peak)} | "
                             f"{gib(peak - 2 * data)} | {_median(rows, 'samples_per_s'):,.0f} |")
        lines.append("")
    state = [r for r in runs if r["part"] == "state"]
    if state:
        lines += ["Per-client state in device or host memory (`state_memory`; the bench MLP, one device, plain "
                  "SGD): the store stays in pinned host memory and each round moves the cohort's rows one at a "
                  "time. On CPU both memories are the same RAM: this is the cost of the row moves, not a memory "
                  "saving. Ratio against the device store in the same repetition.", "",
                  "| workload | client state GiB | memory | samples/s | ratio to device | peak RSS GiB |",
                  "|---|---|---|---|---|---|"]
        for name in STATE_WORKLOADS:
            base = [r for r in state if r["workload"] == name and r["memory"] == "device"]
            for memory in STATE_MEMORIES:
                rows = [r for r in state if r["workload"] == name and r["memory"] == memory]
                if rows:
                    lines.append(f"| {name} | {gib(rows[0]['client_state_bytes'])} | {memory} | "
                                 f"{_speed_cells(rows, base)} |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
