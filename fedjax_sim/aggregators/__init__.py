"""Pure server-side aggregators (optax-style init/update pairs)."""
from fedjax_sim.aggregators.base import Aggregator, LowRankDelta, densify, weighted_mean
from fedjax_sim.aggregators.mean import mean_of_models, server_optimizer
from fedjax_sim.aggregators.relevance import RelevanceContext, RelevanceState, relevance_matching

__all__ = ["Aggregator", "LowRankDelta", "densify", "mean_of_models", "server_optimizer",
           "weighted_mean", "RelevanceContext", "RelevanceState", "relevance_matching"]
