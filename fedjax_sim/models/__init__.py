"""Flax models with a body/head split."""
from fedjax_sim.models.classifiers import (DROPOUT_MODELS, MODELS, Model, cifar_cnn, cnn, dense_chain_layers,
                                           emnist_cnn, make_classifier, max_pool, mlp, simple_cnn,
                                           with_dense_chain_layers)

__all__ = ["DROPOUT_MODELS", "MODELS", "Model", "build_model", "cifar_cnn", "cnn", "dense_chain_layers",
           "emnist_cnn", "make_classifier", "max_pool", "mlp", "simple_cnn", "with_dense_chain_layers"]


def build_model(name: str, feature_shape, num_classes: int, hidden=(200, 200), head_layers: int = 1,
                conv: str = "auto", dropout: bool = False):
    """Model by name. ``auto``: ``cnn`` for grayscale images of at least 16x16 (MNIST-like),
    ``cifar_cnn`` for colour images, ``mlp`` for vectors and tiny images (8x8 digits, where a
    CNN buys little and per-client convolutions are slow on CPU). ``dropout``: the named
    model's own dropouts (`DROPOUT_MODELS`), ValueError for the others."""
    if name == "auto":
        image = len(feature_shape) == 3 and min(feature_shape[:2]) >= 16
        name = "mlp" if not image else ("cnn" if feature_shape[-1] == 1 else "cifar_cnn")
    if dropout and name not in DROPOUT_MODELS:
        raise ValueError(f"model {name!r} has no dropout; models with dropouts: {', '.join(DROPOUT_MODELS)}")
    if name == "mlp":
        return mlp(feature_shape, num_classes, tuple(hidden), head_layers)
    if name in DROPOUT_MODELS:
        return MODELS[name](feature_shape, num_classes, head_layers, conv=conv, dropout=dropout)
    return MODELS[name](feature_shape, num_classes, head_layers, conv=conv)
