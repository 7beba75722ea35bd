"""The client mesh: every device JAX sees (all processes' in a multi-process run) on one axis,
``clients``, over which the sharded client mapping splits a cohort."""
from __future__ import annotations

import numpy as np

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedjax_sim.errors import ConfigError

AXIS = "clients"


def client_mesh(num_devices: int = 0, field: str = "mesh_devices") -> Mesh:
    """A one-axis mesh over the first ``num_devices`` of `jax.devices()` (0 = all of them).

    Its axis is Auto (XLA propagates shardings from the mapping's constraints): `jax.make_mesh`
    defaults to Explicit axes, under which every op would have to state its sharding. ConfigError
    naming ``field`` for more devices than there are, or for a subset of devices in a
    multi-process run (every process must take part in every program).
    """
    devices = jax.devices()
    n = num_devices or len(devices)
    if not 1 <= n <= len(devices):
        raise ConfigError(field, num_devices, f"0 (all) or an integer in [1, {len(devices)}]: JAX sees "
                                              f"{len(devices)} {devices[0].platform} device(s)")
    if jax.process_count() > 1 and n != len(devices):
        raise ConfigError(field, num_devices, f"0 or {len(devices)} in a {jax.process_count()}-process run "
                                              "(every process's devices are in the mesh)")
    return Mesh(np.asarray(devices[:n]), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def client_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's devices, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree, mesh: Mesh):
    """Every leaf of ``tree`` (host or device arrays, the same values in every process) as a
    global array replicated over ``mesh``; each process fills only its own devices, so this works
    unchanged in a multi-process run. Leaves are read to host once."""
    whole = replicated(mesh)
    return place(tree, jax.tree.map(lambda _: whole, tree))


def data_placement(num_clients: int, mesh: Mesh) -> str:
    """How a population's data is laid over ``mesh``: ``split`` (each device holds C / D clients)
    when the devices divide the population, else ``replicated`` (a `jax.Array` cannot be split
    unevenly). Split divides the data's memory per device by D; a round then sums the cohort's
    rows across devices (20 MB for 100 bench clients: 10 ms on 4 host devices, docs/performance.md,
    "Several devices"), which ran at the speed of a copy per device in a quick check."""
    return "split" if mesh.size > 1 and num_clients % mesh.size == 0 else "replicated"


def population_shardings(tree, mesh: Mesh, num_clients: int, axis: int = 0):
    """Per leaf of ``tree`` (arrays or shapes): split over the mesh on ``axis`` where that axis is
    the population (``num_clients`` long) and `data_placement` splits it, else replicated."""
    split = NamedSharding(mesh, PartitionSpec(*([None] * axis), AXIS))
    whole = replicated(mesh)
    splitting = data_placement(num_clients, mesh) == "split"

    def sharding(a):
        shape = np.shape(a)
        return split if splitting and len(shape) > axis and shape[axis] == num_clients else whole

    return jax.tree.map(sharding, tree)


def one_device():
    """The default device's sharding (a run without a client mesh)."""
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


HOST_MEMORY = "pinned_host"  # host RAM the devices copy to and from directly (CPU JAX lists it too)


def host_store_shardings(shardings, fields: tuple):
    """``shardings`` (a NamedTuple of per-leaf shardings shaped like a state) with the leaves
    under ``fields`` moved to host memory (`HOST_MEMORY`), the rest unchanged: where a per-client
    store stays between rounds while the device holds only the cohort's slice."""
    host = lambda tree: jax.tree.map(lambda s: s.with_memory_kind(HOST_MEMORY), tree)  # noqa: E731
    return shardings._replace(**{f: host(getattr(shardings, f)) for f in fields})


def place(tree, shardings):
    """Every leaf of ``tree`` (host or device arrays, the same values in every process) as a
    global array with its sharding; each process fills only its own devices."""
    def put(a, sharding):
        host = np.asarray(a)
        out = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
        # a host-memory placement: also say so in the array's type, which jitted code reads
        return jax.device_put(out, jax.memory.Space.Host) if sharding.memory_kind == HOST_MEMORY else out

    return jax.tree.map(put, tree, shardings)


def put_clients(tree, mesh: Mesh, num_clients: int, axis: int = 0):
    """Every leaf of ``tree`` as a global array on ``mesh``: leaves whose ``axis`` is the
    population are split over the mesh when `data_placement` says so, the rest replicated
    (`population_shardings`). A cohort gather from split data is a masked local gather plus one
    cross-device sum of the cohort's rows."""
    return place(tree, population_shardings(tree, mesh, num_clients, axis))


def to_host(tree):
    """Every leaf as a numpy array, also where it is split over other processes' devices (then
    gathered from every process, which must all call this)."""
    from jax.experimental import multihost_utils

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(get, tree)
