"""Flax models with a body/head split."""
from fedjax_sim.models.classifiers import (MODELS, Model, cifar_cnn, cnn, dense_chain_layers,
                                           make_classifier, mlp, with_dense_chain_layers)

__all__ = ["MODELS", "Model", "build_model", "cifar_cnn", "cnn", "dense_chain_layers", "make_classifier",
           "mlp", "with_dense_chain_layers"]


def build_model(name: str, feature_shape, num_classes: int, hidden=(200, 200), head_layers: int = 1,
                conv: str = "auto"):
    """Model by name. ``auto``: ``cnn`` for grayscale images of at least 16x16 (MNIST-like),
    ``cifar_cnn`` for colour images, ``mlp`` for vectors and tiny images (8x8 digits, where a
    CNN buys little and per-client convolutions are slow on CPU)."""
    if name == "auto":
        image = len(feature_shape) == 3 and min(feature_shape[:2]) >= 16
        name = "mlp" if not image else ("cnn" if feature_shape[-1] == 1 else "cifar_cnn")
    if name == "mlp":
        return mlp(feature_shape, num_classes, tuple(hidden), head_layers)
    return MODELS[name](feature_shape, num_classes, head_layers, conv=conv)
