"""Typed, nested, serializable run configuration.

Every field can be set from the command line with ``--set section.field=value`` (or ``field`` for
top-level fields). Values are parsed by the field's declared type; validation of ranges and names
happens in :func:`validate` (and in the data / algorithm registries) before anything compiles.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any

from fedjax_sim.errors import ConfigError


@dataclasses.dataclass
class DataConfig:
    """Which data, how it is split over clients.

    dataset: registered source (``fedjax-sim list``), e.g. ``digits`` (embedded, default),
      ``synthetic`` (FedProx Synthetic(alpha, beta)), or a TFDS name (``mnist``, ``cifar10``, ...).
    partition: registered partitioner; ``auto`` = ``natural`` for ``synthetic`` (each device has
      its own distribution) and ``dirichlet_label`` otherwise.
    """

    dataset: str = "digits"
    partition: str = "auto"
    num_clients: int = 20
    alpha: float = 0.3  # Dirichlet concentration (both conventions); smaller = more skew
    min_size: int = 10  # dirichlet_label: resample until every client has at least this many
    classes_per_client: int = 2  # pathological
    samples_per_client: int = 0  # dirichlet_client / dominant_class size; 0 = pool / clients
    dominant_fraction: float = 0.2  # dominant_class: the IID share s of each client's samples
    dominant_classes: int = 3  # dominant_class: classes per group
    quantity_sigma: float = 1.0  # quantity_skew: sigma of the log-normal client sizes
    test_fraction: float = 0.2  # per-client test split, same distribution as the client's train
    global_test_fraction: float = 0.2  # embedded sources without a test split: held-out share
    synthetic_alpha: float = 0.0
    synthetic_beta: float = 0.0
    synthetic_iid: bool = False
    synthetic_features: int = 60
    data_dir: str = ""  # TFDS data_dir; "" = TFDS default
    seed: int = -1  # partition seed; -1 = the run seed


@dataclasses.dataclass
class ModelConfig:
    """Model architecture. ``auto`` picks ``cnn`` for images and ``mlp`` for vectors."""

    name: str = "auto"
    hidden: tuple[int, ...] = (200, 200)  # mlp hidden widths
    head_layers: int = 1  # dense layers in the personal head


@dataclasses.dataclass
class LocalConfig:
    """Client-side training."""

    optimizer: str = "sgd"  # sgd | momentum | adam
    lr: float = 0.05
    momentum: float = 0.9  # used by ``momentum``
    weight_decay: float = 0.0
    batch_size: int = 16
    epochs: int = 1  # local epochs over the client's data (used when steps == 0)
    steps: int = 0  # fixed local steps per round; 0 = use epochs
    clip_norm: float = 0.0  # global-norm gradient clipping; 0 = off
    finetune_epochs: int = 1  # fedavg_ft: local epochs of fine-tuning before evaluation
    formulation: str = "auto"  # auto | materialized | factored (low-rank deltas, dense nets + SGD)


@dataclasses.dataclass
class ServerConfig:
    """Server-side aggregation."""

    optimizer: str = "sgd"  # sgd | momentum | adam (applied to the mean client delta)
    lr: float = 1.0
    momentum: float = 0.9
    weighting: str = "samples"  # samples | uniform
    prox_mu: float = 0.01  # fedprox proximal strength


@dataclasses.dataclass
class FedReMaConfig:
    """FedReMa and its personalized baselines (specs/fedrema.md).

    delta: CCP end threshold in (0, 1]: the CCP ends when the mean MDS gap < delta * its running max.
    sim_type: ``probe`` (one random uniform feature-space probe per reference client, the code's
      default) or ``proto`` (global class prototypes as probes).
    t_ref / t_peer: softmax temperatures of the reference client and of its peers (probe).
    probe_scale: probes are Uniform[0, probe_scale)^d.
    ablation: none | no_ccp (MDS every round) | no_history (after the CCP, uniform over every peer
      ever chosen) | random_peers (random peer sets of the size MDS chose).
    official_index_bug / official_inplace_mixing: replicate the official code's two bugs (§7.1, §7.2).
    head_epochs: fedrep's head epochs per round (before local.epochs body epochs).
    """

    delta: float = 0.5
    sim_type: str = "probe"
    t_ref: float = 0.5
    t_peer: float = 1.0
    probe_scale: float = 0.5
    ablation: str = "none"
    official_index_bug: bool = False
    official_inplace_mixing: bool = False
    head_epochs: int = 1


@dataclasses.dataclass
class Config:
    """A whole run."""

    algorithm: str = "fedavg"
    rounds: int = 100
    cohort: int = 0  # clients per round; 0 = all clients
    eval_every: int = 5
    seed: int = 0
    client_mapping: str = "auto"  # auto | vmap | chunked | sequential
    chunk_size: int = 0  # chunked: clients per vmapped block; 0 = measured default
    out: str = ""
    checkpoint: bool = False
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    local: LocalConfig = dataclasses.field(default_factory=LocalConfig)
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    fedrema: FedReMaConfig = dataclasses.field(default_factory=FedReMaConfig)


def to_dict(cfg) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(d: dict[str, Any]) -> Config:
    cfg = Config()
    for key, value in _flatten(d):
        set_field(cfg, key, value)
    return cfg


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def field_names(cfg=None) -> list[str]:
    """All settable dotted field names."""
    cfg = cfg or Config()
    names = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            names += [f"{f.name}.{n}" for n in field_names(value)]
        else:
            names.append(f.name)
    return names


def _coerce(path: str, raw, typ):
    """Parses `raw` (a string from the CLI, or a JSON value) as `typ`; ConfigError if it fails."""
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, float):
                if not raw.is_integer():
                    raise ValueError
                return int(raw)
            return int(str(raw).strip())
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
            if math.isnan(value):
                raise ValueError
            return value
        if typ is str:
            return str(raw)
        if typing.get_origin(typ) is tuple:
            if isinstance(raw, (list, tuple)):
                items = list(raw)
            else:
                items = [p for p in str(raw).replace("(", "").replace(")", "").split(",") if p.strip()]
            return tuple(int(str(i).strip()) for i in items)
    except (TypeError, ValueError):
        pass
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        typ, "comma-separated integers, e.g. 200,200")
    raise ConfigError(path, raw, kind)


def set_field(cfg: Config, path: str, raw) -> None:
    """Sets ``cfg.<path>`` from a string or JSON value, with type checking."""
    obj = cfg
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if part not in fields:
            where = ".".join(parts[:i]) or "the config"
            raise ConfigError(path, raw, f"a field of {where}: one of {', '.join(field_names(obj))}")
        if i == len(parts) - 1:
            hints = typing.get_type_hints(type(obj))
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise ConfigError(path, raw, f"a field inside {path}, e.g. {path}.{field_names(getattr(obj, part))[0]}")
            setattr(obj, part, _coerce(path, raw, hints[part]))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(path, raw, f"{'.'.join(parts[:i + 1])} has no sub-fields")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Applies ``key=value`` strings (the CLI's ``--set``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", item, "key=value, e.g. local.lr=0.05")
        key, value = item.split("=", 1)
        set_field(cfg, key.strip(), value.strip())
    return cfg


def _check(cond: bool, field: str, value, allowed: str):
    if not cond:
        raise ConfigError(field, value, allowed)


def validate(cfg: Config) -> None:
    """Range checks that do not need the data or the registries (those check names)."""
    _check(cfg.rounds >= 1, "rounds", cfg.rounds, "an integer >= 1")
    _check(cfg.cohort >= 0, "cohort", cfg.cohort, "an integer >= 0 (0 = all clients)")
    _check(cfg.eval_every >= 1, "eval_every", cfg.eval_every, "an integer >= 1")
    _check(cfg.chunk_size >= 0, "chunk_size", cfg.chunk_size, "an integer >= 0 (0 = default)")
    mappings = ("auto", "vmap", "chunked", "sequential")
    _check(cfg.client_mapping in mappings, "client_mapping", cfg.client_mapping, "one of " + ", ".join(mappings))
    d = cfg.data
    _check(d.num_clients >= 1, "data.num_clients", d.num_clients, "an integer >= 1")
    _check(cfg.cohort <= d.num_clients, "cohort", cfg.cohort, f"at most data.num_clients={d.num_clients}")
    _check(d.alpha > 0 and math.isfinite(d.alpha), "data.alpha", d.alpha, "a finite number > 0")
    _check(d.min_size >= 0, "data.min_size", d.min_size, "an integer >= 0")
    _check(d.classes_per_client >= 1, "data.classes_per_client", d.classes_per_client, "an integer >= 1")
    _check(d.samples_per_client >= 0, "data.samples_per_client", d.samples_per_client, "an integer >= 0")
    _check(0 <= d.dominant_fraction <= 1, "data.dominant_fraction", d.dominant_fraction, "a number in [0, 1]")
    _check(d.dominant_classes >= 1, "data.dominant_classes", d.dominant_classes, "an integer >= 1")
    _check(d.quantity_sigma >= 0, "data.quantity_sigma", d.quantity_sigma, "a number >= 0")
    _check(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "a number in (0, 1)")
    _check(0 < d.global_test_fraction < 1, "data.global_test_fraction", d.global_test_fraction, "a number in (0, 1)")
    _check(d.synthetic_alpha >= 0, "data.synthetic_alpha", d.synthetic_alpha, "a number >= 0")
    _check(d.synthetic_beta >= 0, "data.synthetic_beta", d.synthetic_beta, "a number >= 0")
    _check(d.synthetic_features >= 1, "data.synthetic_features", d.synthetic_features, "an integer >= 1")
    m = cfg.model
    _check(all(h >= 1 for h in m.hidden) and len(m.hidden) >= 1, "model.hidden", m.hidden,
           "one or more widths >= 1, e.g. 200,200")
    _check(m.head_layers >= 1, "model.head_layers", m.head_layers, "an integer >= 1")
    loc = cfg.local
    opts = ("sgd", "momentum", "adam")
    _check(loc.optimizer in opts, "local.optimizer", loc.optimizer, "one of " + ", ".join(opts))
    _check(loc.lr > 0 and math.isfinite(loc.lr), "local.lr", loc.lr, "a finite number > 0")
    _check(0 <= loc.momentum < 1, "local.momentum", loc.momentum, "a number in [0, 1)")
    _check(loc.weight_decay >= 0, "local.weight_decay", loc.weight_decay, "a number >= 0")
    _check(loc.batch_size >= 1, "local.batch_size", loc.batch_size, "an integer >= 1")
    _check(loc.epochs >= 1, "local.epochs", loc.epochs, "an integer >= 1")
    _check(loc.steps >= 0, "local.steps", loc.steps, "an integer >= 0 (0 = use local.epochs)")
    _check(loc.clip_norm >= 0, "local.clip_norm", loc.clip_norm, "a number >= 0 (0 = off)")
    forms = ("auto", "materialized", "factored")
    _check(loc.formulation in forms, "local.formulation", loc.formulation, "one of " + ", ".join(forms))
    _check(loc.finetune_epochs >= 1, "local.finetune_epochs", loc.finetune_epochs, "an integer >= 1")
    s = cfg.server
    _check(s.optimizer in opts, "server.optimizer", s.optimizer, "one of " + ", ".join(opts))
    _check(s.lr > 0 and math.isfinite(s.lr), "server.lr", s.lr, "a finite number > 0")
    _check(0 <= s.momentum < 1, "server.momentum", s.momentum, "a number in [0, 1)")
    _check(s.weighting in ("samples", "uniform"), "server.weighting", s.weighting, "samples or uniform")
    _check(s.prox_mu >= 0, "server.prox_mu", s.prox_mu, "a number >= 0")
    fr = cfg.fedrema
    _check(0 < fr.delta <= 1, "fedrema.delta", fr.delta, "a number in (0, 1]")
    _check(fr.sim_type in ("probe", "proto"), "fedrema.sim_type", fr.sim_type, "probe or proto")
    _check(fr.t_ref > 0 and math.isfinite(fr.t_ref), "fedrema.t_ref", fr.t_ref, "a finite number > 0")
    _check(fr.t_peer > 0 and math.isfinite(fr.t_peer), "fedrema.t_peer", fr.t_peer, "a finite number > 0")
    _check(fr.probe_scale > 0 and math.isfinite(fr.probe_scale), "fedrema.probe_scale", fr.probe_scale,
           "a finite number > 0")
    ablations = ("none", "no_ccp", "no_history", "random_peers")
    _check(fr.ablation in ablations, "fedrema.ablation", fr.ablation, "one of " + ", ".join(ablations))
    _check(fr.head_epochs >= 1, "fedrema.head_epochs", fr.head_epochs, "an integer >= 1")
