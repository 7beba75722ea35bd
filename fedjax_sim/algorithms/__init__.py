"""Algorithms, registered by name (``fedjax-sim list``); each registers its own config section."""
from fedjax_sim.algorithms import fedavg, local, scaffold  # noqa: F401  (registration)
from fedjax_sim.algorithms import fedhca2, fedrema, floral, personalized  # noqa: F401  (registration)
from fedjax_sim.algorithms import asynchronous  # noqa: F401  (registration)
from fedjax_sim.algorithms.base import (ALGORITHMS, DESCRIPTIONS, MULTITASK_ALGORITHMS, MULTITASK_SECTION_OF,
                                        MULTITASK_DESCRIPTIONS, SECTION_OF, Algorithm, BuildContext,
                                        build, check_data_kind, check_name, register, section_of,
                                        with_clock, with_reference)

__all__ = ["ALGORITHMS", "DESCRIPTIONS", "MULTITASK_ALGORITHMS", "MULTITASK_DESCRIPTIONS", "MULTITASK_SECTION_OF", "SECTION_OF",
           "Algorithm", "BuildContext", "build", "check_data_kind", "check_name", "register",
           "section_of", "with_clock", "with_reference"]
