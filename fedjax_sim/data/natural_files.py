"""Readers of the federated dataset files researchers already have on disk (nothing downloads).

Three formats, each read as its origin writes it (sources: the public repositories named):

* **FedJAX SQLite** (google/fedjax ``fedjax/core/sqlite_federated_data.py``,
  ``fedjax/core/serialization.py``): one table ``federated_data(client_id BLOB PRIMARY KEY,
  data BLOB, num_examples INTEGER)``, one row per client. ``data`` is
  ``zlib.compress(msgpack(dict feature -> ndarray))``; a numeric array is msgpack extension type
  1 holding ``(shape, dtype name, C-order bytes)``, an object array of bytes is type 4 holding
  ``(shape, [bytes, ...])``. Client order: ``rowid`` (insertion), as FedJAX iterates; the
  published files prefix each id with 16 random hex digits, so the first N clients are a
  random-looking sample.
* **TensorFlow Federated SQLite** (tensorflow/federated
  ``tensorflow_federated/python/simulation/datasets/sql_client_data*.py``): tables
  ``examples(split_name, client_id, serialized_example_proto)`` and
  ``client_metadata(client_id, split_name, num_examples)``; one ``tf.train.Example`` per row.
  Client order: ids sorted as strings, as TFF's ``client_ids``; a client's rows in ``rowid``
  order (TFF's query has no ORDER BY; rowid is the order they were written).
* **LEAF JSON** (TalwalkarLab/leaf ``models/utils/model_utils.py``): every ``*.json`` of a
  directory holds ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...],
  "y": [...]}}}``; train and test are sibling directories. Client order: names sorted, as LEAF's
  ``read_dir``.

Each reader returns ``{client id (str): {feature: ndarray [n, ...]}}`` for the clients asked
for, in the format's order, and raises `DataFormatError` naming the file and what is wrong.
``tf.train.Example`` is decoded with the ``protobuf`` runtime from a descriptor built here (the
message layout of tensorflow/core/example/{example,feature}.proto), so TensorFlow is not needed.
"""
from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np

from fedjax_sim.errors import DataUnavailableError


class DataFormatError(DataUnavailableError):
    """A dataset file that exists but is not in the format its name says."""


# --------------------------------------------------------------------------------------------
# FedJAX SQLite

FEDJAX_TABLE = "federated_data"
_EXT_NDARRAY, _EXT_OBJECT_NDARRAY = 1, 4  # fedjax/core/serialization.py's extension type codes


def _fedjax_ext(code: int, payload: bytes):
    import msgpack

    if code == _EXT_NDARRAY:
        shape, name, buf = msgpack.unpackb(payload, raw=True)
        return np.frombuffer(buf, np.dtype(name.decode() if isinstance(name, bytes) else name)).reshape(shape)
    if code == _EXT_OBJECT_NDARRAY:
        shape, items = msgpack.unpackb(payload, raw=True)
        out = np.empty(len(items), dtype=object)
        out[:] = list(items)
        return out.reshape(shape)
    raise ValueError(f"msgpack extension type {code} (FedJAX writes 1 for arrays, 4 for byte strings)")


def decode_fedjax_examples(blob: bytes) -> dict:
    """One FedJAX client blob -> {feature: ndarray [n, ...]}."""
    import msgpack

    return msgpack.unpackb(zlib.decompress(blob), ext_hook=_fedjax_ext, raw=False)


def _connect(path: Path) -> sqlite3.Connection:
    # read-only: a run never modifies the user's files
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _tables(conn: sqlite3.Connection, path: Path) -> set:
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as e:
        raise DataFormatError(f"{path} is not an SQLite database ({e})") from None


def read_fedjax_sqlite(path: Path, limit: int | None = None, ids: Iterable[str] | None = None) -> dict:
    """The first ``limit`` clients of a FedJAX SQLite file (rowid order), or exactly the clients
    ``ids`` (those present). Client ids are decoded as UTF-8 text."""
    conn = _connect(path)
    try:
        if FEDJAX_TABLE not in _tables(conn, path):
            raise DataFormatError(f"{path} has no table '{FEDJAX_TABLE}': not a FedJAX SQLite file "
                                  "(fedjax/core/sqlite_federated_data.py)")
        if ids is None:
            rows = conn.execute(f"SELECT client_id, data FROM {FEDJAX_TABLE} ORDER BY rowid"
                                + ("" if limit is None else f" LIMIT {int(limit)}"))
        else:  # by primary key: a few clients of a large file (Stack Overflow's 204k test users)
            rows = _fedjax_rows_of(conn, list(ids))
        out = {}
        for cid, blob in rows:
            name = cid.decode("utf-8") if isinstance(cid, bytes) else str(cid)
            try:
                out[name] = decode_fedjax_examples(blob)
            except Exception as e:  # noqa: BLE001 - zlib, msgpack and numpy each raise their own
                raise DataFormatError(f"{path}: client {name!r}'s data is not FedJAX's zlib + msgpack "
                                      f"encoding ({type(e).__name__}: {e})") from None
        return out
    finally:
        conn.close()


def _fedjax_rows_of(conn: sqlite3.Connection, ids: list, chunk: int = 400) -> list:
    """[(client_id, data)] of the clients ``ids`` present, in rowid order (ids are BLOBs in
    FedJAX's files, text in some converted ones: both are asked for)."""
    found = []
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        keys = [i.encode("utf-8") for i in part] + list(part)
        found += conn.execute(f"SELECT rowid, client_id, data FROM {FEDJAX_TABLE} WHERE client_id IN "
                              f"({', '.join('?' * len(keys))})", keys).fetchall()
    return [(cid, blob) for _, cid, blob in sorted(found, key=lambda row: row[0])]


def write_fedjax_sqlite(path: Path, clients: dict) -> None:
    """Writes ``{client id: {feature: ndarray [n, ...]}}`` as a FedJAX SQLite file, in this order
    (numeric arrays and object arrays of bytes): e.g. a population of one's own for the natural
    sources, or test files (tests/test_natural.py checks the reader against its own writer)."""
    import msgpack

    def ext(obj):
        if isinstance(obj, np.ndarray) and obj.dtype == object:
            return msgpack.ExtType(_EXT_OBJECT_NDARRAY, msgpack.packb((obj.shape, list(obj.reshape(-1))),
                                                                      use_bin_type=True))
        if isinstance(obj, np.ndarray):
            return msgpack.ExtType(_EXT_NDARRAY, msgpack.packb((obj.shape, obj.dtype.name, obj.tobytes("C")),
                                                               use_bin_type=True))
        raise TypeError(f"FedJAX's format holds numpy arrays, not {type(obj).__name__}")

    conn = sqlite3.connect(path)
    try:
        conn.execute(f"CREATE TABLE {FEDJAX_TABLE} (client_id BLOB NOT NULL PRIMARY KEY, data BLOB NOT NULL, "
                     "num_examples INTEGER NOT NULL)")
        for cid, feats in clients.items():
            blob = zlib.compress(msgpack.packb(feats, default=ext, strict_types=True))
            conn.execute(f"INSERT INTO {FEDJAX_TABLE} VALUES (?, ?, ?)",
                         (str(cid).encode(), blob, len(next(iter(feats.values())))))
        conn.commit()
    finally:
        conn.close()


def count_fedjax_clients(path: Path) -> int:
    conn = _connect(path)
    try:
        if FEDJAX_TABLE not in _tables(conn, path):
            raise DataFormatError(f"{path} has no table '{FEDJAX_TABLE}': not a FedJAX SQLite file")
        return int(conn.execute(f"SELECT COUNT(*) FROM {FEDJAX_TABLE}").fetchone()[0])
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# TensorFlow Federated SQLite

_EXAMPLE_CLASS = None


def example_class():
    """The ``tf.train.Example`` message class, built from its layout with the protobuf runtime."""
    global _EXAMPLE_CLASS
    if _EXAMPLE_CLASS is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        f = descriptor_pb2.FileDescriptorProto(name="fedjax_sim_tf_example.proto", package="tensorflow",
                                               syntax="proto3")
        T = descriptor_pb2.FieldDescriptorProto
        repeated, optional = T.LABEL_REPEATED, T.LABEL_OPTIONAL

        def message(name, *fields, options=None):
            m = f.message_type.add(name=name)
            for fname, number, ftype, label, type_name, packed in fields:
                field = m.field.add(name=fname, number=number, type=ftype, label=label)
                if type_name:
                    field.type_name = type_name
                if packed:
                    field.options.packed = True
            return m

        message("BytesList", ("value", 1, T.TYPE_BYTES, repeated, None, False))
        message("FloatList", ("value", 1, T.TYPE_FLOAT, repeated, None, True))
        message("Int64List", ("value", 1, T.TYPE_INT64, repeated, None, True))
        feature = message("Feature", ("bytes_list", 1, T.TYPE_MESSAGE, optional, ".tensorflow.BytesList", False),
                          ("float_list", 2, T.TYPE_MESSAGE, optional, ".tensorflow.FloatList", False),
                          ("int64_list", 3, T.TYPE_MESSAGE, optional, ".tensorflow.Int64List", False))
        feature.oneof_decl.add(name="kind")
        for field in feature.field:
            field.oneof_index = 0
        features = message("Features", ("feature", 1, T.TYPE_MESSAGE, repeated, ".tensorflow.Features.FeatureEntry",
                                        False))
        entry = features.nested_type.add(name="FeatureEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=optional)
        entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=optional, type_name=".tensorflow.Feature")
        message("Example", ("features", 1, T.TYPE_MESSAGE, optional, ".tensorflow.Features", False))
        pool = descriptor_pool.DescriptorPool()
        pool.Add(f)
        _EXAMPLE_CLASS = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))
    return _EXAMPLE_CLASS


def decode_tf_example(blob: bytes) -> dict:
    """One serialized ``tf.train.Example`` -> {feature: flat ndarray} (float32, int64, or an
    object array of bytes)."""
    ex = example_class().FromString(blob)
    out = {}
    for key, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "float_list":
            out[key] = np.asarray(feat.float_list.value, np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feat.int64_list.value, np.int64)
        else:
            values = list(feat.bytes_list.value) if kind == "bytes_list" else []
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[key] = arr
    return out


TFF_TABLES = ("examples", "client_metadata")


def _check_tff(conn: sqlite3.Connection, path: Path) -> None:
    missing = [t for t in TFF_TABLES if t not in _tables(conn, path)]
    if missing:
        raise DataFormatError(f"{path} has no table {missing[0]!r}: not a TensorFlow Federated SQLite file "
                              "(tff.simulation.datasets sql_client_data)")


def tff_client_ids(path: Path, split: str) -> list:
    """The split's client ids, sorted as TFF sorts them."""
    conn = _connect(path)
    try:
        _check_tff(conn, path)
        ids = [r[0] for r in conn.execute("SELECT DISTINCT client_id FROM client_metadata WHERE split_name = ?",
                                          (split,))]
        return sorted(i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in ids)
    finally:
        conn.close()


def _indexed_by_client(conn: sqlite3.Connection) -> bool:
    """Whether an index of ``examples`` starts with ``client_id`` (TFF's writer makes none)."""
    for row in conn.execute("PRAGMA index_list(examples)"):
        columns = [c[2] for c in conn.execute(f"PRAGMA index_info('{row[1]}')")]
        if columns[:1] == ["client_id"]:
            return True
    return False


def _tff_rows(conn: sqlite3.Connection, split: str, ids: list):
    """(client_id, serialized example) of the clients ``ids`` in ``split``, each client's rows in
    rowid order: one indexed query per client where an index allows, else one pass over the
    split (an unindexed per-client query would scan the whole table once per client)."""
    if _indexed_by_client(conn):
        for cid in ids:
            for key in (cid, cid.encode("utf-8")):  # ids stored as text or as blobs
                yield from conn.execute("SELECT client_id, serialized_example_proto FROM examples "
                                        "WHERE client_id = ? AND split_name = ? ORDER BY rowid", (key, split))
        return
    yield from conn.execute("SELECT client_id, serialized_example_proto FROM examples "
                            "WHERE split_name = ? ORDER BY rowid", (split,))


def read_tff_sqlite(path: Path, split: str, ids: Iterable[str], shapes: dict) -> dict:
    """Clients ``ids`` of ``split`` in a TFF SQLite file: {id: {feature: ndarray [n, *shape]}};
    ``shapes``: the features to keep and each one's per-example shape (TFF stores them flat)."""
    conn = _connect(path)
    ids = list(ids)
    wanted = set(ids)
    rows_of: dict = {cid: [] for cid in ids}
    try:
        _check_tff(conn, path)
        for cid, blob in _tff_rows(conn, split, ids):
            cid = cid.decode("utf-8") if isinstance(cid, bytes) else str(cid)
            if cid not in wanted:
                continue
            try:
                rows_of[cid].append(decode_tf_example(blob))
            except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
                raise DataFormatError(f"{path}: a row of client {cid!r} is not a serialized tf.train.Example "
                                      f"({type(e).__name__})") from None
        out = {}
        for cid in ids:
            examples = rows_of[cid]
            feats = {}
            for name, shape in shapes.items():
                try:
                    col = [ex[name] for ex in examples]
                    feats[name] = (np.stack(col).reshape(len(col), *shape) if col and col[0].dtype != object
                                   else np.concatenate(col) if col else np.zeros((0, *shape)))
                except (KeyError, ValueError) as e:
                    raise DataFormatError(f"{path}: client {cid!r} has no feature {name!r} of shape {list(shape)} "
                                          f"({type(e).__name__}: {e})") from None
            out[cid] = feats
        return out
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# LEAF JSON


def read_leaf_dir(directory: Path) -> dict:
    """Every client of a LEAF split directory (its ``*.json`` merged): {user: {"x": ndarray,
    "y": ndarray}}, users sorted by name."""
    files = sorted(Path(directory).glob("*.json"))
    if not files:
        raise DataUnavailableError(f"{directory} holds no *.json files (LEAF's data/<dataset>/data/{{train,test}})")
    merged: dict = {}
    for path in files:
        try:
            doc = json.loads(path.read_text())
            users = doc["user_data"]
            for user, rows in users.items():
                merged[str(user)] = {"x": np.asarray(rows["x"]), "y": np.asarray(rows["y"])}
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise DataFormatError(f"{path} is not LEAF JSON ({type(e).__name__}: {e}; expected "
                                  '{"users", "num_samples", "user_data": {user: {"x", "y"}}})') from None
    return {u: merged[u] for u in sorted(merged)}
