"""Scale: the sharded client mapping on one device, the multi-device suite on 4 forced host
devices (tests/test_multidevice.py, in a subprocess), a two-process run on JAX's distributed
runtime over loopback, and the bad-input paths of both."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_sim
from fedjax_sim import cli, parallel
from fedjax_sim.core.mapping import map_clients
from fedjax_sim.errors import ConfigError
from fedjax_sim.parallel import distributed

from conftest import assert_config_error

ROOT = Path(__file__).resolve().parent.parent


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_"))}
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_mapping_on_one_device_equals_vmap():
    mesh = parallel.client_mesh()
    assert mesh.size == 1 and mesh.axis_names == (parallel.AXIS,)
    fn = lambda w, x: jnp.tanh(x @ w).sum(-1)  # noqa: E731
    w, x = jnp.ones((4, 2)), jnp.arange(5 * 3 * 4, dtype=jnp.float32).reshape(5, 3, 4) / 60
    chex.assert_trees_all_close(jax.jit(map_clients(fn, (None, 0), "sharded", 0, mesh))(w, x),
                                jax.vmap(fn, in_axes=(None, 0))(w, x), rtol=1e-6)


def test_multidevice_suite_passes_on_four_forced_devices():
    """tests/test_multidevice.py with 4 host devices: sharded mapping against Python loops, and
    whole runs of every kind of algorithm on 4 devices against 1."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-rs", str(ROOT / "tests" / "test_multidevice.py")], cwd=ROOT, env=_env(4),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def _metrics(out: Path) -> dict:
    return {p.parent.name: [json.loads(l) for l in p.read_text().splitlines()]
            for p in sorted(out.glob("*/metrics.jsonl"))}


def test_two_processes_equal_a_single_process(tmp_path):
    """``fedjax-sim run --distributed`` as two processes on 127.0.0.1 (2 host devices each, CPU
    collectives over gloo): the cohort is sharded over the 4 devices of both processes; process 0
    writes the run directory, process 1 nothing that stays; every metrics line equals the same
    run in one process on one device to float tolerance."""
    args = ["--algorithm", "fedavg,scaffold", "--rounds", "4", "--set", "eval_every=2", "--cohort", "6",
            "--clients", "12", "--no-progress", "--set", "checkpoint=true"]
    port = _free_port()
    procs = []
    try:
        for i in range(2):
            cmd = [sys.executable, "-m", "fedjax_sim.cli", "run", *args, "--out", str(tmp_path / "multi"),
                   "--distributed", "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                   "--process-id", str(i)]
            procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=_env(2), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True))
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:  # a process whose peer died waits for it: never leave one behind
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    assert "process 1 of 2: process 0 writes the run directory" in outs[1][0]
    assert "run directory: " + str(tmp_path / "multi") in outs[0][0]
    assert sorted(os.listdir(tmp_path)) == ["multi"]  # process 1 wrote into a scratch dir, removed
    single = subprocess.run([sys.executable, "-m", "fedjax_sim.cli", "run", *args, "--out", str(tmp_path / "single")],
                            cwd=tmp_path, env=_env(1), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    multi, one = _metrics(tmp_path / "multi"), _metrics(tmp_path / "single")
    for name in ("fedavg", "scaffold"):  # the final states (SCAFFOLD's per-client control variates too)
        with np.load(tmp_path / "multi" / name / "checkpoint.npz") as m, \
                np.load(tmp_path / "single" / name / "checkpoint.npz") as s:
            assert sorted(m.files) == sorted(s.files)
            for key in s.files:
                np.testing.assert_allclose(m[key], s[key], rtol=2e-4, atol=2e-5, err_msg=f"{name} {key}")
    assert sorted(multi) == sorted(one) == ["fedavg", "scaffold"]
    for name in multi:
        cfg = json.loads((tmp_path / "multi" / name / "config.json").read_text())["resolved"]
        # 12 clients' data split 3 per device, 6 per process; the cohort of 6 padded to 8
        assert (cfg["client_mapping"], cfg["devices"], cfg["processes"], cfg["data_placement"]) == (
            "sharded", 4, 2, "split")
        assert len(multi[name]) == len(one[name]) == 3
        for a, b in zip(one[name], multi[name]):
            for key, value in a.items():
                if isinstance(value, float):
                    np.testing.assert_allclose(b[key], value, rtol=2e-4, atol=2e-5, err_msg=f"{name} {key}")


# --- bad input: exit 2 and one line, before any process waits for another or anything compiles


@pytest.fixture
def no_cluster_env(monkeypatch):
    for var in (*distributed.ENV.values(), *distributed.CLUSTER_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("argv,field,value", [
    (["--distributed"], "--coordinator-address", "missing"),
    (["--distributed", "--coordinator-address", "127.0.0.1:1234"], "--num-processes", "missing"),
    (["--distributed", "--coordinator-address", "localhost", "--num-processes", "2", "--process-id", "0"],
     "--coordinator-address", "localhost"),
    (["--distributed", "--coordinator-address", "h:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id", "2"),
    (["--distributed", "--coordinator-address", "h:1", "--num-processes", "0", "--process-id", "0"],
     "--num-processes", "0"),
    (["--distributed", "--coordinator-address", "h:1", "--num-processes", "two", "--process-id", "0"],
     "--num-processes", "two"),
    (["--process-id", "1"], "--process-id", "1"),
    (["--distributed", "--coordinator-address", "h:1", "--num-processes", "2", "--process-id", "0",
      "--set", "client_mapping=vmap"], "client_mapping", "vmap"),
    (["--distributed", "--resume", "runs/x"], "--resume", "runs/x"),
    (["--distributed", "--coordinator-address", "h:1", "--num-processes", "2", "--process-id", "0",
      "--checkpoint-every", "5"], "checkpoint_every", "5"),
    (["--set", "client_mapping=sharded", "--set", "mesh_devices=2"], "mesh_devices", "2"),
    (["--set", "client_mapping=vmap", "--set", "mesh_devices=1"], "mesh_devices", "1"),
    (["--set", "mesh_devices=-1"], "mesh_devices", "-1"),
    (["--set", "client_mapping=shard"], "client_mapping", "shard"),
])
def test_bad_scale_input_exits_2_with_one_line(argv, field, value, capsys, tmp_path, no_cluster_env):
    out = tmp_path / "run"
    rc = cli.main(["run", "--rounds", "2", "--out", str(out), *argv])
    assert_config_error(capsys, rc, field, value)
    assert not out.exists()


def test_distributed_settings_come_from_the_environment(no_cluster_env):
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:5000", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    got = distributed.resolve(parallel.DistributedConfig(), env)
    assert (got.coordinator_address, got.num_processes, got.process_id) == ("10.0.0.1:5000", 4, 3)
    # the command line wins over the environment
    assert distributed.resolve(parallel.DistributedConfig(process_id=1), env).process_id == 1
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID"):
        distributed.resolve(parallel.DistributedConfig(), {**env, "JAX_PROCESS_ID": "x"})
    with pytest.raises(ConfigError, match="--process-id"):
        distributed.resolve(parallel.DistributedConfig(), {**env, "JAX_PROCESS_ID": "4"})
    # under SLURM, JAX's cluster detection fills in what is not given
    assert distributed.resolve(parallel.DistributedConfig(), {"SLURM_JOB_ID": "7"}).coordinator_address is None


def test_bench_bad_mapping_input_exits_2(capsys):
    assert_config_error(capsys, cli.main(["bench", "--client-mapping", "sharded", "--mesh-devices", "2"]),
                        "--mesh-devices", "2")
    assert_config_error(capsys, cli.main(["bench", "--client-mapping", "shard"]), "--client-mapping", "shard")


def test_api_refuses_a_mesh_larger_than_the_devices(tmp_path):
    with pytest.raises(ConfigError, match="mesh_devices"):
        fedjax_sim.run(out=tmp_path / "r", rounds=2, client_mapping="sharded", mesh_devices=8)


def test_factored_program_prefers_blocks_of_100_on_cpu_and_one_block_elsewhere():
    """The measured preference of the factored client program (docs/bench/scale-cpu.md, "Cohort"),
    and a chunk_size set in the config winning over it."""
    from fedjax_sim.core.mapping import ClientMapping, factored_mapping

    assert factored_mapping("cpu") == ("chunked", 10) and factored_mapping("gpu") == ("vmap", 0)
    m = ClientMapping("auto").resolved(prefer=("chunked", 100))
    assert (m.strategy, m.chunk_size) == ("chunked", 100)
    m = ClientMapping("auto", chunk_size=7).resolved(prefer=("chunked", 100))
    assert (m.strategy, m.chunk_size) == ("chunked", 7)
    mesh = parallel.client_mesh()
    assert ClientMapping("sharded", mesh=mesh).resolved(prefer=("chunked", 100)).chunk_size == 100
    # resolving is idempotent: a sharded mapping resolved to vmap on each device stays so when
    # `ClientMapping.map` resolves it again (chunk_size 0 then means vmap, not the default)
    once = ClientMapping("sharded", mesh=mesh).resolved(prefer="vmap")
    assert (once.chunk_size, once.inner) == (0, "vmap") and once.resolved() == once


@pytest.mark.parametrize("k", [3, 10, 11])
def test_chunked_mapping_of_a_cohort_within_one_block_equals_vmap(k):
    """A cohort no larger than the chunk runs as one vmapped block; larger ones in chunks."""
    fn = lambda w, x: jnp.tanh(x @ w).sum(-1)  # noqa: E731
    w = jnp.ones((4, 2))
    x = jnp.arange(k * 3 * 4, dtype=jnp.float32).reshape(k, 3, 4) / (k * 12)
    chex.assert_trees_all_close(jax.jit(map_clients(fn, (None, 0), "chunked", 10))(w, x),
                                jax.vmap(fn, in_axes=(None, 0))(w, x), rtol=1e-6)
