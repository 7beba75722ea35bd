"""Pure server-side aggregators (optax-shaped init/update pairs) and their combinators."""
from fedjax_sim.aggregators.asynchronous import (distillation_correction, rebase, staleness_weight,
                                                 staleness_weighted)
from fedjax_sim.aggregators.base import Aggregator, chain, densify, partition, weighted_mean
from fedjax_sim.aggregators.mean import broadcast_mean, keep, mean, server_optimizer
from fedjax_sim.aggregators.mixture import conditional_weights, mixture_mean
from fedjax_sim.aggregators.relevance import RelevanceState, relevance_matching
from fedjax_sim.types import LowRankDelta

__all__ = ["Aggregator", "LowRankDelta", "RelevanceState", "broadcast_mean", "chain",
           "conditional_weights", "densify", "distillation_correction", "keep", "mean",
           "mixture_mean", "partition", "rebase", "relevance_matching", "server_optimizer",
           "staleness_weight", "staleness_weighted", "weighted_mean"]
