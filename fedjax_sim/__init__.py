"""fedjax_sim: a JAX-accelerated, vectorized federated-learning simulator.

The Python API (`fedjax_sim.api`): ``run``, ``load_run``, ``compare``, ``plot``, ``Result``,
``Config`` and ``ConfigError``; the command line is ``fedjax-sim`` (`fedjax_sim.cli`). The names
are resolved on first use, so importing a low floor (``fedjax_sim.data``, ...) stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"Comparison": "fedjax_sim.api", "Result": "fedjax_sim.api", "compare": "fedjax_sim.api",
            "load_run": "fedjax_sim.api", "plot": "fedjax_sim.api", "run": "fedjax_sim.api",
            "Config": "fedjax_sim.config", "ConfigError": "fedjax_sim.errors"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedjax_sim' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
