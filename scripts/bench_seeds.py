"""Seeds as one vmapped program vs the same seeds one after another, side by side.

    python scripts/bench_seeds.py [--algorithm fedavg] [--seeds 16] [--rounds 100] [--reps 3] \
        [--processes] [--out docs/bench]

Each repetition runs, in turn and each as a fresh process (same machine, same process count):
  * ``vmap``: ``fedjax-sim run --seeds N --trials vmap`` (one program, every seed in each kernel);
  * ``sequential``: ``fedjax-sim run --seeds N --trials sequential`` (one process, one trial at a
    time; seeds with equal padded shapes reuse a compiled program);
  * with ``--processes``: N separate ``fedjax-sim run --seed k`` processes, what a user of a
    sequential simulator does (each pays start-up, data and compile).
Wall time covers everything from process start to exit; ``train_s`` is the summed time inside
the round blocks (compiles excluded). The default workload is ``fedjax-sim run``'s (digits, 20
clients, Dirichlet 0.3, 100 rounds). Writes <out>/seeds-<stamp>.jsonl (one record per run) and
prints medians and the ratios (sequential / vmap: > 1 means vmapped seeds are faster).
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _run(args: list[str], out: str) -> dict:
    cmd = [sys.executable, "-m", "fedjax_sim.cli", "run", *args, "--out", out, "--no-progress"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(p.stderr[-2000:])
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    return {"wall_s": wall, "train_s": summary["timing"]["train_seconds"],
            "compile_s": summary["timing"]["compile_seconds"],
            "accuracy": summary["final"].get("personalized_accuracy")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithm", default="fedavg")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--processes", action="store_true", help="also N separate processes, one per seed")
    p.add_argument("--set", action="append", default=[], help="extra --set for every run")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    a = p.parse_args(argv)
    common = ["--algorithm", a.algorithm, "--rounds", str(a.rounds)] + [x for s in a.set for x in ("--set", s)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = os.path.join(a.out, f"seeds-{stamp}.jsonl")
    os.makedirs(a.out, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            modes = ["vmap", "sequential"] + (["processes"] if a.processes else [])
            for mode in modes:
                out = os.path.join(tmp, f"{mode}-{rep}")
                if mode == "processes":
                    t = time.perf_counter()
                    runs = [_run(common + ["--seed", str(s)], f"{out}-{s}") for s in range(a.seeds)]
                    rec = {"wall_s": time.perf_counter() - t, "train_s": sum(r["train_s"] for r in runs),
                           "compile_s": sum(r["compile_s"] for r in runs)}
                else:
                    rec = _run(common + ["--seeds", str(a.seeds), "--trials", mode], out)
                rec.update(mode=mode, rep=rep, seeds=a.seeds, algorithm=a.algorithm, rounds=a.rounds,
                           extra=a.set)
                records.append(rec)
                with open(log, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
    med = {m: {k: statistics.median(r[k] for r in records if r["mode"] == m) for k in ("wall_s", "train_s")}
           for m in sorted({r["mode"] for r in records})}
    print(f"\n{a.algorithm}, {a.seeds} seeds, {a.rounds} rounds, medians of {a.reps} interleaved reps:")
    for m, v in med.items():
        print(f"  {m:11s} wall {v['wall_s']:7.1f} s   train {v['train_s']:7.1f} s")
    for m in med:
        if m != "vmap":
            print(f"  {m} / vmap: wall x{med[m]['wall_s'] / med['vmap']['wall_s']:.2f}, "
                  f"train x{med[m]['train_s'] / med['vmap']['train_s']:.2f}")
    table = markdown(records, a)
    with open(os.path.join(a.out, f"seeds-{a.algorithm}.md"), "w") as f:
        f.write(table + "\n")
    print(f"records: {log}")
    return 0


def markdown(records: list[dict], a) -> str:
    """The generated table (medians of the interleaved repetitions and their ratios)."""
    import platform

    modes = [m for m in ("vmap", "sequential", "processes") if any(r["mode"] == m for r in records)]
    med = {m: {k: statistics.median(r[k] for r in records if r["mode"] == m) for k in ("wall_s", "train_s")}
           for m in modes}
    lines = [f"Generated by `scripts/bench_seeds.py` ({a.algorithm}, {a.seeds} seeds, {a.rounds} rounds, "
             f"{a.reps} interleaved repetitions, medians; {platform.machine()}, {os.cpu_count()} CPUs, "
             f"JAX backend of the default install).", "",
             "| how the seeds run | wall s | train s | wall / vmap | train / vmap |", "|---|---|---|---|---|"]
    label = {"vmap": f"one program, `--seeds {a.seeds} --trials vmap`",
             "sequential": f"one process, `--seeds {a.seeds} --trials sequential`",
             "processes": f"{a.seeds} processes, `--seed k` each"}
    for m in modes:
        v = med[m]
        lines.append(f"| {label[m]} | {v['wall_s']:.1f} | {v['train_s']:.1f} | "
                     f"{v['wall_s'] / med['vmap']['wall_s']:.2f} | {v['train_s'] / med['vmap']['train_s']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
