"""Fit many signals in one process: one model per signal, trained together with stacked weights.

``fit_many(files, model="siren", ...)`` loads every file, groups the signals by kind, grid shape and
channel count, cuts each group into chunks of at most ``group_size`` signals, and trains each chunk
as one :class:`StackedINR`: the chunk's N models have their parameters stacked along a new leading
axis and run with ``torch.func.vmap`` over ``functional_call`` (LRNN bodies: one wide fused layer), so
one optimizer step is a handful of batched matrix products instead of N small ones; or, the CPU
default, as a :class:`LoopINR` that runs the N models one after another inside each step, which
keeps every tensor cache-sized (on this project's CPU the stacked products ran up to ~1.8x slower
than the loop).  ``engine`` picks; both give the same results.  The loss is the *sum* of the per-signal MSEs,
so each model receives exactly the gradient it would get alone, and Adam (element-wise) on a
stacked tensor is Adam on each slice.

Same seed, same result: model i is built right after ``seed_everything(seed_i)`` (exactly as
a single :func:`inr.fitting.fit` does) and its random point sampler is a private generator started
from the global state at that moment, so signal i gets the init and the point stream it would get
alone; results agree with one-at-a-time fits up to float rounding.  Exceptions: the wall budget
(``seconds`` per signal, so ``N x seconds`` for a chunk of N) and the divergence guard act on the
whole chunk (a non-finite loss in one model restores and slows down every model of its chunk).

Run folder (``out``): one subfolder per signal with the files of a single fit
(reconstruction, error map, metrics.json, history.csv, curves.png, model.pt, config.json), plus
``summary.json``, ``summary.md`` and ``summary.csv``.  In one process it is an
:class:`inr.runs.RunFolder` (``out`` checked before any work, assembled under ``.<out>.partial``,
renamed when complete, removed if the run fails); under torchrun :mod:`inr.shard` shares that staging
folder between the ranks and rank 0 renames it.  Model options are validated as for a single fit
(the family's spec, :class:`inr.models.ModelConfig`).

Time to target: a batched fit evaluates each whole signal only after the last step, so
``time_to_target`` (whole signal, the headline as in a single fit) holds the final step for the targets
the final model reaches; ``time_to_target_batch`` is the first crossing by the training batches.
A file that cannot be loaded, or a chunk whose training fails, is reported in the summary and
skipped; the others finish.

Memory: a stacked step holds activations for ``group_size x batch`` points, a loop step for one
model's ``batch`` points at a time; prediction runs per signal in chunks of
:data:`inr.fitting.PREDICT_CHUNK` points.  Device-agnostic: the same code runs on CUDA.
"""
from __future__ import annotations

import copy
import math
import os
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import fitting as F
from . import runfiles
from .runs import MARKER, discard_stale_staging, shared_staging
from .schema import Field, SchemaError, check, read_json
from .runfiles import versions, write_json
from .errors import InputError
from .layers.lrnn import LRNNLayer, lrnn_product
from .metrics import psnr_from_mse
from .runs import RunFolder, check_out, staging_dir
from .models import count_params
from .signals import AUDIO_SUFFIXES, IMAGE_SUFFIXES, Signal, SignalError, load
from .train import DivergenceError, FitResult, TrainConfig, fit, resolve_device, seed_everything

SUFFIXES = IMAGE_SUFFIXES | AUDIO_SUFFIXES
SUMMARY_FILES = ("summary.json", "summary.md", "summary.csv")


class StackedINR(nn.Module):
    """N same-architecture models as one module: every parameter and buffer gets a leading axis of N.

    ``forward(x)`` takes ``(N, B, d)`` (each model its own points) or ``(B, d)`` (the same points for
    every model) and returns ``(N, B, out)``.  :meth:`state_for` gives model i's state dict back.
    """

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        if not nets:
            raise ValueError("StackedINR needs at least one model")
        params, buffers = stack_module_state(nets)
        self.n = len(nets)
        self._pnames, self._bnames = list(params), list(buffers)
        for k, v in params.items():
            self.register_parameter(_attr(k), nn.Parameter(v.detach().clone()))
        for k, v in buffers.items():
            self.register_buffer(_attr(k), v.detach().clone())
        # A shape-only template; a list keeps it out of this module's parameters and state dict.
        self._template = [copy.deepcopy(nets[0]).to("meta")]
        # LRNN bodies run as one wide layer through the fused ProductFn (vmap would fall back to
        # the plain graph, which keeps m times the activations).
        self.fused = _fusable_lrnn(nets[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = {k: getattr(self, _attr(k)) for k in self._pnames}
        b = {k: getattr(self, _attr(k)) for k in self._bnames}
        base = self._template[0]
        if self.fused:
            return _lrnn_stacked_forward(base, p, x)

        def one(p, b, x):
            return functional_call(base, (p, b), (x,))

        return vmap(one, in_dims=(0, 0, 0 if x.dim() == 3 else None))(p, b, x)

    def state_for(self, i: int) -> dict:
        return {k: getattr(self, _attr(k))[i].detach() for k in self._pnames + self._bnames}


class LoopINR(nn.Module):
    """The same interface as :class:`StackedINR` over the models themselves, run one after another
    inside each step (one optimizer for all).  Small per-model tensors stay in cache: on the CPU
    this beats stacked batched products (measured ~1.8x at 4096 points x 256 hidden, 16 models).
    In :func:`fit_group` each model's backward runs right after its forward, so only one model's
    activations are held at a time (memory as for one signal, whatever the group size)."""

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.n = len(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x[i] if x.dim() == 3 else x) for i, net in enumerate(self.nets)])

    def state_for(self, i: int) -> dict:
        return {k: v.detach() for k, v in self.nets[i].state_dict().items()}


ENGINES = ("auto", "stacked", "loop")


def pick_engine(engine: str, device: torch.device) -> str:
    """``auto``: stacked weights on CUDA (few large kernels), a loop on the CPU (cache-sized work)."""
    if engine not in ENGINES:
        raise F.RunError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        return "stacked" if device.type == "cuda" else "loop"
    return engine


def _attr(name: str) -> str:
    return name.replace(".", "__")


def _fusable_lrnn(net: nn.Module) -> bool:
    body, head = getattr(net, "body", None), getattr(net, "head", None)
    return (isinstance(body, nn.Sequential) and len(body) > 0 and isinstance(head, nn.Linear)
            and not getattr(net, "complex_out", False)
            and all(isinstance(m, LRNNLayer) and m.memory_efficient for m in body))


def _lrnn_stacked_forward(base: nn.Module, p: dict, x: torch.Tensor) -> torch.Tensor:
    """N stacked LRNN INRs on ``x`` ((N, B, d) or (B, d)) -> (N, B, out).

    Model n's rank-r layer is rows n*r ... n*r + r - 1 of one layer of rank N*r, so a single
    :class:`ProductFn` call evaluates every model's components with the fused, recomputing backward.
    """
    N = p["head.weight"].shape[0]
    h = x if x.dim() == 3 else x.expand(N, *x.shape)
    for i, layer in enumerate(base.body):
        q = lambda k: p[f"body.{i}.{k}"]
        r, dbar = layer.rank, layer.dbar
        if layer.low_precision:      # precision="bf16": the hidden projections in bfloat16 (as LRNNLayer.project)
            bf = torch.bfloat16
            z = torch.baddbmm(q("proj.bias").to(bf).unsqueeze(1), h.to(bf),
                              q("proj.weight").to(bf).transpose(1, 2)).to(h.dtype)
        else:
            z = torch.baddbmm(q("proj.bias").unsqueeze(1), h, q("proj.weight").transpose(1, 2))  # (N, B, r*dbar)
            if layer.scale != 1.0:   # band="projection" first layer: z = w0 (P x + p)
                z = z * layer.scale
        B_ = z.shape[1]
        z = z.view(N, B_, r, dbar).transpose(0, 1).reshape(B_, N * r, dbar)
        mlp = layer.component == "mlp"
        comp = [q(k) for k in (("a", "b", "c", "c0") if mlp else ("omega", "phase", "alpha", "beta", "c0"))]
        comp = [t.expand(N, r, *t.shape[2:]).reshape(N * r, *t.shape[2:]) for t in comp]
        kernel = layer.kernel if layer.kernel != "plain" else "fused"
        phi = lrnn_product(z, comp, layer.component, kernel, layer.activation, layer.gamma, layer.comp_w0)  # (B, N*r)
        h = phi.view(B_, N, r).transpose(0, 1)
        if layer.norm is not None:
            h = torch.nn.functional.layer_norm(h, (r,), eps=layer.norm.eps)
            if layer.norm.elementwise_affine:
                h = torch.addcmul(q("norm.bias").unsqueeze(1), h, q("norm.weight").unsqueeze(1))
    return torch.baddbmm(p["head.bias"].unsqueeze(1), h, p["head.weight"].transpose(1, 2))


# ----------------------------------------------------------------------------------------------
# Inputs


def list_signal_files(inputs) -> list[Path]:
    """Files named directly, plus the image / sound files (by suffix) directly inside named folders.
    Missing paths are kept so the fit reports them; the list is sorted and without duplicates."""
    out = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            out += [q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SUFFIXES]
        else:
            out.append(p)
    return sorted({q.resolve() if q.exists() else q for q in out}, key=str)


def folder_names(files) -> dict:
    """Subfolder name per file: the stem, with ``-2``, ``-3``, ... for repeats (order: sorted paths),
    so every rank of a sharded run computes the same names."""
    names, used = {}, set()
    for f in sorted(files, key=str):
        stem, k, name = Path(f).stem or "signal", 1, None
        while name is None or name in used or name in SUMMARY_FILES:
            name = stem if k == 1 else f"{stem}-{k}"
            k += 1
        used.add(name)
        names[str(f)] = name
    return names


def group_signals(signals: list[Signal], group_size: int) -> list[list[int]]:
    """Indices of ``signals`` grouped by (kind, grid shape, channels), each group cut into chunks of
    at most ``group_size`` (groups in order of first appearance)."""
    groups: dict = {}
    for i, s in enumerate(signals):
        groups.setdefault((s.kind, s.shape, s.channels), []).append(i)
    return [idx[j:j + group_size] for idx in groups.values() for j in range(0, len(idx), group_size)]


# ----------------------------------------------------------------------------------------------
# One chunk


def _per_job_history(history: list, i: int, key: str) -> list:
    rows = []
    for r in history:
        if f"loss_{i}" in r:
            rows.append({"step": r["step"], "seconds": r["seconds"], "loss": r[f"loss_{i}"], "lr": r["lr"],
                         key: r[f"{key}_{i}"]})
    return rows


def _time_to_target(history: list, key: str, targets, mode: str) -> dict:
    out = {}
    for t in targets:
        hit = next((r for r in history if r.get(key) is not None and math.isfinite(r[key])
                    and (r[key] >= t if mode == "max" else r[key] <= t)), None)
        out[str(float(t))] = None if hit is None else {"seconds": hit["seconds"], "step": hit["step"]}
    return out


def fit_group(signals: list[Signal], seeds: list[int], cfg: "F.FitConfig", engine: str = "auto",
              desc: str | None = None):
    """Train one model per signal (same kind, shape and channels) together, with ``cfg`` resolved for
    their kind (:meth:`inr.fitting.FitConfig.resolved`: the same model, lr, Adam settings, batch and
    schedule a single fit uses).

    Returns ``(nets, results, info)``: the trained per-signal models, a :class:`~inr.train.FitResult`
    per signal (history and time to target of that signal; steps, seconds and divergence events are the
    chunk's), and a dict with the chunk's saved-tensor bytes and engine.  ``cfg.train.seconds`` is the
    chunk's budget.  ``engine``: ``stacked`` (:class:`StackedINR`), ``loop`` (:class:`LoopINR`) or
    ``auto`` (:func:`pick_engine`)."""
    s0 = signals[0]
    if any((s.kind, s.shape, s.channels) != (s0.kind, s0.shape, s0.channels) for s in signals):
        raise ValueError("fit_group needs signals of one kind, grid shape and channel count")
    dev = resolve_device(cfg.train.device)
    nets, gens = [], []
    for sig, seed in zip(signals, seeds):
        seed_everything(seed)
        nets.append(cfg.model.build(sig.coord_dim, sig.channels, sig.kind, device=dev))
        g = torch.Generator()
        g.set_state(torch.get_rng_state())   # the stream a single fit's sampler would draw from
        gens.append(g)
    engine = pick_engine(engine, dev)
    stacked = StackedINR(nets) if engine == "stacked" else LoopINR(nets)
    coords = s0.coords(device=dev)
    Y = F.to_network(torch.stack([s.targets(device=dev) for s in signals]), s0.kind)   # (N, n, C)
    N, n = Y.shape[0], Y.shape[1]
    batch = cfg.batch
    full = batch is None or batch >= n
    shared = len(set(seeds)) == 1      # identical generators: draw the points once for everyone
    key = "psnr" if s0.kind == "image" else "mse"
    rows = torch.arange(N, device=dev)[:, None]

    def loss_fn(step):
        if full:
            x, t = coords, Y
        elif shared:
            idx = torch.randint(n, (batch,), generator=gens[0]).to(dev)
            x, t = coords[idx], Y[:, idx]
        else:
            idx = torch.stack([torch.randint(n, (batch,), generator=g) for g in gens]).to(dev)
            x, t = coords[idx], Y[rows, idx]
        if engine == "loop":
            # One model at a time, forward and backward: only one model's activations live at once.
            # The returned total is a detached leaf, so the loop's own backward() adds nothing.
            per, errs = [], []
            for i, net in enumerate(nets):
                o = net(x[i] if x.dim() == 3 else x)
                li = torch.mean((o - t[i]) ** 2)
                li.backward()
                per.append(li.detach())
                if key == "psnr":
                    with torch.no_grad():
                        errs.append(torch.mean((F.from_network(o, "image").clamp(0, 1) - (t[i] + 1) * 0.5) ** 2))
            per = torch.stack(per)
            total = per.sum().requires_grad_()
            vals = ([psnr_from_mse(float(e)) for e in torch.stack(errs).tolist()] if key == "psnr"
                    else per.tolist())
        else:
            out = stacked(x)
            per = torch.mean((out - t) ** 2, dim=(1, 2))
            total = per.sum()
            with torch.no_grad():
                if key == "psnr":
                    err = torch.mean((F.from_network(out, "image").clamp(0, 1) - (t + 1) * 0.5) ** 2, dim=(1, 2))
                    vals = [psnr_from_mse(float(e)) for e in err.tolist()]
                else:
                    vals = per.tolist()
        info = {f"loss_{i}": v for i, v in enumerate(per.tolist())}
        info.update({f"{key}_{i}": v for i, v in enumerate(vals)})
        info[key] = min(vals) if key == "psnr" else max(vals)     # the progress bar shows the worst
        return total, info

    tcfg = replace(cfg.train, targets=(), target_key=key, desc=desc or f"{cfg.model.name} x{N} {s0.shape}",
                   checkpoint_every=0, checkpoint_path=None, resume=False)
    states = [g.get_state() for g in gens]
    saved = F.saved_tensor_bytes(loss_fn)    # loop engine: the sum over models (held one at a time)
    stacked.zero_grad(set_to_none=True)
    for g, st in zip(gens, states):
        g.set_state(st)
    res = fit(stacked, loss_fn, tcfg)
    results = []
    for i, net in enumerate(nets):
        net.load_state_dict(stacked.state_for(i))
        hist = _per_job_history(res.history, i, key)
        last = hist[-1]["loss"] if hist else float("nan")
        results.append(FitResult(steps=res.steps, seconds=res.seconds, last_step_loss=last,
                                 final_loss=res.final_info.get(f"loss_{i}", float("nan")), history=hist,
                                 time_to_target=_time_to_target(hist, key, cfg.targets or (),
                                                                "max" if key == "psnr" else "min"),
                                 events=res.events, seconds_per_step=res.seconds_per_step, stopped_by=res.stopped_by))
    return nets, results, {"saved_tensors_bytes": saved, "engine": engine}


# ----------------------------------------------------------------------------------------------
# Many files -> one run folder


def fit_many(files, cfg: "F.FitConfig | None" = None, out=None, group_size: int = 16, engine: str = "auto",
             shard: tuple = (0, 1), merge: bool = True) -> dict:
    """Fit ``cfg``'s model to every file (see :func:`list_signal_files`) and write one run folder.

    Args:
        cfg: the :class:`~inr.fitting.FitConfig` a single fit of each file would use (its defaults when
            None); ``cfg.train.seconds`` is the budget per signal (a chunk of N signals trained together
            may run N x seconds).  Whole signals are evaluated after the last step only.
        out: the run folder to create (default ``runs/batch-<model>-<time>``).
        group_size: at most this many signals train together (bounds memory: ``group_size x batch``
            points per step); signals of different kind / shape / channels never share a chunk.
        engine: how a chunk runs (:func:`pick_engine`): ``stacked`` weights, a ``loop`` over the models,
            or ``auto`` (stacked on CUDA, loop on the CPU).  Results are the same either way.
        shard: ``(rank, world)``: fit only the files ``rank, rank + world, ...`` of the sorted list,
            writing into the shared staging folder (see :mod:`inr.shard`).
        merge: write the summary and rename the staging folder to ``out`` at the end (a sharded run
            leaves this to rank 0 after every rank has finished).

    Returns the summary (also ``summary.json``), or this rank's part of it when ``merge`` is False.
    """
    cfg = cfg or F.FitConfig()
    files = list_signal_files(files)
    if not files:
        raise F.RunError("no input files (a folder is searched for " + ", ".join(sorted(SUFFIXES)) + ")")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise F.RunError(f"--group-size must be >= 1, got {group_size}")
    if cfg.train.lbfgs_steps or cfg.train.checkpoint_every:
        raise F.RunError("--lbfgs-steps and --checkpoint-every apply to a single file, not to several files")
    dev = resolve_device(cfg.train.device)
    pick_engine(engine, dev)
    out = Path(out) if out is not None else Path("runs") / f"batch-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    rank, world = shard
    if world == 1 and merge:
        # one process: the run folder is a RunFolder (checked now, built under a hidden name, renamed at
        # the end, removed if the run fails), as for a single fit
        with RunFolder(out) as run:
            _fit_files(run.path, files, shard, cfg, group_size, engine)
            summary = merge_records(run.path, out, 1)
        summary["run_dir"] = str(out)
        return summary
    # sharded: every rank writes into the shared staging folder; rank 0 merges (merge_run) at the end
    if out.exists():
        raise F.RunError(f"--out {out}: already exists; choose a new run folder")
    if world == 1:
        check_out(out)
        discard_stale_staging(out)   # only a stale one of our own; anything else is refused
    stage = shared_staging(out)
    part = _fit_files(stage, files, shard, cfg, group_size, engine)
    if not merge:
        return part
    return merge_run(out)


def _fit_files(stage: Path, files, shard: tuple, cfg, group_size: int, engine: str) -> dict:
    """This rank's share of ``files``: fit in chunks, one subfolder per signal in ``stage``, and the
    shard record ``.shard-RANK-of-WORLD.json``; returns the record."""
    rank, world = shard
    names = folder_names(files)
    mine = files[rank::world]
    batch_options = {"group_size": group_size, "world_size": world, "engine": engine,
                     "files": [str(f) for f in files]}
    results, failures, signals, sig_files = [], [], [], []
    for f in mine:
        try:
            signals.append(load(f))
            sig_files.append(f)
        except SignalError as e:
            failures.append({"file": str(f), "stage": "load", "error": " ".join(str(e).split())})
    dev = resolve_device(cfg.train.device)
    for chunk in group_signals(signals, group_size):
        sigs = [signals[i] for i in chunk]
        cfiles = [sig_files[i] for i in chunk]
        rcfg = cfg.resolved(sigs[0].kind, dev, sigs[0])   # a chunk shares kind, shape and channels
        budget = None if rcfg.train.seconds is None else rcfg.train.seconds * len(sigs)
        try:
            nets, fits, info = fit_group(sigs, [rcfg.train.seed] * len(sigs),
                                         replace(rcfg, train=replace(rcfg.train, seconds=budget)), engine=engine)
        except (DivergenceError, InputError, RuntimeError) as e:
            failures += [{"file": str(f), "stage": "fit", "error": " ".join(str(e).split())[:500]} for f in cfiles]
            continue
        for sig, f, net, res in zip(sigs, cfiles, nets, fits):
            folder = names[str(f)]
            m = _write_signal_run(stage, folder, (sig, f, net, res), info, len(sigs), rcfg, batch_options)
            results.append(m)
    part = {"rank": rank, "world_size": world, "results": results, "failures": failures}
    write_json(part, stage / f".shard-{rank}-of-{world}.json")
    return part


def _write_signal_run(stage: Path, folder: str, job: tuple, info: dict, group_n: int, cfg, batch_options: dict) -> dict:
    """One signal's subfolder (``job``: signal, file, trained net, its FitResult), written under a hidden
    name and renamed (a half-written one never looks done)."""
    sig, f, net, res = job
    dev = resolve_device(cfg.train.device)
    pred = F.predict(net, sig.coords(device=dev), sig.kind)
    m = {"signal": sig.name, "file": str(f), "kind": sig.kind, "model": cfg.model.name,
         "params": count_params(net), **F.signal_metrics(sig, pred),
         "steps": res.steps, "seconds": res.seconds, "seconds_per_step": res.seconds_per_step,
         "stopped_by": res.stopped_by, "final_loss": res.final_loss,
         "divergence_events": res.events, "batch": cfg.batch, "lr": cfg.train.lr,
         "device": str(dev),
         "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
         "group_size": group_n, "seconds_are": "wall time of the whole chunk of signals trained together",
         "memory": {**info, "peak_rss_bytes": F.peak_rss_bytes()}, "seed": cfg.train.seed,
         "versions": versions(), "config": {"fit": cfg.to_dict(), "batch": batch_options, "model": net.config}}
    key = "psnr" if sig.kind == "image" else "mse"
    final = m.get(key)
    hit = {"seconds": round(res.seconds, 4), "step": res.steps}
    m["time_to_target"] = {t: (hit if final is not None and (final >= float(t) if key == "psnr" else final <= float(t))
                               else None) for t in res.time_to_target}
    m["time_to_target_batch"] = res.time_to_target
    m["time_to_target_note"] = ("time_to_target: the whole-signal evaluation after the last step (batched fits "
                                "evaluate only then); time_to_target_batch: first training batch at or beyond it")
    config = {"fit": cfg.to_dict(), "batch": batch_options, "model": net.config, "signal": sig.describe()}
    tmp, dst = stage / f".{folder}.tmp", stage / folder
    if tmp.exists():
        shutil.rmtree(tmp)
    if dst.exists():
        shutil.rmtree(dst)   # a re-run of the same shard
    tmp.mkdir()
    F.write_run(tmp, sig, net, pred, m, config, res)
    os.replace(tmp, dst)
    m["run_dir"] = folder
    return m


# ----------------------------------------------------------------------------------------------
# Summary


def merge_run(out, world_size: int | None = None) -> dict:
    """Combine the shard records in ``out``'s staging folder into summary.json / .md / .csv and
    rename the staging folder to ``out``.  Raises :class:`~inr.fitting.RunError` when a shard's
    record is missing (that rank has not finished)."""
    out = Path(out)
    stage = F.staging_dir(out)
    if stage.is_symlink():
        raise F.RunError(f"{out}: the staging folder {stage} is a symlink; refusing to merge through it")
    if not stage.is_dir():
        if (out / "summary.json").is_file():
            raise F.RunError(f"{out}: already merged")
        raise F.RunError(f"{out}: no run in progress (no {stage.name} folder)")
    if out.exists() or out.is_symlink():   # checked before any record is touched
        raise F.RunError(f"{out}: already exists; the shard records in {stage} are left as they are (move "
                         f"{out} away and merge again)")
    summary = merge_records(stage, out, world_size)
    if out.exists() or out.is_symlink():
        raise F.RunError(f"{out}: appeared while merging; the merged run is in {stage}")
    (stage / MARKER).unlink(missing_ok=True)
    os.rename(stage, out)
    summary["run_dir"] = str(out)
    return summary


_NUMBER = Field(float, nullable=True, required=False)
_RESULT = {"signal": Field(str, max_len=4096), "run_dir": Field(str, max_len=4096), "file": Field(str, max_len=4096),
           "kind": Field(str, choices=("image", "audio")), "model": Field(str, max_len=100),
           "params": Field(int, 0), "steps": Field(int, 0), "seconds": Field(float, 0), "group_size": Field(int, 1),
           "time_to_target": Field(dict), "psnr": _NUMBER, "ssim": _NUMBER, "mse": _NUMBER, "rho_ag": _NUMBER}
_FAILURE = {"file": Field(str, max_len=4096), "error": Field(str, max_len=100_000),
            "stage": Field(str, required=False, max_len=100)}
MAX_WORLD = 1 << 16


def check_shard_record(d, where) -> dict:
    """A ``.shard-R-of-W.json`` record (untrusted): every field :func:`merge_records` and
    :func:`summarize` read, checked for type and range (:class:`inr.schema.SchemaError`)."""
    d = check(d, {"rank": Field(int, 0, MAX_WORLD - 1), "world_size": Field(int, 1, MAX_WORLD),
                  "results": Field(list, items=Field(dict, fields=_RESULT)),
                  "failures": Field(list, items=Field(dict, fields=_FAILURE))}, where)
    if d["rank"] >= d["world_size"]:
        raise SchemaError(f"{where}: field 'rank' must be < world_size {d['world_size']}, got {d['rank']}")
    for i, m in enumerate(d["results"]):
        for t, hit in m["time_to_target"].items():
            if hit is not None:
                check(hit, {"seconds": Field(float, 0), "step": Field(int, 0)}, where,
                      prefix=f"results[{i}].time_to_target.{t}.")
    return d


def merge_records(stage: Path, out, world_size: int | None = None) -> dict:
    """Combine the shard records in ``stage`` into summary.json / .md / .csv there (the records are
    removed); returns the summary.  ``out`` names the run in messages."""
    parts = {}
    for p in stage.glob(".shard-*-of-*.json"):
        d = check_shard_record(read_json(p, "shard record"), p)
        parts[(d["rank"], d["world_size"])] = d
    worlds = {w for _, w in parts}
    if world_size is not None:
        worlds.add(world_size)
    if len(worlds) != 1:
        raise F.RunError(f"{out}: shard records from different world sizes {sorted(worlds)} (or none)")
    world = worlds.pop()
    missing = [r for r in range(world) if (r, world) not in parts]
    if missing:
        raise F.RunError(f"{out}: shard(s) {missing} of {world} have not finished")
    results = sorted((m for d in parts.values() for m in d["results"]), key=lambda m: m["file"])
    failures = sorted((x for d in parts.values() for x in d["failures"]), key=lambda x: x["file"])
    summary = summarize(results, failures)
    summary["world_size"] = world
    write_json(summary, stage / "summary.json")
    _write_text(summary_markdown(summary), stage / "summary.md")
    _write_text(summary_csv(summary), stage / "summary.csv")
    for p in stage.glob(".shard-*-of-*.json"):
        p.unlink()
    return summary


def summarize(results: list, failures: list) -> dict:
    rows = []
    for m in results:
        r = {"signal": m["signal"], "folder": m["run_dir"], "file": m["file"], "kind": m["kind"],
             "params": m["params"], "steps": m["steps"], "seconds": m["seconds"], "group_size": m["group_size"]}
        r.update({k: m.get(k) for k in (("psnr", "ssim") if m["kind"] == "image" else ("mse", "rho_ag"))})
        r["time_to_target"] = m["time_to_target"]
        rows.append(r)
    images = [r for r in rows if r["kind"] == "image"]
    agg = {}
    if images:
        ps = [r["psnr"] for r in images if r["psnr"] is not None]
        agg["mean_psnr"] = float(np.mean(ps)) if ps else None
        for t in images[0]["time_to_target"]:
            hit = [r["time_to_target"].get(t) for r in images]
            agg[f"reached_{t}_db"] = sum(h is not None for h in hit)
    return {"n_files": len(results) + len(failures), "n_ok": len(results), "n_failed": len(failures),
            "model": results[0]["model"] if results else None, "aggregate": agg, "results": rows,
            "failures": failures}


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def summary_markdown(s: dict) -> str:
    lines = [f"# Batched fit: {s['n_ok']} of {s['n_files']} signals fitted (model {s['model']})", ""]
    if s["results"]:
        lines += ["| signal | kind | PSNR (dB) / MSE | SSIM / rho_AG | time to targets (s) | steps | chunk |",
                  "|---|---|---|---|---|---|---|"]
        for r in s["results"]:
            a, b = ((_fmt(r["psnr"], ".2f"), _fmt(r["ssim"], ".4f")) if r["kind"] == "image"
                    else (_fmt(r["mse"], ".3e"), _fmt(r["rho_ag"], ".5f")))
            tt = ", ".join(f"{k}: {'-' if v is None else '%.1f' % v['seconds']}"
                           for k, v in r["time_to_target"].items())
            lines.append(f"| {r['folder']} | {r['kind']} | {a} | {b} | {tt} | {r['steps']} | {r['group_size']} |")
        lines += ["", "Times are wall seconds of the chunk of signals trained together (PSNR: standard "
                      "10 log10(1/MSE) on [0, 1], prediction clamped)."]
    if s["failures"]:
        lines += ["", "## Failed", ""] + [f"- {x['file']} ({x['stage']}): {x['error']}" for x in s["failures"]]
    return "\n".join(lines) + "\n"


def summary_csv(s: dict) -> str:
    import csv
    import io

    targets = sorted({t for r in s["results"] for t in r["time_to_target"]}, key=float)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["signal", "folder", "file", "kind", "params", "steps", "seconds", "group_size", "psnr", "ssim",
                "mse", "rho_ag"] + [f"seconds_to_{t}" for t in targets] + ["error"])
    for r in s["results"]:
        tt = [(r["time_to_target"].get(t) or {}).get("seconds", "") for t in targets]
        w.writerow([r["signal"], r["folder"], r["file"], r["kind"], r["params"], r["steps"], r["seconds"],
                    r["group_size"]] + [r.get(k, "") if r.get(k) is not None else "" for k in
                                        ("psnr", "ssim", "mse", "rho_ag")] + tt + [""])
    for x in s["failures"]:
        w.writerow(["", "", x["file"], "", "", "", "", "", "", "", "", ""] + [""] * len(targets) + [x["error"]])
    return buf.getvalue()


def _write_text(text: str, path: Path) -> None:
    runfiles.write_text(path, text)
