"""Where the time of one local-training step goes: a profile of the compiled client program.

    python scripts/profile_local.py --model cnn [--optimizer sgd] [--clients 1] [--out docs/bench]
    python scripts/profile_local.py --model mlp --optimizer momentum --clients 10

Builds the bench workload's model (`fedjax_sim.bench.BENCH_MODELS`), its task and the materialized
client program (`core.local.make_local_train`: a masked `lax.scan` over the local steps, batch
16, 64 examples, 1 epoch), maps it over ``--clients`` clients with plain vmap (1 client: no
vmap; the engine's sequential mapping runs clients this way), and times it under
`jax.profiler`, compiled with the engine's XLA options (`core.driver.compiler_options`). Every XLA operation of the step is listed with its mean time per local step, the
layer and pass it comes from (forward, or ``backward`` for a transposed JVP) and its output shape,
read from the optimized HLO. Writes <out>/profile-<model>-<optimizer>-<clients>.md.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_sim.bench import BENCH_MODELS, PEERS_IMAGE
from fedjax_sim.core.driver import compiler_options
from fedjax_sim.core.local import Schedule, make_local_train
from fedjax_sim.core.optim import make_optimizer
from fedjax_sim.models import build_model
from fedjax_sim.tasks import classification

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, BATCH = 64, 16


def hlo_index(text: str) -> dict:
    """instruction name -> (output shape, op_name metadata) for every instruction of the HLO."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+?)[{ ]", line)
        if m:
            op = re.search(r'op_name="([^"]+)"', line)
            out[m.group(1)] = (m.group(2), op.group(1) if op else "")
    return out


def describe(op_name: str) -> str:
    """`jit(f)/while/body/closed_call/transpose(jvp(CNN))/conv_1/dot_general` -> `backward conv_1 dot_general`."""
    parts = [p for p in op_name.split("/") if p and not p.startswith(("jit(", "vmap(")) and p not in (
        "while", "body", "closed_call", "cond")]
    backward = any(p.startswith("transpose(") for p in parts)
    parts = [re.sub(r"^(transpose\()?(jvp\()?(.*?)\)*$", r"\3", p) for p in parts]
    return ("backward " if backward else "") + " ".join(parts[-3:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn", choices=sorted(BENCH_MODELS))
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "bench"))
    a = ap.parse_args()
    name, kind = BENCH_MODELS[a.model]
    shape = PEERS_IMAGE if kind == "image" else (784,)
    classes = 62 if kind == "image" else 10
    model = build_model(name, shape, classes)
    task = classification(model.apply, classes, model.train_apply)
    opt = make_optimizer(a.optimizer, 0.05, momentum=0.9).transform
    sched = Schedule.make(N, BATCH, 1, 0)
    local = make_local_train(task.loss, opt, sched, N)
    params = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((a.clients, N, *shape), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, classes, (a.clients, N)), jnp.int32)
    keys = jax.random.split(jax.random.PRNGKey(1), a.clients)

    def one(xc, yc, k):
        return local(params, opt.init(params), {"x": xc, "y": yc}, jnp.int32(N), k)[0]

    fn = jax.jit(jax.vmap(one) if a.clients > 1 else lambda x, y, k: one(x[0], y[0], k[0]),
                 compiler_options=compiler_options())  # as the engine compiles its round block
    compiled = fn.lower(x, y, keys).compile()
    index = hlo_index(compiled.as_text())
    jax.block_until_ready(compiled(x, y, keys))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(compiled(x, y, keys))
        times.append(time.perf_counter() - t)
    steps = sched.num_steps
    per_step_ms = statistics.median(times) / steps * 1e3
    trace_dir = tempfile.mkdtemp(prefix="fedjax-sim-profile-")
    try:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(a.calls):
                jax.block_until_ready(compiled(x, y, keys))
        path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True))[-1]
        events = json.load(gzip.open(path))
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in index:
            total[e["name"]] += e.get("dur", 0)
    per_call = a.calls * steps
    listed = sum(total.values()) / per_call / 1e3
    rows = [f"Generated by `python scripts/profile_local.py --model {a.model} --optimizer {a.optimizer} "
            f"--clients {a.clients}` on {time.strftime('%Y-%m-%d %H:%M')} ({jax.default_backend()}, "
            f"nproc={os.cpu_count()}, jax {jax.__version__}). Model {name} ({sum(v.size for v in jax.tree.leaves(params)):,} "
            f"parameters), batch {BATCH}, {steps} local steps, {a.clients} client(s) "
            f"{'vmapped' if a.clients > 1 else 'alone'}; {a.optimizer}. One step: {per_step_ms:.2f} ms unprofiled "
            f"(median of 5 calls), {BATCH * a.clients / per_step_ms * 1e3:,.0f} samples/s; the operations listed "
            f"below add up to {listed:.2f} ms per step under the profiler. Operations inside a "
            "YNNPACK/Eigen thread pool may show only their dispatch time.", "",
            "| ms per step | share | operation | from | output |", "|---|---|---|---|---|"]
    for op, us in total.most_common(a.top):
        ms = us / per_call / 1e3
        shape_, meta = index[op]
        rows.append(f"| {ms:.3f} | {ms / listed:.0%} | `{op}` | {describe(meta)} | `{shape_}` |")
    os.makedirs(a.out, exist_ok=True)
    out = os.path.join(a.out, f"profile-{a.model}-{a.optimizer}-{a.clients}.md")
    with open(out, "w") as f:
        f.write("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
