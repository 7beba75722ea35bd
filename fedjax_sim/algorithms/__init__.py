"""Algorithms, registered by name (``fedjax-sim list``); each registers its own config section."""
from fedjax_sim.algorithms import fedavg, local, scaffold  # noqa: F401  (registration)
from fedjax_sim.algorithms import fedrema, floral, personalized  # noqa: F401  (registration)
from fedjax_sim.algorithms.base import (ALGORITHMS, DESCRIPTIONS, SECTION_OF, Algorithm,
                                        BuildContext, build, check_name, register)

__all__ = ["ALGORITHMS", "DESCRIPTIONS", "SECTION_OF", "Algorithm", "BuildContext", "build",
           "check_name", "register"]
