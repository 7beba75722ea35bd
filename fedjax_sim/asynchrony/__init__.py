"""The virtual clock: client compute times, the precomputed event schedule of asynchronous FL,
and its replay as fixed-size buffers (specs/async_kd.md section 3).

A leaf floor (numpy only, host side): the schedule never depends on model parameters, so it is a
pure function of (seed, population, concurrency, buffer size, speed model) and every method of a
comparison replays the same one.
"""
from fedjax_sim.asynchrony.clock import (CLOCK_STREAM, client_speeds, client_work, clock_rng,
                                         seed_clock, sync_durations)
from fedjax_sim.asynchrony.schedule import Trace, build_trace, replay_events, ring_size, staleness_of

__all__ = ["CLOCK_STREAM", "Trace", "build_trace", "client_speeds", "client_work", "clock_rng",
           "replay_events", "ring_size", "seed_clock", "staleness_of", "sync_durations"]
