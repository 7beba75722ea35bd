"""Cluster-structured data for FLoRAL (``specs/floral.md`` §5 and §6), in numpy.

Two things live here:

* the per-cluster transforms of the `clusters` partition (`rotate`, `label_shift`): client k
  belongs to cluster k mod M and sees its rows rotated by (360 // M) · c degrees, or its labels
  shifted by c (`apply_cluster_transform`; the builder calls it, `build.build_federated`);
* the FLoRAL synthetic regression generator (`floral_synthetic_params`,
  `make_floral_synthetic`), behind the ``floral_synthetic`` source (`sources.load_floral_synthetic`).

Nothing here imports `fedjax_sim.config` (the data floor reads its config by attribute only).
"""
from __future__ import annotations

import math

import numpy as np

CLUSTER_TRANSFORMS = ("rotate", "label_shift")


def cluster_of(num_items: int, num_clusters: int) -> np.ndarray:
    """[num_items] int32 cluster id of item i: i mod num_clusters (interleaved, as the official
    code's ``client_id % num_clusters`` and its ``repeat`` of the per-cluster weights)."""
    return (np.arange(num_items) % num_clusters).astype(np.int32)


def cluster_angle(cluster: int, num_clusters: int) -> int:
    """The rotation of cluster c in degrees: (360 // num_clusters) · c (0/90/180/270 for 4)."""
    return (360 // num_clusters) * int(cluster)


# ----------------------------------------------------------------------------------------------
# rotate


def rotate_nearest(images: np.ndarray, angle: float) -> np.ndarray:
    """Rotates images [n, H, W, C] by `angle` degrees, counter-clockwise for positive angles.

    Nearest-neighbour, about the image centre ((H - 1) / 2, (W - 1) / 2), output the same size,
    zero fill outside the source: the behaviour of torchvision's default
    ``transforms.functional.rotate`` (``InterpolationMode.NEAREST``, ``expand=False``, fill 0).
    For each output pixel (i, j) (row i down, column j right) the source pixel is the output's
    position rotated by -angle about the centre; with X = j - cx, Y = cy - i (y up),
    source X' = cos·X + sin·Y, Y' = -sin·X + cos·Y, i.e. column cx + X', row cy - Y', in
    float64, snapped to 9 decimals (so that cos 90° = 6e-17 cannot break an exact tie one way or
    the other) and rounded half to even (`np.rint`, as grid_sample's nearest mode). Exact ties
    occur only where a rotated centre offset is a half-integer (e.g. a non-square image at 90°);
    torchvision builds its grid in float32, so it may round those differently.
    """
    images = np.asarray(images)
    n, h, w = images.shape[:3]
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    x_out, y_out = cols - cx, cy - rows
    x_src, y_src = cos * x_out + sin * y_out, -sin * x_out + cos * y_out
    src_col = np.rint(np.round(cx + x_src, 9)).astype(np.int64)
    src_row = np.rint(np.round(cy - y_src, 9)).astype(np.int64)
    inside = (src_row >= 0) & (src_row < h) & (src_col >= 0) & (src_col < w)
    out = np.zeros_like(images)
    out[:, inside] = images[:, src_row[inside], src_col[inside]]
    return out


def rotate_images(images: np.ndarray, angle: int) -> np.ndarray:
    """Rotates images [n, H, W, C] by `angle` degrees counter-clockwise.

    Multiples of 90 degrees are exact (`np.rot90` on the H, W axes, which is what a
    nearest-neighbour rotation about the centre gives there); an odd multiple on a non-square
    image would change its shape, so it (and every other angle) goes through `rotate_nearest`.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"rotate needs images [n, H, W, C], got shape {images.shape}")
    quarter_turns, rest = divmod(int(angle) % 360, 90)
    if rest == 0 and (quarter_turns % 2 == 0 or images.shape[1] == images.shape[2]):
        return np.ascontiguousarray(np.rot90(images, k=quarter_turns, axes=(1, 2)))
    return rotate_nearest(images, angle)


def label_shift(labels: np.ndarray, shift: int, num_classes: int) -> np.ndarray:
    """y -> (y + shift) mod num_classes, dtype kept."""
    labels = np.asarray(labels)
    return ((labels.astype(np.int64) + int(shift)) % int(num_classes)).astype(labels.dtype)


def apply_cluster_transform(x: np.ndarray, y: np.ndarray, cluster: int, transform: str,
                            num_clusters: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (x [n, ...], y [n]) as seen by cluster `cluster`.

    ``rotate``: every image rotated by `cluster_angle` (labels kept); ``label_shift``: labels
    shifted by the cluster id mod `num_classes` (inputs kept). Cluster 0 is the identity.
    """
    if transform == "rotate":
        angle = cluster_angle(cluster, num_clusters)
        return (rotate_images(x, angle) if angle % 360 else np.asarray(x)), np.asarray(y)
    if transform == "label_shift":
        return np.asarray(x), label_shift(y, cluster, num_classes)
    raise ValueError(f"unknown cluster transform {transform!r}; one of {', '.join(CLUSTER_TRANSFORMS)}")


def transform_rows(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, transform: str,
                   num_clusters: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with one cluster each: row t transformed by cluster ``clusters[t]`` (copies)."""
    x, y = np.array(x, copy=True), np.array(y, copy=True)
    clusters = np.asarray(clusters)
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        x[rows], y[rows] = apply_cluster_transform(x[rows], y[rows], int(c), transform,
                                                   num_clusters, num_classes)
    return x, y


# ----------------------------------------------------------------------------------------------
# FLoRAL synthetic regression (spec §6)

FLORAL_DIM = 10  # d
FLORAL_RANK = 1  # r
FLORAL_UV_CONST = 2.0
FLORAL_HIDDEN = 20  # the mlp variant's base model: d -> 20 ReLU -> d_o
# variant -> (d_o, client-data-to-parameter ratio, linear targets)
FLORAL_VARIANTS = {"linear": (3, 0.25, True), "mlp": (1, 0.5, False)}


def floral_base_params(variant: str, dim: int = FLORAL_DIM) -> int:
    """Parameters of the variant's base model: Linear(d, d_o) (33 for d=10, d_o=3) or
    d -> 20 ReLU -> d_o (241 for d=10, d_o=1)."""
    dim_out, _, linear = FLORAL_VARIANTS[variant]
    if linear:
        return dim * dim_out + dim_out
    return dim * FLORAL_HIDDEN + FLORAL_HIDDEN + FLORAL_HIDDEN * dim_out + dim_out


def floral_samples(variant: str) -> int:
    """n = round(ratio · #params(base model)), Python's round (ties to even): 8 linear, 120 mlp."""
    _, ratio, _ = FLORAL_VARIANTS[variant]
    return int(round(ratio * floral_base_params(variant)))


def random_split_lengths(n: int, fractions=(0.8, 0.2)) -> list[int]:
    """torch ``random_split``'s lengths for fractions: floor(f · n) each, then the remainder
    handed out one by one round-robin from the first (8 -> 7/1, 120 -> 96/24)."""
    lengths = [int(math.floor(f * n)) for f in fractions]
    for i in range(n - sum(lengths)):
        lengths[i % len(lengths)] += 1
    return lengths


def floral_synthetic_params(seed: int, num_clients: int, num_clusters: int, variant: str = "mlp",
                            *, dim: int = FLORAL_DIM, rank: int = FLORAL_RANK,
                            uv_const: float = FLORAL_UV_CONST) -> dict:
    """The generator's parameters (spec §6), float32.

    Drawn with ``np.random.default_rng(seed + 27)``, i.i.d. N(0, 1) in this order and these shapes:
    W [1, d, d] / √d, u [C, d, r] / √d, v [C, r, d] / √r, bias [1, 1, d] / √d,
    W_out [1, d, d_o] / √d. Then W_s = W + uv_const · (u @ v) tiled K / C times along axis 0, so
    client k uses cluster k mod C's matrix.

    Returns:
      {"W", "u", "v", "bias", "W_out", "W_s" [K, d, d]} as float32 numpy arrays.
    """
    dim_out, _, _ = FLORAL_VARIANTS[variant]
    g = np.random.default_rng(seed + 27)
    w = g.standard_normal((1, dim, dim)) / math.sqrt(dim)
    u = g.standard_normal((num_clusters, dim, rank)) / math.sqrt(dim)
    v = g.standard_normal((num_clusters, rank, dim)) / math.sqrt(rank)
    bias = g.standard_normal((1, 1, dim)) / math.sqrt(dim)
    w_out = g.standard_normal((1, dim, dim_out)) / math.sqrt(dim)
    params = {k: a.astype(np.float32) for k, a in
              {"W": w, "u": u, "v": v, "bias": bias, "W_out": w_out}.items()}
    uv = uv_const * (params["u"].astype(np.float64) @ params["v"].astype(np.float64))
    w_s = params["W"].astype(np.float64) + np.tile(uv, (num_clients // num_clusters, 1, 1))
    params["W_s"] = w_s.astype(np.float32)
    return params


def floral_targets(x: np.ndarray, params: dict, variant: str) -> np.ndarray:
    """y [K, n, d_o] float32 of inputs x [K, n, d]: h = x @ W_s[k] + bias, then h[..., :d_o]
    (linear) or ReLU(h) @ W_out (mlp); computed in float64 from the float32 values."""
    dim_out, _, linear = FLORAL_VARIANTS[variant]
    f64 = lambda a: np.asarray(a, np.float64)
    h = f64(x) @ f64(params["W_s"]) + f64(params["bias"])
    y = h[..., :dim_out] if linear else np.maximum(h, 0.0) @ f64(params["W_out"])
    return y.astype(np.float32)


def make_floral_synthetic(seed: int, num_clients: int, num_clusters: int, variant: str = "mlp",
                          samples: int | None = None):
    """FLoRAL's synthetic regression data (spec §6 / §7.15), label noise 0 as in its configs.

    Parameters from `floral_synthetic_params` (``default_rng(seed + 27)``); inputs
    x ~ N(0, 1)^{K × n × d} from ``default_rng(seed + 11)``; targets from `floral_targets`.
    Same structure, draw order, counts and splits as the official torch generator; numpy's normal
    draws, not torch's, so the values differ.

    Args:
      seed: the data seed.
      num_clients: K, a multiple of num_clusters.
      num_clusters: C.
      variant: ``linear`` (d_o = 3, n = 8) or ``mlp`` (d_o = 1, n = 120).
      samples: n per client; None = `floral_samples(variant)`.

    Returns:
      (x [K, n, d] float32, y [K, n, d_o] float32, cluster [K] int32 = arange(K) % C, params).
    """
    if num_clusters < 1 or num_clients % num_clusters:
        raise ValueError(f"num_clients={num_clients} must be a multiple of num_clusters={num_clusters}")
    n = floral_samples(variant) if samples is None else int(samples)
    params = floral_synthetic_params(seed, num_clients, num_clusters, variant)
    g = np.random.default_rng(seed + 11)
    x = g.standard_normal((num_clients, n, FLORAL_DIM)).astype(np.float32)
    return x, floral_targets(x, params, variant), cluster_of(num_clients, num_clusters), params
