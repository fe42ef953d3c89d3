"""Spread a batched fit over processes: ``torchrun --nproc-per-node G -m inr fit FOLDER/ --out RUN``.

Under torchrun (environment ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) the sorted file list is split
round-robin: rank r fits files r, r + W, r + 2W, ... (:func:`shard_files`), on ``cuda:LOCAL_RANK``
when CUDA is used (one process per GPU, any number of nodes sharing one file system).  Training
needs no collective: every rank writes its signals' subfolders and a shard record into the shared
staging folder ``.<RUN>.partial``; after a barrier (gloo, so it works with or without GPUs) rank 0
merges the records into one summary and renames the folder to ``RUN``
(:func:`inr.batched.merge_run`).  If ranks ran as independent jobs instead, ``inr merge RUN`` (or
:func:`inr.batched.merge_run`) does the last step once they have all finished.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch

from . import batched
from .fitting import RunError
from .errors import InputError


def shard_files(files, rank: int, world_size: int) -> list:
    """The files rank ``rank`` of ``world_size`` fits: positions r, r + W, ... of the sorted list."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise InputError(f"need 0 <= rank < world_size, got rank {rank}, world size {world_size}")
    return sorted(files, key=str)[rank::world_size]


def dist_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None outside torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise RunError("RANK / WORLD_SIZE / LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise RunError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def rank_device(device: str, local_rank: int) -> str:
    """``cuda:LOCAL_RANK`` when CUDA is asked for or available (auto), else ``cpu``."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device if device != "auto" else "cpu"


def fit_sharded(files, cfg, out=None, group_size: int = 16, engine: str = "auto",
                timeout_minutes: float = 24 * 60) -> dict | None:
    """:func:`inr.batched.fit_many` under torchrun: this rank's share of ``files``, then a barrier
    and (rank 0) the merge.  Outside torchrun it is plain ``fit_many``.  Returns the summary on
    rank 0 (or without torchrun) and this rank's record elsewhere.

    ``out`` is required under torchrun (every rank must name the same folder)."""
    env = dist_env()
    if env is None or env[1] == 1:
        return batched.fit_many(files, cfg, out, group_size, engine)
    rank, world, local = env
    if out is None:
        raise RunError("--out is required under torchrun: every rank must write the same run folder")
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        # gloo: the barrier is the only collective and must work whether or not ranks use GPUs
        dist.init_process_group("gloo", timeout=timedelta(minutes=timeout_minutes))
        started = True
    try:
        problem = None
        if rank == 0:
            try:
                _check_fresh(out)
            except RunError as e:
                problem = e
        ok = torch.tensor([0 if problem else 1])
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)   # rank 0 has checked --out before anyone writes
        if problem is not None:
            raise problem
        if not int(ok):
            raise RunError(f"--out {out}: rejected by rank 0 (see its message)")
        from dataclasses import replace

        mine = replace(cfg, train=replace(cfg.train, device=rank_device(cfg.train.device, local)))
        part = batched.fit_many(files, mine, out, group_size, engine, shard=(rank, world), merge=False)
        dist.barrier()
        return batched.merge_run(out, world_size=world) if rank == 0 else part
    finally:
        if started:
            dist.destroy_process_group()


def _check_fresh(out) -> None:
    from pathlib import Path

    from .fitting import _check_out
    from .runs import discard_stale_staging

    out = Path(out)
    _check_out(out)
    discard_stale_staging(out)   # only a stale one of the toolkit's own; anything else is refused
