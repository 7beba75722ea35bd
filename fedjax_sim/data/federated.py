"""The federated dataset: every client-level array stacked on a leading client axis.

Clients have unequal sizes; arrays are padded to the largest client and `n_*` holds the number
of valid rows, so every shape is static and a whole population lives on device as a handful of
arrays.
"""
from __future__ import annotations

import flax.struct
import jax
import numpy as np


@flax.struct.dataclass
class FederatedData:
    """Stacked, padded per-client data plus a global test set.

    Attributes:
      x_train: [C, N_max, *feature_shape] float32 client training inputs (padding rows are 0).
      y_train: [C, N_max] int32 labels (padding rows are 0).
      n_train: [C] int32 valid rows per client.
      x_test: [C, M_max, *feature_shape] per-client test inputs, drawn from each client's own
        distribution.
      y_test: [C, M_max] int32.
      n_test: [C] int32.
      x_global: [T, *feature_shape] global test inputs.
      y_global: [T] int32.
      num_classes: static number of classes.
      name: static dataset name (for summaries).
    """

    x_train: jax.Array
    y_train: jax.Array
    n_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    n_test: jax.Array
    x_global: jax.Array
    y_global: jax.Array
    num_classes: int = flax.struct.field(pytree_node=False, default=10)
    name: str = flax.struct.field(pytree_node=False, default="")

    @property
    def num_clients(self) -> int:
        return int(self.n_train.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[2:])

    @property
    def max_train(self) -> int:
        return int(self.x_train.shape[1])


def stack_clients(xs: list[np.ndarray], ys: list[np.ndarray], min_rows: int = 1):
    """Pads per-client arrays to a common length and stacks them.

    Args:
      xs: C arrays [n_c, *feature_shape].
      ys: C arrays [n_c].
      min_rows: the padded length is at least this (so clients with no test rows still give a
        non-empty axis).

    Returns:
      (x [C, N_max, ...], y [C, N_max], n [C]) as numpy arrays; padding is zeros.
    """
    n = np.array([len(y) for y in ys], dtype=np.int32)
    n_max = max(int(n.max(initial=0)), min_rows)
    feat = xs[0].shape[1:]
    x = np.zeros((len(xs), n_max, *feat), dtype=np.float32)
    y = np.zeros((len(ys), n_max), dtype=np.int32)
    for c, (xc, yc) in enumerate(zip(xs, ys)):
        x[c, : len(yc)] = xc
        y[c, : len(yc)] = yc
    return x, y, n
