"""Devices: the one-axis client mesh, placement of host arrays on it, and multi-process start-up
on JAX's distributed runtime (a leaf: imports only `errors`)."""
from fedjax_sim.parallel.mesh import (AXIS, HOST_MEMORY, client_mesh, client_sharding, data_placement,
                                     host_store_shardings, one_device, place, population_shardings, put_clients,
                                     put_replicated, replicated, to_host)
from fedjax_sim.parallel.distributed import DistributedConfig, initialize, is_main_process

__all__ = ["AXIS", "HOST_MEMORY", "client_mesh", "client_sharding", "data_placement", "host_store_shardings",
           "one_device", "place", "population_shardings", "put_clients", "put_replicated", "replicated", "to_host",
           "DistributedConfig", "initialize", "is_main_process"]
