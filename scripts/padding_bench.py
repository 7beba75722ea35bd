"""Padding waste of unequal natural clients: masked vs trimmed local steps (local.padding), and
padded vs packed training rows (data.layout).

    python scripts/padding_bench.py [--reps 3] [--clients 200] [--rounds 5] [--parts steps,layout] [--out docs/bench]
    python scripts/padding_bench.py --table docs/bench/padding-cpu-<stamp>.jsonl[,<another>.jsonl]   # tables again

Writes FEMNIST-shaped federated EMNIST files in FedJAX's SQLite format to a temporary directory:
C writers whose sizes follow a log-normal with LEAF's reported FEMNIST moments (mean 226.83,
std 88.94 samples per writer, LEAF paper Table 1), 28x28 inputs, 62 classes, random pixels (the
speed does not depend on them), each with a test split of a tenth of its size. Then times
`fedjax-sim run --dataset femnist` (FedAvg, cohort 10 unless the workload says, one epoch of
batch 10, as FedJAX's EMNIST_CONV) in fresh processes, each workload with local.padding=masked and =trim, repetitions
interleaved: samples/s (real samples over training time, compile excluded) and the expected
waste that run recorded in resolved.local_padding (local steps run per non-empty step). Part
``layout`` runs the CNN and the cohort-50 MLP (trimmed) with data.layout=padded and =packed and
also records the training arrays' bytes (exact, from the sizes) and the process's peak RSS.
Writes <out>/padding-cpu.md (medians) and <out>/padding-cpu-<stamp>.jsonl.
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
LAYOUT_WORKLOADS = ("emnist_cnn (sequential)", "mlp (chunked 10), cohort 50")
LAYOUTS = ("padded", "packed")
ROW_BYTES = (28 * 28 + 1) * 4  # x float32 + y int32


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


# the CLI in a child that prints its peak resident memory (KiB on Linux) when it is done
CHILD = ("import resource, sys; from fedjax_sim import cli; rc = cli.main(sys.argv[1:]); "
         "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def run(directory: str, clients: int, rounds: int, flags: list, padding: str, layout: str = "padded") -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", CHILD, "run", "--algorithm", "fedavg", "--dataset", "femnist",
               "--clients", str(clients), "--cohort", "10", "--rounds", str(rounds), "--no-progress",
               "--set", f"eval_every={rounds}", "--set", "local.batch_size=10", "--set", "local.lr=0.01",
               "--set", f"data.data_dir={directory}", "--set", f"local.padding={padding}",
               "--set", f"data.layout={layout}", *flags, "--out", os.path.join(out, "run")]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        maxrss = int(done.stdout.rsplit("MAXRSS", 1)[1].split()[0]) * 1024
        summary = json.load(open(os.path.join(out, "run", "summary.json")))
        resolved = json.load(open(os.path.join(out, "run", "config.json")))["resolved"]
    return {"samples_per_s": summary["timing"]["samples_per_second"], "local_padding": resolved["local_padding"],
            "mapping": f"{resolved['client_mapping']}/{resolved['chunk_size']}",
            "max_train": summary["data"]["max_train"], "train_per_client": summary["data"]["train_per_client"],
            "layout": summary["data"]["layout"], "peak_rss": maxrss}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--parts", default="steps,layout", help="steps (local.padding), layout (data.layout)")
    ap.add_argument("--table", default="", help="only rewrite <out>/padding-cpu.md from these runs' .jsonl (commas)")
    a = ap.parse_args()
    if a.table:  # one run's .jsonl, or several joined by commas (e.g. a steps run and a layout run)
        records, stamps = [], []
        for path in a.table.split(","):
            with open(path) as f:
                records += [json.loads(line) for line in f if line.strip()]
            stamps.append(os.path.basename(path)[len("padding-cpu-"):-len(".jsonl")])
        stamp = " + ".join(stamps)
        a.reps = 1 + max(r["rep"] for r in records)
        write_table(records, os.path.join(a.out, "padding-cpu.md"), stamp, a)
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    records = []
    with tempfile.TemporaryDirectory() as data_dir:
        write_files(data_dir, femnist_sizes(a.clients))
        with open(os.path.join(a.out, f"padding-cpu-{stamp}.jsonl"), "w") as log:
            parts = a.parts.split(",")
            for rep in range(a.reps):
                runs = [("steps", name, padding, "padded") for name in WORKLOADS for padding in PADDINGS
                        if "steps" in parts]
                runs += [("layout", name, "trim", layout) for name in LAYOUT_WORKLOADS for layout in LAYOUTS
                         if "layout" in parts]
                for part, name, padding, layout in runs:
                    rec = {"part": part, "workload": name, "padding": padding, "rep": rep,
                           **run(data_dir, a.clients, a.rounds, WORKLOADS[name], padding, layout)}
                    records.append(rec)
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    print(json.dumps(rec), flush=True)
    write_table(records, os.path.join(a.out, "padding-cpu.md"), stamp, a)


def _medians(records: list, workload: str, field: str, value: str, baseline: str) -> tuple:
    """(the workload's records with ``field == value``, their median samples/s, the median ratio
    to the ``baseline`` variant's samples/s in the same repetition); ([], 0, 0) without records."""
    rows = [r for r in records if r["workload"] == workload and r[field] == value]
    if not rows:
        return [], 0.0, 0.0
    base = {r["rep"]: r["samples_per_s"] for r in records if r["workload"] == workload and r[field] == baseline}
    speed = statistics.median(r["samples_per_s"] for r in rows)
    ratio = statistics.median(r["samples_per_s"] / base[r["rep"]] for r in rows if r["rep"] in base)
    return rows, speed, ratio


def write_table(records: list, path: str, stamp: str, a) -> None:
    sizes = records[0]["train_per_client"]
    lines = [f"# Padding waste on CPU (scripts/padding_bench.py, run {stamp}; medians over {a.reps} repetitions)", "",
             f"FEMNIST-shaped writers: {a.clients} clients, {sizes['min']}-{sizes['max']} training samples each "
             f"(mean {sizes['mean']:.1f}; log-normal with LEAF's FEMNIST moments), padded to {records[0]['max_train']}; "
             f"FedAvg, cohort 10 (unless named), one epoch of batch 10, {a.rounds} rounds per process. Waste = local steps run per "
             "non-empty step, expected over random cohorts (resolved.local_padding); ratio = samples/s against "
             "masked in the same repetition.", "",
             "| workload | mapping | padding | waste | samples/s | ratio to masked |", "|---|---|---|---|---|---|"]
    steps = [r for r in records if r.get("part", "steps") == "steps"]
    for name in WORKLOADS:
        for padding in PADDINGS:
            rows, speed, ratio = _medians(steps, name, "padding", padding, "masked")
            if not rows:
                continue
            lines.append(f"| {name} | {rows[0]['mapping']} | {padding} | {rows[0]['local_padding']['waste']:.2f} | "
                         f"{speed:,.0f} | {ratio:.2f} |")
    layout = [r for r in records if r.get("part") == "layout"]
    if layout:
        total = sizes["total"]
        clients = round(total / sizes["mean"])  # the records' population (not --clients' default)
        lines += ["", ("Training rows padded to the largest client or packed back to back (data.layout), trimmed "
                       "steps. Train bytes: the training arrays (exact, from the sizes); peak RSS: the whole process "
                       "(data loading, JAX, compiled programs); ratio = samples/s against padded in the same "
                       "repetition."), "",
                  "| workload | layout | train bytes | peak RSS | samples/s | ratio to padded |", "|---|---|---|---|---|---|"]
        for name in LAYOUT_WORKLOADS:
            for kind in LAYOUTS:
                rows, speed, ratio = _medians(layout, name, "layout", kind, "padded")
                if not rows:
                    continue
                held = (total if kind == "packed" else clients * rows[0]["max_train"]) * ROW_BYTES
                rss = statistics.median(r["peak_rss"] for r in rows)
                lines.append(f"| {name} | {kind} | {held / 2**20:,.0f} MiB | {rss / 2**20:,.0f} MiB | {speed:,.0f} | "
                             f"{ratio:.2f} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
