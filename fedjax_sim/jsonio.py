"""Strict JSON for every file a run writes: no NaN or Infinity (strict readers such as
``JSON.parse`` or jq reject them), and writes that never leave a half-written file (JSON, text
and figures).

A non-finite float becomes null, the value JSON has for "no number": a metric of a diverged
model, a rate over no rows. Files are written to a temporary name beside the target and renamed
over it (atomic on POSIX), so an interrupted write keeps the previous content.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf; numpy scalars included) replaced by None,
    through dicts, lists and tuples."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """`json.dumps` of `strict` (``obj``), refusing anything still non-finite."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def _beside(path: Path) -> Path:
    """The temporary name an atomic write of ``path`` uses (hidden, in the same directory)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_text(path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    tmp = _beside(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path, obj: Any, indent: int | None = 2) -> None:
    """Strict JSON (`dumps`) of ``obj`` written atomically to ``path``."""
    write_text(path, dumps(obj, indent=indent))


def write_figure(fig, path, **kwargs) -> None:
    """``fig.savefig(path, **kwargs)`` atomically (a temporary file beside it, then a rename), in
    the format ``path``'s suffix names."""
    path = Path(path)
    tmp = _beside(path)
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or None, **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
