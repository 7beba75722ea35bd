"""Natural-client sources: federated EMNIST (``femnist``), Shakespeare (``shakespeare``),
CIFAR-100 (``cifar100_fed``) and Stack Overflow (``stackoverflow``) read from the files a user
already has (``data.data_dir``), each client a real writer, speaking role, Pachinko allocation
partition or user, with its natural train/test split.

Which files (any one format per directory; `natural_files` names each format's origin):

=============  ===========================================  ===================================
dataset        FedJAX SQLite                                TensorFlow Federated SQLite
=============  ===========================================  ===================================
femnist        federated_emnist_{train,test}.sqlite         emnist_all.sqlite (all_train/all_test)
shakespeare    shakespeare_{train,test}.sqlite              shakespeare.sqlite (train/test)
cifar100_fed   federated_cifar100_{train,test}.sqlite       cifar100.sqlite (train/test)
stackoverflow  stackoverflow_{train,test}.sqlite            stackoverflow.sqlite (train/test)
=============  ===========================================  ===================================

Stack Overflow also needs its word and tag counts (``stackoverflow.word_count``,
``stackoverflow.tag_count``, or TFF's ``.tar.bz2`` of each; `data.stackoverflow`).

``femnist`` and ``shakespeare`` also read LEAF's JSON (``train/`` and ``test/`` directories of
``*.json``, LEAF's ``data/<dataset>/data``). Clients: the first ``data.num_clients`` in the
format's own order (FedJAX: file order, whose ids start with 16 random hex digits; TFF and LEAF:
ids sorted). Rows as FedJAX preprocesses them:

* EMNIST ``x = 1 - pixels`` [28, 28, 1] (every format stores 1.0 as the background; FedJAX
  trains on ink = 1), 62 classes;
* Shakespeare: a role's snippets joined as BOS s EOS ..., cut into 80-token rows, x the tokens
  and y the next ones (`snippet_sequences`), FedJAX's 86-character vocabulary + PAD, BOS, EOS,
  OOV (90 classes); LEAF's stride-1 windows are first joined back into their text
  (`leaf_snippets`);
* CIFAR-100 ``image / 255`` [32, 32, 3], the 100 fine labels;
* Stack Overflow as TFF's tag-prediction baseline: x the normalized bag of words of ``tokens``
  and ``title`` over ``data.vocab_size`` words (sparse: [L, 2] (id, frequency) pairs), y the
  post's tags among the ``data.tag_vocab_size`` most frequent ([M] ids, -1 padded; target kind
  ``multilabel``). Its ``held_out`` split (other users) is not read.

A femnist, shakespeare or stackoverflow client's test rows are its own (same writer, role or
user; a Stack Overflow user's posts after 2018-01-01, which many users lack); CIFAR-100's
test split is partitioned into 100 clients unrelated to the 500 training clients, so its whole
test split is the test pool and each client's test rows are drawn from it following its label
mix (`partition.draw_client_tests`), as for pooled sources.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from fedjax_sim.data import natural_files as files
from fedjax_sim.data import stackoverflow
from fedjax_sim.data.sources import Source
from fedjax_sim.errors import ConfigError, DataUnavailableError


class Layout(NamedTuple):
    """Where one format keeps a dataset: file (or directory) names for train and test, and the
    TFF split names (one file holds both)."""

    format: str  # fedjax | tff | leaf
    train: str
    test: str
    splits: tuple = ()


class NaturalSpec(NamedTuple):
    layouts: tuple  # [Layout], tried in order
    num_classes: int
    input_shape: tuple  # one row's x (None: ragged, padded to the longest row loaded)
    features: dict  # format -> {raw feature: its flat per-example shape (TFF stores features flat)}
    # (root, data config) -> the row function (raw features {name: [n, ...]}, format, where, client)
    # -> (x [m, *input_shape] float32, y)
    rows: Callable
    own_test: bool  # test clients are the training clients (else: the test split is a pool)
    origin: str  # where the files come from (for the message when they are missing)
    target_shape: tuple = ()  # one row's y: () class ids, (T,) token sequences, (M,) label sets
    target_kind: str = "class"  # class | multilabel (y [M] label ids, -1 padded)


def _fixed(rows: Callable) -> Callable:
    """A row function that needs nothing from the data directory or the config."""
    return lambda root, cfg: rows


def _image_rows(keys: tuple, shape: tuple, scale: float, invert: bool, leaf_keys: tuple = ("x", "y")) -> Callable:
    """Rows of an image dataset: x = raw / scale (1 - that with ``invert``) [n, *shape], y = labels;
    ``keys``: the (input, label) features of the SQLite formats, ``leaf_keys`` LEAF's."""
    def rows(feats, fmt, where, client):
        x_key, y_key = leaf_keys if fmt == "leaf" else keys
        x, y = _feature(feats, x_key, where), _feature(feats, y_key, where).reshape(-1)
        per = int(np.prod(shape))
        if x.dtype == object or x.size != len(x) * per or (len(x) and np.asarray(x[0]).size != per):
            raise files.DataFormatError(f"{where}: client {client!r}'s {x_key!r} has shape {list(x.shape)}, "
                                        f"not [n, {', '.join(map(str, shape))}] ({per} values each)")
        x = np.asarray(x, np.float32).reshape(-1, *shape)
        if x.size and (x.min() < 0 or x.max() > scale):
            raise files.DataFormatError(f"{where}: client {client!r}'s {x_key!r} ranges over [{x.min():g}, "
                                        f"{x.max():g}], not [0, {scale:g}] as the format stores it")
        x = x / scale
        return (1.0 - x if invert else x), y
    return _fixed(rows)


# FedJAX's Shakespeare vocabulary (fedjax/datasets/shakespeare.py, from TFF's text generation
# tutorial): byte vocab[i] -> 3 + i; PAD 0, BOS 1, EOS 2, every other byte OOV 89
SHAKESPEARE_CHARS = (b"dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquy"
                     b"AEIMQUY]!%)-159\r")
PAD, BOS, EOS = 0, 1, 2
OOV = 3 + len(SHAKESPEARE_CHARS)
SHAKESPEARE_TABLE = np.full(256, OOV, np.int32)
SHAKESPEARE_TABLE[np.frombuffer(SHAKESPEARE_CHARS, np.uint8)] = 3 + np.arange(len(SHAKESPEARE_CHARS))
SEQUENCE_LENGTH = 80


def snippet_sequences(snippets, length: int = SEQUENCE_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """FedJAX's ``preprocess_client``: a client's snippets joined as BOS s1 EOS BOS s2 EOS ...,
    then x = joined[:-1] and y = joined[1:], padded with PAD to a multiple of ``length`` and
    cut into rows: (x [m, length] float32 token ids, y [m, length] int32)."""
    parts = []
    for s in snippets:
        codes = SHAKESPEARE_TABLE[np.frombuffer(bytes(s), np.uint8)]
        parts += [[BOS], codes, [EOS]]
    joined = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
    m = max(len(joined) - 1, 0)
    padded = -(-m // length) * length
    x, y = np.full(padded, PAD, np.int32), np.full(padded, PAD, np.int32)
    x[:m], y[:m] = joined[:-1], joined[1:]
    return x.reshape(-1, length).astype(np.float32), y.reshape(-1, length)


def leaf_snippets(x: np.ndarray, y: np.ndarray) -> list:
    """LEAF's Shakespeare rows are 80-character windows at stride 1 with the next character as
    target; each run of consecutive windows is one stretch of text (window + the targets), which
    becomes one snippet (LEAF had already joined a role's lines with spaces)."""
    texts: list = []
    for i, (window, nxt) in enumerate(zip(x, y)):
        window, nxt = str(window), str(nxt)
        if texts and i and str(x[i - 1])[1:] + str(y[i - 1]) == window:
            texts[-1] += nxt
        else:
            texts.append(window + nxt)
    return [t.encode("utf-8") for t in texts]


def _shakespeare_rows(feats, fmt, where, client):
    if fmt == "leaf":
        snippets = leaf_snippets(_feature(feats, "x", where), _feature(feats, "y", where))
    else:
        snippets = _feature(feats, "snippets", where).reshape(-1)
        if snippets.dtype != object:
            raise files.DataFormatError(f"{where}: client {client!r}'s 'snippets' are {snippets.dtype}, not byte strings")
    return snippet_sequences(snippets)


GCS = "https://storage.googleapis.com"
SPECS = {
    "femnist": NaturalSpec(
        (Layout("fedjax", "federated_emnist_train.sqlite", "federated_emnist_test.sqlite"),
         Layout("tff", "emnist_all.sqlite", "emnist_all.sqlite", ("all_train", "all_test")),
         Layout("leaf", "train", "test")),
        62, (28, 28, 1), {"tff": {"pixels": (784,), "label": ()}},
        _image_rows(("pixels", "label"), (28, 28, 1), 1.0, True), True,
        f"FedJAX: {GCS}/gresearch/fedjax/emnist/federated_emnist_{{train,test}}.sqlite; TFF: "
        f"{GCS}/tff-datasets-public/emnist_all.sqlite.lzma (unxz it); LEAF: data/femnist/data/{{train,test}} "
        "after LEAF's preprocess.sh"),
    "cifar100_fed": NaturalSpec(
        (Layout("fedjax", "federated_cifar100_train.sqlite", "federated_cifar100_test.sqlite"),
         Layout("tff", "cifar100.sqlite", "cifar100.sqlite", ("train", "test"))),
        100, (32, 32, 3), {"tff": {"image": (3072,), "label": ()}},
        _image_rows(("image", "label"), (32, 32, 3), 255.0, False), False,
        f"TFF: {GCS}/tff-datasets-public/cifar100.sqlite.lzma (unxz it); FedJAX converts that file into "
        "federated_cifar100_{train,test}.sqlite (fedjax.datasets.cifar100.load_data)"),
    "shakespeare": NaturalSpec(
        (Layout("fedjax", "shakespeare_train.sqlite", "shakespeare_test.sqlite"),
         Layout("tff", "shakespeare.sqlite", "shakespeare.sqlite", ("train", "test")),
         Layout("leaf", "train", "test")),
        OOV + 1, (SEQUENCE_LENGTH,), {"tff": {"snippets": ()}}, _fixed(_shakespeare_rows), True,
        f"FedJAX: {GCS}/gresearch/fedjax/shakespeare/shakespeare_{{train,test}}.sqlite; TFF: "
        f"{GCS}/tff-datasets-public/shakespeare.sqlite.lzma (unxz it); LEAF: data/shakespeare/data/{{train,test}} "
        "after LEAF's preprocess.sh", (SEQUENCE_LENGTH,)),
    "stackoverflow": NaturalSpec(
        (Layout("fedjax", "stackoverflow_train.sqlite", "stackoverflow_test.sqlite"),
         Layout("tff", "stackoverflow.sqlite", "stackoverflow.sqlite", ("train", "test"))),
        0, None, {"tff": {"tokens": (), "title": (), "tags": ()}},
        lambda root, cfg: stackoverflow.tag_rows(root, cfg.vocab_size, cfg.tag_vocab_size,
                                                 getattr(cfg, "bow_denominator", "in_vocab")), True,
        f"FedJAX: {GCS}/gresearch/fedjax/stackoverflow/stackoverflow_{{train,test}}.sqlite; TFF: "
        f"{GCS}/tff-datasets-public/stackoverflow.sqlite.lzma (unxz it); with either, the word and tag counts "
        f"{stackoverflow.VOCAB_ORIGIN}", (None,), "multilabel"),
}


def find_layout(name: str, data_dir: str) -> tuple[Layout, Path]:
    """The first of the dataset's layouts present in ``data_dir`` (DataUnavailableError naming
    every expected file and where it comes from when none is)."""
    spec = SPECS[name]
    if not data_dir:
        raise ConfigError("data.data_dir", "", f"the directory holding {name}'s files ("
                          + _expected(spec) + "; no download is attempted)")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataUnavailableError(f"data.data_dir={data_dir} {'is not a directory' if root.exists() else 'does not exist'}"
                                   f": expected a directory holding {name}'s files ({_expected(spec)})")
    for layout in spec.layouts:
        present = [(root / f).exists() for f in (layout.train, layout.test)]
        if all(present):
            return layout, root
        if any(present):  # half a set: name the missing half
            missing = layout.test if present[0] else layout.train
            raise DataUnavailableError(f"data.data_dir={data_dir} has {layout.test if present[1] else layout.train} "
                                       f"but not {missing}, which {name}'s {layout.format} files come with "
                                       f"(from {spec.origin})")
    raise DataUnavailableError(f"data.data_dir={data_dir} holds none of {name}'s files: expected "
                               f"{_expected(spec)}. They come from {spec.origin}")


def _expected(spec: NaturalSpec) -> str:
    def one(layout):
        if layout.format == "leaf":
            return "LEAF's train/ and test/ directories of *.json"
        if layout.train == layout.test:
            return f"{layout.train} (TensorFlow Federated)"
        return f"{layout.train} and {layout.test} (FedJAX)"
    return ", or ".join(one(layout) for layout in spec.layouts)


def read_clients(name: str, layout: Layout, root: Path, num_clients: int) -> tuple[dict, dict]:
    """({client: raw features} of the first ``num_clients`` training clients, the same of their
    test rows, or of the whole test split when the dataset's test clients are not its training
    clients). ConfigError when fewer clients exist."""
    spec = SPECS[name]
    train_path, test_path = root / layout.train, root / layout.test
    if layout.format == "fedjax":
        available = files.count_fedjax_clients(train_path)
        _check_count(num_clients, available, train_path)
        train = files.read_fedjax_sqlite(train_path, limit=num_clients)
        test = files.read_fedjax_sqlite(test_path, ids=train if spec.own_test else None)
    elif layout.format == "tff":
        shapes = spec.features["tff"]
        ids = files.tff_client_ids(train_path, layout.splits[0])
        _check_count(num_clients, len(ids), f"{train_path} (split {layout.splits[0]})")
        train = files.read_tff_sqlite(train_path, layout.splits[0], ids[:num_clients], shapes)
        every_test = files.tff_client_ids(test_path, layout.splits[1])
        if not every_test:
            raise files.DataFormatError(f"{test_path} has no split {layout.splits[1]!r} (its client_metadata names "
                                        f"none), which {name}'s TFF file holds beside {layout.splits[0]!r}")
        test_ids = ids[:num_clients] if spec.own_test else every_test
        test = files.read_tff_sqlite(test_path, layout.splits[1], test_ids, shapes)
    else:
        every = files.read_leaf_dir(train_path)
        _check_count(num_clients, len(every), train_path)
        train = dict(list(every.items())[:num_clients])
        test = {u: rows for u, rows in files.read_leaf_dir(test_path).items() if u in train}
    return train, test


def _feature(feats: dict, key: str, where) -> np.ndarray:
    if key not in feats:
        raise files.DataFormatError(f"{where}: a client has no feature {key!r} (it has {sorted(feats)})")
    return np.asarray(feats[key])


def _check_count(requested: int, available: int, where) -> None:
    if requested > available:
        raise ConfigError("data.num_clients", requested, f"at most {available} (the clients in {where})")


def load_natural(name: str, cfg: Any) -> Source:
    """A natural-client `Source`: the first ``cfg.num_clients`` clients' training rows as the
    train pool with ``client_ids`` 0..C-1 in the format's order, their test rows (or the whole
    test split) as the test pool. With ``cfg.max_examples`` > 0 a client keeps its first that
    many training rows (google-research/federated's ``take(max_elements_per_client)``, before its
    per-round shuffle). Rows of ragged width (Stack
    Overflow's words and tags) are padded to the longest of train and test: x with zeros, y with
    -1."""
    spec = SPECS[name]
    layout, root = find_layout(name, cfg.data_dir)
    rows_of = spec.rows(root, cfg)  # reads what the rows need (vocabularies) before the big files
    train, test = read_clients(name, layout, root, cfg.num_clients)
    order = list(train)
    multilabel = spec.target_kind == "multilabel"
    num_classes = cfg.tag_vocab_size if multilabel else spec.num_classes

    cap = getattr(cfg, "max_examples", 0)

    def rows(raw: dict, clients: list, where: str, capped: bool = False):
        xs, ys = [], []
        for c in clients:
            x, y = rows_of(raw.pop(c), layout.format, where, c)  # pop: the raw features go as rows come
            if len(x) != len(y):
                raise files.DataFormatError(f"{where}: client {c!r} has {len(x)} inputs and {len(y)} labels")
            if y.size and (y.min() < (-1 if multilabel else 0) or y.max() >= num_classes):
                raise files.DataFormatError(f"{where}: client {c!r} has labels outside [0, {num_classes})")
            if capped and cap and len(x) > cap:
                x, y = _narrowest(x[:cap]), y[:cap]
            xs.append(x)
            ys.append(np.asarray(y, np.int32))
        owner = np.concatenate([np.full(len(v), i, np.int64) for i, v in enumerate(ys)] + [np.zeros(0, np.int64)])
        return xs, ys, owner

    xs, ys, client_ids = rows(train, order, str(root / layout.train), capped=True)
    if spec.own_test:
        present = [c for c in order if c in test]
        xs_test, ys_test, local = rows(test, present, str(root / layout.test))
        index = {c: i for i, c in enumerate(order)}
        test_ids = np.asarray([index[present[j]] for j in local], np.int64)
    else:
        xs_test, ys_test, _ = rows(test, list(test), str(root / layout.test))
        test_ids = None
    if not sum(len(y) for y in ys_test) and not getattr(cfg, "validation_fraction", 0.0):
        # nothing to evaluate on (a tuning run evaluates on validation rows instead): a clear line
        raise ConfigError("data.num_clients", cfg.num_clients, f"more clients: none of the first {cfg.num_clients} "
                          f"has test rows in {root / layout.test}")
    x_shape = spec.input_shape or _widest([*xs, *xs_test])
    y_shape = spec.target_shape if None not in spec.target_shape else _widest([*ys, *ys_test])
    x, x_test = (_stack(v, x_shape, 0, np.float32) for v in (xs, xs_test))
    y, y_test = (_stack(v, y_shape, -1, np.int32) for v in (ys, ys_test))
    # targets without class strata (sequences, label sets): a zero stratum per row (validation
    # splits stay per client)
    strata = None if y.ndim == 1 else (np.zeros(len(y), np.int32), np.zeros(len(y_test), np.int32))
    return Source(x, y, x_test, y_test, num_classes, client_ids=client_ids, test_client_ids=test_ids,
                  strata=None if strata is None else strata[0], test_strata=None if strata is None else strata[1],
                  target_kind=spec.target_kind)


def _narrowest(x: np.ndarray) -> np.ndarray:
    """Sparse bag-of-words rows x [n, L, 2] without the trailing pairs that every row pads (the
    rows a client keeps may not need its widest post's width); other rows as they are."""
    if x.ndim != 3 or x.shape[-1] != 2:
        return x
    used = np.flatnonzero((x[..., 1] != 0).any(0))  # pairs are packed from the start of a row
    return x[:, :used[-1] + 1 if used.size else 1]


def _widest(arrays: list) -> tuple:
    """The per-row shape that holds every array's rows (each [n, ...]; at least 1 wide)."""
    shapes = [a.shape[1:] for a in arrays]
    return tuple(max([s[d] for s in shapes] + [1]) for d in range(len(shapes[0]))) if shapes else (1,)


def _stack(arrays: list, shape: tuple, fill, dtype) -> np.ndarray:
    """The arrays' rows [sum n, *shape], each padded at the end of every axis with ``fill``."""
    out = np.full((sum(len(a) for a in arrays), *shape), fill, dtype)
    start = 0
    for a in arrays:
        out[(slice(start, start + len(a)), *(slice(0, d) for d in a.shape[1:]))] = a
        start += len(a)
    return out


def loader(name: str) -> Callable:
    def load(cfg: Any, rng: np.random.Generator) -> Source:
        del rng  # the clients and their rows are the files'; nothing is drawn
        return load_natural(name, cfg)

    load.__name__ = f"load_{name}"
    load.__doc__ = f"Natural-client `{name}` from data.data_dir (see `load_natural`)."
    return load


NATURAL_DATASETS = {name: loader(name) for name in SPECS}
