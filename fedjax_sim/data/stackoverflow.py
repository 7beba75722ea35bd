"""Stack Overflow tag prediction rows: TensorFlow Federated's bag-of-words baseline preprocessing.

TFF (``tensorflow_federated/python/simulation/baselines/stackoverflow/
tag_prediction_preprocessing.py``, ``.../datasets/stackoverflow.py``):

* the word vocabulary is the first ``data.vocab_size`` (TFF: 10,000) words of
  ``stackoverflow.word_count`` (one ``word count`` pair per line, most frequent first; TFF ships
  it as ``stackoverflow.word_count.tar.bz2``, FedJAX the plain file);
* the tag vocabulary is the ``data.tag_vocab_size`` (TFF: 500) most frequent tags of
  ``stackoverflow.tag_count`` (a JSON object tag -> count; ``stackoverflow.tag_count.tar.bz2``),
  sorted by count, ties in file order (Python's stable sort, as TFF's ``sorted``);
* a post's words are ``tokens + " " + title`` split on whitespace; out-of-vocabulary words are
  dropped (TFF's OOV bucket one-hots to zeros) and x is the bag of the rest normalized by their
  count (all zeros when none is in the vocabulary); with ``data.bow_denominator=all_words`` by
  the count of every word instead, as google-research/federated's older pipeline
  (``utils/datasets/stackoverflow_tag_prediction.py``: the mean of one-hots over V + 1 columns,
  the OOV column dropped), which Reddi et al. 2021's FedOpt experiments used;
* its tags are ``tags`` split on ``|``; out-of-vocabulary tags are dropped; y is the multi-hot
  vector over the tag vocabulary (TFF sums one-hots, so a tag repeated within a post would be a
  target of 2 there: only the loss differs, Keras' metrics cast targets to bool).

Stored sparse (a [V] vector per row would hold 10,000 floats): x [L, 2] (word id, frequency) of
the post's distinct in-vocabulary words and y [M] tag ids, padded with (0, 0) pairs and -1 to the
longest row loaded (`models.bow` and `tasks.multilabel` read them).
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np

from fedjax_sim.data.natural_files import DataFormatError
from fedjax_sim.errors import ConfigError, DataUnavailableError

WORD_COUNTS, TAG_COUNTS = "stackoverflow.word_count", "stackoverflow.tag_count"
GCS = "https://storage.googleapis.com"
VOCAB_ORIGIN = (f"{GCS}/tff-datasets-public/{WORD_COUNTS}.tar.bz2 and {GCS}/tff-datasets-public/{TAG_COUNTS}.tar.bz2 "
                f"(TFF; either the archives or the files in them; FedJAX also hosts "
                f"{GCS}/gresearch/fedjax/stackoverflow/{WORD_COUNTS})")


def check_count_files(root: Path) -> None:
    """DataUnavailableError naming every count file ``root`` lacks (as a file or a .tar.bz2)."""
    missing = [n for n in (WORD_COUNTS, TAG_COUNTS) if not (root / n).is_file() and not (root / f"{n}.tar.bz2").is_file()]
    if missing:
        raise DataUnavailableError(f"data.data_dir={root} has no {' and no '.join(f'{n} (or {n}.tar.bz2)' for n in missing)}"
                                   f", which Stack Overflow's tag prediction needs beside its SQLite files; they come "
                                   f"from {VOCAB_ORIGIN}")


def _read_text(root: Path, name: str) -> tuple[str, Path]:
    """The text of ``name`` in ``root``, or else of the member ``name`` of ``name.tar.bz2`` (the
    plain file wins when both are there)."""
    plain, archive = root / name, root / f"{name}.tar.bz2"
    if plain.is_file():
        raw, path = plain.read_bytes(), plain
    else:
        try:
            with tarfile.open(archive, "r:bz2") as tar:
                member = next((m for m in tar.getmembers() if Path(m.name).name == name and m.isfile()), None)
                if member is None:
                    raise DataUnavailableError(f"{archive} holds no file {name}")
                raw, path = tar.extractfile(member).read(), archive
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataUnavailableError(f"{archive} is not a bzip2 tar archive ({type(e).__name__}: {e})") from None
    try:
        return raw.decode("utf-8"), path
    except UnicodeDecodeError as e:
        raise DataUnavailableError(f"{path} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None


def word_vocabulary(root: Path, size: int) -> list:
    """The ``size`` most frequent words (bytes), in the file's order; a repeated word keeps its
    first place (TFF reads the file into a dict)."""
    text, path = _read_text(root, WORD_COUNTS)
    words: dict = {}
    for number, line in enumerate(text.splitlines(), 1):
        if len(words) == size:
            break
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataUnavailableError(f"{path} line {number} is {line[:60]!r}, not 'word count'")
        words.setdefault(parts[0].encode("utf-8"), number)
    if len(words) < size:
        raise ConfigError("data.vocab_size", size, f"at most {len(words)} (the words in {path})")
    return list(words)


def tag_vocabulary(root: Path, size: int) -> list:
    """The ``size`` most frequent tags (bytes), ties in the file's order."""
    text, path = _read_text(root, TAG_COUNTS)
    try:
        counts = json.loads(text)
        if not isinstance(counts, dict) or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and np.isfinite(c) for c in counts.values()):
            raise TypeError("expected {tag: count, ...} with finite numbers")
    except (json.JSONDecodeError, TypeError) as e:
        raise DataUnavailableError(f"{path} is not a JSON object of tag counts ({type(e).__name__}: {e})") from None
    ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
    if len(ranked) < size:
        raise ConfigError("data.tag_vocab_size", size, f"at most {len(ranked)} (the tags in {path})")
    return [str(tag).encode("utf-8") for tag, _ in ranked[:size]]


def bag_of_words(text: bytes, vocab: dict, all_words: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ids [k] int, frequencies [k] float32) of the distinct in-vocabulary words of ``text``,
    each count divided by the in-vocabulary words' (``all_words``: by every word's)."""
    words = text.split()
    ids = [vocab[w] for w in words if w in vocab]
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    uniq, counts = np.unique(np.asarray(ids), return_counts=True)
    return uniq, (counts / (len(words) if all_words else counts.sum())).astype(np.float32)


def tag_ids(tags: bytes, vocab: dict) -> np.ndarray:
    """[m] the distinct in-vocabulary tag ids of a ``|``-separated tag string."""
    return np.unique(np.asarray([vocab[t] for t in tags.split(b"|") if t in vocab], np.int64))


def tag_rows(root: Path, vocab_size: int, tag_vocab_size: int, denominator: str = "in_vocab") -> Callable:
    """The row function of `natural.load_natural` for Stack Overflow: (raw features, format,
    where, client) -> (x [n, L, 2] float32 (word id, frequency) pairs, y [n, M] int32 tag ids,
    -1 padded), L and M this client's longest (at least 1); ``denominator``: in_vocab | all_words
    (`bag_of_words`)."""
    check_count_files(root)
    words = {w: i for i, w in enumerate(word_vocabulary(root, vocab_size))}
    tags = {t: i for i, t in enumerate(tag_vocabulary(root, tag_vocab_size))}

    def rows(feats, fmt, where, client):
        del fmt
        cols = {}
        for key in ("tokens", "title", "tags"):
            if key not in feats:
                raise DataFormatError(f"{where}: client {client!r} has no feature {key!r} (it has {sorted(feats)})")
            cols[key] = np.asarray(feats[key]).reshape(-1)
            if len(cols[key]) and not isinstance(cols[key][0], bytes):
                raise DataFormatError(f"{where}: feature {key!r} of client {client!r} holds "
                                      f"{type(cols[key][0]).__name__}, not byte strings")
        bags = [bag_of_words(t + b" " + s, words, denominator == "all_words")
                for t, s in zip(cols["tokens"], cols["title"])]
        labels = [tag_ids(t, tags) for t in cols["tags"]]
        n = len(bags)
        x = np.zeros((n, max([len(i) for i, _ in bags] + [1]), 2), np.float32)
        y = np.full((n, max([len(t) for t in labels] + [1])), -1, np.int32)
        for r, ((ids, freq), t) in enumerate(zip(bags, labels)):
            x[r, :len(ids), 0], x[r, :len(ids), 1], y[r, :len(t)] = ids, freq, t
        return x, y

    return rows
