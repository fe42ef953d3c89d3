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
- The staging folder is the toolkit's own only when it holds the marker file :data:`MARKER`, written when
  the folder is created; a ``.NAME.partial`` without it (made by someone else), or one that is a symlink,
  is refused and never deleted or written into.  The marker is locked (``flock``) while a run works, so
  a second run with the same ``out`` is refused instead of deleting the first one's work.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

from . import runfiles
from .errors import InputError

CHECKPOINT = "checkpoint.pt"
MARKER = ".mulneurons-staging"   # in a staging folder the toolkit made; locked while a run works in it


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


def _refuse_locked(out: Path, stage: Path, flag: str):
    raise RunError(f"{flag} {out}: another run is building it right now (its staging folder {stage} is "
                   f"locked); wait for it or choose another {flag}")


def check_staging(out: str | os.PathLike, flag: str = "--out") -> Path:
    """``out``'s staging folder, after refusing one that is not the toolkit's own -- a symlink, a file, a
    folder without :data:`MARKER` -- or one a running run holds (its marker is locked).  A missing one is
    fine; an existing one that passes is a stale attempt the caller may resume or discard."""
    out = Path(out)
    p = staging_dir(out)
    if p.is_symlink():
        raise RunError(f"{flag} {out}: the staging folder {p} is a symlink; the toolkit never writes through "
                       f"one (remove it)")
    if not p.exists():
        return p
    if not p.is_dir():
        raise RunError(f"{flag} {out}: {p} exists and is not a folder; remove it or choose another {flag}")
    marker = p / MARKER
    if marker.is_symlink() or not marker.is_file():
        raise RunError(f"{flag} {out}: {p} exists but was not made by this toolkit (no {MARKER} in it); it is "
                       f"left alone -- remove it or choose another {flag}")
    fd = os.open(marker, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _refuse_locked(out, p, flag)
    finally:
        os.close(fd)
    return p


def discard_stale_staging(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Remove ``out``'s staging folder if it is a stale one of the toolkit's own (:func:`check_staging`
    refuses anything else); returns its path."""
    p = check_staging(out, flag)
    if p.exists():
        shutil.rmtree(p)
    return p


def shared_staging(out: str | os.PathLike, flag: str = "--out") -> Path:
    """The staging folder several processes (the ranks of a sharded run) write into: created with its
    :data:`MARKER` if missing; a symlink is refused.  No lock: the ranks share it."""
    p = staging_dir(out)
    if p.is_symlink():
        raise RunError(f"{flag} {out}: the staging folder {p} is a symlink; the toolkit never writes through "
                       f"one (remove it)")
    p.mkdir(parents=True, exist_ok=True)
    fd = os.open(p / MARKER, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    os.close(fd)
    return p


class RunFolder:
    """A run folder built under a staging name and renamed to ``out`` at the end (module docstring).

    Args:
        out: the folder to create; it must not exist.
        resume: reuse a staging folder left by an interrupted run (holding ``checkpoint.pt``); without
            it a stale staging folder of the same ``out`` (one the toolkit made, not locked by a running
            run) is discarded.
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
        self._lock_fd: int | None = None
        check_out(self.out, flag)
        self._check_staging()
        self.resuming = bool(resume and (self.path / CHECKPOINT).is_file()
                             and not (self.path / CHECKPOINT).is_symlink())

    def _check_staging(self) -> None:
        check_staging(self.out, self.flag)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def _lock(self, create: bool) -> None:
        marker = self.path / MARKER
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | ((os.O_CREAT | os.O_EXCL) if create else 0)
        fd = os.open(marker, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            _refuse_locked(self.out, self.path, self.flag)
        if create:
            os.write(fd, f"pid {os.getpid()} started {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "RunFolder":
        self._check_staging()   # again: the state may have changed since __init__
        if self.resuming:
            self._lock(create=False)
            return self
        if self.path.exists():
            self._lock(create=False)   # ours and stale (checked above); hold it while we delete it
            shutil.rmtree(self.path)
            self._unlock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.mkdir()   # exclusive: a folder that appeared meanwhile is not ours
        except FileExistsError:
            raise RunError(f"{self.flag} {self.out}: another run created {self.path} meanwhile; choose another "
                           f"{self.flag}") from None
        self._lock(create=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self.finish()
                return False
            if self.path.is_dir() and not self.path.is_symlink() and not self.checkpoint.exists():
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._unlock()
        return False

    def finish(self) -> None:
        """Drop the checkpoint and rename the staging folder to ``out`` (refusing if ``out`` appeared)."""
        if self.checkpoint.exists() and not self.keep_checkpoint:
            self.checkpoint.unlink()
        if self.out.exists() or self.out.is_symlink():
            raise RunError(f"{self.flag} {self.out}: appeared while the run was working; the results are in "
                           f"{self.path}")
        try:
            (self.path / MARKER).unlink()
        except FileNotFoundError:
            pass
        os.rename(self.path, self.out)
        self._unlock()

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
