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
      ``diabetes`` (embedded regression: scikit-learn's 442 patients, x and y standardized with
      train-pool statistics), ``synthetic`` (FedProx Synthetic(alpha, beta)),
      ``floral_synthetic`` (FLoRAL's clustered low-rank regression benchmark), or a TFDS name
      (``mnist``, ``cifar10``, ...).
    partition: registered partitioner; ``auto`` = ``natural`` for ``synthetic`` and
      ``floral_synthetic`` (each device has its own distribution), ``iid`` for ``diabetes`` (its
      ~354 train rows are too few for ``dirichlet_label`` at the default min_size) and
      ``dirichlet_label`` otherwise. Label-based partitioners work on strata: class ids, or
      quantile bins of a regression target. ``clusters`` (FLoRAL): an ``iid`` partition whose
      client k is in cluster k mod ``num_clusters`` and sees its rows (train, test, validation)
      transformed by ``cluster_transform``.

    Leak-free split: every source is split into a train pool and a test pool before
    partitioning (the dataset's own test split, else a stratified ``global_test_fraction``
    hold-out). Only the train pool is partitioned; each client's test rows are drawn from the
    test pool, disjoint across clients; the global test set is the whole test pool.
    """

    dataset: str = "digits"
    partition: str = "auto"
    num_clients: int = 20  # clients C (some sources fix it: hcfmtl_lite, floral_synthetic multiples)
    alpha: float = 0.3  # Dirichlet concentration (both conventions); smaller = more skew
    min_size: int = 10  # dirichlet_label: resample until every client has at least this many
    classes_per_client: int = 2  # pathological
    # Training rows per client for dirichlet_client / dominant_class. 0 = train pool // clients for
    # dirichlet_client; for dominant_class 0 = the largest size that gives no training example
    # to two clients (train pool // clients with with_replacement). FedReMa's 500 at 80/20 = 400.
    samples_per_client: int = 0
    dominant_fraction: float = 0.2  # dominant_class: the IID share s of each client's samples
    dominant_classes: int = 3  # dominant_class: classes per group
    # dominant_class only: let the per-class cursor wrap around so training examples are reused
    # across clients, as the official FedReMa code does (test rows stay disjoint: no leak).
    # False: every partitioner gives each training example to at most one client.
    with_replacement: bool = False
    quantity_sigma: float = 1.0  # quantity_skew: sigma of the log-normal client sizes
    # Client test size: per class, a client draws train_count * f / (1 - f) rows from the test
    # pool (about f of its train + test rows are test, with its own label mix), without
    # replacement and disjoint across clients; apportioned pro rata when the pool runs short.
    # Not used by synthetic (FedProx's own 90/10 split per device).
    test_fraction: float = 0.2
    global_test_fraction: float = 0.2  # sources without a test split: held-out test pool share
    synthetic_alpha: float = 0.0  # synthetic: FedProx Synthetic(alpha, beta) model heterogeneity
    synthetic_beta: float = 0.0  # synthetic: data (input) heterogeneity
    synthetic_iid: bool = False  # synthetic: the IID variant (one shared model and input law)
    synthetic_features: int = 60  # synthetic: input dimension
    # partition=clusters: how cluster c transforms its clients' rows. rotate: images by
    # (360 // num_clusters) * c degrees counter-clockwise (image sources only); label_shift:
    # y -> (y + c) mod num_classes (classification only). Other partitions ignore both fields.
    cluster_transform: str = "rotate"
    # partition=clusters: client k is in cluster k mod num_clusters (1 <= num_clusters <=
    # num_clients); floral_synthetic: C, with num_clients a multiple of it.
    num_clusters: int = 4
    # floral_synthetic: linear (Linear(10,3) targets, 8 samples per client, 7 train / 1 test) or
    # mlp (10-20-1 ReLU targets, 120 per client, 96 / 24)
    floral_variant: str = "mlp"
    # hcfmtl_lite (specs/fedhca2.md section 6): s1 = 4 single-task + 1 multi-task client, s2 =
    # 8 + 2; the scenario fixes the clients (leave num_clients at its default)
    scenario: str = "s1"
    # > 0: a tuning run. This share of each client's training rows (stratified) becomes its
    # validation split, and the run is evaluated on it (per client, and pooled as the global set)
    # instead of the test split, which stays unseen. `fedjax-sim sweep` sets it.
    validation_fraction: float = 0.0
    # > 0: this stratified share of the train pool is held out before partitioning, labels
    # dropped, as an unlabeled proxy set (`FederatedData.proxy`, FedADT's distillation data):
    # never any client's data, never test data
    proxy_fraction: float = 0.0
    # > 0: this stratified share of the train pool (after the proxy set) is held out before
    # partitioning, WITH labels, as the public split a generator is fitted on
    # (`FederatedData.public`; --generative fedgc): never any client's data, never test data
    public_fraction: float = 0.0
    # TFDS data_dir ("" = TFDS default), or the directory holding a natural dataset's files
    # (femnist, shakespeare, cifar100_fed, stackoverflow: FedJAX / TensorFlow Federated SQLite,
    # LEAF JSON; docs/datasets.md)
    data_dir: str = ""
    # stackoverflow: the most frequent words a post's bag of words counts (TFF's baseline: 10,000)
    vocab_size: int = 10_000
    # stackoverflow: the most frequent tags it predicts (TFF's baseline: 500)
    tag_vocab_size: int = 500
    # stackoverflow: what a bag of words is divided by: in_vocab (its in-vocabulary words: TFF's
    # baseline today) | all_words (every word, out-of-vocabulary ones too: the google-research/
    # federated pipeline of Reddi et al. 2021's FedOpt experiments)
    bow_denominator: str = "in_vocab"
    # natural-client files: > 0 keeps each client's first this many training rows (the FedOpt
    # pipeline's take(N): Stack Overflow users capped at 1,000 sentences). 0 = every row
    max_examples: int = 0
    # how training rows are held: padded ([C, N_max, ...], each client padded to the largest) |
    # packed (back to back, [R, ...]: memory grows with the rows; a round gathers its cohort's
    # rows into the padded shape) | auto (packed for the natural-client files, padded otherwise).
    # The same numbers either way. Multi-task data and FedGC runs are always padded; a mesh that
    # splits the data by client pads packed rows under auto (resolved.data_placement)
    layout: str = "auto"
    seed: int = -1  # partition seed; -1 = the run seed


BOW_DENOMINATORS = ("in_vocab", "all_words")
DATA_LAYOUTS = ("auto", "padded", "packed")


@dataclasses.dataclass
class ModelConfig:
    """Model architecture. ``auto`` picks ``cnn`` for images and ``mlp`` for vectors."""

    name: str = "auto"  # auto | a model of `fedjax-sim list` (auto: cnn for images, mlp for vectors)
    hidden: tuple[int, ...] = (200, 200)  # mlp hidden widths; () = a linear model
    head_layers: int = 1  # dense layers in the personal head
    # multi-task data (models.multitask): encoder and per-task decoder widths (HC-FMTL-lite's
    # 32 -> 64 -> 64 and 64 -> 32 -> 32); model.hidden is the single-task MLP's
    encoder: tuple[int, ...] = (64, 64)
    decoder: tuple[int, ...] = (32, 32)  # multi-task: each task decoder's widths
    # how convolutions run: xla (its convolution op) | patches (patches x matmul, the same
    # parameters and outputs; fast inside the local-training loop on CPU) | auto (patches on CPU)
    conv: str = "auto"
    # train with the named model's own dropouts (emnist_cnn, simple_cnn: 0.25 after the pool, 0.5
    # after fc128, as FedJAX and pfl-research do); off: deterministic local training
    dropout: bool = False


@dataclasses.dataclass
class LocalConfig:
    """Client-side training: any optax optimizer (``fedjax-sim list`` names them)."""

    optimizer: str = "sgd"  # sgd | momentum (sgd + local.momentum) | adam | adamw | ... (optax)
    lr: float = 0.05  # client learning rate
    momentum: float = 0.9  # used by ``momentum``
    optimizer_args: str = ""  # extra optax hyper-parameters, e.g. "b1=0.9,eps=1e-6"
    weight_decay: float = 0.0  # decoupled weight decay of the client optimizer
    batch_size: int = 16  # client batch size
    epochs: int = 1  # local epochs over the client's data (used when steps == 0)
    # multi-task data: local epochs of each input domain's clients, e.g. 1,2 (FedHCA2: PASCAL
    # clients 1, NYUD clients 4; HC-FMTL-lite A 1, B 2); () = local.epochs for every client
    epochs_per_domain: tuple[int, ...] = ()
    steps: int = 0  # fixed local steps per round; 0 = use epochs
    clip_norm: float = 0.0  # global-norm gradient clipping; 0 = off
    formulation: str = "auto"  # auto | materialized | factored (low-rank deltas: dense nets, SGD/momentum)
    # unequal clients in epoch mode: trim (each client runs only its own ceil(n/B) steps per epoch;
    # a vmapped group runs its largest member's) | masked (every client runs the largest client's
    # steps, the extra ones masked) | auto (trim); the same numbers either way, to float32 rounding
    padding: str = "auto"


@dataclasses.dataclass
class ServerConfig:
    """Server-side aggregation: the mean client delta is a pseudo-gradient for this optimizer."""

    optimizer: str = "sgd"  # sgd | momentum | adam | ... (optax) | fedadagrad | fedadam | fedyogi (FedOpt's), applied to the mean client delta
    lr: float = 1.0  # server learning rate on the mean client delta (1 with sgd = plain averaging)
    momentum: float = 0.9  # used by ``momentum``
    optimizer_args: str = ""  # extra optax hyper-parameters, e.g. "b1=0.9"
    weighting: str = "samples"  # samples | uniform


@dataclasses.dataclass
class ClockConfig:
    """The virtual clock (`fedjax_sim.asynchrony`, specs/async_kd.md section 3.3).

    A job (one client's local training) takes ``speed_c * work_c * noise`` virtual time units:
    ``work_c`` is the client's real local steps, ``speed_c`` its per-client slowness drawn once
    per seed (``constant``: 1; ``lognormal``: LogNormal(0, sigma); ``exponential``: Exp(1)), times
    ``straggler_slowdown`` for a random ``straggler_fraction`` of clients, and ``noise`` a per-job
    LogNormal(0, noise) factor. ``none``: no clock for synchronous algorithms (asynchronous ones
    then use ``constant``). With a clock a synchronous round lasts as long as its slowest
    sampled client plus ``server_time``; asynchronous methods keep ``concurrency`` jobs in flight
    (0 = the cohort, else data.num_clients) and charge ``server_time`` per server update.
    ``time_budget`` stops a run at the first evaluation at or past that virtual time.
    """

    speed: str = "none"  # none | constant | lognormal | exponential
    sigma: float = 1.0  # lognormal: sigma of log speed
    noise: float = 0.25  # sigma of the per-job log-normal factor (0 = none)
    straggler_fraction: float = 0.0  # share of the clients that are stragglers
    straggler_slowdown: float = 10.0  # the stragglers' time multiplier
    concurrency: int = 0  # asynchronous methods: jobs in flight; 0 = cohort (or all clients)
    server_time: float = 0.0  # virtual time charged per server update
    # > 0: each seed stops at its first evaluation at or past this virtual time (``rounds`` is
    # then an upper bound); 0 = run all rounds
    time_budget: float = 0.0


SPEEDS = ("none", "constant", "lognormal", "exponential")


@dataclasses.dataclass
class FedGCConfig:
    """FedGC's data stage (``--generative fedgc``; `fedjax_sim.generative`, specs/fedgc.md). Tags:
    [V] verified from the paper's public text, [D] this project's design.

    Budget (section 2.1): ``budget`` b >= 0 generates M = round(b * total real rows) samples
    (Table 2 [V]: more helps); ``client_allocation`` splits M over clients: ``equal`` (M / K each,
    "the same amount for each client" [V]), ``proportional`` (b * n_k each), ``inverse_size``
    (proportional to 1 / n_k); ``allocation`` splits each client's share over classes: ``equal``,
    ``inverse`` (fill every class up to the client's largest: missing classes get most),
    ``inverse_pow`` ((n + 1) ** -gamma), ``mixed`` (rho * equal + (1 - rho) * inverse).
    Prompt design (2.2): ``single`` | ``multiple`` (``prompts`` templates per class [V]) | ``llm``.
    Guidance (2.3): ``prompt`` (no private data) | ``real`` (a private row, no class prompt) |
    ``both`` (the paper's proposal [V]): SDEdit ``strength`` in [0, 1], ``cfg_weight``,
    ``temperature``. Generator quality [D]: ``domain_gap``, ``label_noise``.
    Training strategy (2.4): ``mixed`` [V] | ``gen_first`` | ``real_first`` (the first
    ``strategy_rounds`` rounds, 0 = half the run, on one kind only) | ``gen_only`` | ``real_only``
    (controls). ``filter`` [D, optional]: ``none`` | ``reference`` (a classifier fitted on the
    public split) | ``local`` (each client's classifier on its real rows) keeps rows whose label
    it predicts (probability >= ``filter_threshold`` when > 0).
    """

    generator: str = "gmm"  # gmm | vae | real (held-out real rows: best case) | noise (worst case)
    budget: float = 1.0  # generated rows per real row, in total (0 = plain training)
    client_allocation: str = "equal"
    allocation: str = "equal"
    gamma: float = 1.0  # allocation=inverse_pow: (n + 1) ** -gamma
    rho: float = 0.5  # allocation=mixed: rho * equal + (1 - rho) * inverse
    prompt: str = "multiple"
    prompts: int = 4  # prompt=multiple: templates (heaviest modes) per class, at most components
    guidance: str = "both"
    strength: float = 0.5  # guidance strength s in [0, 1]: 0 copies the private row, 1 ignores it
    cfg_weight: float = 0.0  # classifier-free guidance weight w >= 0
    temperature: float = 1.0  # sampling temperature tau > 0 (times 0.5 single, 1.5 llm prompts)
    domain_gap: float = 0.0  # a fixed shift of every generated row, in public-split stds
    label_noise: float = 0.0  # probability that a generated row depicts another class than its label
    strategy: str = "mixed"
    strategy_rounds: int = 0  # gen_first / real_first: rounds of the first phase; 0 = half the run
    filter: str = "none"
    filter_threshold: float = 0.0  # filter: keep rows whose label probability >= this; 0 = argmax
    components: int = 8  # prompt modes S per class (gmm components; vae latent modes)
    vae_steps: int = 2000  # vae: Adam steps of generator training
    vae_latent: int = 8  # vae: latent dimension
    # a generator file written by an earlier run (<run>/generators/*.msgpack): reused instead of
    # fitting; refused when it was fitted on rows this run gives to clients or tests
    generator_path: str = ""
    cache_dir: str = ""  # where fitted generators are cached; "" = <run>/generators


# the named options of the fedgc section (`fedjax_sim.generative` implements each)
FEDGC_CHOICES = {
    "generator": ("gmm", "vae", "real", "noise"),
    "client_allocation": ("equal", "proportional", "inverse_size"),
    "allocation": ("equal", "inverse", "inverse_pow", "mixed"),
    "prompt": ("single", "multiple", "llm"),
    "guidance": ("prompt", "real", "both"),
    "strategy": ("mixed", "gen_first", "real_first", "gen_only", "real_only"),
    "filter": ("none", "reference", "local"),
}
MAX_BUDGET = 100.0  # generated rows per real row; more is a typo, not an experiment


@dataclasses.dataclass
class TaskConfig:
    """What is learned. ``auto``: classification for class labels, sequence for token sequences,
    multilabel for label sets, regression_mse for real targets."""

    name: str = "auto"  # auto | classification | sequence | multilabel | regression_mse | regression_mae


# Algorithm-owned sections: each algorithm module registers its own dataclass (``fedrema``,
# ``fedprox``, ...) with `register_section`; they are settable as ``--set <section>.<field>``.
SECTIONS: dict[str, type] = {}
# Old field names that still work (config files and --set), mapped to where the field lives now.
ALIASES: dict[str, str] = {}


# Fields a grid may sweep as a vmapped axis (`fedjax_sim.trials`): the program reads them as
# arrays (optax.inject_hyperparams, array-valued algorithm hyper-parameters), so grid points that
# differ only in them share one compiled program. Sections add theirs with a ``TRACEABLE`` tuple.
TRACEABLE: set[str] = {"local.lr", "local.momentum", "local.weight_decay", "local.clip_norm",
                       "server.lr", "server.momentum"}


def register_section(name: str, cls: type, aliases: dict[str, str] | None = None) -> type:
    """Registers an algorithm's config section (a dataclass with an optional ``validate()`` and
    an optional ``TRACEABLE`` tuple of its float fields that may be swept as a vmapped axis)."""
    if name in SECTIONS and SECTIONS[name] is not cls:
        raise ValueError(f"config section {name!r} is registered twice")
    if name in {f.name for f in dataclasses.fields(Config)}:
        raise ValueError(f"config section {name!r} shadows a Config field")
    SECTIONS[name] = cls
    ALIASES.update(aliases or {})
    TRACEABLE.update(f"{name}.{f}" for f in getattr(cls, "TRACEABLE", ()))
    return cls


@dataclasses.dataclass
class Config:
    """A whole run. Algorithm sections (`SECTIONS`) are read as attributes, e.g. ``cfg.fedrema``."""

    algorithm: str = "fedavg"  # a registered algorithm (`fedjax-sim list`); the CLI takes several, comma-separated
    rounds: int = 100  # communication rounds (server updates for asynchronous methods)
    cohort: int = 0  # clients per round; 0 = all clients
    eval_every: int = 5  # evaluate (and log a metrics line) every this many rounds, and after the last
    seed: int = 0  # the run seed: partition (unless data.seed), initialization, every sampled key
    # several seeds (the CLI's --seeds): each varies the partition, initialization and every
    # sampled key; () = just `seed`
    seeds: tuple[int, ...] = ()
    trials: str = "auto"  # how seeds and grid points run: auto | vmap (one program) | sequential
    preset: str = ""  # the --preset applied first, if any (recorded; `fedjax-sim list` names them)
    # auto (measured: sharded over every device when JAX sees several; on one device: CPU conv
    # models sequential, else chunked; vmap on GPU) | vmap | chunked | sequential | sharded (the
    # cohort split over mesh_devices devices, each mapping its share with the measured default)
    client_mapping: str = "auto"
    # chunked: clients per vmapped block; sharded: per device (0 = vmap); 0 = measured default
    chunk_size: int = 0
    mesh_devices: int = 0  # sharded: the first this many of JAX's devices form the client mesh; 0 = all
    # where per-client state [C, ...] (SCAFFOLD's control variates, personalized models) lives:
    # device | host (pinned host memory; each round moves only the cohort's rows) | auto (host
    # when data and state exceed the accelerator's free memory and the store fits the host's; on
    # CPU, where both are the same RAM, device)
    state_memory: str = "auto"
    out: str = ""  # the run directory; "" = runs/<time>-<algorithm>-<dataset>
    checkpoint: bool = False  # write the final state as checkpoint.npz (checkpoint_seed<s>.npz per seed)
    # > 0: checkpoint the round loop every this many rounds (at the end of the evaluation block
    # that reaches a multiple; <run>/resume, orbax) so `fedjax-sim run --resume DIR` (a sweep:
    # `fedjax-sim sweep --resume DIR`) can continue it; 0 = only when interrupted (SIGINT / SIGTERM)
    checkpoint_every: int = 0
    # also write every metrics line as TensorBoard scalars (<run>/tensorboard, tag <metric>/seed<s>;
    # needs tensorboardX: pip install "fedjax_sim[tensorboard]")
    tensorboard: bool = False
    # > 0: summary.json's final.rounds_to_target / time_to_target report when the headline
    # accuracy (global, else personalized) first reached it at an evaluation point
    target_accuracy: float = 0.0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    local: LocalConfig = dataclasses.field(default_factory=LocalConfig)
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    clock: ClockConfig = dataclasses.field(default_factory=ClockConfig)
    # none | fedgc: a data stage before training (FedGC: clients augment their data once with a
    # generator fitted on data.public_fraction; any algorithm then trains on it)
    generative: str = "none"
    fedgc: FedGCConfig = dataclasses.field(default_factory=FedGCConfig)
    sections: dict = dataclasses.field(default_factory=dict, repr=False)

    def __getattr__(self, name):  # only reached when normal lookup fails
        if name in SECTIONS:
            sections = self.__dict__.setdefault("sections", {})
            if name not in sections:
                sections[name] = SECTIONS[name]()
            return sections[name]
        raise AttributeError(name)


def _fixed_fields(cfg):
    return [f for f in dataclasses.fields(cfg) if f.name != "sections"]


def to_dict(cfg) -> dict[str, Any]:
    """JSON-ready dict: the fixed sections, then every registered algorithm section."""
    if not isinstance(cfg, Config):
        return json.loads(json.dumps(dataclasses.asdict(cfg)))
    out = {f.name: getattr(cfg, f.name) for f in _fixed_fields(cfg)}
    out = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in out.items()}
    out.update({name: dataclasses.asdict(getattr(cfg, name)) for name in sorted(SECTIONS)})
    return json.loads(json.dumps(out))


def copy_config(cfg: Config) -> Config:
    """A deep, independent copy."""
    return from_dict(to_dict(cfg))


def read_config_file(path, field: str = "--config") -> dict:
    """The config fields of a JSON file (a config.json of an earlier run works): a dict without
    its ``resolved`` record and its ``out`` (an earlier run's directory is not this run's).
    ConfigError naming ``field`` for an unreadable file, a non-object, or a summary.json."""
    from pathlib import Path

    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(field, str(path), f"a readable JSON config file ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(field, str(path), "a JSON object of config fields, e.g. "
                                            '{"rounds": 50, "local": {"lr": 0.05}}')
    if "final" in raw and "config" in raw:
        raise ConfigError(field, str(path), "a config.json, not a run's summary.json (its \"config\" is "
                                            "the run's config; the run directory has it as config.json)")
    return {k: v for k, v in raw.items() if k not in ("resolved", "out")}


def apply_dict(cfg: Config, raw: dict) -> Config:
    """Sets every field of ``raw`` (nested sections, or dotted keys such as ``"local.lr"``) on
    ``cfg``, parsed and checked by `set_field`; returns ``cfg``."""
    for key, value in _flatten(raw):
        set_field(cfg, key, value)
    return cfg


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
    """All settable dotted field names (registered algorithm sections included)."""
    cfg = cfg or Config()
    names = []
    fields = _fixed_fields(cfg) if isinstance(cfg, Config) else dataclasses.fields(cfg)
    for name in [f.name for f in fields] + (sorted(SECTIONS) if isinstance(cfg, Config) else []):
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            names += [f"{name}.{n}" for n in field_names(value)]
        else:
            names.append(name)
    return names


def _children(obj) -> dict:
    """Settable children of a config node: its fields, plus the algorithm sections for a Config."""
    fields = {f.name: f for f in dataclasses.fields(obj) if f.name != "sections"}
    if isinstance(obj, Config):
        fields.update({name: None for name in SECTIONS})
    return fields


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
        typ, "comma-separated integers, e.g. 1,2,3")
    raise ConfigError(path, raw, kind)


def set_field(cfg: Config, path: str, raw) -> None:
    """Sets ``cfg.<path>`` from a string or JSON value, with type checking."""
    path = ALIASES.get(path, path)
    obj = cfg
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = _children(obj)
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


def get_field(cfg: Config, path: str):
    """The value of ``cfg.<path>`` (aliases resolved); ConfigError for an unknown field."""
    path = ALIASES.get(path, path)
    if path not in field_names(cfg):
        raise ConfigError(path, "", "a config field: one of " + ", ".join(field_names(cfg)))
    obj = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def field_type(path: str):
    """The declared type of a dotted field (aliases resolved)."""
    path = ALIASES.get(path, path)
    *parents, last = path.split(".")
    obj = Config()
    for part in parents:
        obj = getattr(obj, part)
    return typing.get_type_hints(type(obj))[last]


def _field_comments(cls: type) -> dict[str, str]:
    """field -> its comment in the dataclass source: the ``#`` lines right above it and the
    trailing ``#`` of its own line (the config reference is generated from these, so it cannot
    drift from the code)."""
    import inspect
    import re

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, above = {}, []
    for line in lines:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("#").strip())
            continue
        m = re.match(r"^(\w+)\s*:\s*[^=]+=\s*(.*)$", text)
        if m and not text.startswith(("def ", "return")):
            value = m.group(2)
            trailing = value.split("  # ", 1)[1].strip() if "  # " in value else ""
            out[m.group(1)] = " ".join([*above, trailing]).strip()
        above = []
    # the class docstring's "name: text" / "name / other: text" lines (with their indented
    # continuation lines) describe the fields that have no comment
    doc_lines = (cls.__doc__ or "").splitlines()
    for i, line in enumerate(doc_lines):
        m = re.match(r"^\s*([a-z_][\w]*(?:\s*(?:/|,)\s*[a-z_]\w*)*):\s+(\S.*)$", line)
        if not m:
            continue
        indent = len(line) - len(line.lstrip())
        text = [m.group(2).strip()]
        for nxt in doc_lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) > indent:
                text.append(nxt.strip())
            else:
                break
        for name in re.split(r"\s*[/,]\s*", m.group(1)):
            if name in {f.name for f in dataclasses.fields(cls)} and not out.get(name):
                out[name] = " ".join(text)
    return out


def _type_name(typ) -> str:
    if typing.get_origin(typ) is tuple:
        return "ints (comma-separated)"
    return getattr(typ, "__name__", str(typ))


def field_table() -> list[tuple[str, str, str, str]]:
    """(dotted field, type, default, description) of every settable field, fixed sections first
    then the registered algorithm sections; descriptions are the source comments of each field
    (`_field_comments`) and, for fields with named options, the allowed values."""
    cfg = Config()
    named = {**{f"fedgc.{k}": v for k, v in FEDGC_CHOICES.items()}, "clock.speed": SPEEDS}
    comments: dict[type, dict] = {}
    rows = []
    for name in field_names(cfg):
        *parents, last = name.split(".")
        owner = cfg
        for part in parents:
            owner = getattr(owner, part)
        cls = type(owner)
        if cls not in comments:
            comments[cls] = _field_comments(cls)
        default = getattr(owner, last)
        shown = (",".join(map(str, default)) or "()") if isinstance(default, tuple) else json.dumps(default)
        doc = comments[cls].get(last, "")
        if not doc and parents and parents[0] in SECTIONS:  # documented in its section's module
            doc = f"see the {parents[0]} section in {cls.__module__.replace('.', '/')}.py"
        if name in named:
            doc = (doc + "; " if doc else "") + "one of " + ", ".join(named[name])
        rows.append((name, _type_name(typing.get_type_hints(cls)[last]), shown, doc))
    return rows


def field_reference(markdown: bool = False) -> str:
    """`field_table` as text: aligned columns for a terminal, or the markdown of
    docs/config.md (``fedjax-sim list --fields --markdown``)."""
    rows = field_table()
    if markdown:
        esc = lambda t: t.replace("|", "\\|")  # noqa: E731
        lines = ["# Configuration reference", "",
                 "Generated by `fedjax-sim list --fields --markdown` from the config classes and their "
                 "comments (do not edit; `tests/test_reliability.py` checks it is current). Set any field "
                 "with `--set KEY=VALUE`, in a JSON config, or as `section__field=` in `fedjax_sim.run`.", "",
                 "| field | type | default | description |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {t} | `{d}` | {esc(doc)} |" for n, t, d, doc in rows]
        return "\n".join(lines) + "\n"
    width = max(len(r[0]) for r in rows)
    twidth = max(len(r[1]) for r in rows)
    dwidth = min(max(len(r[2]) for r in rows), 16)
    return "\n".join(f"{n:{width}s}  {t:{twidth}s}  {d:{dwidth}s}  {doc}" for n, t, d, doc in rows)


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with dotted fields set to ``values`` as given, without parsing: this is
    how swept hyper-parameters enter an algorithm's build as traced arrays (`fedjax_sim.trials`);
    they were parsed and validated as numbers before."""
    new = copy_config(cfg)
    for path, value in values.items():
        *parents, last = ALIASES.get(path, path).split(".")
        obj = new
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, last, value)
    return new


def traced(section) -> bool:
    """Whether any field of a config dataclass holds an array (a swept, traced value)."""
    return any(hasattr(getattr(section, f.name), "shape") for f in dataclasses.fields(section))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Applies ``key=value`` strings (the CLI's ``--set``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", item, "key=value, e.g. local.lr=0.05")
        key, value = item.split("=", 1)
        set_field(cfg, key.strip(), value.strip())
    return cfg


def check(cond: bool, field: str, value, allowed: str):
    """ConfigError(field, value, allowed) unless ``cond`` (for sections' ``validate``)."""
    if not cond:
        raise ConfigError(field, value, allowed)


def validate(cfg: Config) -> None:
    """Range checks that do not need the data or the registries (those check names). Every float
    field, of every section, must be finite first: no field means anything at inf."""
    for name in field_names(cfg):
        value = get_field(cfg, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(name, value, "a finite number")
    check(1 <= cfg.rounds <= 10_000_000, "rounds", cfg.rounds, "an integer in [1, 10000000]")
    # seeds become jax.random.PRNGKey(seed), an int32 outside x64 mode
    check(0 <= cfg.seed < 2 ** 31, "seed", cfg.seed, f"an integer in [0, {2 ** 31 - 1}]")
    for s in cfg.seeds:
        check(0 <= s < 2 ** 31, "seeds", ",".join(map(str, cfg.seeds)),
              f"integers in [0, {2 ** 31 - 1}]")
    check(len(set(cfg.seeds)) == len(cfg.seeds), "seeds", ",".join(map(str, cfg.seeds)), "distinct seeds")
    check(cfg.trials in ("auto", "vmap", "sequential"), "trials", cfg.trials, "one of auto, vmap, sequential")
    check(len(cfg.seeds) <= MAX_SEEDS, "seeds", f"{len(cfg.seeds)} seeds", f"at most {MAX_SEEDS} seeds")
    check(-1 <= cfg.data.seed < 2 ** 31, "data.seed", cfg.data.seed,
          f"-1 (the run seed) or an integer in [0, {2 ** 31 - 1}]")
    check(cfg.cohort >= 0, "cohort", cfg.cohort, "an integer >= 0 (0 = all clients)")
    check(cfg.eval_every >= 1, "eval_every", cfg.eval_every, "an integer >= 1")
    check(cfg.checkpoint_every >= 0, "checkpoint_every", cfg.checkpoint_every,
          "an integer >= 0 (rounds between resumable checkpoints; 0 = only when interrupted)")
    check(cfg.chunk_size >= 0, "chunk_size", cfg.chunk_size, "an integer >= 0 (0 = default)")
    mappings = ("auto", "vmap", "chunked", "sequential", "sharded")
    check(cfg.client_mapping in mappings, "client_mapping", cfg.client_mapping, "one of " + ", ".join(mappings))
    check(cfg.mesh_devices >= 0, "mesh_devices", cfg.mesh_devices, "an integer >= 0 (0 = every device)")
    check(cfg.state_memory in STATE_MEMORY, "state_memory", cfg.state_memory, "one of " + ", ".join(STATE_MEMORY))
    d = cfg.data
    check(d.num_clients >= 1, "data.num_clients", d.num_clients, "an integer >= 1")
    check(cfg.cohort <= d.num_clients, "cohort", cfg.cohort, f"at most data.num_clients={d.num_clients}")
    check(d.alpha > 0 and math.isfinite(d.alpha), "data.alpha", d.alpha, "a finite number > 0")
    check(d.min_size >= 0, "data.min_size", d.min_size, "an integer >= 0")
    check(d.classes_per_client >= 1, "data.classes_per_client", d.classes_per_client, "an integer >= 1")
    check(d.samples_per_client >= 0, "data.samples_per_client", d.samples_per_client, "an integer >= 0")
    check(0 <= d.dominant_fraction <= 1, "data.dominant_fraction", d.dominant_fraction, "a number in [0, 1]")
    check(d.dominant_classes >= 1, "data.dominant_classes", d.dominant_classes, "an integer >= 1")
    check(d.quantity_sigma >= 0, "data.quantity_sigma", d.quantity_sigma, "a number >= 0")
    check(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "a number in (0, 1)")
    check(0 <= d.validation_fraction < 1, "data.validation_fraction", d.validation_fraction,
          "a number in [0, 1) (0 = evaluate on the test split)")
    check(0 < d.global_test_fraction < 1, "data.global_test_fraction", d.global_test_fraction, "a number in (0, 1)")
    check(d.synthetic_alpha >= 0, "data.synthetic_alpha", d.synthetic_alpha, "a number >= 0")
    check(d.synthetic_beta >= 0, "data.synthetic_beta", d.synthetic_beta, "a number >= 0")
    check(d.synthetic_features >= 1, "data.synthetic_features", d.synthetic_features, "an integer >= 1")
    check(d.vocab_size >= 1, "data.vocab_size", d.vocab_size, "an integer >= 1")
    check(d.tag_vocab_size >= 1, "data.tag_vocab_size", d.tag_vocab_size, "an integer >= 1")
    check(d.bow_denominator in BOW_DENOMINATORS, "data.bow_denominator", d.bow_denominator,
          "one of " + ", ".join(BOW_DENOMINATORS))
    check(d.layout in DATA_LAYOUTS, "data.layout", d.layout, "one of " + ", ".join(DATA_LAYOUTS))
    check(d.max_examples >= 0, "data.max_examples", d.max_examples, "an integer >= 0 (0 = every row)")
    m = cfg.model
    check(all(h >= 1 for h in m.hidden), "model.hidden", m.hidden,
          "widths >= 1, e.g. 200,200 (empty: a linear model, one dense layer)")
    check(m.head_layers >= 1, "model.head_layers", m.head_layers, "an integer >= 1")
    for name in ("encoder", "decoder"):
        widths = getattr(m, name)
        check(len(widths) >= 1 and all(h >= 1 for h in widths), f"model.{name}", widths,
              "one or more widths >= 1, e.g. 64,64 (the multi-task model's)")
    check(m.conv in ("auto", "xla", "patches"), "model.conv", m.conv, "one of auto, xla, patches")
    loc = cfg.local
    check(loc.lr > 0 and math.isfinite(loc.lr), "local.lr", loc.lr, "a finite number > 0")
    check(0 <= loc.momentum < 1, "local.momentum", loc.momentum, "a number in [0, 1)")
    check(loc.weight_decay >= 0, "local.weight_decay", loc.weight_decay, "a number >= 0")
    check(loc.batch_size >= 1, "local.batch_size", loc.batch_size, "an integer >= 1")
    check(loc.epochs >= 1, "local.epochs", loc.epochs, "an integer >= 1")
    check(loc.steps >= 0, "local.steps", loc.steps, "an integer >= 0 (0 = use local.epochs)")
    check(all(isinstance(e, int) and e >= 1 for e in loc.epochs_per_domain), "local.epochs_per_domain",
          ",".join(map(str, loc.epochs_per_domain)), "integers >= 1, one per input domain (e.g. 1,2)")
    check(not loc.epochs_per_domain or loc.steps == 0, "local.epochs_per_domain",
          ",".join(map(str, loc.epochs_per_domain)), "empty with local.steps > 0 (fixed steps have no epochs)")
    check(loc.clip_norm >= 0, "local.clip_norm", loc.clip_norm, "a number >= 0 (0 = off)")
    forms = ("auto", "materialized", "factored")
    check(loc.formulation in forms, "local.formulation", loc.formulation, "one of " + ", ".join(forms))
    check(loc.padding in ("auto", "masked", "trim"), "local.padding", loc.padding, "one of auto, masked, trim")
    s = cfg.server
    check(s.lr > 0 and math.isfinite(s.lr), "server.lr", s.lr, "a finite number > 0")
    check(0 <= s.momentum < 1, "server.momentum", s.momentum, "a number in [0, 1)")
    check(s.weighting in ("samples", "uniform"), "server.weighting", s.weighting, "samples or uniform")
    check(0 <= d.proxy_fraction < 1, "data.proxy_fraction", d.proxy_fraction,
          "a number in [0, 1) (0 = no proxy set)")
    check(cfg.target_accuracy == 0 or 0 < cfg.target_accuracy <= 1, "target_accuracy", cfg.target_accuracy,
          "a number in (0, 1] (or 0 = no target)")
    k = cfg.clock
    check(k.speed in SPEEDS, "clock.speed", k.speed, "one of " + ", ".join(SPEEDS))
    check(k.sigma > 0 and math.isfinite(k.sigma), "clock.sigma", k.sigma, "a finite number > 0")
    check(0 <= k.noise < 10, "clock.noise", k.noise, "a number in [0, 10) (0 = no per-job noise)")
    check(0 <= k.straggler_fraction <= 1, "clock.straggler_fraction", k.straggler_fraction, "a number in [0, 1]")
    check(k.straggler_slowdown > 0 and math.isfinite(k.straggler_slowdown), "clock.straggler_slowdown",
          k.straggler_slowdown, "a finite number > 0 (the stragglers' time multiplier)")
    check(k.concurrency >= 0, "clock.concurrency", k.concurrency, "an integer >= 0 (0 = the cohort)")
    check(k.concurrency <= d.num_clients, "clock.concurrency", k.concurrency,
          f"at most data.num_clients={d.num_clients} (jobs in flight are distinct clients)")
    check(k.server_time >= 0 and math.isfinite(k.server_time), "clock.server_time", k.server_time,
          "a finite number >= 0")
    check(k.time_budget >= 0 and math.isfinite(k.time_budget), "clock.time_budget", k.time_budget,
          "a finite number >= 0 (0 = run all rounds)")
    check(0 <= d.public_fraction < 1, "data.public_fraction", d.public_fraction,
          "a number in [0, 1) (0 = no public split)")
    check(d.proxy_fraction + d.public_fraction < 1, "data.public_fraction", d.public_fraction,
          f"a number below 1 - data.proxy_fraction={d.proxy_fraction} (the clients need rows)")
    check(cfg.generative in ("none", "fedgc"), "generative", cfg.generative, "none or fedgc")
    validate_fedgc(cfg.fedgc)
    g = cfg.fedgc
    if g.strategy in ("gen_first", "real_first"):
        check(g.strategy_rounds < cfg.rounds, "fedgc.strategy_rounds", g.strategy_rounds,
              f"an integer below rounds={cfg.rounds} for fedgc.strategy={g.strategy} (0 = half the run; "
              f"the whole run is fedgc.strategy={g.strategy.split('_')[0]}_only)")
    for name in sorted(SECTIONS):
        section = getattr(cfg, name)
        if hasattr(section, "validate"):
            section.validate()


def validate_fedgc(g: FedGCConfig) -> None:
    """Range and name checks of the ``fedgc`` section (checked whether or not FedGC is on, so a
    typo never waits for the day it is switched on)."""
    for name, allowed in FEDGC_CHOICES.items():
        value = getattr(g, name)
        check(value in allowed, f"fedgc.{name}", value, "one of " + ", ".join(allowed))
    check(math.isfinite(g.budget) and 0 <= g.budget <= MAX_BUDGET, "fedgc.budget", g.budget,
          f"a finite number in [0, {MAX_BUDGET:g}] (generated rows per real row; 0 = plain training)")
    check(math.isfinite(g.gamma) and g.gamma >= 0, "fedgc.gamma", g.gamma, "a finite number >= 0")
    check(0 <= g.rho <= 1, "fedgc.rho", g.rho, "a number in [0, 1]")
    check(g.components >= 1, "fedgc.components", g.components, "an integer >= 1")
    check(1 <= g.prompts <= g.components, "fedgc.prompts", g.prompts,
          f"an integer in [1, fedgc.components={g.components}]")
    check(0 <= g.strength <= 1, "fedgc.strength", g.strength, "a number in [0, 1]")
    check(math.isfinite(g.cfg_weight) and g.cfg_weight >= 0, "fedgc.cfg_weight", g.cfg_weight,
          "a finite number >= 0")
    check(math.isfinite(g.temperature) and g.temperature > 0, "fedgc.temperature", g.temperature,
          "a finite number > 0")
    check(math.isfinite(g.domain_gap) and g.domain_gap >= 0, "fedgc.domain_gap", g.domain_gap,
          "a finite number >= 0 (in units of the public split's per-feature std)")
    check(0 <= g.label_noise <= 1, "fedgc.label_noise", g.label_noise, "a number in [0, 1]")
    check(g.strategy_rounds >= 0, "fedgc.strategy_rounds", g.strategy_rounds,
          "an integer >= 0 (0 = half the run)")
    check(0 <= g.filter_threshold < 1, "fedgc.filter_threshold", g.filter_threshold,
          "a number in [0, 1) (0 = the predicted class must be the label)")
    check(g.vae_steps >= 1, "fedgc.vae_steps", g.vae_steps, "an integer >= 1")
    check(g.vae_latent >= 1, "fedgc.vae_latent", g.vae_latent, "an integer >= 1")


STATE_MEMORY = ("auto", "device", "host")
MAX_SEEDS = 10_000  # a run's seeds; more is a typo, not an experiment

# Fields a grid may not vary: seeds have --seeds, algorithms --algorithm; data.* and task.*
# define the problem (a sweep that selects among them picks the easiest problem, or the luckiest
# partition); the rest name or observe the run without changing what is trained.
NOT_GRIDDABLE = ("seed", "seeds", "algorithm", "out", "preset", "trials", "eval_every", "checkpoint", "checkpoint_every",
                 "tensorboard",
                 "client_mapping", "chunk_size", "mesh_devices", "state_memory", "local.padding")
NOT_GRIDDABLE_SECTIONS = ("data", "task")


class GridAxis(typing.NamedTuple):
    """One ``--grid`` item: the field (aliases resolved), its parsed values, the text as given."""

    field: str
    values: list
    text: str


def parse_grid(items: list[str]) -> list[GridAxis]:
    """``["local.lr=0.01,0.1", "fedprox.mu=0,0.01"]`` -> [GridAxis(field, [parsed values], text)].

    Each item names one scalar field (aliases resolved) and one or more distinct values, parsed
    by the field's type. ConfigError naming ``--grid`` for: no ``=``, an unknown or non-scalar
    field, a field given twice, an empty or unparsable value, a repeated value.
    """
    grid: list[GridAxis] = []
    for item in items:
        if "=" not in item:
            raise ConfigError("--grid", item, "key=v1,v2,..., e.g. local.lr=0.01,0.05,0.1")
        key, raw = (p.strip() for p in item.split("=", 1))
        key = ALIASES.get(key, key)
        if key not in field_names():
            raise ConfigError("--grid", item, f"a config field before '=' (fedjax-sim list names them; "
                                              f"{key!r} is not one)")
        if key in NOT_GRIDDABLE or key.split(".", 1)[0] in NOT_GRIDDABLE_SECTIONS:
            raise ConfigError("--grid", item, "a training hyper-parameter: local.*, server.*, model.*, "
                                              "rounds, cohort or an algorithm's section (data.* and task.* "
                                              "define the problem, seeds have --seeds; run those with --set)")
        typ = field_type(key)
        if typ not in (int, float, bool, str):
            raise ConfigError("--grid", item, f"a scalar field ({key} holds a list)")
        if any(key == axis.field for axis in grid):
            raise ConfigError("--grid", item, f"each field once ({key} is given twice; list all its values in one --grid)")
        parts = [p.strip() for p in raw.split(",")]
        if not raw.strip() or any(not p for p in parts):
            raise ConfigError("--grid", item, f"one or more comma-separated values after '=' (an empty value for {key})")
        try:
            values = [_coerce(key, p, typ) for p in parts]
        except ConfigError as e:
            raise ConfigError("--grid", item, f"values of {key} that are {e.allowed}") from None
        if len(set(values)) != len(values):
            raise ConfigError("--grid", item, "distinct values (one is repeated)")
        grid.append(GridAxis(key, values, item))
    return grid


def grid_points(cfg: Config, grid: list[GridAxis]) -> list[tuple[str, Config]]:
    """The cartesian product of ``grid`` applied to copies of ``cfg``: [(name, config)], the name
    ``field=value_field=value`` (a directory name), in row-major order of the grid."""
    import itertools

    points = []
    for combo in itertools.product(*[axis.values for axis in grid]):
        c = copy_config(cfg)
        parts = []
        for (key, _, _), value in zip(grid, combo):
            set_field(c, key, value)
            parts.append(f"{key}={value}")
        points.append(("_".join(parts) or "default", c))
    return points
