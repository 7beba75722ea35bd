"""Client mappings at cohorts 10 to 10,000 on one accelerator: samples/s and device memory, and the
cost of keeping per-client state in host memory (the scale issue's GPU measurements).

    python scripts/gpu_bench.py [--out DIR] [--budget-s 450] [--resume LOG ...]
    python scripts/gpu_bench.py --table a.jsonl,b.jsonl [--md docs/bench/scale-gpu.md]

Written for a lent machine whose time is short: every measurement is `fedjax-sim bench --json`
in a fresh process (device peak memory is per process: the allocator's ``peak_bytes_in_use``, with
preallocation off so it counts what the run allocates), each line is appended to
<out>/gpu-<stamp>.jsonl as soon as it exists, and no new run starts once ``--budget-s`` seconds
have passed. ``--resume`` skips the runs already in earlier logs, so a second call finishes the
list. A run that fails (out of memory, past ``--run-timeout-s``) is recorded with its error. The
runs go in order of what the issue needs most: the default mapping at every cohort for the MLP
and CNN (with centralized training at cohort 100, the speed issue's efficiency), SCAFFOLD's store
in device vs host memory, 100,000 clients, a host store larger than the device, then chunked,
sharded (a one-device mesh) and sequential mappings. ``--table`` writes the markdown table
(medians where a run repeats) from logs; ``--smoke`` shrinks every workload to check the script
on a CPU.
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
# model -> [(cohort K, clients C, examples per client, rounds per timed call)]; the CNN's 10,000
# clients hold 16 examples (one local step) to keep its 10,000-client rounds to seconds
COHORTS = {"mlp": [(10, 1000, 64, 50), (100, 1000, 64, 20), (1000, 1000, 64, 5), (10000, 10000, 64, 2)],
           "cnn": [(10, 100, 64, 10), (100, 1000, 64, 3), (1000, 1000, 64, 1), (10000, 10000, 16, 1)]}
MODEL_FLAGS = {"mlp": ["--model", "mlp"], "cnn": ["--model", "cnn", "--classes", "62"]}
# label -> bench flags; "auto" is the backend's default (vmap on GPU: core/mapping.py)
MAPPINGS = {"auto": [], "chunked 100": ["--client-mapping", "chunked", "--chunk-size", "100"],
            "sharded": ["--client-mapping", "sharded"], "sequential": ["--client-mapping", "sequential"]}
# SCAFFOLD's [C, P] control variates (the bench MLP: 0.8 MB a client) in device vs host memory
STATE = [(5000, 1000, 16, 2), (20000, 1000, 16, 2)]
# a store larger than the H100's memory (88 GB of control variates), host only: whether a host
# store really lets such a run start (its init builds the store in one program that ends in host
# memory; does XLA hold it whole on the device first?)
BEYOND_DEVICE = (110_000, 1000, 16, 1)
POPULATION = (100_000, 1000, 16, 2)


def plan(smoke: bool = False) -> list[dict]:
    """Every run, in the order they are measured: {key, part, model, mapping, C, K, examples,
    rounds, flags}."""
    def run(part, model, mapping, c, k, ex, rounds, extra=(), centralized=False):
        if smoke:  # the same flags at sizes a CPU runs in seconds
            c, k, ex, rounds = min(c, 40), min(k, 20), 16, 1
        flags = [*MODEL_FLAGS[model], "--clients", str(c), "--cohort", str(k), "--examples-per-client", str(ex),
                 "--rounds", str(rounds), *extra, *MAPPINGS[mapping]]
        if not centralized:
            flags.append("--no-centralized")
        key = f"{part} {model} {mapping} C={c} K={k} ex={ex}" + "".join(f" {x}" for x in extra)
        return {"key": key, "part": part, "model": model, "mapping": mapping, "C": c, "K": k, "examples": ex,
                "rounds": rounds, "flags": flags}

    runs = [run("mapping", m, "auto", c, k, ex, r, centralized=k == 100)
            for m in COHORTS for k, c, ex, r in COHORTS[m]]
    runs += [run("state", "mlp", "auto", c, k, ex, r, ("--algorithm", "scaffold", "--state-memory", mem))
             for c, k, ex, r in STATE for mem in ("device", "host")]
    runs.append(run("population", "mlp", "auto", *POPULATION))
    runs.append(run("state", "mlp", "auto", *BEYOND_DEVICE, ("--algorithm", "scaffold", "--state-memory", "host")))
    runs += [run("mapping", m, mapping, c, k, ex, r) for mapping in ("chunked 100", "sharded", "sequential")
             for m in COHORTS for k, c, ex, r in COHORTS[m] if mapping != "sequential" or k <= 1000]
    once: dict = {}  # each key once (--smoke maps several sizes to one)
    for r in runs:
        once.setdefault(r["key"], r)
    return list(once.values())


def measure(spec: dict, timeout: float) -> dict:
    """One `fedjax-sim bench --json` process: the bench's record, or {"error": its last line}."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, "-m", "fedjax_sim.cli", "bench", "--json", "--repeats", "3", *spec["flags"]]
    try:
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"ran past {timeout:.0f} s"}
    lines = [x for x in out.stderr.strip().splitlines() if x.strip()] or [f"exit {out.returncode}"]
    if out.returncode != 0:
        return {"error": lines[-1][:300]}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"no JSON line in its output ({lines[-1][:200]})"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--budget-s", type=float, default=450, help="start no run after this many seconds")
    ap.add_argument("--run-timeout-s", type=float, default=150)
    ap.add_argument("--resume", nargs="*", default=[], help="earlier logs whose runs are skipped")
    ap.add_argument("--smoke", action="store_true", help="tiny workloads: check the script on a CPU")
    ap.add_argument("--table", default="", help="comma-separated logs: write the markdown table and exit")
    ap.add_argument("--md", default=os.path.join(ROOT, "docs", "bench", "scale-gpu.md"))
    a = ap.parse_args()
    if a.table:
        paths = [p for p in a.table.split(",") if p]
        text = table(load(paths, ap, "--table"), [os.path.basename(p) for p in paths])  # before --md is touched
        with open(a.md, "w") as f:
            f.write(text)
        print(f"wrote {a.md}")
        return
    done = {r["key"] for r in load(a.resume, ap, "--resume")}
    todo = [s for s in plan(a.smoke) if s["key"] not in done]
    if not todo:
        print(f"every run is in the logs given: write the table with --table {','.join(a.resume)}")
        return
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    start = time.monotonic()
    with open(path, "w") as log:
        for i, spec in enumerate(todo):
            if time.monotonic() - start > a.budget_s:
                print(f"budget spent: {len(todo) - i} runs left; rerun with --resume {' '.join([*a.resume, path])}",
                      flush=True)
                break
            t = time.monotonic()
            result = measure(spec, a.run_timeout_s)
            rec = {k: v for k, v in spec.items() if k != "flags"} | {"seconds": time.monotonic() - t,
                                                                     "result": result}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps({"key": spec["key"], "seconds": round(rec["seconds"], 1), **summary(result)}),
                  flush=True)
    print(f"log: {path} (with the earlier logs, --table {','.join([*a.resume, path])})")


def load(paths: list[str], ap: argparse.ArgumentParser | None = None, flag: str = "") -> list[dict]:
    """Every record of the logs ``paths``; with ``ap``, a log that cannot be read is a usage
    error naming ``flag`` (exit 2)."""
    recs = []
    for p in paths:
        try:
            with open(p) as f:
                recs += [json.loads(line) for line in f if line.strip()]
        except (OSError, json.JSONDecodeError) as e:
            if ap is None:
                raise
            ap.error(f"{flag} {p}: not a log of this script ({type(e).__name__}: {e})")
    return recs


def summary(result: dict) -> dict:
    """The numbers a table row shows (or the error)."""
    if "error" in result:
        return {"error": result["error"]}
    mem, eng = result["memory"], result["engine"]
    return {"samples_per_s": result["samples_per_second"], "compile_s": result["compile_seconds"],
            "efficiency": result["efficiency"], "device_peak_bytes": mem["device_peak_bytes"],
            "peak_rss_bytes": mem["peak_rss_bytes"], "data_bytes": mem["data_bytes"],
            "client_state_bytes": mem["client_state_bytes"], "state_memory": mem["state_memory"],
            "ran_as": f"{eng['client_mapping']}/{eng['chunk_size']}", "formulation": eng["formulation"]}


def table(recs: list[dict], sources: list[str]) -> str:
    """Markdown: one row per run key (medians over repeated keys), in plan order, with the ratio of
    samples/s to the default mapping (mapping part) or to the device store (state part)."""
    gib = lambda b: "" if b is None else f"{b / 2**30:.2f}"  # noqa: E731
    rows: dict = {}
    for r in recs:
        rows.setdefault(r["key"], []).append(r)
    ok = lambda rs: [summary(r["result"]) for r in rs if "error" not in r["result"]]  # noqa: E731

    def med(rs, k):  # the median of the runs' values that exist (None: none does)
        vals = [s[k] for s in ok(rs) if s[k] is not None]
        return statistics.median(vals) if vals else None
    plat = next((r["result"]["platform"] for r in recs if "platform" in r["result"]), {})
    out = ["# One accelerator: client mappings, cohorts, host-memory state (scripts/gpu_bench.py)", "",
           f"Generated from {', '.join(sources)}. Device: {plat.get('device', '?')} ({plat.get('backend', '?')}), "
           f"jax {plat.get('jax', '?')}, {plat.get('cpus', '?')} CPU cores. Every run is a fresh "
           "`fedjax-sim bench` process (FedAvg unless named, plain SGD, batch 16, one epoch; samples/s is "
           "the median of 3 timed calls of a compiled block of rounds). Device peak: the allocator's "
           "peak bytes in use, preallocation off. Ratio: samples/s against the default mapping of the "
           "same workload (mapping), or against the store in device memory (state).", "",
           "| part | model | C | K | examples | mapping | ran as | samples/s | ratio | device peak GiB | "
           "peak RSS GiB | data GiB | efficiency | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, rs in rows.items():
        r0 = rs[0]
        base_key = {"mapping": key.replace(f" {r0['mapping']} ", " auto "),  # a base for its ratio
                    "state": key.replace("--state-memory host", "--state-memory device")}.get(r0["part"])
        sps = med(rs, "samples_per_s")
        if sps is None:
            cells = ["failed: " + rs[-1]["result"].get("error", "?").replace("|", "/")] + [""] * 7
        else:
            base = med(rows.get(base_key, []), "samples_per_s")
            ratio = f"{sps / base:.2f}" if base else ""
            eff = med(rs, "efficiency")
            cells = [ok(rs)[0]["ran_as"] + ("" if r0["part"] != "state" else f", {ok(rs)[0]['state_memory']}"),
                     f"{sps:,.0f}", ratio, gib(med(rs, "device_peak_bytes")), gib(med(rs, "peak_rss_bytes")),
                     gib(med(rs, "data_bytes")), "" if eff is None else f"{eff:.2f}", f"{med(rs, 'compile_s'):.1f}"]
        out.append(f"| {r0['part']} | {r0['model']} | {r0['C']:,} | {r0['K']:,} | {r0['examples']} | "
                   f"{r0['mapping']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
