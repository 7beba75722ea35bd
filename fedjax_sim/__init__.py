"""fedjax_sim: a JAX-accelerated, vectorized federated-learning simulator.

The Python API (`fedjax_sim.api`): ``run``, ``load_run``, ``compare``, ``plot``; the command line
is ``fedjax-sim`` (`fedjax_sim.cli`).
"""
from fedjax_sim.api import Comparison, Result, compare, load_run, plot, run
from fedjax_sim.config import Config
from fedjax_sim.errors import ConfigError

__all__ = ["Comparison", "Config", "ConfigError", "Result", "compare", "load_run", "plot", "run"]
