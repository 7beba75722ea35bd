"""Stack Overflow tag prediction: FedJAX and TensorFlow Federated SQLite files (written by
test_natural's independent writers) with TFF's word and tag counts, rows checked against a plain
Python transcription of TFF's ``to_ids`` (dense bag of words, multi-hot tags), the sparse
logistic regression against the dense one, the multi-label metrics against Keras' definitions,
a run, and bad input."""
from __future__ import annotations

import io
import json
import re
import sqlite3
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_config_error
from test_natural import write_fedjax, write_tff

from fedjax_sim import cli
from fedjax_sim.config import DataConfig
from fedjax_sim.data.natural import load_natural
from fedjax_sim.errors import ConfigError, DataUnavailableError
from fedjax_sim.models.bow import bow_logreg
from fedjax_sim.tasks import divide_metrics, multilabel

WORDS = [f"w{i}" for i in range(40)]
TAGS = ["python", "java", "c#", "sql", "css", "git", "android", "vb . net"]
TAG_COUNTS = {"java": 90, "python": 90, "sql": 70, "css": 60, "c#": 95, "git": 10, "android": 40, "vb . net": 5}
RANKED_TAGS = ["c#", "java", "python", "sql", "css", "android", "git", "vb . net"]  # count, ties in file order


def _posts(rng, n: int) -> dict:
    """n posts with the six features TFF and FedJAX store (bytes, score int64); words include
    out-of-vocabulary ones, repeats, and a post with none in the vocabulary."""
    pick = lambda pool, k: " ".join(rng.choice(pool, k))  # noqa: E731
    tokens = [pick(WORDS[:30] + ["<URL>", "zzz"], int(rng.integers(1, 9))) for _ in range(n)]
    titles = [pick(WORDS, int(rng.integers(1, 4))) for _ in range(n)]
    if n > 2:
        tokens[1], titles[1] = "zzz <URL>", "zzz"  # no in-vocabulary word: an all-zero bag
        tokens[2] = "w1 w1 w1  w2\tw1"  # repeats and mixed whitespace
    tags = ["|".join(rng.choice(TAGS + ["rare-tag"], int(rng.integers(1, 4)), replace=False)) for _ in range(n)]
    obj = lambda v: np.array([s.encode() for s in v], dtype=object)  # noqa: E731
    return {"creation_date": obj(["2017-03-01 10:00:00.1 UTC"] * n), "score": rng.integers(-3, 50, n).astype(np.int64),
            "tags": obj(tags), "title": obj(titles), "tokens": obj(tokens), "type": obj(["question", "answer"] * n)[:n]}


def _users(seed=0, sizes=(6, 3, 9, 4)) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    ids = [f"{u:08d}" for u in rng.choice(10**6, len(sizes), replace=False)]
    train = {c: _posts(rng, n) for c, n in zip(ids, sizes)}
    test = {c: _posts(rng, 3) for c in ids[:-1]}  # the last user posted nothing after 2018
    return train, test


def _write_counts(root: Path, archive: bool = False) -> None:
    files = {"stackoverflow.word_count": "".join(f"{w} {900 - i}\n" for i, w in enumerate(WORDS)),
             "stackoverflow.tag_count": json.dumps(TAG_COUNTS)}
    for name, text in files.items():
        if not archive:
            (root / name).write_text(text)
            continue
        with tarfile.open(root / f"{name}.tar.bz2", "w:bz2") as tar:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _reference_rows(posts: dict, vocab: int, tags: int, all_words: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """TFF's tag_prediction_preprocessing.build_to_ids_fn in plain Python: (dense [n, V]
    normalized bags of words of tokens + " " + title, [n, T] multi-hot tags); out-of-vocabulary
    words and tags dropped. ``all_words``: the older pipeline's mean of one-hots over V + 1
    columns, the OOV column dropped."""
    words = {w.encode(): i for i, w in enumerate(WORDS[:vocab])}
    tag_ids = {t.encode(): i for i, t in enumerate(RANKED_TAGS[:tags])}
    xs, ys = np.zeros((len(posts["tokens"]), vocab)), np.zeros((len(posts["tokens"]), tags))
    for r, (tok, title, tg) in enumerate(zip(posts["tokens"], posts["title"], posts["tags"])):
        for w in (tok + b" " + title).split():
            if w in words:
                xs[r, words[w]] += 1
        xs[r] /= len((tok + b" " + title).split()) if all_words else max(xs[r].sum(), 1)
        for t in tg.split(b"|"):
            if t in tag_ids:
                ys[r, tag_ids[t]] = 1
    return xs, ys


def _dense(x: np.ndarray, vocab: int) -> np.ndarray:
    """The sparse rows [n, L, 2] as dense [n, V] bags."""
    out = np.zeros((len(x), vocab))
    for r, row in enumerate(x):
        for i, f in row:
            out[r, int(i)] += f
    return out


def _multi_hot(y: np.ndarray, tags: int) -> np.ndarray:
    out = np.zeros((len(y), tags))
    for r, row in enumerate(y):
        out[r, row[row >= 0]] = 1
    return out


def _cfg(root: Path, clients=3, vocab=30, tags=6, **kw) -> DataConfig:
    return DataConfig(dataset="stackoverflow", num_clients=clients, data_dir=str(root), vocab_size=vocab,
                      tag_vocab_size=tags, **kw)


def _check_rows(src, train: dict, test: dict, order: list, vocab: int, tags: int, all_words: bool = False) -> None:
    assert src.num_classes == tags and src.target_kind == "multilabel"
    assert src.x_pool.shape[-1] == 2 and src.x_pool.shape[1:] == src.x_test.shape[1:]
    for k, cid in enumerate(order):
        for x, y, ids, posts in ((src.x_pool, src.y_pool, src.client_ids, train.get(cid)),
                                 (src.x_test, src.y_test, src.test_client_ids, test.get(cid))):
            rows = ids == k
            if posts is None:
                assert not rows.any()
                continue
            bow, hot = _reference_rows(posts, vocab, tags, all_words)
            np.testing.assert_allclose(_dense(x[rows], vocab), bow, atol=1e-6)
            np.testing.assert_array_equal(_multi_hot(y[rows], tags), hot)


@pytest.mark.parametrize("fmt", ["fedjax", "fedjax_all_words", "tff", "tff_indexed"])
def test_stackoverflow_rows_match_tffs_bag_of_words_and_tags(fmt, tmp_path):
    train, test = _users()
    if fmt.startswith("fedjax"):
        write_fedjax(tmp_path / "stackoverflow_train.sqlite", train)
        write_fedjax(tmp_path / "stackoverflow_test.sqlite", test)
        order = list(train)[:3]
    else:
        write_tff(tmp_path / "stackoverflow.sqlite", {"train": train, "heldout": {"00000000": train[list(train)[0]]},
                                                      "test": test})
        if fmt == "tff_indexed":  # the per-client query path
            conn = sqlite3.connect(tmp_path / "stackoverflow.sqlite")
            conn.execute("CREATE INDEX by_client ON examples (client_id, split_name)")
            conn.commit()
            conn.close()
        order = sorted(train)[:3]
    _write_counts(tmp_path, archive=fmt == "tff")
    all_words = fmt.endswith("all_words")
    src = load_natural("stackoverflow", _cfg(tmp_path, bow_denominator="all_words" if all_words else "in_vocab"))
    _check_rows(src, train, test, order, 30, 6, all_words)
    # the all-zero bag of a post without in-vocabulary words, and the -1 padding of y
    assert np.all(src.x_pool[1] == 0)
    assert (src.y_pool == -1).any() and src.y_pool.min() == -1


def test_tag_vocabulary_ranks_by_count_with_ties_in_file_order(tmp_path):
    from fedjax_sim.data.stackoverflow import tag_vocabulary, word_vocabulary

    _write_counts(tmp_path)
    assert tag_vocabulary(tmp_path, 8) == [t.encode() for t in RANKED_TAGS]
    assert word_vocabulary(tmp_path, 3) == [b"w0", b"w1", b"w2"]
    with pytest.raises(ConfigError, match="data.tag_vocab_size"):
        tag_vocabulary(tmp_path, 9)
    with pytest.raises(ConfigError, match="data.vocab_size"):
        word_vocabulary(tmp_path, 41)


def test_sparse_logistic_regression_equals_the_dense_layer():
    """x [B, L, 2] read as sum_l f_l W[id_l] + b is the dense [B, V] bag times the kernel, in value
    and in gradient."""
    vocab, tags = 12, 5
    model = bow_logreg((4, 2), tags, vocab)
    params = model.init(jax.random.PRNGKey(0))
    assert params["body"] == {} and params["head"]["kernel"].shape == (vocab, tags)
    rng = np.random.default_rng(1)
    ids = np.stack([rng.choice(vocab, 4, replace=False) for _ in range(6)])
    freq = rng.dirichlet(np.ones(4), 6).astype(np.float32)
    freq[0, 2:] = 0  # padding pairs
    x = jnp.asarray(np.stack([ids, freq], -1), jnp.float32)
    dense = jnp.asarray(_dense(np.asarray(x), vocab), jnp.float32)

    def as_dense(p):
        return dense @ p["head"]["kernel"] + p["head"]["bias"]

    np.testing.assert_allclose(model.apply(params, x), as_dense(params), rtol=1e-5, atol=1e-6)
    g_sparse = jax.grad(lambda p: jnp.sum(jnp.sin(model.apply(p, x))))(params)
    g_dense = jax.grad(lambda p: jnp.sum(jnp.sin(as_dense(p))))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_sparse, g_dense)


def test_multilabel_metrics_are_keras_precision_and_recall_at_5():
    """Loss: mean over labels of binary cross-entropy; precision at probability 0.5; Keras'
    Recall(top_k=5): a true label counts when it is among the row's top 5, whatever its
    probability (Keras' threshold is -inf once top_k is set); both micro-averaged (sums over rows
    and labels), padding rows ignored."""
    tags = 8
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (7, tags)).astype(np.float32)
    y = np.full((7, 3), -1, np.int32)
    for r in range(7):
        k = rng.integers(0, 4)
        y[r, :k] = rng.choice(tags, k, replace=False)
    mask = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    task = multilabel(lambda p, x: x, tags)
    sums = task.metrics(None, {"x": jnp.asarray(logits), "y": jnp.asarray(y), "mask": jnp.asarray(mask)})
    t, p = _multi_hot(y, tags)[mask], 1 / (1 + np.exp(-logits[mask].astype(np.float64)))
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(-1)
    top5 = np.zeros_like(t)
    for r, row in enumerate(logits[mask]):
        top5[r, np.argsort(-row, kind="stable")[:5]] = 1
    got = divide_metrics(sums)
    np.testing.assert_allclose(got["loss"], bce.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["precision"], (t * (p > 0.5)).sum() / (p > 0.5).sum(), rtol=1e-6)
    np.testing.assert_allclose(got["recall_at_5"], (t * top5).sum() / t.sum(), rtol=1e-6)
    assert (t * top5 * (p <= 0.5)).sum() > 0  # the case where a 0.5 threshold would differ occurs
    loss, _ = task.loss(None, {"x": jnp.asarray(logits), "y": jnp.asarray(y), "mask": jnp.asarray(mask)}, None)
    np.testing.assert_allclose(loss, bce.mean(), rtol=1e-5)


def _write_users(root: Path, seed=0) -> None:
    train, test = _users(seed)
    write_fedjax(root / "stackoverflow_train.sqlite", train)
    write_fedjax(root / "stackoverflow_test.sqlite", test)
    _write_counts(root)


def test_stackoverflow_run_trains_the_tag_predictor(tmp_path, capsys):
    _write_users(tmp_path)
    out = tmp_path / "run"
    rc = cli.main(["run", "--algorithm", "fedavg", "--dataset", "stackoverflow", "--clients", "4", "--rounds", "3",
                   "--set", f"data.data_dir={tmp_path}", "--set", "data.vocab_size=40", "--set", "data.tag_vocab_size=8",
                   "--set", "eval_every=1", "--set", "local.lr=2", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert (resolved["model"], resolved["task"]) == ("bow_logreg", "multilabel")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"global_precision", "global_recall_at_5", "personalized_precision", "pooled_recall_at_5"} <= set(lines[-1])
    assert lines[-1]["global_loss"] < lines[0]["global_loss"]


@pytest.mark.parametrize("setting,field", [
    ("model.name=mlp", "model.name"), ("task.name=classification", "task.name"),
    ("data.vocab_size=41", "data.vocab_size"), ("data.tag_vocab_size=0", "data.tag_vocab_size")])
def test_stackoverflow_refuses_other_models_tasks_and_vocabularies(setting, field, tmp_path, capsys):
    _write_users(tmp_path)
    rc = cli.main(["run", "--dataset", "stackoverflow", "--clients", "2", "--rounds", "1", "--set", "data.vocab_size=40",
                   "--set", "data.tag_vocab_size=8", "--set", setting, "--set", f"data.data_dir={tmp_path}",
                   "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, field, setting.split("=")[1])
    assert not (tmp_path / "run").exists()


def test_bow_logreg_refuses_image_data(tmp_path, capsys):
    rc = cli.main(["run", "--rounds", "1", "--set", "model.name=bow_logreg", "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, "model.name", "bow_logreg")


@pytest.mark.parametrize("case", ["no_counts", "bad_archive", "bad_tag_json", "bad_word_line", "int_tokens",
                                  "latin1_words", "nan_tag", "no_test_rows"])
def test_missing_or_damaged_vocabulary_files_exit_2_naming_them(case, tmp_path, capsys):
    _write_users(tmp_path)
    expect = {"no_counts": "stackoverflow.word_count (or stackoverflow.word_count.tar.bz2) and no "
                           "stackoverflow.tag_count", "bad_archive": "stackoverflow.word_count.tar.bz2",
              "bad_tag_json": "stackoverflow.tag_count", "bad_word_line": "line 3",
              "int_tokens": "'tokens'", "latin1_words": "byte 3", "nan_tag": "finite",
              "no_test_rows": "test rows"}[case]
    if case == "no_counts":
        (tmp_path / "stackoverflow.tag_count").unlink()
    if case in ("no_counts", "bad_archive"):
        (tmp_path / "stackoverflow.word_count").unlink()
    if case == "latin1_words":
        (tmp_path / "stackoverflow.word_count").write_bytes(b"caf\xe9 99\n" + (tmp_path / "stackoverflow.word_count").read_bytes())
    if case == "nan_tag":
        (tmp_path / "stackoverflow.tag_count").write_text('{"python": 3, "java": NaN}')
    if case == "no_test_rows":  # a test file holding none of the chosen users
        (tmp_path / "stackoverflow_test.sqlite").unlink()
        write_fedjax(tmp_path / "stackoverflow_test.sqlite", {"99999999": _posts(np.random.default_rng(0), 2)})
    if case == "bad_archive":
        (tmp_path / "stackoverflow.word_count.tar.bz2").write_bytes(b"not bzip2")
    if case == "bad_tag_json":
        (tmp_path / "stackoverflow.tag_count").write_text('["python", "java"]')
    if case == "bad_word_line":
        (tmp_path / "stackoverflow.word_count").write_text("w0 9\nw1 8\nw2\n")
    if case == "int_tokens":
        train, _ = _users()
        first = next(iter(train))
        train[first]["tokens"] = np.arange(len(train[first]["tokens"]), dtype=np.int64)
        (tmp_path / "stackoverflow_train.sqlite").unlink()
        write_fedjax(tmp_path / "stackoverflow_train.sqlite", train)
    with pytest.raises((DataUnavailableError, ConfigError), match=re.escape(expect)):
        load_natural("stackoverflow", _cfg(tmp_path, vocab=3, tags=2))
    rc = cli.main(["run", "--dataset", "stackoverflow", "--clients", "2", "--rounds", "1", "--set", "data.vocab_size=3",
                   "--set", "data.tag_vocab_size=2", "--set", f"data.data_dir={tmp_path}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and len(err.strip().splitlines()) == 1, err


def test_max_examples_keeps_each_clients_first_training_rows(tmp_path):
    """data.max_examples keeps a client's first N training rows (FedOpt's take(N)), with narrower
    padding when they allow; test rows stay whole."""
    _write_users(tmp_path)
    full = load_natural("stackoverflow", _cfg(tmp_path, clients=4))
    capped = load_natural("stackoverflow", _cfg(tmp_path, clients=4, max_examples=4))
    for k in range(4):
        mine, all_rows = _dense(capped.x_pool[capped.client_ids == k], 30), _dense(full.x_pool[full.client_ids == k], 30)
        np.testing.assert_array_equal(mine, all_rows[:4])
        np.testing.assert_array_equal(capped.y_pool[capped.client_ids == k], full.y_pool[full.client_ids == k][:4])
    np.testing.assert_array_equal(_dense(capped.x_test, 30), _dense(full.x_test, 30))
    assert capped.x_pool.shape[1] <= full.x_pool.shape[1]


@pytest.mark.parametrize("args,value", [(["--set", "data.max_examples=5"], "5"),
                                        (["--dataset", "stackoverflow", "--set", "data.max_examples=-1"], "-1")])
def test_bad_max_examples_exits_2(args, value, tmp_path, capsys):
    rc = cli.main(["run", "--rounds", "1", *args, "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, "data.max_examples", value)


def test_padded_data_that_cannot_fit_memory_exits_2_before_allocating(tmp_path, capsys, monkeypatch):
    import psutil

    _write_users(tmp_path)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("vm", (), {"available": 100})())
    rc = cli.main(["run", "--dataset", "stackoverflow", "--clients", "4", "--rounds", "1", "--set", "data.vocab_size=40",
                   "--set", "data.tag_vocab_size=8", "--set", f"data.data_dir={tmp_path}", "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, "data.num_clients", "4")
    assert not (tmp_path / "run").exists()


def test_tff_stackoverflow_lr_config_runs_on_files_in_its_format(tmp_path, capsys):
    """experiments/tff/stackoverflow_lr.json is a valid run config (a few users, one round; the
    vocabularies of the generated count files)."""
    _write_users(tmp_path)
    path = Path(__file__).resolve().parents[1] / "experiments" / "tff" / "stackoverflow_lr.json"
    out = tmp_path / "run"
    rc = cli.main(["run", "--config", str(path), "--rounds", "1", "--clients", "3", "--cohort", "2", "--no-progress",
                   "--set", f"data.data_dir={tmp_path}", "--set", "data.vocab_size=40", "--set", "data.tag_vocab_size=8",
                   "--set", "eval_every=1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    expected = json.loads(path.read_text())
    assert cfg["local"] == {**cfg["local"], **expected["local"]} and cfg["data"]["max_examples"] == 1000
    assert cfg["server"] == {**cfg["server"], **expected["server"]}


def test_tff_fedadagrad_config_is_the_fedavg_config_with_fedopts_server():
    """experiments/tff/stackoverflow_lr_fedadagrad.json: valid, its server optimizer builds, and
    everything but the server equals the FedAvg config that runs above."""
    from fedjax_sim import config as config_lib
    from fedjax_sim.core.optim import make_optimizer

    folder = Path(__file__).resolve().parents[1] / "experiments" / "tff"
    raw = config_lib.read_config_file(folder / "stackoverflow_lr_fedadagrad.json")
    cfg = config_lib.apply_dict(config_lib.Config(), raw)
    config_lib.validate(cfg)
    spec = make_optimizer(cfg.server.optimizer, cfg.server.lr, args=cfg.server.optimizer_args, field="server",
                          params_example={"w": np.zeros(2, np.float32)})
    assert spec.name == "fedadagrad" and spec.hyperparams["eps"] == 0.01
    base = config_lib.read_config_file(folder / "stackoverflow_lr.json")
    assert {k: v for k, v in raw.items() if k != "server"} == {k: v for k, v in base.items() if k != "server"}


def test_a_tff_file_without_its_test_split_exits_2(tmp_path, capsys):
    train, _ = _users()
    write_tff(tmp_path / "stackoverflow.sqlite", {"train": train})
    _write_counts(tmp_path)
    rc = cli.main(["run", "--dataset", "stackoverflow", "--clients", "2", "--rounds", "1", "--set", "data.vocab_size=40",
                   "--set", "data.tag_vocab_size=8", "--set", f"data.data_dir={tmp_path}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "no split 'test'" in err and len(err.strip().splitlines()) == 1, err


def test_vocabularies_repeat_words_once_and_refuse_other_datasets(tmp_path, capsys):
    from fedjax_sim.data.stackoverflow import word_vocabulary

    (tmp_path / "stackoverflow.word_count").write_text("a 9\nb 8\na 7\nc 6\n")
    assert word_vocabulary(tmp_path, 3) == [b"a", b"b", b"c"]  # TFF's dict keeps one 'a'
    rc = cli.main(["run", "--rounds", "1", "--set", "data.vocab_size=50", "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, "data.vocab_size", "50")


@pytest.mark.parametrize("algorithm,field,value", [("fedper", "algorithm", "fedper"),
                                                   ("fedadt", "task.name", "multilabel")])
def test_algorithms_that_cannot_read_label_sets_refuse_them(algorithm, field, value, tmp_path, capsys):
    """Body/head algorithms on the one-layer model, FedADT's softmax distillation on sigmoid tags."""
    _write_users(tmp_path)
    rc = cli.main(["run", "--algorithm", algorithm, "--dataset", "stackoverflow", "--clients", "2", "--rounds", "1",
                   "--set", "data.vocab_size=40", "--set", "data.tag_vocab_size=8", "--set", f"data.data_dir={tmp_path}",
                   "--set", "data.proxy_fraction=0.2", "--out", str(tmp_path / "run")])
    assert_config_error(capsys, rc, field, value)


def test_per_client_recall_is_undefined_where_a_client_has_no_true_tag():
    """A client whose test posts carry no in-vocabulary tag has no recall (NaN, null in the
    summary), and the personalized mean is over the clients that have one."""
    from fedjax_sim.core.evaluate import evaluate_clients

    task = multilabel(lambda p, x: x, 4)
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 4)), jnp.float32)
    y = jnp.asarray([[[-1, -1]] * 3, [[0, -1], [2, 3], [1, -1]]], jnp.int32)
    out = evaluate_clients(task.metrics, None, {"x": logits, "y": y}, jnp.asarray([3, 3]), False, "recall_at_5")
    per_client = np.asarray(out["personalized_recall_at_5_per_client"])
    assert np.isnan(per_client[0]) and per_client[1] == 1.0  # 4 tags: every true tag is in the top 5
    assert float(out["personalized_recall_at_5"]) == 1.0
