"""The engine: client mapping, local training, sampling, rounds, evaluation."""
