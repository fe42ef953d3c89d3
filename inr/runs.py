"""One way for every tool to create a run folder without ever damaging an existing one.

``with RunFolder(out) as run: ... write files into run.path ...``

- The output location is checked when the :class:`RunFolder` is made, before any work: an existing
  ``out`` (file or folder, empty or not) is refused, as is an ancestor that is a file or not writable.
- Files are written into a hidden staging folder ``.NAME.partial`` beside ``out`` (through the atomic
  helpers of :mod:`inr.runfiles`: :meth:`RunFolder.write_json`, :meth:`RunFolder.save_torch`).
- On success the staging folder is renamed to ``out``, only if ``out`` still does not exist; an existing
  folder is never replaced, written into or deleted.
- On failure or interruption the staging folder is removed, except when it holds ``checkpoint.pt``
  (then it is kept so that ``resume=True`` can continue it).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from . import runfiles
from .errors import InputError

CHECKPOINT = "checkpoint.pt"


class RunError(InputError):
    """A bad fitting option or output location; the message names it."""


def staging_dir(out: str | os.PathLike) -> Path:
    """The hidden folder a run is assembled in (kept after an interruption only when it holds a checkpoint)."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def check_out(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Reject an output location we cannot use, before any work is done."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise RunError(f"{flag} {out}: already exists; choose a new run folder (existing folders are never "
                       f"replaced or written into)")
    anc = out.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise RunError(f"{flag} {out}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise RunError(f"{flag} {out}: {anc} is not writable")
    return out


class RunFolder:
    """A run folder built under a staging name and renamed to ``out`` at the end (module docstring).

    Args:
        out: the folder to create; it must not exist.
        resume: reuse a staging folder left by an interrupted run (holding ``checkpoint.pt``); without
            it a stale staging folder of the same ``out`` is discarded.
        flag: the option name used in error messages.
        keep_checkpoint: leave ``checkpoint.pt`` in the finished folder (tools that can extend a finished
            run); by default it is deleted before the rename.
    """

    def __init__(self, out: str | os.PathLike, *, resume: bool = False, flag: str = "--out",
                 keep_checkpoint: bool = False):
        self.out = Path(out)
        self.keep_checkpoint = keep_checkpoint
        self.path = staging_dir(self.out)
        self.resume = resume
        self.flag = flag
        self.resuming = bool(resume and (self.path / CHECKPOINT).is_file())
        check_out(self.out, flag)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def __enter__(self) -> "RunFolder":
        if not self.resuming and self.path.exists():
            shutil.rmtree(self.path)  # ours: a stale attempt at the same folder that is not being resumed
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish()
            return False
        if self.path.exists() and not self.checkpoint.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        return False

    def finish(self) -> None:
        """Drop the checkpoint and rename the staging folder to ``out`` (refusing if ``out`` appeared)."""
        if self.checkpoint.exists() and not self.keep_checkpoint:
            self.checkpoint.unlink()
        if self.out.exists() or self.out.is_symlink():
            raise RunError(f"{self.flag} {self.out}: appeared while the run was working; the results are in "
                           f"{self.path}")
        os.rename(self.path, self.out)

    # atomic writes into the staging folder
    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj) -> Path:
        runfiles.write_json(obj, self.path / name)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        runfiles.write_text(self.path / name, text)
        return self.path / name

    def save_torch(self, name: str, obj) -> Path:
        runfiles.save_torch(obj, self.path / name)
        return self.path / name
