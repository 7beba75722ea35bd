"""Padding waste of unequal natural clients, masked vs trimmed local steps (local.padding).

    python scripts/padding_bench.py [--reps 3] [--clients 200] [--rounds 5] [--out docs/bench]
    python scripts/padding_bench.py --table docs/bench/padding-cpu-<stamp>.jsonl   # the table again

Writes FEMNIST-shaped federated EMNIST files in FedJAX's SQLite format to a temporary directory:
C writers whose sizes follow a log-normal with LEAF's reported FEMNIST moments (mean 226.83,
std 88.94 samples per writer, LEAF paper Table 1), 28x28 inputs, 62 classes, random pixels (the
speed does not depend on them), each with a test split of a tenth of its size. Then times
`fedjax-sim run --dataset femnist` (FedAvg, cohort 10 unless the workload says, one epoch of
batch 10, as FedJAX's EMNIST_CONV) in fresh processes, each workload with local.padding=masked and =trim, repetitions
interleaved: samples/s (real samples over training time, compile excluded) and the expected
waste that run recorded in resolved.local_padding (local steps run per non-empty step). Writes
<out>/padding-cpu.md (medians) and <out>/padding-cpu-<stamp>.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAF_MEAN, LEAF_STD = 226.83, 88.94  # FEMNIST samples per writer (LEAF, arXiv 1812.01097, Table 1)
# name -> extra flags; the CNN maps one client at a time on CPU, the MLP in chunks of 10
WORKLOADS = {
    "emnist_cnn (sequential)": ["--set", "model.name=emnist_cnn"],
    "mlp (chunked 10)": ["--set", "model.name=mlp", "--set", "local.formulation=materialized"],
    "mlp (vmap)": ["--set", "model.name=mlp", "--set", "local.formulation=materialized",
                   "--set", "client_mapping=vmap"],
    # a cohort of 50 in chunks of 10: trimmed, the chunks are grouped by size (map_clients' sort_by)
    "mlp (chunked 10), cohort 50": ["--set", "model.name=mlp", "--set", "local.formulation=materialized",
                                    "--cohort", "50"],
}
PADDINGS = ("masked", "trim")


def femnist_sizes(clients: int, seed: int = 0) -> np.ndarray:
    """Log-normal writer sizes with LEAF's FEMNIST mean and std, at least 10."""
    sigma2 = np.log(1 + (LEAF_STD / LEAF_MEAN) ** 2)
    mu = np.log(LEAF_MEAN) - sigma2 / 2
    return np.maximum(np.random.default_rng(seed).lognormal(mu, np.sqrt(sigma2), clients).round(), 10).astype(int)


def write_files(directory: str, sizes: np.ndarray, seed: int = 0) -> None:
    from fedjax_sim.data.natural_files import write_fedjax_sqlite as write_fedjax

    rng = np.random.default_rng(seed)
    make = lambda n: {"pixels": rng.uniform(0, 1, (n, 28, 28)).astype(np.float32),  # noqa: E731
                      "label": rng.integers(0, 62, n).astype(np.int32)}
    ids = [f"{i:016x}:f{i:04d}_00" for i in range(len(sizes))]
    write_fedjax(os.path.join(directory, "federated_emnist_train.sqlite"), {c: make(int(n)) for c, n in zip(ids, sizes)})
    write_fedjax(os.path.join(directory, "federated_emnist_test.sqlite"),
                 {c: make(max(int(n) // 10, 1)) for c, n in zip(ids, sizes)})


def run(directory: str, clients: int, rounds: int, flags: list, padding: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fedjax_sim.cli", "run", "--algorithm", "fedavg", "--dataset", "femnist",
               "--clients", str(clients), "--cohort", "10", "--rounds", str(rounds), "--no-progress",
               "--set", f"eval_every={rounds}", "--set", "local.batch_size=10", "--set", "local.lr=0.01",
               "--set", f"data.data_dir={directory}", "--set", f"local.padding={padding}", *flags,
               "--out", os.path.join(out, "run")]
        subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        summary = json.load(open(os.path.join(out, "run", "summary.json")))
        resolved = json.load(open(os.path.join(out, "run", "config.json")))["resolved"]
    return {"samples_per_s": summary["timing"]["samples_per_second"], "local_padding": resolved["local_padding"],
            "mapping": f"{resolved['client_mapping']}/{resolved['chunk_size']}",
            "max_train": summary["data"]["max_train"], "train_per_client": summary["data"]["train_per_client"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--table", default="", help="only rewrite <out>/padding-cpu.md from this run's .jsonl")
    a = ap.parse_args()
    if a.table:
        with open(a.table) as f:
            records = [json.loads(line) for line in f if line.strip()]
        stamp = os.path.basename(a.table)[len("padding-cpu-"):-len(".jsonl")]
        a.reps = 1 + max(r["rep"] for r in records)
        write_table(records, os.path.join(a.out, "padding-cpu.md"), stamp, a)
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    records = []
    with tempfile.TemporaryDirectory() as data_dir:
        write_files(data_dir, femnist_sizes(a.clients))
        with open(os.path.join(a.out, f"padding-cpu-{stamp}.jsonl"), "w") as log:
            for rep in range(a.reps):
                for name, flags in WORKLOADS.items():
                    for padding in PADDINGS:
                        rec = {"workload": name, "padding": padding, "rep": rep,
                               **run(data_dir, a.clients, a.rounds, flags, padding)}
                        records.append(rec)
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                        print(json.dumps(rec), flush=True)
    write_table(records, os.path.join(a.out, "padding-cpu.md"), stamp, a)


def write_table(records: list, path: str, stamp: str, a) -> None:
    sizes = records[0]["train_per_client"]
    lines = [f"# Padding waste on CPU (scripts/padding_bench.py, run {stamp}; medians over {a.reps} repetitions)", "",
             f"FEMNIST-shaped writers: {a.clients} clients, {sizes['min']}-{sizes['max']} training samples each "
             f"(mean {sizes['mean']:.1f}; log-normal with LEAF's FEMNIST moments), padded to {records[0]['max_train']}; "
             f"FedAvg, cohort 10 (unless named), one epoch of batch 10, {a.rounds} rounds per process. Waste = local steps run per "
             "non-empty step, expected over random cohorts (resolved.local_padding); ratio = samples/s against "
             "masked in the same repetition.", "",
             "| workload | mapping | padding | waste | samples/s | ratio to masked |", "|---|---|---|---|---|---|"]
    for name in WORKLOADS:
        base = {r["rep"]: r["samples_per_s"] for r in records if r["workload"] == name and r["padding"] == "masked"}
        for padding in PADDINGS:
            rows = [r for r in records if r["workload"] == name and r["padding"] == padding]
            if not rows:
                continue
            speed = statistics.median(r["samples_per_s"] for r in rows)
            ratio = statistics.median(r["samples_per_s"] / base[r["rep"]] for r in rows if r["rep"] in base)
            lines.append(f"| {name} | {rows[0]['mapping']} | {padding} | {rows[0]['local_padding']['waste']:.2f} | "
                         f"{speed:,.0f} | {ratio:.2f} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
