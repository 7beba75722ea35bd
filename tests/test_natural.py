"""Natural-client datasets from files in their real formats, written here byte by byte: FedJAX
SQLite (zlib + msgpack with FedJAX's extension types), TensorFlow Federated SQLite (tf.train.Example
protos, encoded by hand from the wire format, so the reader's descriptor is checked independently)
and LEAF JSON. Client ids, order, counts, shapes and labels must round-trip; bad input exits 2."""
from __future__ import annotations

import json
import sqlite3
import struct
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest
from conftest import assert_config_error

from fedjax_sim import cli
from fedjax_sim.config import DataConfig
from fedjax_sim.data import build_federated, natural_files
from fedjax_sim.data.natural import load_natural
from fedjax_sim.errors import ConfigError, DataUnavailableError

# --------------------------------------------------------------------------------------------
# writers of each format (independent of the readers)


def _fedjax_ext(obj):
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        return msgpack.ExtType(4, msgpack.packb((obj.shape, list(obj.flatten())), use_bin_type=True))
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(1, msgpack.packb((obj.shape, obj.dtype.name, obj.tobytes("C")), use_bin_type=True))
    raise TypeError(type(obj))


def write_fedjax(path: Path, clients: dict) -> None:
    """clients: {id: {feature: ndarray}} in insertion (rowid) order, as fedjax's SQLiteFederatedDataBuilder."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE federated_data (client_id BLOB NOT NULL PRIMARY KEY, data BLOB NOT NULL, "
                 "num_examples INTEGER NOT NULL);")
    for cid, feats in clients.items():
        blob = zlib.compress(msgpack.packb(feats, default=_fedjax_ext, strict_types=True))
        conn.execute("INSERT INTO federated_data VALUES (?, ?, ?);",
                     (cid.encode(), blob, len(next(iter(feats.values())))))
    conn.commit()
    conn.close()


def _varint(n: int) -> bytes:
    out = b""
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, payload: bytes) -> bytes:  # wire type 2: length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def tf_example(features: dict) -> bytes:
    """tensorflow/core/example/{example,feature}.proto by hand: Example.features = 1;
    Features.feature = 1 (map entry: key 1, value 2); Feature: bytes_list 1, float_list 2,
    int64_list 3; each list's packed `value` = 1."""
    entries = b""
    for key, value in features.items():
        value = np.asarray(value, dtype=object if isinstance(value, bytes) else None)
        if value.dtype == object:
            feature = _field(1, b"".join(_field(1, v) for v in value.reshape(-1)))
        elif np.issubdtype(value.dtype, np.floating):
            feature = _field(2, _field(1, struct.pack(f"<{value.size}f", *value.reshape(-1))))
        else:
            feature = _field(3, _field(1, b"".join(_varint(int(v)) for v in value.reshape(-1))))
        entries += _field(1, _field(1, key.encode()) + _field(2, feature))
    return _field(1, entries)


def write_tff(path: Path, splits: dict) -> None:
    """splits: {split: {client id: {feature: ndarray [n, ...]}}} (TFF's sql_client_data_utils schema)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
                 "serialized_example_proto BLOB NOT NULL);")
    conn.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, "
                 "num_examples INTEGER NOT NULL);")
    for split, clients in splits.items():
        for cid, feats in clients.items():
            n = len(next(iter(feats.values())))
            for i in range(n):
                conn.execute("INSERT INTO examples VALUES (?, ?, ?)",
                             (split, cid, tf_example({k: v[i] for k, v in feats.items()})))
            conn.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (cid, split, n))
    conn.commit()
    conn.close()


def write_leaf(directory: Path, clients: dict, per_file: int = 2) -> None:
    """LEAF's JSON: users / num_samples / user_data {user: {x, y}}, split over several files."""
    directory.mkdir(parents=True)
    names = list(clients)
    for f, start in enumerate(range(0, len(names), per_file)):
        users = names[start:start + per_file]
        doc = {"users": users, "num_samples": [len(clients[u]["y"]) for u in users],
               "user_data": {u: {"x": clients[u]["x"].tolist(), "y": clients[u]["y"].tolist()} for u in users}}
        (directory / f"all_data_{f}_niid_1_keep_0_train_9.json").write_text(json.dumps(doc))


# --------------------------------------------------------------------------------------------
# a small EMNIST-like population: per-client sizes, pixels in [0, 1] with 1.0 = background


def _writers(seed: int = 0, sizes=(5, 2, 7, 3)) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    ids = [f"{rng.integers(16**8):08x}:f{i:04d}_{i % 100:02d}" for i in range(len(sizes))]
    make = lambda n: {"pixels": rng.uniform(0, 1, (n, 28, 28)).astype(np.float32),  # noqa: E731
                      "label": rng.integers(0, 62, n).astype(np.int32)}
    train = {c: make(n) for c, n in zip(ids, sizes)}
    test = {c: make(max(n // 2, 1)) for c, n in zip(ids, sizes)}
    return train, test


def _cfg(tmp_path: Path, dataset="femnist", clients=3, **kw) -> DataConfig:
    return DataConfig(dataset=dataset, num_clients=clients, data_dir=str(tmp_path), **kw)


def _check_round_trip(src, train: dict, test: dict, order: list) -> None:
    """The source's pools hold exactly the chosen clients' rows, in order, inverted (1 - pixels)."""
    for k, cid in enumerate(order):
        rows = src.client_ids == k
        np.testing.assert_allclose(src.x_pool[rows][..., 0], 1.0 - train[cid]["pixels"], atol=1e-7)
        np.testing.assert_array_equal(src.y_pool[rows], train[cid]["label"])
        trows = src.test_client_ids == k
        np.testing.assert_allclose(src.x_test[trows][..., 0], 1.0 - test[cid]["pixels"], atol=1e-7)
        np.testing.assert_array_equal(src.y_test[trows], test[cid]["label"])
    assert src.x_pool.shape[1:] == (28, 28, 1) and src.num_classes == 62
    assert src.y_pool.dtype == np.int32 and src.x_pool.dtype == np.float32


def test_fedjax_sqlite_femnist_round_trips_in_file_order(tmp_path):
    train, test = _writers()
    write_fedjax(tmp_path / "federated_emnist_train.sqlite", train)
    write_fedjax(tmp_path / "federated_emnist_test.sqlite", dict(reversed(list(test.items()))))  # any order
    src = load_natural("femnist", _cfg(tmp_path, clients=3))
    _check_round_trip(src, train, test, list(train)[:3])  # rowid order, not sorted
    assert np.bincount(src.client_ids).tolist() == [5, 2, 7]


def test_fedjax_object_arrays_decode_as_bytes(tmp_path):
    clients = {"a": {"snippets": np.array([b"To be,", b"or not"], dtype=object), "n": np.arange(2, dtype=np.int64)}}
    write_fedjax(tmp_path / "s.sqlite", clients)
    got = natural_files.read_fedjax_sqlite(tmp_path / "s.sqlite")
    assert list(got["a"]["snippets"]) == [b"To be,", b"or not"] and got["a"]["n"].dtype == np.int64


def test_tff_sqlite_femnist_round_trips_in_sorted_order(tmp_path):
    train, test = _writers(1)
    flat = lambda clients: {c: {"pixels": f["pixels"].reshape(len(f["label"]), -1),  # noqa: E731
                                "label": f["label"].astype(np.int64)} for c, f in clients.items()}
    write_tff(tmp_path / "emnist_all.sqlite", {"all_train": flat(train), "all_test": flat(test),
                                               "digits_only_train": {}})
    src = load_natural("femnist", _cfg(tmp_path, clients=4))
    _check_round_trip(src, train, test, sorted(train))


def test_leaf_json_femnist_round_trips_in_sorted_order(tmp_path):
    train, test = _writers(2)
    as_leaf = lambda clients: {c: {"x": f["pixels"].reshape(len(f["label"]), -1),  # noqa: E731
                                   "y": f["label"]} for c, f in clients.items()}
    write_leaf(tmp_path / "train", as_leaf(train))
    write_leaf(tmp_path / "test", as_leaf(test))
    src = load_natural("femnist", _cfg(tmp_path, clients=2))
    _check_round_trip(src, train, test, sorted(train)[:2])


def test_cifar100_test_split_is_a_pool_drawn_by_label_mix(tmp_path):
    """CIFAR-100's test clients are not its training clients: the whole test split is the test
    pool; the built data gives each client test rows from it, disjoint across clients."""
    rng = np.random.default_rng(3)
    make = lambda n: {"image": rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8),  # noqa: E731
                      "coarse_label": rng.integers(0, 20, n).astype(np.int64),
                      "label": rng.integers(0, 4, n).astype(np.int64)}
    write_fedjax(tmp_path / "federated_cifar100_train.sqlite", {str(i): make(12) for i in range(5)})
    write_fedjax(tmp_path / "federated_cifar100_test.sqlite", {str(i): make(10) for i in range(2)})
    cfg = _cfg(tmp_path, "cifar100_fed", clients=4)
    src = load_natural("cifar100_fed", cfg)
    assert src.test_client_ids is None and src.x_test.shape == (20, 32, 32, 3) and src.num_classes == 100
    assert src.x_pool.max() <= 1.0 and np.bincount(src.client_ids).tolist() == [12] * 4
    data = build_federated(cfg, 0)
    assert data.num_clients == 4 and np.asarray(data.n_train).tolist() == [12] * 4
    assert int(np.asarray(data.n_test).sum()) > 0 and data.global_size == 20


def test_built_natural_data_keeps_each_writers_own_split(tmp_path):
    train, test = _writers()
    write_fedjax(tmp_path / "federated_emnist_train.sqlite", train)
    write_fedjax(tmp_path / "federated_emnist_test.sqlite", test)
    data = build_federated(_cfg(tmp_path, clients=4), 0)
    assert np.asarray(data.n_train).tolist() == [5, 2, 7, 3]
    assert np.asarray(data.n_test).tolist() == [2, 1, 3, 1]
    assert data.global_size == 7


def test_fedjax_run_on_femnist_files(tmp_path, capsys):
    train, test = _writers()
    write_fedjax(tmp_path / "federated_emnist_train.sqlite", train)
    write_fedjax(tmp_path / "federated_emnist_test.sqlite", test)
    out = tmp_path / "run"
    rc = cli.main(["run", "--algorithm", "fedavg", "--dataset", "femnist", "--clients", "4", "--rounds", "2", "--set", "eval_every=1",
                   "--set", f"data.data_dir={tmp_path}", "--set", "model.name=emnist_cnn", "--no-progress",
                   "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["partition"] == "natural"
    # writers of 2-7 rows in batches of 16: one step each, so trimming wastes nothing here
    assert resolved["local_padding"]["mode"] == "trim" and resolved["local_padding"]["waste"] == 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["train_per_client"]["total"] == 17 and summary["data"]["num_classes"] == 62


# --------------------------------------------------------------------------------------------
# bad input


def test_missing_files_name_every_expected_file_and_where_they_come_from(tmp_path, capsys):
    rc = cli.main(["run", "--dataset", "femnist", "--set", f"data.data_dir={tmp_path}", "--rounds", "1",
                   "--out", str(tmp_path / "run")])
    line = assert_config_error(capsys, rc, "data.data_dir", str(tmp_path))
    for name in ("federated_emnist_train.sqlite", "emnist_all.sqlite", "LEAF", "storage.googleapis.com"):
        assert name in line
    assert not (tmp_path / "run").exists()


def test_no_data_dir_names_the_field(tmp_path, capsys):
    rc = cli.main(["run", "--dataset", "cifar100_fed", "--rounds", "1", "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, "data.data_dir", "cifar100.sqlite")


def test_more_clients_than_the_file_has(tmp_path, capsys):
    train, test = _writers()
    write_fedjax(tmp_path / "federated_emnist_train.sqlite", train)
    write_fedjax(tmp_path / "federated_emnist_test.sqlite", test)
    rc = cli.main(["run", "--dataset", "femnist", "--clients", "9", "--set", f"data.data_dir={tmp_path}",
                   "--rounds", "1", "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, "data.num_clients", "at most 4")


@pytest.mark.parametrize("damage", ["not_sqlite", "wrong_table", "bad_blob", "wrong_shape", "bad_label"])
def test_a_file_in_the_wrong_format_exits_2_naming_it(damage, tmp_path, capsys):
    train, test = _writers()
    path = tmp_path / "federated_emnist_train.sqlite"
    if damage == "not_sqlite":
        path.write_text("this is not a database, " * 100)
    elif damage == "wrong_table":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE clients (id TEXT)")
        conn.commit()
        conn.close()
    elif damage == "bad_blob":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE federated_data (client_id BLOB, data BLOB, num_examples INTEGER)")
        conn.execute("INSERT INTO federated_data VALUES (?, ?, ?)", (b"a", b"not zlib", 1))
        conn.commit()
        conn.close()
    elif damage == "wrong_shape":
        write_fedjax(path, {c: {"pixels": f["pixels"][:, :20], "label": f["label"]} for c, f in train.items()})
    else:
        write_fedjax(path, {c: {"pixels": f["pixels"], "label": f["label"] + 62} for c, f in train.items()})
    write_fedjax(tmp_path / "federated_emnist_test.sqlite", test)
    rc = cli.main(["run", "--dataset", "femnist", "--clients", "2", "--set", f"data.data_dir={tmp_path}",
                   "--rounds", "1", "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    lines = [l for l in captured.err.splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1, captured.err
    assert str(path) in lines[0]
    assert not (tmp_path / "run").exists()


def test_leaf_json_that_is_not_leaf(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "train" / "a.json").write_text(json.dumps({"users": ["u"]}))
    (tmp_path / "test" / "a.json").write_text(json.dumps({"users": ["u"]}))
    with pytest.raises(DataUnavailableError, match="not LEAF JSON"):
        load_natural("femnist", _cfg(tmp_path, clients=1))


def test_natural_datasets_refuse_pooled_partitions(tmp_path):
    from fedjax_sim.data import validate_data_config

    with pytest.raises(ConfigError, match="data.partition"):
        validate_data_config(_cfg(tmp_path, partition="iid"))


# --------------------------------------------------------------------------------------------
# Shakespeare: snippets -> 80-token rows, the sequence task, the character LSTM

from fedjax_sim.data.natural import (  # noqa: E402
    BOS,
    EOS,
    OOV,
    PAD,
    SHAKESPEARE_CHARS,
    leaf_snippets,
    snippet_sequences,
)


def _ref_sequences(snippets, length):
    """FedJAX's preprocess_client as a plain loop: BOS s EOS per snippet, shift by one, pad, cut."""
    code = {c: 3 + i for i, c in enumerate(SHAKESPEARE_CHARS)}
    joined = []
    for s in snippets:
        joined += [BOS] + [code.get(b, OOV) for b in s] + [EOS]
    xs, ys = joined[:-1], joined[1:]
    while len(xs) % length:
        xs.append(PAD)
        ys.append(PAD)
    return np.array(xs).reshape(-1, length), np.array(ys).reshape(-1, length)


def test_snippet_sequences_match_fedjax_docstring_example():
    a, b, c, d, e = (3 + SHAKESPEARE_CHARS.index(ch) for ch in b"ABCDE")
    x, y = snippet_sequences([b"ABCD", b"E"], length=3)
    np.testing.assert_array_equal(x, [[BOS, a, b], [c, d, EOS], [BOS, e, PAD]])
    np.testing.assert_array_equal(y, [[a, b, c], [d, EOS, BOS], [e, EOS, PAD]])
    assert x.dtype == np.float32 and y.dtype == np.int32
    x, y = snippet_sequences([b"a~b"], length=4)  # '~' is not in the vocabulary
    assert OOV in y.tolist()[0]


def _roles(seed=0):
    rng = np.random.default_rng(seed)
    text = lambda n: bytes(rng.choice(list(b"abc DEF,.;\n'!~"), n).tolist())  # noqa: E731
    return {f"{rng.integers(16**8):08x}:ROLE_{i}": [text(int(rng.integers(5, 120))) for _ in range(k)]
            for i, k in enumerate((3, 1, 4))}


def _check_sequences(src, snippets_by_client: dict, order: list, test_snippets: dict) -> None:
    for k, cid in enumerate(order):
        x, y = _ref_sequences(snippets_by_client[cid], 80)
        np.testing.assert_array_equal(src.x_pool[src.client_ids == k], x)
        np.testing.assert_array_equal(src.y_pool[src.client_ids == k], y)
        tx, ty = _ref_sequences(test_snippets[cid], 80)
        np.testing.assert_array_equal(src.y_test[src.test_client_ids == k], ty)
    assert src.num_classes == 90 and src.x_pool.shape[1:] == (80,)


def test_fedjax_sqlite_shakespeare_rows(tmp_path):
    train, test = _roles(0), _roles(0)
    test = {c: s[:1] for c, s in test.items()}
    as_file = lambda clients: {c: {"snippets": np.array(s, dtype=object)} for c, s in clients.items()}  # noqa: E731
    write_fedjax(tmp_path / "shakespeare_train.sqlite", as_file(train))
    write_fedjax(tmp_path / "shakespeare_test.sqlite", as_file(test))
    src = load_natural("shakespeare", _cfg(tmp_path, "shakespeare", clients=3))
    _check_sequences(src, train, list(train), test)


def test_tff_sqlite_shakespeare_rows(tmp_path):
    train, test = _roles(1), _roles(2)
    test = {c: s for c, s in zip(train, test.values())}
    as_split = lambda clients: {c: {"snippets": np.array(s, dtype=object)} for c, s in clients.items()}  # noqa: E731
    write_tff(tmp_path / "shakespeare.sqlite", {"train": as_split(train), "test": as_split(test)})
    src = load_natural("shakespeare", _cfg(tmp_path, "shakespeare", clients=2))
    _check_sequences(src, train, sorted(train)[:2], test)


def test_leaf_shakespeare_windows_are_joined_back_into_text(tmp_path):
    """LEAF's stride-1 windows of 80 characters with the next one as target: each consecutive
    run is one text; a gap (LEAF skips 79 windows between train and test) starts another."""
    text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer " * 2
    windows = lambda t: ([t[i:i + 80] for i in range(len(t) - 80)], [t[i + 80] for i in range(len(t) - 80)])  # noqa: E731
    x, y = windows(text)
    assert leaf_snippets(np.array(x), np.array(y)) == [text.encode()]
    x2, y2 = windows(text[:100])
    x3, y3 = windows(text[50:140])  # overlaps but does not continue the first run
    assert leaf_snippets(np.array(x2 + x3), np.array(y2 + y3)) == [text[:100].encode(), text[50:140].encode()]
    write_leaf(tmp_path / "train", {"KING": {"x": np.array(x), "y": np.array(y)},
                                    "AARON": {"x": np.array(x2), "y": np.array(y2)}})
    write_leaf(tmp_path / "test", {"KING": {"x": np.array(x3), "y": np.array(y3)}})
    src = load_natural("shakespeare", _cfg(tmp_path, "shakespeare", clients=2))
    _check_sequences(src, {"AARON": [text[:100].encode()], "KING": [text.encode()]}, ["AARON", "KING"],
                     {"AARON": [], "KING": [text[50:140].encode()]})


def test_sequence_task_means_are_over_real_tokens():
    """Loss and accuracy weigh every non-PAD target token once, across rows of any fill."""
    from fedjax_sim import tasks

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    y = np.array([[1, 2, 3, 4, 5], [6, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.int32)
    mask = np.array([True, True, True])
    task = tasks.sequence(lambda p, x: x, 7)
    real = y != 0
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token_loss = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    loss, _ = task.loss(None, {"x": logits, "y": y, "mask": mask}, None)
    np.testing.assert_allclose(loss, token_loss[real].mean(), rtol=1e-5)
    m = task.metrics(None, {"x": logits, "y": y, "mask": mask})
    assert float(m["count"]) == real.sum()
    np.testing.assert_allclose(m["accuracy"], (logits.argmax(-1) == y)[real].sum(), rtol=1e-6)
    np.testing.assert_allclose(m["loss"], token_loss[real].sum(), rtol=1e-5)


def test_shakespeare_run_trains_the_character_lstm(tmp_path, capsys):
    train = _roles(3)
    as_file = lambda clients: {c: {"snippets": np.array(s, dtype=object)} for c, s in clients.items()}  # noqa: E731
    write_fedjax(tmp_path / "shakespeare_train.sqlite", as_file(train))
    write_fedjax(tmp_path / "shakespeare_test.sqlite", as_file({c: s[:1] for c, s in train.items()}))
    out = tmp_path / "run"
    rc = cli.main(["run", "--algorithm", "fedavg", "--dataset", "shakespeare", "--clients", "3", "--rounds", "2", "--set", "eval_every=1",
                   "--set", f"data.data_dir={tmp_path}", "--no-progress", "--out", str(out),
                   "--set", "local.batch_size=4", "--set", "local.lr=0.5"])
    assert rc == 0, capsys.readouterr().err
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert (resolved["model"], resolved["task"]) == ("char_lstm", "sequence")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(np.isfinite(line["global_loss"]) for line in lines)
    assert lines[-1]["global_loss"] < lines[0]["global_loss"]  # two rounds of SGD lower the test loss


@pytest.mark.parametrize("setting,field", [
    ("model.name=cnn", "model.name"), ("task.name=classification", "task.name"),
    ("model.head_layers=2", "model.head_layers")])
def test_shakespeare_refuses_other_models_and_tasks(setting, field, tmp_path, capsys):
    train = _roles(4)
    as_file = lambda clients: {c: {"snippets": np.array(s, dtype=object)} for c, s in clients.items()}  # noqa: E731
    write_fedjax(tmp_path / "shakespeare_train.sqlite", as_file(train))
    write_fedjax(tmp_path / "shakespeare_test.sqlite", as_file(train))
    rc = cli.main(["run", "--dataset", "shakespeare", "--clients", "2", "--rounds", "1", "--set", setting,
                   "--set", f"data.data_dir={tmp_path}", "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, field, setting.split("=")[1])


def test_bad_padding_mode_exits_2(tmp_path, capsys):
    rc = cli.main(["run", "--rounds", "1", "--set", "local.padding=bucket", "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, "local.padding", "bucket")


def test_char_lstm_refuses_image_data(tmp_path, capsys):
    rc = cli.main(["run", "--rounds", "1", "--set", "model.name=char_lstm", "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, "model.name", "char_lstm")


@pytest.mark.parametrize("config", ["emnist_conv", "shakespeare_character"])
def test_fedjax_experiment_configs_run_on_files_in_their_format(config, tmp_path, capsys):
    """experiments/fedjax/*.json (FedJAX's fed_avg flags) are valid run configs: one round on a few
    generated clients, everything else as configured."""
    if config == "emnist_conv":
        train, test = _writers()
        write_fedjax(tmp_path / "federated_emnist_train.sqlite", train)
        write_fedjax(tmp_path / "federated_emnist_test.sqlite", test)
    else:
        as_file = lambda clients: {c: {"snippets": np.array(s, dtype=object)} for c, s in clients.items()}  # noqa: E731
        write_fedjax(tmp_path / "shakespeare_train.sqlite", as_file(_roles(5)))
        write_fedjax(tmp_path / "shakespeare_test.sqlite", as_file(_roles(5)))
    path = Path(__file__).resolve().parents[1] / "experiments" / "fedjax" / f"{config}.json"
    out = tmp_path / "run"
    rc = cli.main(["run", "--config", str(path), "--rounds", "1", "--clients", "3", "--cohort", "2", "--no-progress",
                   "--set", f"data.data_dir={tmp_path}", "--set", "eval_every=1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    expected = json.loads(path.read_text())
    assert cfg["local"]["lr"] == expected["local"]["lr"] and cfg["server"]["optimizer"] == expected["server"]["optimizer"]


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_fedopt_emnist_configs_are_fedjaxs_data_and_model_with_fedopts_optimizers(name):
    """experiments/tff/emnist_character_<name>.json: valid, its server optimizer builds, its data
    are those of FedJAX's EMNIST config that runs above, and its CNN that one's layout with
    Keras' Glorot initialization (`simple_cnn`), as FedOpt's Keras model has."""
    from fedjax_sim import config as config_lib
    from fedjax_sim.core.optim import make_optimizer

    root = Path(__file__).resolve().parents[1] / "experiments"
    raw = config_lib.read_config_file(root / "tff" / f"emnist_character_{name}.json")
    cfg = config_lib.apply_dict(config_lib.Config(), raw)
    config_lib.validate(cfg)
    spec = make_optimizer(cfg.server.optimizer, cfg.server.lr, args=cfg.server.optimizer_args, field="server",
                          params_example={"w": np.zeros(2, np.float32)})
    assert spec.name == name and spec.hyperparams["eps"] == 1e-4
    base = config_lib.read_config_file(root / "fedjax" / "emnist_conv.json")
    assert raw["data"] == base["data"] and raw["model"] == {**base["model"], "name": "simple_cnn"}


def test_fedjax_writer_round_trips_through_the_reader(tmp_path):
    """natural_files.write_fedjax_sqlite (for one's own populations) writes what the reader and the
    independent writer above agree on."""
    clients = {"b": {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array([b"a", b"bc"], dtype=object)},
               "a": {"x": np.zeros((1, 3), np.float32), "s": np.array([b""], dtype=object)}}
    natural_files.write_fedjax_sqlite(tmp_path / "mine.sqlite", clients)
    write_fedjax(tmp_path / "ref.sqlite", clients)
    mine, ref = (natural_files.read_fedjax_sqlite(tmp_path / f) for f in ("mine.sqlite", "ref.sqlite"))
    assert list(mine) == list(ref) == ["b", "a"]
    for c in clients:
        np.testing.assert_array_equal(mine[c]["x"], clients[c]["x"])
        assert list(mine[c]["s"]) == list(clients[c]["s"])


@pytest.mark.parametrize("case", ["only_train", "leaf_without_test", "not_a_dir", "missing", "pixels_0_255"])
def test_incomplete_or_misplaced_files_name_what_is_wrong(case, tmp_path, capsys):
    train, test = _writers()
    data_dir, expect = tmp_path / "d", ""
    data_dir.mkdir()
    if case == "only_train":
        write_fedjax(data_dir / "federated_emnist_train.sqlite", train)
        expect = "federated_emnist_test.sqlite"
    elif case == "leaf_without_test":
        write_leaf(data_dir / "train", {c: {"x": f["pixels"].reshape(len(f["label"]), -1), "y": f["label"]}
                                        for c, f in train.items()})
        expect = "not test"
    elif case == "not_a_dir":
        data_dir = tmp_path / "file.txt"
        data_dir.write_text("x")
        expect = "is not a directory"
    elif case == "missing":
        data_dir, expect = tmp_path / "nowhere", "does not exist"
    else:
        write_fedjax(data_dir / "federated_emnist_train.sqlite",
                     {c: {"pixels": f["pixels"] * 255, "label": f["label"]} for c, f in train.items()})
        write_fedjax(data_dir / "federated_emnist_test.sqlite", test)
        expect = "not [0, 1]"
    out = tmp_path / "run"
    rc = cli.main(["run", "--dataset", "femnist", "--clients", "2", "--set", f"data.data_dir={data_dir}",
                   "--rounds", "1", "--out", str(out)])
    line = assert_config_error(capsys, rc, "data.data_dir" if case != "pixels_0_255" else "pixels", "")
    assert expect in line, line
    assert not out.exists()
