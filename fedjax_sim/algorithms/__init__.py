"""Algorithms, registered by name (``fedjax-sim list``)."""
from fedjax_sim.algorithms import fedavg, local, scaffold  # noqa: F401  (registration)
from fedjax_sim.algorithms import fedrema, personalized  # noqa: F401  (registration)
from fedjax_sim.algorithms.base import ALGORITHMS, DESCRIPTIONS, Algorithm, BuildContext, build, register

__all__ = ["ALGORITHMS", "DESCRIPTIONS", "Algorithm", "BuildContext", "build", "register"]
