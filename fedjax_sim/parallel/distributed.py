"""Multi-process start-up on JAX's own distributed runtime.

Every process runs the same command; `initialize` connects it to the coordinator (process 0's
``HOST:PORT``), after which `jax.devices()` lists every process's devices and the client mesh
(`client_mesh`) spans them all. Each process computes the same programs on its own devices;
cross-process collectives go through XLA (gloo on CPU, NCCL on GPU). Settings come from the
command line, else from the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, else from JAX's cluster detection (SLURM, Open MPI),
which fills whatever is still unset.
"""
from __future__ import annotations

import os
from typing import NamedTuple

from fedjax_sim.errors import ConfigError

ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
       "process_id": "JAX_PROCESS_ID"}
# environment variables by which JAX's cluster detection recognizes a launcher that fills in
# whatever is not given (jax/_src/clusters: SLURM, Open MPI)
CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")
FLAGS = {"coordinator_address": "--coordinator-address", "num_processes": "--num-processes",
         "process_id": "--process-id"}


class DistributedConfig(NamedTuple):
    """What `initialize` needs; None = from the environment / cluster detection."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300  # how long a process waits for the others to connect


def _int(field: str, text, env: bool) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        where = f"environment variable {ENV[field]}" if env else FLAGS[field]
        raise ConfigError(where, text, "an integer") from None


def resolve(cfg: DistributedConfig, environ=None) -> DistributedConfig:
    """The settings with the environment's filled in, validated: ConfigError (exit 2) for a
    missing coordinator outside a detected cluster, a malformed ``HOST:PORT``, a process count
    below 1 or a process id outside ``[0, num_processes)``. Nothing is started."""
    environ = os.environ if environ is None else environ
    values = {}
    for field, var in ENV.items():
        value = getattr(cfg, field)
        from_env = value is None and environ.get(var) not in (None, "")
        if from_env:
            value = environ[var]
        if value is not None and field != "coordinator_address":
            value = _int(field, value, from_env)
        values[field] = value
    in_cluster = any(environ.get(v) for v in CLUSTER_ENV)
    address = values["coordinator_address"]
    if address is None and not in_cluster:
        raise ConfigError("--coordinator-address", "missing", "HOST:PORT of process 0 (or set "
                          "JAX_COORDINATOR_ADDRESS, or launch under SLURM / Open MPI) with --distributed")
    if address is not None:
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError("--coordinator-address", address, "HOST:PORT with a port in [1, 65535]")
    n, i = values["num_processes"], values["process_id"]
    if not in_cluster:
        for field in ("num_processes", "process_id"):
            if values[field] is None:
                raise ConfigError(FLAGS[field], "missing", f"an integer (or set {ENV[field]}) with --distributed "
                                                           "outside SLURM / Open MPI")
    if n is not None and n < 1:
        raise ConfigError(FLAGS["num_processes"], n, "an integer >= 1")
    if i is not None and n is not None and not 0 <= i < n:
        raise ConfigError(FLAGS["process_id"], i, f"an integer in [0, {n - 1}] for --num-processes {n}")
    if i is not None and i < 0:
        raise ConfigError(FLAGS["process_id"], i, "an integer >= 0")
    return cfg._replace(**values)


def initialize(cfg: DistributedConfig) -> None:
    """Validates (`resolve`) and joins the distributed runtime; must run before anything else
    touches a JAX device. Idempotent within a process."""
    cfg = resolve(cfg)
    import jax
    from jax._src import distributed as _state  # no public "already initialized?" query

    if _state.global_state.client is not None:
        return
    jax.distributed.initialize(cfg.coordinator_address, cfg.num_processes, cfg.process_id,
                               initialization_timeout=cfg.timeout_s)


def is_main_process() -> bool:
    """True in process 0 (and in a single-process run): the one that writes files."""
    import jax

    return jax.process_index() == 0
