"""Client compute-time models [ours, specs/async_kd.md section 3.3].

A job is one client's local training. Its virtual duration is ``speed_c * work_c * eps``:

* ``speed_c``: the client's slowness, drawn once per seed, so the same clients are always slow
  (under non-IID data slowness then correlates with data, which is what hurts asynchronous FL):
  ``constant`` 1, ``lognormal`` LogNormal(0, sigma), ``exponential`` Exp(1); a random
  ``straggler_fraction`` of the clients is ``straggler_slowdown`` times slower on top.
* ``work_c``: the client's real local steps (epochs * ceil(n_c / B), or the fixed step count),
  so a client with more data takes longer.
* ``eps``: per-job noise, LogNormal(0, noise).
"""
from __future__ import annotations

import numpy as np

# the clock's own random stream: np.random.SeedSequence([seed, CLOCK_STREAM]) is independent of
# the data streams (which spawn from SeedSequence(seed)) and of every JAX key
CLOCK_STREAM = 0xC10C


def clock_rng(seed: int) -> np.random.Generator:
    """The clock's generator for run seed ``seed`` (speeds first, then per-job noise)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), CLOCK_STREAM]))


def client_speeds(kind: str, num_clients: int, rng: np.random.Generator, sigma: float = 1.0,
                  straggler_fraction: float = 0.0, straggler_slowdown: float = 10.0) -> np.ndarray:
    """[C] float64 per-client time multipliers (``none`` is treated as ``constant``)."""
    if kind in ("none", "constant"):
        speed = np.ones(num_clients)
    elif kind == "lognormal":
        speed = rng.lognormal(0.0, sigma, num_clients)
    elif kind == "exponential":
        speed = rng.exponential(1.0, num_clients)
    else:
        raise ValueError(f"unknown clock.speed {kind!r}")
    stragglers = int(round(straggler_fraction * num_clients))
    if stragglers:
        speed[rng.choice(num_clients, stragglers, replace=False)] *= straggler_slowdown
    return speed


def client_work(n_train, batch_size: int, epochs=1, steps: int = 0) -> np.ndarray:
    """[C] float64 real local steps per job: ``steps`` when fixed, else epochs * ceil(n_c / B)
    (``epochs`` may be [C], per-client epochs); at least 1 (an empty client still reports)."""
    n = np.asarray(n_train, np.int64)
    if steps > 0:
        work = np.full(n.shape, steps, np.float64)
    else:
        work = np.asarray(epochs, np.float64) * np.ceil(n / max(batch_size, 1))
    return np.maximum(work, 1.0)


def job_noise(rng: np.random.Generator, sigma: float, size=None):
    """Per-job multiplicative noise LogNormal(0, sigma) (1 when sigma == 0)."""
    if sigma == 0:
        return np.ones(size) if size is not None else 1.0
    return rng.lognormal(0.0, sigma, size)


def sync_durations(speed: np.ndarray, work: np.ndarray, rounds: int, noise: float,
                   rng: np.random.Generator) -> np.ndarray:
    """[R, C] float32: what each client's job would take in each synchronous round (a round
    lasts as long as its slowest sampled client)."""
    eps = job_noise(rng, noise, (rounds, len(speed)))
    return (speed * work * eps).astype(np.float32)


def seed_clock(clock, seed: int, n_train, batch_size: int, epochs=1, steps: int = 0):
    """(speed [C], work [C], rng) of run seed ``seed``: ``clock`` is a `config.ClockConfig`
    (read only); ``rng`` continues the clock stream (per-job noise comes next)."""
    rng = clock_rng(seed)
    speed = client_speeds(clock.speed, len(n_train), rng, clock.sigma, clock.straggler_fraction,
                          clock.straggler_slowdown)
    return speed, client_work(n_train, batch_size, epochs, steps), rng
