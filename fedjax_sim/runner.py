"""Config -> run directory (config.json, metrics.jsonl, summary.json, plots, checkpoints).

Everything that can be wrong with the input is checked in `prepare`, before any directory is
created and before anything compiles.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from fedjax_sim import config as config_lib
from fedjax_sim import jsonio
from fedjax_sim import tasks as tasks_lib
from fedjax_sim.algorithms import Algorithm, BuildContext, build, check_name, with_clock, with_reference
from fedjax_sim.core.clients import cohort_view, holds_host_memory, on_device
from fedjax_sim.core.evaluate import (client_summary, client_sums_in_blocks, evaluate_clients, evaluate_global,
                                      evaluate_multitask, per_client_in_blocks)
from fedjax_sim.core.local import Schedule
from fedjax_sim.core.mapping import ClientMapping, client_mapping
from fedjax_sim.core.optim import make_optimizer
from fedjax_sim.core.privacy import attack_summary, client_attack, membership_inference
from fedjax_sim.errors import ConfigError
from fedjax_sim.models import DROPOUT_MODELS, MODELS, Model, build_model


class Prepared(NamedTuple):
    config: config_lib.Config
    data: Any
    model: Model
    task: tasks_lib.Task
    schedule: Schedule
    mapping: ClientMapping
    algorithm: Algorithm
    data_stats: dict | None = None  # the data stage's statistics (FedGC), or None


def build_data(cfg: config_lib.Config, seed: int, progress: bool = False):
    """(data, stats): seed ``seed``'s `FederatedData` (numpy) after the data stage of
    ``cfg.generative`` (``fedgc``: `generative.augment`, stats = its per-seed statistics; ``none``:
    the built data as is, stats None)."""
    from fedjax_sim.data import MULTITASK_SOURCES, build_federated, resolve_partition, resolve_seed

    if cfg.generative == "none":
        return build_federated(cfg.data, seed), None
    if cfg.data.dataset in MULTITASK_SOURCES:
        raise ConfigError("generative", cfg.generative, f"none for data.dataset={cfg.data.dataset} "
                                                        "(FedGC generates class-conditional samples)")
    if resolve_partition(cfg.data) == "clusters":
        raise ConfigError("generative", cfg.generative, "none with data.partition=clusters (its clients see "
                                                        "rotated or label-shifted rows, the generator is fitted "
                                                        "on untransformed public rows)")
    from fedjax_sim import generative

    data, assignment = build_federated(cfg.data, seed, return_assignment=True)
    client_ids = np.concatenate([assignment.train_source_ids, assignment.test_source_ids])
    cache = cfg.fedgc.cache_dir or (str(Path(cfg.out) / "generators") if cfg.out else None)
    return generative.augment(data, cfg.fedgc, cfg.rounds, resolve_seed(cfg.data, seed),
                              assignment.public_source_ids, client_ids, cache, progress)


def resolve_task(cfg: config_lib.Config, data, model: Model) -> tasks_lib.Task:
    """The task for ``cfg.task.name`` and the data's targets; ConfigError on a mismatch."""
    name = cfg.task.name
    if name not in tasks_lib.TASKS:
        raise ConfigError("task.name", name, "one of " + ", ".join(tasks_lib.TASKS))
    if data.target_kind == "multi":
        if name != "auto":
            raise ConfigError("task.name", name, f"auto for the multi-task data of data.dataset={data.name} "
                                                 "(its tasks come with the data)")
        return tasks_lib.multitask_from_spec(model.apply, data.tasks)
    sequences, labels = is_sequence_data(data), data.target_kind == "multilabel"
    if name == "auto":
        name = ("multilabel" if labels else ("sequence" if sequences else "classification")
                if data.target_kind == "class" else "regression_mse")
    if (name == "sequence") != sequences:
        raise ConfigError("task.name", cfg.task.name,
                          "sequence (or auto) for the token sequences of data.dataset=" + data.name if sequences
                          else f"not sequence: data.dataset={data.name} has no token sequences")
    if (name == "multilabel") != labels:
        raise ConfigError("task.name", cfg.task.name,
                          "multilabel (or auto) for the label sets of data.dataset=" + data.name if labels
                          else f"not multilabel: data.dataset={data.name} has no label sets")
    if name == "sequence":
        return tasks_lib.sequence(model.apply, data.num_classes, model.train_apply)
    if name == "multilabel":
        return tasks_lib.multilabel(model.apply, data.num_classes, model.train_apply)
    if name == "classification" and data.target_kind != "class":
        raise ConfigError("task.name", cfg.task.name,
                          f"regression_mse or regression_mae for the real-valued targets of "
                          f"data.dataset={data.name}")
    if name != "classification" and data.target_kind == "class":
        raise ConfigError("task.name", cfg.task.name,
                          f"classification for the class labels of data.dataset={data.name}")
    if name == "classification":
        return tasks_lib.classification(model.apply, data.num_classes, model.train_apply)
    return tasks_lib.regression(model.apply, name.split("_", 1)[1], model.train_apply)


PADDING_COHORTS = 64  # random cohorts the expected padding waste averages over


def padding_summary(prep: "Prepared") -> dict:
    """``resolved.local_padding``: how unequal clients are padded (``masked`` | ``trim``, the one
    place that decides: `Schedule.trim`, off for fixed steps and for the factored formulation,
    whose cohort program steps all clients together) and the expected local steps run per
    non-empty step of a round (`core.local.padding_waste` over random cohorts of the population's
    sizes): ``waste`` as run, ``waste_masked`` had every client run the largest's steps. A
    vmapped group (the whole cohort under vmap, a chunk, one client when sequential) runs its
    largest member's steps."""
    from fedjax_sim.core.local import padding_waste, trims

    info, sched = prep.algorithm.info, prep.schedule
    n = np.asarray(prep.data.n_train).reshape(-1, prep.data.num_clients)[0]  # seeds share sizes' shape
    cohort = prep.config.cohort or len(n)
    trim = trims(sched) and info.get("formulation") != "factored"
    strategy, chunk = info.get("client_mapping"), info.get("chunk_size") or 0
    group = {"sequential": 1, "chunked": chunk or cohort}.get(strategy, cohort)
    if strategy == "sharded":  # each device maps its share with the inner mapping
        group = chunk or -(-cohort // max(prep.mapping.mesh.size if prep.mapping.mesh is not None else 1, 1))
    by_size = strategy == "chunked" or (strategy == "sharded" and chunk > 1)  # map_clients' sort_by
    rng = np.random.default_rng(0)
    draws = [n[rng.choice(len(n), cohort, replace=False)] for _ in range(PADDING_COHORTS)]
    mean = lambda g, s=False: float(np.mean([padding_waste(d, sched, g, s) for d in draws]))  # noqa: E731
    masked = mean(0)
    return {"mode": "trim" if trim else "masked", "waste": mean(group, by_size) if trim else masked,
            "waste_masked": masked}


def is_sequence_data(data) -> bool:
    """Token sequences: class targets with a time axis (y [C, N, T]), e.g. Shakespeare."""
    return data.target_kind == "class" and len(data.target_shape) == 1


def _build_model(cfg: config_lib.Config, data) -> Model:
    if data.target_kind == "multi":
        return _build_multitask_model(cfg, data)
    if data.target_kind == "multilabel" or cfg.model.name == BOW_MODEL:
        return _build_bow_model(cfg, data)
    if is_sequence_data(data) or cfg.model.name == SEQUENCE_MODEL:
        return _build_sequence_model(cfg, data)
    if cfg.model.name == MULTITASK_MODEL:
        raise ConfigError("model.name", cfg.model.name, f"auto or one of {', '.join(MODELS)} for the "
                                                        f"single-task data of data.dataset={data.name}")
    if cfg.model.name not in ("auto", *MODELS):
        raise ConfigError("model.name", cfg.model.name, "one of auto, " + ", ".join([*MODELS, SEQUENCE_MODEL, BOW_MODEL]))
    if cfg.model.name not in ("auto", "mlp") and len(data.feature_shape) != 3:
        raise ConfigError("model.name", cfg.model.name, f"mlp for vector inputs of shape {data.feature_shape}")
    if cfg.model.name in DROPOUT_MODELS and min(data.feature_shape[:2]) < 6:
        raise ConfigError("model.name", cfg.model.name, f"mlp or cnn for {data.feature_shape[0]}x"
                                                        f"{data.feature_shape[1]} images ({cfg.model.name}'s two "
                                                        "VALID 3x3 convs and 2x2 pool need at least 6x6)")
    if cfg.model.dropout and cfg.model.name not in DROPOUT_MODELS:
        raise ConfigError("model.dropout", cfg.model.dropout,
                          f"false for model.name={cfg.model.name} (models with dropouts: {', '.join(DROPOUT_MODELS)})")
    dense = len(cfg.model.hidden) + 1 if cfg.model.name in ("auto", "mlp") else 2
    if cfg.model.head_layers > dense:
        raise ConfigError("model.head_layers", cfg.model.head_layers, f"at most {dense} for this model")
    outputs = data.num_classes if data.target_kind == "class" else int(np.prod(data.target_shape, dtype=int))
    return build_model(cfg.model.name, data.feature_shape, outputs, cfg.model.hidden,
                       cfg.model.head_layers, conv=cfg.model.conv, dropout=cfg.model.dropout)


MULTITASK_MODEL = "multitask_mlp"
SEQUENCE_MODEL = "char_lstm"
BOW_MODEL = "bow_logreg"


def _check_fixed_model(cfg: config_lib.Config, data, name: str, reads: str, fits: bool) -> None:
    """A model that is the only one its kind of data takes (and takes no other data): ``fits``
    whether ``data`` is that kind (``reads``: what the model reads); model.name auto or ``name``,
    model.head_layers and model.dropout at their defaults."""
    if not fits:
        raise ConfigError("model.name", cfg.model.name, f"auto or one of {', '.join(MODELS)} for "
                                                        f"data.dataset={data.name} ({name} reads {reads})")
    if cfg.model.name not in ("auto", name):
        raise ConfigError("model.name", cfg.model.name, f"auto or {name} for the {reads} of data.dataset={data.name}")
    if cfg.model.head_layers != 1 or cfg.model.dropout:
        field, value = ("model.head_layers", cfg.model.head_layers) if cfg.model.head_layers != 1 else (
            "model.dropout", cfg.model.dropout)
        raise ConfigError(field, value, f"its default for {name} (one output layer, no dropout)")


def _build_sequence_model(cfg: config_lib.Config, data) -> Model:
    """The character LSTM (`models.sequence.char_lstm`) of token-sequence data, the only model
    such data takes (and the only data it takes)."""
    from fedjax_sim.models.sequence import char_lstm

    _check_fixed_model(cfg, data, SEQUENCE_MODEL, "token sequences", is_sequence_data(data))
    return char_lstm(data.feature_shape, data.num_classes)


def _build_bow_model(cfg: config_lib.Config, data) -> Model:
    """The bag-of-words logistic regression (`models.bow.bow_logreg`) of Stack Overflow's label
    sets over ``data.vocab_size`` words, the only model such data takes (and the only data it
    takes)."""
    from fedjax_sim.models.bow import bow_logreg

    _check_fixed_model(cfg, data, BOW_MODEL, "bags of words", data.target_kind == "multilabel")
    return bow_logreg(data.feature_shape, data.num_classes, cfg.data.vocab_size)


def _build_multitask_model(cfg: config_lib.Config, data):
    """The multi-task model (`models.multitask.multitask_mlp`) of multi-task data; model.hidden
    and model.head_layers are the single-task MLP's and must stay at their defaults here."""
    from fedjax_sim.data.multitask import check_spec
    from fedjax_sim.models.multitask import multitask_mlp

    m, default = cfg.model, config_lib.ModelConfig()
    if m.name not in ("auto", MULTITASK_MODEL):
        raise ConfigError("model.name", m.name, f"auto or {MULTITASK_MODEL} for the multi-task data of "
                                                f"data.dataset={data.name}")
    for name in ("hidden", "head_layers"):
        if getattr(m, name) != getattr(default, name):
            raise ConfigError(f"model.{name}", getattr(m, name), "its default for multi-task data (the "
                              "multi-task model's widths are model.encoder and model.decoder)")
    spec = data.tasks
    check_spec(spec, data.num_clients)
    return multitask_mlp(data.feature_shape, spec.task_names, spec.task_outputs, m.encoder, m.decoder)


def client_epochs(cfg: config_lib.Config, data):
    """[C] local epochs per client from ``local.epochs_per_domain`` (None when it is empty);
    ConfigError when the data has no domains or the count does not match them."""
    per_domain = tuple(cfg.local.epochs_per_domain)
    if not per_domain:
        return None
    spec = getattr(data, "tasks", None)
    if spec is None:
        raise ConfigError("local.epochs_per_domain", ",".join(map(str, per_domain)),
                          f"empty for data.dataset={data.name} (it has no input domains)")
    if len(per_domain) != len(spec.domain_names):
        raise ConfigError("local.epochs_per_domain", ",".join(map(str, per_domain)),
                          f"{len(spec.domain_names)} values, one per domain ({', '.join(spec.domain_names)})")
    return np.asarray([per_domain[d] for d in spec.domains], np.int32)


def prepare(cfg: config_lib.Config, data=None) -> Prepared:
    """Validates ``cfg`` and builds data, task, model, optimizers and algorithm (host side,
    nothing compiled). ``data`` may be given (a `FederatedData`) to skip building it."""
    from fedjax_sim.data import validate_data_config

    from fedjax_sim.algorithms import check_data_kind
    from fedjax_sim.data import MULTITASK_SOURCES

    config_lib.validate(cfg)
    check_name(cfg.algorithm)
    if cfg.tensorboard:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise ConfigError("tensorboard", True, 'false, or install tensorboardX first (pip install '
                                                   '"fedjax_sim[tensorboard]")') from None
    stats = None
    if data is None:
        validate_data_config(cfg.data)
        check_data_kind(cfg.algorithm, cfg.data.dataset in MULTITASK_SOURCES, cfg.data.dataset)
        data, stats = build_data(cfg, cfg.seed)
    if cfg.cohort > data.num_clients:
        raise ConfigError("cohort", cfg.cohort, f"at most the number of clients ({data.num_clients})")
    model = _build_model(cfg, data)
    task = resolve_task(cfg, data, model)
    loc = cfg.local
    epochs = client_epochs(cfg, data)
    schedule = Schedule.make(data.max_train, loc.batch_size, loc.epochs if epochs is None else int(epochs.max()),
                             loc.steps, trim=loc.padding != "masked")
    mapping = client_mapping(cfg.client_mapping, cfg.chunk_size,
                             "conv" if getattr(model, "convolutional", False) else "dense", cfg.mesh_devices)
    prep = Prepared(cfg, data, model, task, schedule, mapping, None, stats)
    alg = make_algorithm(prep, cfg, check=True)
    if alg.info.get("needs_proxy"):
        proxy = getattr(data, "proxy", None)
        if proxy is None or proxy["x"].shape[-1 - len(data.feature_shape)] == 0:
            raise ConfigError("data.proxy_fraction", cfg.data.proxy_fraction,
                              f"a number in (0, 1) that leaves at least one proxy row for {cfg.algorithm} "
                              "(its server distills on this unlabeled held-out set), e.g. 0.05")
    if cfg.clock.time_budget > 0 and alg.info.get("clock") is None:
        raise ConfigError("clock.time_budget", cfg.clock.time_budget,
                          "0 without a clock (set clock.speed, or run an asynchronous algorithm)")
    if cfg.target_accuracy > 0 and task.headline != "accuracy":
        raise ConfigError("target_accuracy", cfg.target_accuracy,
                          f"0 (off) for task {task.name}, whose headline metric is {task.headline}")
    if alg.info.get("needs_clusters") and getattr(data, "cluster", None) is None:
        raise ConfigError("algorithm", cfg.algorithm,
                          "data with true clusters for its fixed router: --partition clusters "
                          "or --dataset floral_synthetic")
    return prep._replace(algorithm=alg)


def make_algorithm(prep: Prepared, cfg: config_lib.Config, check: bool = False) -> Algorithm:
    """Builds the optimizers and the algorithm of ``cfg`` on ``prep``'s data, model, task and
    schedule. The swept hyper-parameters of a vmapped grid arrive in ``cfg`` as traced arrays
    (`config.with_values`); ``check`` traces the optimizers once on the model's shapes to turn
    hyper-parameters optax rejects into ConfigErrors (for concrete configs, before any compile)."""
    data, model = prep.data, prep.model
    params0 = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    example = params0 if check else None
    loc, srv = cfg.local, cfg.server
    client_opt = make_optimizer(loc.optimizer, loc.lr, momentum=loc.momentum, weight_decay=loc.weight_decay,
                                clip_norm=loc.clip_norm, args=loc.optimizer_args, field="local",
                                params_example=example)
    server_opt = make_optimizer(srv.optimizer, srv.lr, momentum=srv.momentum, args=srv.optimizer_args,
                                field="server", params_example=example)
    cohort = cfg.cohort or data.num_clients
    ctx = BuildContext(prep.task, model, client_opt, server_opt, prep.schedule, data.max_train,
                       loc.batch_size, prep.mapping, loc.formulation, srv.weighting, cohort,
                       data.num_clients, getattr(data, "tasks", None), client_epochs(cfg, data),
                       cfg.clock, cfg.rounds)
    alg = build(cfg.algorithm, ctx, cfg)
    if prep.task.target_kind == "multi" and cfg.algorithm != "local":
        # Delta_m needs Local under the same seed, split and local settings: trained alongside
        alg = with_reference(alg, build("local", ctx, cfg))
    if cfg.clock.speed != "none" and alg.info.get("clock") is None:
        alg = with_clock(alg, sync_clock(ctx), cohort, cfg.clock.server_time)
    return alg


def sync_clock(ctx: BuildContext):
    """``durations(seed, data, R) -> [R, C]``: every client's job time in every round, from the
    seed's clock stream (the same client speeds the asynchronous methods see for that seed)."""
    from fedjax_sim import asynchrony
    from fedjax_sim.algorithms.common import job_work

    clock = ctx.clock
    epochs, steps = job_work(ctx)

    def durations(seed, data, rounds):
        speed, work, rng = asynchrony.seed_clock(clock, seed, np.asarray(data.n_train), ctx.batch_size,
                                                 epochs, steps)
        return asynchrony.sync_durations(speed, work, rounds, clock.noise, rng)

    return durations


def _evaluated(prep: Prepared, alg: Algorithm | None):
    """(the algorithm evaluated: ``alg`` or ``prep``'s, its task, the resolved client mapping)."""
    alg = alg or prep.algorithm
    return alg, alg.task or prep.task, prep.mapping.resolved()


def _block(prep: Prepared, alg: Algorithm, state, data, rows: int) -> int | None:
    """How many clients a whole-population pass (per-client evaluation, the membership attack)
    takes at once (`per_client_in_blocks`) when it builds ``rows`` rows of each client: no more rows
    than evaluation scores at once (C x M_max test rows), and, with a per-client store in host
    memory, no more clients than a round trains (the device then holds no more of the store than a
    round does); None: everyone at once."""
    c = data.num_clients
    block = c
    if rows:
        block = max(1, c * data.max_test // rows)
    if holds_host_memory(state, alg.client_store):
        block = min(block, prep.config.cohort or c)
    return None if block >= c else block


def _client_models(alg: Algorithm, state, key):
    """``params_of(idx, part)`` -> the models [B, ...] of the clients ``idx`` [B] (``part``: their
    data), built from their rows of the per-client store (`cohort_view`); ``idx`` None: every
    client's, ``part`` the whole data."""
    def params_of(idx, part):
        if idx is None or not alg.client_store:
            return alg.client_params(state, part, key)
        return alg.client_params(cohort_view(state, alg.client_store, idx), part, key)
    return params_of


def make_evaluator(prep: Prepared, alg: Algorithm | None = None):
    """evaluate(state, data, key) -> dict of metrics (global and personalized), jittable.
    ``alg`` (default ``prep.algorithm``): the algorithm whose state is evaluated."""
    alg, task, mapping = _evaluated(prep, alg)

    def evaluate(state, data, key):
        out = {}
        if alg.global_params is not None:
            out.update(evaluate_global(task.metrics, alg.global_params(state), data.global_test))
        # packed training rows: the padded view [C, N_max, ...] that packing avoids is built a block at a time
        rows = data.max_train if data.packed else 0
        block = _block(prep, alg, state, data, rows) if task.target_kind != "multi" else None
        if block is not None and alg.client_params is not None:
            sums = client_sums_in_blocks(task.metrics, _client_models(alg, state, key), data, block, mapping)
            out.update(client_summary(sums, task.headline))
            return out
        if alg.client_params is not None:
            state = on_device(state)  # a multi-task run's store in host memory (rare) is copied whole
            params, stacked = alg.client_params(state, data, key), True
        else:  # the global model: no per-client store is read
            params, stacked = alg.global_params(state), False
        if task.target_kind == "multi":
            ref = None if alg.reference_params is None else alg.reference_params(state, data, key)
            out.update(evaluate_multitask(task.metrics, params, ref, data.test, data.n_test, data.tasks,
                                          mapping))
            return out
        out.update(evaluate_clients(task.metrics, params, data.test, data.n_test, stacked,
                                    task.headline, mapping))
        return out

    return evaluate


def make_attack(prep: Prepared, alg: Algorithm | None = None):
    """attack(state, data, key) -> the loss-based membership-inference attack (`core.privacy`) on
    the final models, jittable: ``mia_auc`` / ``mia_balanced_accuracy`` on the global model,
    ``*_personalized`` on each client's own; in blocks of clients of no more rows than evaluation
    scores at once (`_block`). Single-output tasks."""
    alg, task, mapping = _evaluated(prep, alg)

    def attack(state, data, key):
        # it scores every training and test row, far more than evaluation, after the last round
        block = _block(prep, alg, state, data, data.max_train + data.max_test)

        def on_everyone(params_of, stacked: bool) -> dict:
            if block is None:
                return membership_inference(task.metrics, params_of(None, data), data, stacked, mapping)
            return attack_summary(*per_client_in_blocks(
                lambda idx, part: client_attack(task.metrics, params_of(idx, part), part, stacked, mapping),
                data, block))

        out = {}
        if alg.global_params is not None:
            r = on_everyone(lambda idx, part: alg.global_params(state), False)
            out.update(mia_auc=r["mia_auc"], mia_balanced_accuracy=r["mia_balanced_accuracy"])
        if alg.client_params is not None:
            r = on_everyone(_client_models(alg, state, key), True)
            out.update(mia_auc_personalized=r["mia_auc"],
                       mia_balanced_accuracy_personalized=r["mia_balanced_accuracy"])
        return out

    return attack


def _host(tree) -> dict:
    def conv(v):
        a = np.asarray(v)
        return a.tolist() if a.ndim else float(a)
    return {k: conv(v) for k, v in tree.items()}


def _default_out(cfg) -> str:
    return os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.algorithm}-{cfg.data.dataset.replace('/', '_')}")


RESULT_FILES = ("metrics.jsonl", "summary.json", "results.md", "comparison.png", "sweep.md",
                "sweep.json", "best_config.json", "config.json")  # config.json: maybe the user's own


def check_out_dir(out: str) -> None:
    """A run never overwrites another run's or comparison's results, and its directory can be
    created (checked before anything is written or compiled)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError("--out", out, "a directory path (it is a file)")
    if path.exists() and any((path / f).exists() for f in RESULT_FILES):
        held = next(f for f in RESULT_FILES if (path / f).exists())
        raise ConfigError("--out", out, f"a new or empty directory (it holds {held}: another run's results, "
                                        "or a file of yours that a run would overwrite)")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError("--out", out, f"a path whose existing part is a directory ({ancestor} is a file)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError("--out", out, f"a path this user can create ({ancestor} is not writable)")


def headline_keys(task: tasks_lib.Task) -> tuple[str, str, str]:
    """(global, personalized, per-client) metric names of the task's headline metric."""
    h = task.headline
    return f"global_{h}", f"personalized_{h}", f"personalized_{h}_per_client"


def run(cfg: config_lib.Config, progress: bool = True, data=None, prep: Prepared | None = None) -> dict:
    """Runs one experiment (every seed of ``cfg.seeds``, or ``cfg.seed``) and writes its run
    directory; returns the summary. DivergedError after writing, if a seed diverged."""
    from fedjax_sim import trials

    cfg = prep.config if prep is not None else cfg
    out = cfg.out or _default_out(cfg)
    check_out_dir(out)
    seeds = trials.run_seeds(cfg)
    if (prep is not None or data is not None) and seeds != [cfg.seed]:
        raise ValueError("a given `prep` or `data` holds one seed's data; leave it out for several seeds")
    group = trials.Group([with_out(cfg, out)], [out], seeds, ())
    pg = trials.prepare_group(group, None if data is None else [data],
                              None if prep is None else [[prep._replace(config=with_out(cfg, out))]],
                              progress=progress)
    summary = trials.run_group(pg, progress)[0]
    trials.raise_if_diverged([summary])
    return summary


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="round", leave=False)


def save_checkpoint(state, path: Path) -> None:
    """The final algorithm state, one array per pytree path (load with ``np.load``)."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(path, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})


def plot_history(history: list[dict], path: Path, title: str, headline: str = "accuracy",
                 diverged: list | None = None) -> None:
    """The task's headline metric per evaluated round (global and personalized where present);
    with several seeds (records carry ``seed``) one thin line per seed and their mean.
    ``diverged``: [(seed, round)] of seeds that diverged, drawn as red dashed lines at that round."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend is left alone

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    seeds = sorted({h.get("seed", 0) for h in history})
    # on a virtual clock the x axis is time (seeds then differ in x: no mean line over seeds)
    x_key = "virtual_time" if history and all("virtual_time" in h for h in history) else "round"
    for (key, label), color in zip(((f"global_{headline}", "global model, global test"),
                                    (f"personalized_{headline}", "own model, own test (mean over clients)")),
                                   ("C0", "C1")):
        curves = {}
        for s in seeds:
            hist = [h for h in history if h.get("seed", 0) == s and key in h]
            if hist:
                curves[s] = ([h[x_key] for h in hist], [h[key] for h in hist])
        if not curves:
            continue
        if len(curves) > 1 and x_key == "virtual_time":
            for i, (times, values) in enumerate(curves.values()):
                ax.plot(times, values, color=color, lw=0.8, alpha=0.6, label=label if i == 0 else None)
            continue
        if len(curves) > 1:
            for rounds, values in curves.values():
                ax.plot(rounds, values, color=color, lw=0.6, alpha=0.35)
            length = min(len(r) for r, _ in curves.values())  # a diverged seed stops early
            rounds = next(iter(curves.values()))[0][:length]
            values = np.mean([v[:length] for _, v in curves.values()], axis=0)
            label += f", mean of {len(curves)} seeds"
        else:
            rounds, values = next(iter(curves.values()))
        ax.plot(rounds, values, color=color, marker="o", ms=3, label=label)
    for i, (seed, rnd) in enumerate(diverged or []):
        if x_key == "round":
            ax.axvline(rnd, color="red", ls="--", lw=1,
                       label=f"diverged (seed {seed}, round {rnd})" if i < 3 else None)
    ax.set_xlabel(x_key.replace("_", " "))
    if x_key == "round":  # rounds are integers: no fractional ticks
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(headline)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    jsonio.write_figure(fig, path, dpi=120)


def with_out(cfg: config_lib.Config, out: str) -> config_lib.Config:
    new = config_lib.copy_config(cfg)
    new.out = out
    return new
