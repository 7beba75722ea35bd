"""Generative augmentation (DESIGN section 1, floor 2: uses `data`): stand-in generators and the
FedGC stage (specs/fedgc.md). FedGC is not an algorithm but a data stage: ``--generative fedgc``
augments every client's data once, before round 0, and any registered algorithm trains on it.
"""
from fedjax_sim.generative.allocation import (CLASS_RULES, CLIENT_RULES, allocate_budget,
                                              budget_to_labels, class_counts, class_weights,
                                              client_budgets, label_heterogeneity, largest_remainder)
from fedjax_sim.generative.fedgc import (GUIDANCE, PROMPTS, STRATEGIES, assign_modes, augment,
                                         generate, merge, pick_guides)
from fedjax_sim.generative.fidelity import FILTERS
from fedjax_sim.generative.generators import GENERATORS, GenKnobs, Generator, fit, get

GENERATIVE = ("none", "fedgc")

__all__ = ["CLASS_RULES", "CLIENT_RULES", "FILTERS", "GENERATIVE", "GENERATORS", "GUIDANCE", "GenKnobs",
           "Generator", "PROMPTS", "STRATEGIES", "allocate_budget", "assign_modes", "augment",
           "budget_to_labels", "class_counts", "class_weights", "client_budgets", "fit", "generate", "get",
           "label_heterogeneity", "largest_remainder", "merge", "pick_guides"]
