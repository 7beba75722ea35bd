"""The FedGC stage (specs/fedgc.md): every client generates once, before round 0, and the
generated rows join its private data; then any registered algorithm runs on the result.

  fit or load a generator on the public split          (host, once per data seed; cached)
  allocate_budget(counts [K, C]) -> m [K, C]            (host numpy, `allocation`)
  budget_to_labels -> labels [K, G], valid [K, G]
  then one jitted program (`_stage`), mapped over the client axis:
    assign_modes (prompt design), pick_guides (guidance), generate (the generator's sample),
    the optional filter, merge by the training strategy, and the judges (fidelity, diversity)

The output is ordinary `FederatedData`: ``train`` gains ``generated`` [K, T] bool (True on
generated rows) and ``n_train`` counts real + kept generated rows. Training strategies [D]
(section 2.4) order each client's rows so that an early phase is a prefix of them:
``mixed`` (real then generated, every round trains on the union), ``gen_first`` (generated then
real; the first ``strategy_rounds`` rounds train on the generated prefix only), ``real_first``
(real then generated; the first rounds on the real prefix), ``gen_only`` / ``real_only``
(controls: the prefix for the whole run). `FederatedData.at_round` applies the phase, so any
algorithm runs unchanged. Aggregation weights are whatever the algorithm uses on ``n_train``
(sample counts, generated rows included) [D].
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_sim.config import FEDGC_CHOICES
from fedjax_sim.data.federated import padded
from fedjax_sim.errors import ConfigError
from fedjax_sim.generative import allocation, fidelity
from fedjax_sim.generative import generators as gens

STRATEGIES = FEDGC_CHOICES["strategy"]
PROMPTS = FEDGC_CHOICES["prompt"]
GUIDANCE = FEDGC_CHOICES["guidance"]
# prompt design -> temperature multiplier [D]: one prompt is a narrow, typical sample; LLM-written
# prompts add per-sample jitter (section 5.2: "tau small" / "tau up")
PROMPT_TEMPERATURE = {"single": 0.5, "multiple": 1.0, "llm": 1.5}
GEN_KEY = 0xFED6C  # folded into the data seed's key: generation is paired across algorithms
GEN_CHUNK = 16  # clients generated per vmapped block (memory bounded by the chunk)


# ---------------------------------------------------------------------------------------------
# pure pieces


def assign_modes(key: jax.Array, labels: jax.Array, rule: str, prompts: int, logits: jax.Array) -> jax.Array:
    """modes [K, G] int32 for labels [K, G] (section 5.2): ``single`` the class's dominant mode;
    ``multiple`` uniform over the class's ``prompts`` heaviest modes; ``llm`` all S modes with
    per-client Dirichlet(1)-perturbed weights (half the fitted weights, half the perturbation).
    Client k's rows draw from ``row_keys`` of a key split from ``fold_in(key, k)`` (padding-invariant)."""
    num_classes, num_modes = logits.shape
    ranked = jnp.argsort(-logits, axis=1)  # [C, S] modes by weight
    if rule == "single":
        return ranked[labels, 0].astype(jnp.int32)
    if rule not in ("multiple", "llm"):
        raise ValueError(f"unknown prompt rule {rule!r}; expected one of {PROMPTS}")

    def client(k, lab):
        k_rows, k_dir = jax.random.split(jax.random.fold_in(key, k))
        keys = gens.row_keys(k_rows, lab.shape[0])
        if rule == "multiple":
            pick = jax.vmap(lambda kk: jax.random.randint(kk, (), 0, min(prompts, num_modes)))(keys)
            return ranked[lab, pick]
        perturb = jax.random.dirichlet(k_dir, jnp.ones(num_modes), (num_classes,))
        weights = jnp.log(0.5 * jax.nn.softmax(logits) + 0.5 * perturb + 1e-12)  # [C, S]
        return jax.vmap(lambda kk, c: jax.random.categorical(kk, weights[c]))(keys, lab)

    return jax.vmap(client)(jnp.arange(labels.shape[0]), labels).astype(jnp.int32)


def pick_guides(key: jax.Array, x: jax.Array, y: jax.Array, n: jax.Array, labels: jax.Array):
    """(guide_x [K, G, ...], guide_valid [K, G] bool): for each requested sample a uniformly drawn
    real row of the same class from the same client (the j-th such row, j uniform, from
    ``fold_in(fold_in(key, k), g)``: padding-invariant); invalid when the client has none (then
    the sample falls back to prompt-only generation)."""
    rows = jnp.arange(x.shape[1])

    def client(a):
        k, xk, yk, nk, lk = a
        same = (yk[None, :] == lk[:, None]) & (rows < nk)[None, :]  # [G, N]
        count = jnp.sum(same, axis=1)
        keys = gens.row_keys(jax.random.fold_in(key, k), lk.shape[0])
        j = jax.vmap(lambda kk, c: jax.random.randint(kk, (), 0, jnp.maximum(c, 1)))(keys, count)
        pick = jnp.argmax(same & (jnp.cumsum(same, axis=1) == (j + 1)[:, None]), axis=1)
        return xk[pick], count > 0

    # [G, N] per client: blocks of clients bound the memory
    return jax.lax.map(client, (jnp.arange(x.shape[0]), x, y, n, labels), batch_size=GEN_CHUNK)


def generate(gen: gens.Generator, params, key: jax.Array, labels, modes, guide_x, guide_valid,
             knobs: gens.GenKnobs) -> jax.Array:
    """x [K, G, D]: the generator's sample for every client, mapped over the client axis in blocks
    of `GEN_CHUNK` (client k draws from ``fold_in(key, k)``)."""
    flat = guide_x.reshape(guide_x.shape[0], guide_x.shape[1], -1)
    one = lambda a: gen.sample(params, jax.random.fold_in(key, a[0]), *a[1:], knobs)  # noqa: E731
    ids = jnp.arange(labels.shape[0])
    return jax.lax.map(one, (ids, labels, modes, flat, guide_valid), batch_size=GEN_CHUNK)


def merge(x, y, n, xg, yg, keep, generated_first: bool):
    """Merged rows of one client (vmap over clients): real rows x [N, ...], y [N], n [] and
    generated rows xg [G, ...], yg [G], keep [G] bool -> (x [N+G, ...], y [N+G], generated [N+G]
    bool, n_total [], n_first []): valid rows first, in block order (generated block first when
    ``generated_first``), each block in its own order; ``n_first`` = valid rows of the first
    block."""
    real_valid = jnp.arange(x.shape[0]) < n
    blocks = [(x, y, real_valid, False), (xg, yg, keep, True)]
    if generated_first:
        blocks = blocks[::-1]
    xs = jnp.concatenate([b[0] for b in blocks])
    ys = jnp.concatenate([b[1] for b in blocks])
    valid = jnp.concatenate([b[2] for b in blocks])
    is_gen = jnp.concatenate([jnp.full(b[2].shape, b[3]) for b in blocks])
    order = jnp.argsort(~valid, stable=True)
    return (xs[order], ys[order], is_gen[order] & valid[order], jnp.sum(valid),
            jnp.sum(blocks[0][2]).astype(jnp.int32))


# ---------------------------------------------------------------------------------------------
# generator fitting and caching


def _digest(name: str, fcfg, public_ids: np.ndarray, shape: tuple, num_classes: int) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([name, fcfg.components, fcfg.vae_steps, fcfg.vae_latent, list(shape),
                         num_classes]).encode())
    h.update(np.asarray(public_ids, np.int64).tobytes())
    return h.hexdigest()[:16]


def save_generator(path: Path, params, meta: dict) -> None:
    """Writes params (msgpack) and ``<path>.json`` (what it was fitted on); atomic (tmp + rename)."""
    from flax import serialization

    path.parent.mkdir(parents=True, exist_ok=True)
    for target, payload in ((path, serialization.msgpack_serialize(jax.tree.map(np.asarray, params))),
                            (Path(str(path) + ".json"), json.dumps(meta).encode())):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, target)


def load_generator(path: Path) -> tuple[Any, dict]:
    from flax import serialization

    meta_path = Path(str(path) + ".json")
    if not path.is_file() or not meta_path.is_file():
        raise ConfigError("fedgc.generator_path", str(path),
                          "a generator file written by a FedGC run (<run>/generators/*.msgpack, with "
                          "its .json beside it)")
    params = serialization.msgpack_restore(path.read_bytes())
    return jax.tree.map(jnp.asarray, params), json.loads(meta_path.read_text())


def check_generator(meta: dict, data, client_ids: np.ndarray, path: str) -> None:
    """Refuses a loaded generator that does not fit this run: another dataset or feature size,
    missing classes, or fitted on rows that are this run's client or test rows (a leak)."""
    field = "fedgc.generator_path"
    dim = int(np.prod(data.feature_shape))
    if meta.get("dataset") != data.name or int(meta.get("feature_dim", -1)) != dim:
        raise ConfigError(field, path, f"a generator fitted on {data.name} ({dim} features); this one was "
                                       f"fitted on {meta.get('dataset')} ({meta.get('feature_dim')} features)")
    overlap = np.intersect1d(np.asarray(meta.get("public_source_ids", []), np.int64), client_ids)
    if overlap.size:
        raise ConfigError(field, path, "a generator fitted on data disjoint from every client's and the test "
                                       f"rows; it was fitted on {overlap.size} rows that this run gives to "
                                       "clients or tests (fitted under another data seed or "
                                       "data.public_fraction?)")


def check_classes(params, data, name: str, path: str = "") -> None:
    """Refuses a generator that cannot produce every class the clients' labels name (its
    ``has_class`` [C'] must cover 0..C-1): the labels would fall outside its classes."""
    has = np.asarray(params["has_class"], bool)
    if has.shape[0] < data.num_classes or not has[: data.num_classes].all():
        missing = [c for c in range(data.num_classes) if c >= has.shape[0] or not has[c]]
        field, value = ("fedgc.generator_path", path) if path else ("fedgc.generator", name)
        raise ConfigError(field, value, f"a generator that covers every class of {data.name} "
                                        f"(0..{data.num_classes - 1}); it has no class(es) "
                                        f"{missing[:5]}{' (raise data.public_fraction)' if not path else ''}")


def generator_params(data, fcfg, public_ids: np.ndarray, client_ids: np.ndarray, key: jax.Array,
                     cache_dir: str | None, progress: bool) -> tuple[Any, dict]:
    """(params, info): the generator ``fcfg.generator`` loaded from ``fcfg.generator_path``, from
    the cache (``cache_dir/<name>-<digest>.msgpack``, digest of its settings and the public rows'
    ids), or fitted on ``data.public`` (and then cached)."""
    name = fcfg.generator
    if fcfg.generator_path:
        params, meta = load_generator(Path(fcfg.generator_path))
        check_generator(meta, data, client_ids, fcfg.generator_path)
        if meta.get("generator") != name:
            raise ConfigError("fedgc.generator", name, f"{meta.get('generator')} (the generator in "
                                                       f"fedgc.generator_path={fcfg.generator_path})")
        check_classes(params, data, name, fcfg.generator_path)
        return params, {"source": "loaded", "path": fcfg.generator_path}
    public = data.public
    shape = tuple(np.shape(public["x"])[1:])
    digest = _digest(name, fcfg, public_ids, shape, data.num_classes)
    path = Path(cache_dir) / f"{name}-{digest}.msgpack" if cache_dir else None
    if path is not None and path.is_file() and Path(str(path) + ".json").is_file():
        params, _ = load_generator(path)
        return params, {"source": "cache", "path": str(path)}
    params = gens.fit(name, np.asarray(public["x"]), np.asarray(public["y"]), data.num_classes,
                      fcfg.components, key, steps=fcfg.vae_steps, latent=fcfg.vae_latent, progress=progress)
    check_classes(params, data, name)
    if path is not None:
        meta = {"generator": name, "dataset": data.name, "feature_dim": int(np.prod(shape)),
                "num_classes": data.num_classes, "public_source_ids": np.asarray(public_ids).tolist()}
        save_generator(path, params, meta)
    return params, {"source": "fitted", "path": None if path is None else str(path)}


# ---------------------------------------------------------------------------------------------
# the stage


def check(data) -> None:
    """What the stage needs from the data (before fitting anything): class labels and a public
    split."""
    if data.target_kind != "class" or data.tasks is not None:
        raise ConfigError("generative", "fedgc", f"none for data.dataset={data.name} (FedGC generates "
                                                 "class-conditional samples: it needs class labels)")
    if data.public is None or np.shape(data.public["y"])[0] == 0:
        raise ConfigError("data.public_fraction", 0.0,
                          "a number in (0, 1) for --generative fedgc, e.g. 0.15: the labeled public split "
                          "the generator is fitted on (held out before partitioning; give the baselines "
                          "the same value so every method sees the same client data)")


def augment(data, fcfg, rounds: int, seed: int, public_ids: np.ndarray, client_ids: np.ndarray,
            cache_dir: str | None = None, progress: bool = False):
    """FedGC on one seed's data (numpy `FederatedData`) -> (augmented data, stats).

    Args:
      fcfg: the ``fedgc`` config section (attributes only are read).
      rounds: the run's rounds (``gen_only`` / ``real_only`` keep their phase for all of them).
      seed: the data seed; generation uses ``fold_in(PRNGKey(seed), GEN_KEY)``, so every
        algorithm run under this seed trains on the same generated rows.
      public_ids, client_ids: source ids of the public split and of every client / test row (the
        leak check of a loaded generator).
      cache_dir: where fitted generators are cached (None: not cached).

    Returns:
      (FederatedData with ``train`` {"x", "y", "generated"} and ``n_train`` = real + kept generated
      rows, ``n_early`` / ``early_rounds`` for the staged strategies; stats: a dict of numbers
      (`fidelity`, `diversity`, ...; ``early_rounds`` as resolved, ``stage_seconds`` the stage's
      wall time: fitting, generation and judging) plus the generator's source and path).
    """
    check(data)
    data = jax.device_get(padded(data))  # FedGC rewrites each client's rows: the padded layout, numpy
    start = time.perf_counter()
    key = jax.random.fold_in(jax.random.PRNGKey(seed), GEN_KEY)
    k_fit, k_stage = jax.random.split(key)
    params, info = generator_params(data, fcfg, public_ids, client_ids, k_fit, cache_dir, progress)

    x, y, n = (np.asarray(a) for a in (data.train["x"], data.train["y"], data.n_train))
    for k in data.train:  # any other per-row leaves of the source (none today)
        if k not in ("x", "y"):
            raise ConfigError("generative", "fedgc", f"none for data with per-row field {k!r} (FedGC "
                                                     "generates x and y only)")
    counts = allocation.class_counts(y, n, data.num_classes)
    m = allocation.allocate_budget(counts, fcfg.budget, fcfg.client_allocation, fcfg.allocation,
                                   fcfg.gamma, fcfg.rho)
    requested = int(m.sum())
    # shapes in buckets of SHAPE_BUCKET rows, so seeds (whose sizes differ a little) share one
    # compiled stage; every draw is padding-invariant, so the bucket does not change the rows
    labels, valid = allocation.budget_to_labels(m, _bucket(int(m.sum(1).max(initial=0))))
    n_pad = _bucket(x.shape[1]) - x.shape[1]
    pad = lambda a: np.pad(a, [(0, 0), (0, n_pad)] + [(0, 0)] * (a.ndim - 2))  # noqa: E731
    glob = data.global_test
    gmask = np.asarray(glob["mask"]) if "mask" in glob else np.ones(np.shape(glob["y"])[0], bool)
    knobs = gens.GenKnobs(fcfg.strength, fcfg.cfg_weight, fcfg.temperature * PROMPT_TEMPERATURE[fcfg.prompt],
                          fcfg.domain_gap, fcfg.label_noise, fcfg.guidance != "real")
    generated_first = fcfg.strategy in ("gen_first", "gen_only")
    out = _stage(params, k_stage, pad(x), pad(y), n, labels, valid, data.public["x"], data.public["y"],
                 glob["x"], glob["y"], gmask, generator=fcfg.generator, knobs=knobs, prompt=fcfg.prompt,
                 prompts=fcfg.prompts, guided=fcfg.guidance != "prompt", filter_name=fcfg.filter,
                 threshold=fcfg.filter_threshold, generated_first=generated_first,
                 num_classes=data.num_classes)
    out = jax.tree.map(np.asarray, out)
    n_total = out["n_total"].astype(np.int32)
    t = max(int(n_total.max(initial=0)), 1)
    train = {"x": out["x"][:, :t], "y": out["y"][:, :t], "generated": out["generated"][:, :t]}
    early = {"mixed": 0, "gen_first": fcfg.strategy_rounds or rounds // 2,
             "real_first": fcfg.strategy_rounds or rounds // 2}.get(fcfg.strategy, rounds)
    augmented = data.replace(train=train, n_train=n_total, early_rounds=early,
                             n_early=None if early == 0 else out["n_first"].astype(np.int32))

    kept_rows = int(out["keep"].sum())
    active = out["keep"].any(1)
    wants_guide = fcfg.guidance != "prompt"
    # rates over no rows are undefined: None (left out of summary.json), never a 0 or 1
    stats = {
        "generated_rows": kept_rows,
        "requested_rows": requested,
        "generated_per_real": kept_rows / max(int(n.sum()), 1),
        "filtered_out": 1.0 - kept_rows / requested if requested else None,
        "guide_fallback": (float(np.sum(valid & ~out["has_guide"]) / requested) if wants_guide else 0.0)
        if requested else None,
        "fidelity": float(out["fidelity"]) if kept_rows else None,
        "reference_test_accuracy": float(out["reference_test_accuracy"]),
        "diversity": float(np.mean(out["diversity"][active])) if active.any() else None,
        "label_js_before": allocation.label_heterogeneity(counts),
        "label_js_after": allocation.label_heterogeneity(allocation.class_counts(train["y"], n_total,
                                                                                data.num_classes)),
        "early_rounds": early,
        "generator_source": info["source"],
        "stage_seconds": time.perf_counter() - start,
    }
    if info.get("path"):
        stats["generator_path"] = info["path"]
    return augmented, stats


SHAPE_BUCKET = 64


def _bucket(rows: int) -> int:
    """``rows`` rounded up to a multiple of `SHAPE_BUCKET` (at least one bucket)."""
    return max(1, -(-rows // SHAPE_BUCKET)) * SHAPE_BUCKET


@functools.partial(jax.jit, static_argnames=("generator", "knobs", "prompt", "prompts", "guided", "filter_name",
                                             "threshold", "generated_first", "num_classes"))
def _stage(params, key, x, y, n, labels, valid, public_x, public_y, global_x, global_y, global_mask, *,
           generator: str, knobs: gens.GenKnobs, prompt: str, prompts: int, guided: bool, filter_name: str,
           threshold: float, generated_first: bool, num_classes: int) -> dict:
    """Generation, filtering, merging and judging of every client, one compiled program.

    x [K, N, ...], y [K, N], n [K]: real rows; labels, valid [K, G]: the requested samples.
    Returns the merged rows (``x`` [K, N+G, ...], ``y``, ``generated``, ``n_total`` [K],
    ``n_first`` [K]), ``keep`` [K, G] (valid rows the filter kept), ``has_guide`` [K, G], and the
    judges' numbers: ``fidelity`` (reference classifier on the kept rows), its
    ``reference_test_accuracy`` (on the global test rows), ``diversity`` [K].
    """
    k_modes, k_guides, k_gen = jax.random.split(key, 3)
    modes = assign_modes(k_modes, labels, prompt, prompts, params["logits"])
    guide_x, has_guide = pick_guides(k_guides, x, y, n, labels)
    flat = generate(gens.get(generator), params, k_gen, labels, modes, guide_x, has_guide & guided, knobs)
    xg = flat.reshape(*labels.shape, *x.shape[2:])
    ref = fidelity.fit_linear(public_x, public_y, jnp.ones(public_y.shape[0]), num_classes)
    keep = valid
    if filter_name == "reference":
        keep = keep & jax.vmap(lambda a, b: fidelity.passes(ref, a, b, threshold))(xg, labels)
    elif filter_name == "local":  # each client's own classifier, on its real rows
        weight = (jnp.arange(x.shape[1])[None, :] < n[:, None]).astype(jnp.float32)
        clfs = jax.vmap(lambda a, b, w: fidelity.fit_linear(a, b, w, num_classes))(x, y, weight)
        keep = keep & jax.vmap(lambda c, a, b: fidelity.passes(c, a, b, threshold))(clfs, xg, labels)
    elif filter_name != "none":
        raise ValueError(f"unknown filter {filter_name!r}; expected one of {fidelity.FILTERS}")
    xm, ym, is_gen, n_total, n_first = jax.vmap(lambda *a: merge(*a, generated_first))(x, y, n, xg, labels, keep)
    div = jax.lax.map(lambda a: fidelity.diversity(*a), (xg, labels, keep), batch_size=GEN_CHUNK)
    return {"x": xm, "y": ym, "generated": is_gen, "n_total": n_total, "n_first": n_first, "keep": keep,
            "has_guide": has_guide,
            "fidelity": fidelity.accuracy(ref, xg.reshape(-1, *x.shape[2:]), labels.reshape(-1), keep.reshape(-1)),
            "reference_test_accuracy": fidelity.accuracy(ref, global_x, global_y, global_mask),
            "diversity": div}
