"""Data sources: a train pool and (when the dataset has one) a test pool of examples, as numpy.

A loader is ``loader(cfg, rng: np.random.Generator) -> Source``, where `cfg` is a DataConfig-like
object (only its attributes are read; `data` does not import `fedjax_sim.config`). A loader that
also takes a keyword-only ``seed`` gets the resolved data seed (``floral_synthetic`` seeds its
generator from it, as the official code does). Nothing here
touches the network: embedded sources are bundled or generated, and TFDS sources read prepared
ArrayRecord files through ``tfds.data_source(..., download=False)`` (no TensorFlow needed).

The builder never mixes the two pools: clients' training rows come only from the train pool,
their test rows and the global test set only from the test pool (`build.build_federated`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from fedjax_sim.errors import ConfigError, DataUnavailableError

SYNTHETIC_MAX_SAMPLES = 10_000
DIABETES_STRATA = 5  # quantile bins of the target used as `strata` for the regression source


class Source(NamedTuple):
    """What a loader returns.

    Attributes:
      x_pool: [n, *feature_shape] float32 train-pool inputs (the only rows partitioned over
        clients for training).
      y_pool: [n] int32 class ids, or [n, *target_shape] float32 targets (`target_kind` real).
      x_test: [T, *feature_shape] float32 test-pool inputs (the dataset's own test split), or
        None: then the builder holds out a stratified `global_test_fraction` of the pool as the
        test pool and keeps the rest as the train pool.
      y_test: [T] like `y_pool`, or None.
      num_classes: number of classes (from the dataset's metadata, not the labels seen); 0 for
        real-valued targets.
      client_ids: [n] int client of each train-pool row for sources with their own clients
        (`synthetic`, `floral_synthetic`; partition `natural`), else None.
      test_client_ids: [T] int client of each test-pool row for those sources, else None.
      strata: [n] int stratum of each train-pool row, used by the label-based partitioners and to
        match each client's test mix to its training mix; None = `y_pool` (class ids).
        Regression sources give quantile bins of the target.
      test_strata: [T] int strata of the test pool (None = `y_test`).
      target_kind: ``class`` or ``real``.
      standardize: the builder standardizes x (per feature) and y with the *train pool's* mean
        and std (after the hold-out), applying the same affine map to the test pool.
      clusters: [C] int true cluster of each of the source's own clients (`floral_synthetic`),
        else None; it becomes `FederatedData.cluster`.
    """

    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: Optional[np.ndarray]
    y_test: Optional[np.ndarray]
    num_classes: int
    client_ids: Optional[np.ndarray] = None
    test_client_ids: Optional[np.ndarray] = None
    strata: Optional[np.ndarray] = None
    test_strata: Optional[np.ndarray] = None
    target_kind: str = "class"
    standardize: bool = False
    clusters: Optional[np.ndarray] = None


def load_digits(cfg: Any, rng: np.random.Generator) -> Source:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): x [n, 8, 8, 1] in [0, 1].

    No test split: the builder holds out `global_test_fraction` as the test pool, stratified by
    label, with the data seed.
    """
    del cfg, rng
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    return Source(x, digits.target.astype(np.int32), None, None, 10)


def quantile_strata(y: np.ndarray, num_bins: int) -> np.ndarray:
    """[n] int bin of each target in 0..num_bins-1, at the empirical quantiles of `y` [I].

    Bin edges are the interior quantiles 1/B, ..., (B-1)/B; a value on an edge goes to the upper
    bin. Ties can make bins unequal (or empty, then the bin simply does not occur).
    """
    y = np.asarray(y, np.float64).reshape(len(y), -1)[:, 0]
    edges = np.quantile(y, np.arange(1, num_bins) / num_bins)
    return np.searchsorted(edges, y, side="right").astype(np.int32)


def load_diabetes(cfg: Any, rng: np.random.Generator) -> Source:
    """scikit-learn's bundled diabetes regression set (442 patients, 10 features, no network).

    x [n, 10] float32 (age, sex, bmi, bp, s1-s6, raw units), y [n] float32 disease progression
    one year after baseline (25-346). Regression: `target_kind` real, num_classes 0. No test split:
    the builder holds out a stratified `global_test_fraction` as the test pool. Both x (per
    feature) and y are then standardized with the train pool's mean and std (`standardize`), so
    a model predicts y in train-pool standard units: MSE 1.0 is the constant-mean predictor;
    multiply by std(y_train) (about 77) to get original units.

    Strata [I]: DIABETES_STRATA = 5 quantile bins (quintiles) of y over all 442 rows, so every
    stratum holds ~88 rows (~70 in the train pool): enough for 20 clients to each see several per
    stratum, few enough that the label-skew partitioners (dirichlet_label, pathological,
    dominant_class, ...) produce visibly different target ranges per client. The bins decide only
    which rows go where (hold-out, partition, test matching); they never enter x or y.
    """
    del cfg, rng
    from sklearn.datasets import load_diabetes as sk_load_diabetes

    data = sk_load_diabetes(scaled=False)
    x = np.asarray(data.data, np.float32)
    y = np.asarray(data.target, np.float32)
    return Source(x, y, None, None, 0, strata=quantile_strata(y, DIABETES_STRATA),
                  target_kind="real", standardize=True)


def synthetic_fedprox(num_clients: int, rng: np.random.Generator, *, alpha: float, beta: float,
                      iid: bool, features: int = 60, num_classes: int = 10,
                      max_samples: int = SYNTHETIC_MAX_SAMPLES):
    """FedProx Synthetic(alpha, beta) (litian96/FedProx `generate_synthetic.py`, spec §2) [C].

    Device k: n_k = floor(LogNormal(4, 2)) + 50; u_k ~ N(0, alpha); W_k ~ N(u_k, 1)^{d x 10},
    b_k ~ N(u_k, 1)^10; B_k ~ N(0, beta); v_k ~ N(B_k, 1)^d; x ~ N(v_k, Sigma) with
    Sigma = diag(j^-1.2), j = 1..d; y = argmax softmax(x W_k + b_k) = argmax(x W_k + b_k). The IID
    variant shares W, b ~ N(0, 1) and draws x ~ N(0, Sigma). As in the code, alpha and beta are
    *standard deviations* (numpy's `scale`).

    Deviations [I]: n_k is clipped at `max_samples` (LogNormal(4, 2) has a heavy tail, e.g. a
    1-in-1000 device has ~45,000 samples, and every client is padded to the largest); x is drawn as
    v_k + sqrt(diag Sigma) * N(0, I), equal in distribution to the code's `multivariate_normal`.

    Returns:
      (x [n, d] float32, y [n] int32, client_ids [n] int32, W [C, d, K], b [C, K]); devices are
      contiguous in client order.
    """
    sizes = np.minimum(rng.lognormal(4.0, 2.0, num_clients).astype(np.int64) + 50, max_samples)
    std_x = np.arange(1, features + 1, dtype=np.float64) ** -0.6  # sqrt of j^-1.2
    if iid:
        w_shared = rng.normal(0.0, 1.0, (features, num_classes))
        b_shared = rng.normal(0.0, 1.0, num_classes)
    else:
        u = rng.normal(0.0, alpha, num_clients)
        big_b = rng.normal(0.0, beta, num_clients)
    xs, ys, ws, bs = [], [], [], []
    for k in range(num_clients):
        if iid:
            w, b, v = w_shared, b_shared, np.zeros(features)
        else:
            w = rng.normal(u[k], 1.0, (features, num_classes))
            b = rng.normal(u[k], 1.0, num_classes)
            v = rng.normal(big_b[k], 1.0, features)
        # Labels from the float32 inputs we return, so y == argmax(x W + b) holds exactly.
        x = (v + std_x * rng.standard_normal((sizes[k], features))).astype(np.float32)
        xs.append(x)
        ys.append(np.argmax(x.astype(np.float64) @ w + b, axis=1))
        ws.append(w)
        bs.append(b)
    client_ids = np.repeat(np.arange(num_clients, dtype=np.int32), sizes)
    return (np.concatenate(xs), np.concatenate(ys).astype(np.int32), client_ids,
            np.stack(ws), np.stack(bs))


def load_synthetic(cfg: Any, rng: np.random.Generator) -> Source:
    """FedProx Synthetic with one device per client (partition `natural`).

    Each device's own split is FedProx's: the first floor(0.9 n_k) of its (i.i.d.) samples train,
    the rest test [C]. Those train rows are the train pool and those test rows the test pool
    (`client_ids` / `test_client_ids` name their device), so `data.test_fraction` does not apply;
    the global test set is all devices' test rows.
    """
    x, y, client_ids, _, _ = synthetic_fedprox(
        cfg.num_clients, rng, alpha=cfg.synthetic_alpha, beta=cfg.synthetic_beta,
        iid=cfg.synthetic_iid, features=cfg.synthetic_features)
    sizes = np.bincount(client_ids, minlength=cfg.num_clients)
    starts = np.cumsum(sizes) - sizes
    position = np.arange(len(y)) - starts[client_ids]
    test_mask = position >= (9 * sizes // 10)[client_ids]  # floor(0.9 n_k) train, exact in ints
    train = ~test_mask
    return Source(x[train], y[train], x[test_mask], y[test_mask], 10,
                  client_ids=client_ids[train], test_client_ids=client_ids[test_mask])


def load_floral_synthetic(cfg: Any, rng: np.random.Generator, *, seed: int) -> Source:
    """FLoRAL's synthetic regression benchmark (``specs/floral.md`` §6), partition `natural`.

    `clusters.make_floral_synthetic` with K = ``data.num_clients`` clients, C =
    ``data.num_clusters`` clusters (K a multiple of C; client k is in cluster k mod C) and
    ``data.floral_variant`` (``linear``: Linear(10, 3) targets, n = 8 per client; ``mlp``:
    10 -> 20 ReLU -> 1 targets, n = 120), from the data `seed` (parameters from
    ``default_rng(seed + 27)``, inputs from ``default_rng(seed + 11)``). Same structure, draw
    order, counts and splits as the official torch code; numpy's normal draws, not torch's, so
    the values differ from theirs.

    Each client's own split is torch's ``random_split(lengths=(0.8, 0.2))``
    (`clusters.random_split_lengths`: 7/1 linear, 96/24 mlp), the rows chosen by one permutation
    per client drawn (in client order) from `rng`, the builder's source stream derived from the
    data seed. The train rows are the train pool and the test rows the test pool (`client_ids` /
    `test_client_ids`), so `data.test_fraction` does not apply; the global test set is all
    clients' test rows. y is float32 [n, d_o] (``real``); no standardization. Strata are all zero
    (one stratum: the builder requires strata for a real-valued source, and with partition
    `natural` they only matter to ``data.validation_fraction``'s split, which is then unstratified).
    """
    from fedjax_sim.data.clusters import make_floral_synthetic, random_split_lengths

    k, c, variant = cfg.num_clients, cfg.num_clusters, cfg.floral_variant
    x, y, clusters, _ = make_floral_synthetic(seed, k, c, variant)
    n = x.shape[1]
    n_train, _ = random_split_lengths(n, (0.8, 0.2))
    perms = np.stack([rng.permutation(n) for _ in range(k)])  # [K, n]
    train_rows, test_rows = perms[:, :n_train], perms[:, n_train:]
    take = lambda a, rows: np.take_along_axis(a, rows[..., None], axis=1).reshape(-1, *a.shape[2:])
    clients = np.arange(k, dtype=np.int32)[:, None]
    ids_train = np.broadcast_to(clients, train_rows.shape).reshape(-1)
    ids_test = np.broadcast_to(clients, test_rows.shape).reshape(-1)
    return Source(take(x, train_rows), take(y, train_rows), take(x, test_rows), take(y, test_rows),
                  0, client_ids=ids_train, test_client_ids=ids_test,
                  strata=np.zeros(len(ids_train), np.int32), test_strata=np.zeros(len(ids_test), np.int32),
                  target_kind="real", clusters=clusters)


def _read_all(ds, chunk: int = 4096) -> list:
    """All records of a TFDS data source, in batches when the source supports it."""
    n = len(ds)
    records: list = []
    for start in range(0, n, chunk):
        keys = list(range(start, min(start + chunk, n)))
        try:
            records.extend(ds.__getitems__(keys))
        except (AttributeError, TypeError):
            # No batch access (or tfds.testing.mock_data's mock, which binds no `self` to it).
            records.extend(ds[i] for i in keys)
    return records


def _to_arrays(records) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([np.asarray(r["image"]) for r in records]).astype(np.float32) / 255.0
    y = np.array([int(r["label"]) for r in records], dtype=np.int32)
    return x, y


def _unavailable(name: str, data_dir: str, error: Exception) -> DataUnavailableError:
    """One message: which dataset, where TFDS looked, how to prepare it."""
    import tensorflow_datasets as tfds

    where, prepared = data_dir or "the TFDS default (TFDS_DATA_DIR or ~/tensorflow_datasets)", False
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
        where, prepared = str(builder.data_dir), builder.is_prepared()
    except Exception:  # noqa: BLE001 - the message below is the useful part
        pass
    target = data_dir or "DIR"
    cause = (str(error).splitlines() or [""])[0][:200]
    state = ("is prepared there without random access (TFRecord); rebuild it as ArrayRecord"
             if prepared else "is not prepared there (no download is attempted)")
    return DataUnavailableError(
        f"dataset '{name}' {state}: looked in {where}. Prepare it once on a machine with network "
        f"access: `pip install tensorflow && tfds build {name} --data_dir {target} "
        f"--file_format=array_record` (or `python -c \"import tensorflow_datasets as tfds; "
        f"tfds.data_source('{name}', data_dir='{target}', download=True)\"`), then run with "
        f"--set data.data_dir={target}." + (f" [TFDS: {type(error).__name__}: {cause}]" if prepared else ""))


def load_tfds(name: str, cfg: Any) -> Source:
    """A TFDS image-classification dataset via random access: x [n, H, W, C] float32 in [0, 1].

    Train pool = the `train` split, test pool (and global test set) = the `test` split; num_classes from the dataset info.
    Raises DataUnavailableError when the ArrayRecord files are not on this machine.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataUnavailableError(
            f"dataset '{name}' needs tensorflow-datasets: pip install tensorflow-datasets") from error
    data_dir = cfg.data_dir or None
    try:
        train, test = (tfds.data_source(name, split=s, data_dir=data_dir, download=False)
                       for s in ("train", "test"))
    except Exception as error:  # noqa: BLE001 - TFDS raises several types for "not prepared"
        raise _unavailable(name, cfg.data_dir, error) from error
    x_pool, y_pool = _to_arrays(_read_all(train))
    x_test, y_test = _to_arrays(_read_all(test))
    num_classes = int(train.dataset_info.features["label"].num_classes)
    return Source(x_pool, y_pool, x_test, y_test, num_classes)


def _tfds_loader(name: str) -> Callable[[Any, np.random.Generator], Source]:
    def loader(cfg: Any, rng: np.random.Generator) -> Source:
        del rng
        return load_tfds(name, cfg)

    loader.__name__ = f"load_{name.replace('/', '_')}"
    loader.__doc__ = f"TFDS `{name}` (see `load_tfds`)."
    return loader


TFDS_NAMES = ("mnist", "fashion_mnist", "emnist/balanced", "emnist/letters", "emnist/byclass",
              "cifar10", "cifar100")

DATASETS: dict[str, Callable[[Any, np.random.Generator], Source]] = {
    "digits": load_digits,
    "diabetes": load_diabetes,
    "synthetic": load_synthetic,
    "floral_synthetic": load_floral_synthetic,
    **{name: _tfds_loader(name) for name in TFDS_NAMES},
}


def check_finite(*arrays: Optional[np.ndarray]) -> None:
    """ConfigError (field ``data``) if any input holds NaN or inf."""
    bad = sum(int(np.size(a) - np.count_nonzero(np.isfinite(a))) for a in arrays if a is not None)
    if bad:
        raise ConfigError("data", f"{bad} non-finite values (NaN/inf) in the inputs", "finite inputs only")
