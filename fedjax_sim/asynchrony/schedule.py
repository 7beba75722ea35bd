"""The asynchronous event schedule and its replay as fixed-size buffers [ours, specs/async_kd.md
section 3.4].

`build_trace` runs the closed loop on the host: ``concurrency`` clients are always in flight;
when one finishes, the server processes its update, then a replacement drawn uniformly from the
idle clients (the one that just finished included) starts from the model the server holds *after*
processing that arrival. Events are ordered by (finish time, job id). Nothing here depends on the
buffer size K, so FedAsync (K = 1), FedBuff and FedADT replay the same timeline for a seed; K only
decides which versions the arrivals carry.

`replay_events` turns the first K * R arrivals into R server updates of K arrivals each (round r
= server update r, version r -> r + 1) and plans a ring of global versions on device: version r
gets a ring slot if some arrival trains from it (written by the round that produces it, at its
end), and its slot is freed after the last such arrival. A job's result depends only on (its base version, its client's
data, its key), so training it when it arrives, from its base in the ring, is exact.
"""
from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np

from fedjax_sim.asynchrony.clock import job_noise


class Trace(NamedTuple):
    """The first J arrivals of the closed loop, in arrival order.

    client [J] int32; job [J] int32 (dispatch order, unique: the job's PRNG stream);
    t_dispatch, t_finish [J] float64; after [J] int64: how many arrivals the server had
    processed when the job was dispatched (0 for the initial jobs).
    """

    client: np.ndarray
    job: np.ndarray
    t_dispatch: np.ndarray
    t_finish: np.ndarray
    after: np.ndarray


def build_trace(speed: np.ndarray, work: np.ndarray, concurrency: int, num_arrivals: int,
                noise: float, rng: np.random.Generator) -> Trace:
    """Simulates the closed loop until ``num_arrivals`` jobs have arrived.

    Args:
      speed, work: [C] per-client time multiplier and local steps (`clock`).
      concurrency: jobs in flight, 1 <= concurrency <= C.
      noise: sigma of the per-job log-normal duration factor.
      rng: the clock's generator (after the speeds were drawn).
    """
    num_clients = len(speed)
    if not 1 <= concurrency <= num_clients:
        raise ValueError(f"concurrency {concurrency} outside [1, {num_clients}]")
    idle = list(range(num_clients))
    heap: list = []
    rows = {"client": [], "t_dispatch": [], "after": []}

    def dispatch(t: float, after: int):
        pos = int(rng.integers(len(idle)))
        idle[pos], idle[-1] = idle[-1], idle[pos]  # swap-remove: O(1), deterministic
        c = idle.pop()
        j = len(rows["client"])
        rows["client"].append(c)
        rows["t_dispatch"].append(t)
        rows["after"].append(after)
        heapq.heappush(heap, (t + float(speed[c] * work[c] * job_noise(rng, noise)), j))

    for _ in range(concurrency):
        dispatch(0.0, 0)
    order, finish = [], []
    for i in range(num_arrivals):
        t, j = heapq.heappop(heap)
        order.append(j)
        finish.append(t)
        idle.append(rows["client"][j])
        dispatch(t, i + 1)
    order = np.asarray(order, np.int64)
    return Trace(np.asarray(rows["client"], np.int32)[order], order.astype(np.int32),
                 np.asarray(rows["t_dispatch"])[order], np.asarray(finish),
                 np.asarray(rows["after"], np.int64)[order])


def staleness_of(trace: Trace, buffer_size: int) -> np.ndarray:
    """[J] int: versions the server advanced between a job's dispatch and its arrival (arrival i
    is in round i // K; its base version is after // K)."""
    arrival = np.arange(len(trace.client))
    return arrival // buffer_size - trace.after // buffer_size


def ring_size(concurrency: int) -> int:
    """Ring slots that always suffice: at the start of a round, the versions still needed are
    the bases of the ``concurrency`` jobs in flight plus the current one."""
    return concurrency + 1


def replay_events(trace: Trace, buffer_size: int, rounds: int, ring: int,
                  server_time: float = 0.0, time_budget: float = 0.0) -> dict:
    """The per-round rows the driver scans (`core.driver.RoundInput.events`), all [R, ...]:

    store [R] int32: ring slot of version r, the global model at the start of round r
      (``ring`` = not needed: a scratch row that no arrival reads); version 0 is always slot 0;
    store_next [R] int32: ``store`` of round r + 1, where round r writes the model it produces
      (writing at the end of the round, after every read of the ring, keeps the write in place);
    slot [R, K] int32: ring slot of each arrival's base model;
    client [R, K] int32, job [R, K] int32: who trained, and the job's PRNG stream;
    staleness [R, K] int32: current version minus base version (>= 0);
    round_time [R] float32: virtual time from the previous server update to this one (the
      arrivals' clock plus ``server_time`` per update);
    progress [R] float32: FedADT's training stage in [0, 1]: the virtual time of the update over
      ``time_budget`` when a budget is set (the run stops there), else r / R.

    Raises ValueError if the trace has fewer than K * R arrivals or the ring is too small.
    """
    k = buffer_size
    need = k * rounds
    if len(trace.client) < need:
        raise ValueError(f"the trace has {len(trace.client)} arrivals, {need} needed")
    base = trace.after[:need] // k
    arrival_round = np.arange(need) // k
    last_use = np.full(rounds, -1, np.int64)
    np.maximum.at(last_use, base, arrival_round)
    store = np.full(rounds, ring, np.int32)
    slot_of = np.full(rounds, -1, np.int32)
    free = list(range(ring))[::-1]
    releases: dict[int, list[int]] = {}
    for r in range(rounds):
        for v in releases.pop(r, []):  # versions whose last arrival was in round r - 1
            free.append(int(slot_of[v]))
        if last_use[r] >= 0:
            if not free:
                raise ValueError(f"ring of {ring} slots too small at round {r}")
            free.sort(reverse=True)
            slot_of[r] = free.pop()
            store[r] = slot_of[r]
            releases.setdefault(int(last_use[r]) + 1, []).append(r)
    if store[0] != 0:
        raise ValueError("version 0 must be in ring slot 0 (the initial model's)")
    finish = trace.t_finish[:need].reshape(rounds, k)[:, -1]
    round_time = np.diff(np.concatenate([[0.0], finish])) + server_time
    shape = (rounds, k)
    if time_budget > 0:
        progress = np.minimum(np.cumsum(round_time) / time_budget, 1.0)
    else:
        progress = np.arange(rounds) / rounds
    return {"store": store,
            "store_next": np.append(store[1:], np.int32(ring)).astype(np.int32),
            "slot": slot_of[base].reshape(shape),
            "client": trace.client[:need].reshape(shape).astype(np.int32),
            "job": trace.job[:need].reshape(shape).astype(np.int32),
            "staleness": (arrival_round - base).reshape(shape).astype(np.int32),
            "round_time": round_time.astype(np.float32),
            "progress": progress.astype(np.float32)}
