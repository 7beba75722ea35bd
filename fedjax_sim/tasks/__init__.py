"""Tasks: what is learned, independent of federation (DESIGN section 3).

A `Task` is a pair of pure functions over a model's parameters and a batch pytree:

  loss(params, batch, key) -> (scalar, aux)   mean over the valid rows of the batch
  metrics(params, batch) -> {name: scalar}    masked *sums*; the evaluator divides them

A batch is the client data pytree with leaves [B, ...] (``x``, ``y``, ...) plus ``mask`` [B]
(False for padding and empty steps). Metric sums come with counts: a key ``"count"`` divides
every unprefixed metric, and ``"<task>/count"`` divides every ``"<task>/..."`` metric of a
multi-task model, so a client without rows for a task simply has count 0. A metric that is a
ratio of its own sums (precision: true over predicted positives) carries its denominator as
``"<metric>/count"``, which takes precedence (`denominator`, `divide_metrics`).

Built here: `classification` (softmax cross-entropy, accuracy), `sequence` (next-token
prediction, means over real tokens), `multilabel` (sigmoid cross-entropy over label sets,
precision and recall@5 as Keras counts them), `regression` (MSE or MAE), and `multitask` (a dict
of those over a shared batch, each task with its own per-row mask).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any
Batch = dict


class Pointwise(NamedTuple):
    """Per-row pieces of a single-output task.

    per_row_loss(outputs [B, ...], y [B, ...]) -> [B]; per_row_metrics(outputs, y) -> {name: [B]};
    headline: the metric a run is judged by; higher_is_better: its direction.
    per_row_weight(y) -> [B]: how much each row counts in the loss and the metrics (a sequence
    row: its real tokens, so that means are over tokens); None = every row counts 1.
    """

    per_row_loss: Callable[[jax.Array, jax.Array], jax.Array]
    per_row_metrics: Callable[[jax.Array, jax.Array], dict]
    headline: str
    higher_is_better: bool
    target_kind: str  # "class" | "real" | "multilabel"
    per_row_weight: Callable[[jax.Array], jax.Array] | None = None


class Task(NamedTuple):
    """What is learned. ``loss`` and ``metrics`` are the protocol; the rest describes them.

    output_loss(outputs, batch) -> scalar: the loss as a function of the model's outputs, for
    client programs that compute outputs themselves (`core.factored`); None for multi-task.
    pointwise: the per-row pieces of a single-output task (`with_apply`); None for multi-task.
    """

    loss: Callable[[Params, Batch, jax.Array], tuple[jax.Array, Any]]
    metrics: Callable[[Params, Batch], dict]
    name: str
    headline: str
    higher_is_better: bool
    target_kind: str  # "class" | "real" | "multilabel" | "multi"
    num_classes: int = 0
    output_loss: Callable[[jax.Array, Batch], jax.Array] | None = None
    pointwise: Pointwise | None = None


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of values [B] over rows where mask [B] is True (0 for an empty mask)."""
    m = mask.astype(values.dtype)
    return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over valid rows: logits [B, K], labels [B], mask [B]."""
    return masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), mask)


def count_key(name: str) -> str:
    """The count a metric sum is divided by: ``a/b`` -> ``a/count``, ``b`` -> ``count``."""
    prefix, _, _ = name.rpartition("/")
    return f"{prefix}/count" if prefix else "count"


def is_count(name: str) -> bool:
    return name.rpartition("/")[2] == "count"


def denominator(name: str, sums: Mapping[str, jax.Array]) -> jax.Array:
    """What the sum of metric ``name`` is divided by: its own ``"<name>/count"`` when the task
    gives one (a ratio of sums such as precision), else its `count_key`."""
    own = f"{name}/count"
    return sums[own] if own in sums else sums[count_key(name)]


def divide_metrics(sums: Mapping[str, jax.Array]) -> dict:
    """Turns masked sums into means or ratios (each divided by its `denominator`); counts dropped."""
    return {name: value / jnp.maximum(denominator(name, sums), 1)
            for name, value in sums.items() if not is_count(name)}


def _single(pointwise: Pointwise, apply_fn: Callable, name: str, num_classes: int = 0,
            train_apply: Callable | None = None) -> Task:
    def weights(batch):
        """[B] float: the mask, times the rows' weights (`Pointwise.per_row_weight`)."""
        m = batch["mask"].astype(jnp.float32)
        return m if pointwise.per_row_weight is None else m * pointwise.per_row_weight(batch["y"])

    def output_loss(outputs, batch):
        w = weights(batch)
        return jnp.sum(pointwise.per_row_loss(outputs, batch["y"]) * w) / jnp.maximum(jnp.sum(w), 1)

    def loss(params, batch, key):
        if train_apply is None:
            return output_loss(apply_fn(params, batch["x"]), batch), None
        return output_loss(train_apply(params, batch["x"], key), batch), None

    def metrics(params, batch):
        outputs = apply_fn(params, batch["x"])
        m = weights(batch)
        sums = {k: jnp.sum(v * m) for k, v in pointwise.per_row_metrics(outputs, batch["y"]).items()}
        return {**sums, "loss": jnp.sum(pointwise.per_row_loss(outputs, batch["y"]) * m),
                "count": jnp.sum(m)}

    return Task(loss, metrics, name, pointwise.headline, pointwise.higher_is_better,
                pointwise.target_kind, num_classes, output_loss, pointwise)


def with_apply(task: Task, apply_fn: Callable) -> Task:
    """The same single-output task read through another model function ``apply_fn(params, x)``
    (e.g. a mixture model's, whose params are not the run model's); its loss uses ``apply_fn``
    too (no dropout). ValueError for multi-task."""
    if task.pointwise is None:
        raise ValueError(f"task {task.name!r} has no per-row form to rebind")
    return _single(task.pointwise, apply_fn, task.name, task.num_classes)


def classification_pointwise() -> Pointwise:
    """Softmax cross-entropy on logits [B, K] against int labels [B]; accuracy."""
    return Pointwise(
        per_row_loss=optax.softmax_cross_entropy_with_integer_labels,
        per_row_metrics=lambda logits, y: {"accuracy": (jnp.argmax(logits, -1) == y).astype(jnp.float32)},
        headline="accuracy", higher_is_better=True, target_kind="class")


def _flat_error(outputs, y):
    """outputs [B, ...] minus targets [B, ...], both flattened to [B, D] (a [B, 1] output
    against [B] scalar targets is the usual case)."""
    b = y.shape[0]
    return outputs.reshape(b, -1) - y.reshape(b, -1).astype(outputs.dtype)


def regression_pointwise(loss: str = "mse") -> Pointwise:
    """Squared (``mse``) or absolute (``mae``) error, averaged over target dimensions."""
    if loss not in REGRESSION_LOSSES:
        raise ValueError(f"unknown regression loss {loss!r}; expected one of {REGRESSION_LOSSES}")
    sq = lambda o, y: jnp.mean(jnp.square(_flat_error(o, y)), -1)
    ab = lambda o, y: jnp.mean(jnp.abs(_flat_error(o, y)), -1)
    return Pointwise(per_row_loss=sq if loss == "mse" else ab,
                     per_row_metrics=lambda o, y: {"mse": sq(o, y), "mae": ab(o, y)},
                     headline=loss, higher_is_better=False, target_kind="real")


REGRESSION_LOSSES = ("mse", "mae")
PAD = 0  # the padding token id of sequence targets (FedJAX's Shakespeare and Stack Overflow)


def sequence_pointwise(pad: int = PAD) -> Pointwise:
    """Next-token prediction: logits [B, T, K] against int targets [B, T], tokens equal to ``pad``
    ignored. A row's loss and accuracy are means over its real tokens and it weighs its count of
    real tokens, so the task's means are over tokens (FedJAX's masked sequence cross-entropy and
    accuracy; a row of padding only weighs 0)."""
    def real(y):
        return (y != pad).astype(jnp.float32)

    def per_token_mean(values, y):
        return jnp.sum(values * real(y), -1) / jnp.maximum(jnp.sum(real(y), -1), 1)

    return Pointwise(
        per_row_loss=lambda logits, y: per_token_mean(optax.softmax_cross_entropy_with_integer_labels(logits, y), y),
        per_row_metrics=lambda logits, y: {"accuracy": per_token_mean((jnp.argmax(logits, -1) == y).astype(jnp.float32), y)},
        headline="accuracy", higher_is_better=True, target_kind="class",
        per_row_weight=lambda y: jnp.sum(real(y), -1))


TOP_K = 5  # recall@k of tag prediction (TFF's Stack Overflow baseline: Recall(top_k=5))


def multilabel_pointwise(num_classes: int, top_k: int = TOP_K) -> Pointwise:
    """Label sets: logits [B, K] against y [B, M] int label ids, -1 where a row has fewer than M
    labels (targets are the multi-hot [B, K] of the ids; an id repeated counts once).

    Loss: sigmoid cross-entropy averaged over the K labels (Keras' ``BinaryCrossentropy`` on a
    sigmoid output, computed from logits). Metrics as TFF's Stack Overflow tag-prediction
    baseline reports them with Keras, micro-averaged over every (row, label) pair:
    ``precision`` = true / predicted positives at probability > 0.5 (``Precision()``) and
    ``recall_at_5`` = the true labels among each row's top ``top_k`` logits, over all true labels
    (``Recall(top_k=5)``: with top_k set, Keras' default threshold is -inf, so the top k count
    whatever their probability). Each carries its denominator as ``"<metric>/count"``
    (`denominator`)."""
    k = min(top_k, num_classes)
    name = f"recall_at_{top_k}"

    def targets(y):
        return jnp.minimum(jnp.sum(jax.nn.one_hot(y, num_classes), -2), 1.0)  # id -1: a zero row

    def metrics(logits, y):
        t, positive = targets(y), (logits > 0).astype(jnp.float32)
        in_top = jnp.sum(jax.nn.one_hot(jax.lax.top_k(logits, k)[1], num_classes), -2)  # [B, K] 0/1
        return {"precision": jnp.sum(t * positive, -1), "precision/count": jnp.sum(positive, -1),
                name: jnp.sum(t * in_top, -1), f"{name}/count": jnp.sum(t, -1)}

    return Pointwise(
        per_row_loss=lambda logits, y: jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets(y)), -1),
        per_row_metrics=metrics, headline=name, higher_is_better=True, target_kind="multilabel")


def multilabel(apply_fn: Callable, num_classes: int, train_apply: Callable | None = None) -> Task:
    """Multi-label classification (`multilabel_pointwise`): ``apply_fn(params, x) -> logits
    [B, num_classes]``, batch ``y`` [B, M] int label ids (-1 = none). Metrics: ``precision``,
    ``recall_at_5`` (the headline) and ``loss``."""
    return _single(multilabel_pointwise(num_classes), apply_fn, "multilabel", num_classes, train_apply)


def sequence(apply_fn: Callable, num_classes: int, train_apply: Callable | None = None) -> Task:
    """Next-token prediction over sequences (``sequence_pointwise``): ``apply_fn(params, x [B, T])
    -> logits [B, T, num_classes]``, batch ``y`` [B, T] int tokens (0 = padding). Metrics:
    ``accuracy`` and ``loss`` per real token."""
    return _single(sequence_pointwise(), apply_fn, "sequence", num_classes, train_apply)


def classification(apply_fn: Callable, num_classes: int, train_apply: Callable | None = None) -> Task:
    """Single-label classification: ``apply_fn(params, x [B, ...]) -> logits [B, num_classes]``,
    batch ``y`` [B] int class ids. Metrics: ``accuracy``, ``loss`` (cross-entropy).
    ``train_apply(params, x, key)``: the training-mode forward pass the loss uses (a model's
    dropout, keyed by the loss key); metrics always use ``apply_fn``."""
    return _single(classification_pointwise(), apply_fn, "classification", num_classes, train_apply)


def regression(apply_fn: Callable, loss: str = "mse", train_apply: Callable | None = None) -> Task:
    """Regression: ``apply_fn(params, x) -> [B, D]`` against ``y`` [B] or [B, ...] real targets.
    The training loss is ``mse`` or ``mae``; metrics report both, plus ``loss``. ``train_apply``:
    as for `classification`."""
    return _single(regression_pointwise(loss), apply_fn, f"regression_{loss}", train_apply=train_apply)


def multitask(apply_fn: Callable, tasks: Mapping[str, Pointwise],
              weights: Mapping[str, float] | None = None, headline: str | None = None,
              higher_is_better: bool | None = None) -> Task:
    """Several tasks over one shared batch.

    ``apply_fn(params, x) -> {task: outputs [B, ...]}``; batch ``y`` is ``{task: targets [B, ...]}``
    and ``y_mask`` ``{task: [B] bool}`` marks the rows that carry each task (a client that does not
    hold a task has all-False rows for it, so every client has the same static shapes). The loss
    is ``sum_t weights[t] * masked mean_t``; metrics are ``"<task>/<metric>"`` with ``"<task>/count"``.
    ``headline`` (default: the first task's headline metric) may name a metric the evaluator
    derives, e.g. ``delta_m`` (`delta_m`, computed against a reference run).
    """
    names = tuple(tasks)
    weights = {t: 1.0 for t in names} if weights is None else dict(weights)

    def task_masks(batch):
        masks = batch.get("y_mask", {})
        return {t: batch["mask"] & masks[t] if t in masks else batch["mask"] for t in names}

    def loss(params, batch, key):
        del key
        outputs = apply_fn(params, batch["x"])
        masks = task_masks(batch)
        per_task = {t: masked_mean(tasks[t].per_row_loss(outputs[t], batch["y"][t]), masks[t])
                    for t in names}
        return sum(weights[t] * per_task[t] for t in names), per_task

    def metrics(params, batch):
        outputs = apply_fn(params, batch["x"])
        masks = task_masks(batch)
        out = {}
        for t in names:
            m = masks[t].astype(jnp.float32)
            rows = tasks[t].per_row_metrics(outputs[t], batch["y"][t])
            out.update({f"{t}/{k}": jnp.sum(v * m) for k, v in rows.items()})
            out[f"{t}/loss"] = jnp.sum(tasks[t].per_row_loss(outputs[t], batch["y"][t]) * m)
            out[f"{t}/count"] = jnp.sum(m)
        return out

    first = tasks[names[0]]
    return Task(loss, metrics, "multitask", headline or f"{names[0]}/{first.headline}",
                first.higher_is_better if higher_is_better is None else higher_is_better, "multi")


def multitask_from_spec(apply_fn: Callable, spec) -> Task:
    """The multi-task task of a `types.MultiTaskSpec`: softmax cross-entropy + accuracy for its
    ``class`` tasks, MSE for its ``real`` ones, weighted by ``spec.loss_weights``; judged by
    ``delta_m`` (higher is better), which the evaluator computes against the Local reference."""
    pointwise = {n: classification_pointwise() if k == "class" else regression_pointwise("mse")
                 for n, k in zip(spec.task_names, spec.task_kinds)}
    return multitask(apply_fn, pointwise, dict(zip(spec.task_names, spec.loss_weights)),
                     headline="delta_m", higher_is_better=True)


def task_headlines(spec) -> tuple:
    """[T] the per-task metric Delta_m reads: ``accuracy`` for class tasks, ``mse`` for real ones."""
    return tuple("accuracy" if k == "class" else "mse" for k in spec.task_kinds)


def delta_m(method: jax.Array, base: jax.Array, mask: jax.Array, lower_is_better: jax.Array) -> jax.Array:
    """Multi-task performance relative to a baseline, in percent (Maninis et al. 2019; the
    per-(client, task) form of specs/fedhca2.md section 6):

      Delta_m = 100 / P * sum_{(i, t): mask} s_t (M_method[i, t] - M_base[i, t]) / M_base[i, t]

    with s_t = -1 where lower is better (MSE) and +1 otherwise (accuracy), P = mask.sum().

    Args:
      method, base: [C, T] per-(client, task) metric values; mask: [C, T] bool, the pairs that
        count (client i holds task t; optionally one domain's clients); lower_is_better: [T].

    Returns:
      scalar; 0 for an empty mask.
    """
    sign = jnp.where(lower_is_better, -1.0, 1.0)
    rel = sign * (method - base) / jnp.where(mask, base, 1.0)
    m = mask.astype(rel.dtype)
    return 100.0 * jnp.sum(jnp.where(mask, rel, 0.0)) / jnp.maximum(jnp.sum(m), 1.0)


TASKS = ("auto", "classification", "sequence", "multilabel", "regression_mse", "regression_mae")

__all__ = ["Pointwise", "REGRESSION_LOSSES", "TASKS", "Task", "classification", "count_key", "is_count",
           "classification_pointwise", "divide_metrics", "masked_cross_entropy", "masked_mean",
           "delta_m", "denominator", "multilabel", "multilabel_pointwise", "multitask", "multitask_from_spec", "regression", "regression_pointwise", "sequence",
           "sequence_pointwise",
           "task_headlines", "with_apply"]
