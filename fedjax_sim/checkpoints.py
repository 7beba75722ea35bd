"""Resumable runs: checkpoints of the round loop (orbax-checkpoint) and safe interruption.

A checkpoint is a directory (``<run>/resume`` for a run, ``<run>/resume_seed<s>`` per seed when
seeds run one after another; a sweep's group of grid points trained as one program keeps its one
checkpoint in its first point's directory) holding

  state-<round>/   the algorithm state after that round (orbax, any pytree of arrays)
  progress.json    what the host knows at that round: each trial's status, rounds done, last
                   per-client scores and report, the virtual clock, timing so far, and which
                   state-<round> is current (written atomically after the state, so a crash
                   mid-save leaves the previous checkpoint usable)

Evaluations before the checkpoint round stay in metrics.jsonl; a resume drops the records after it
(written after the last checkpoint by a run that was then killed) and continues the same seeded
round keys from the restored state, so it ends bit-identical to an uninterrupted run.

`Interrupt` turns SIGINT / SIGTERM into a flag the round loop reads after each block: the run
stops there, writes a checkpoint, a partial summary (``status: "interrupted"``) and its plots,
and the command exits 130 / 143 with one line saying how to resume. A second signal while that is
written is ignored (with a note), so nothing is left half-written.
"""
from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from fedjax_sim import jsonio

PROGRESS = "progress.json"


class Interrupt:
    """The process-wide stop flag: ``signum`` of the first SIGINT/SIGTERM received, else None."""

    signum: int | None = None
    _previous: dict = {}

    @classmethod
    def requested(cls) -> bool:
        return cls.signum is not None

    @classmethod
    def exit_code(cls) -> int:
        """The shell's code for the signal: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + int(cls.signum or signal.SIGINT)

    @classmethod
    def _handler(cls, signum, frame):
        del frame
        if cls.signum is None:
            cls.signum = signum
            print(f"\nfedjax-sim: {signal.Signals(signum).name} received: stopping after the current block "
                  "and saving what it reached (a checkpoint, and a sweep's finished grid points) (signal "
                  "again to wait: nothing is cut short)", file=sys.stderr)
        else:
            print("fedjax-sim: still saving the checkpoint and results; please wait", file=sys.stderr)

    @classmethod
    def install(cls) -> None:
        """Handles SIGINT and SIGTERM (main thread only) until `uninstall`."""
        cls.signum = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                cls._previous[sig] = signal.signal(sig, cls._handler)
            except ValueError:  # not the main thread: leave the defaults
                pass

    @classmethod
    def uninstall(cls) -> None:
        for sig, handler in cls._previous.items():
            signal.signal(sig, handler)
        cls._previous = {}


def directory(out, seed: int | None = None) -> Path:
    """The checkpoint directory of a run (``seed``: one of its seeds run on its own)."""
    return Path(out) / ("resume" if seed is None else f"resume_seed{seed}")


def save(path: Path, state, progress: dict) -> None:
    """Writes ``state`` to ``path/state-<round>`` and then ``progress`` (with ``round``) to
    ``path/progress.json``, atomically; older states are removed only after that."""
    import orbax.checkpoint as ocp

    path.mkdir(parents=True, exist_ok=True)
    name = f"state-{int(progress['round'])}"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((path / name).absolute(), state, force=True)
    checkpointer.wait_until_finished()
    jsonio.write_json(path / PROGRESS, {**progress, "state": name})
    for old in path.glob("state-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load(path: Path, target) -> tuple[Any, dict]:
    """(state restored with the structure of ``target`` (abstract arrays), progress dict)."""
    import json

    import orbax.checkpoint as ocp

    progress = json.loads((path / PROGRESS).read_text())
    state = ocp.StandardCheckpointer().restore((path / progress["state"]).absolute(), target)
    return state, progress


def exists(path: Path) -> bool:
    return (Path(path) / PROGRESS).is_file()


def in_run(run_dir: Path) -> bool:
    """Whether run directory ``run_dir`` holds a checkpoint to resume (``resume/``, or one per
    seed, ``resume_seed<S>/``)."""
    run_dir = Path(run_dir)
    return any(exists(d) for d in [run_dir / "resume", *run_dir.glob("resume_seed*")])


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
