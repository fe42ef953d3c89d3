"""The classification trainer: one process or many (torchrun / DistributedDataParallel).

``train(TrainArgs(...))`` writes a run folder: ``config.json`` (seed, versions, device, full config,
normalisation), ``metrics.json`` (per-epoch loss / accuracy / images/s, time to target accuracy,
rewritten after every epoch), ``checkpoint.pt`` (resume), ``model.pt`` (final weights) and
``curves.png``.  ``evaluate_run(run_dir)`` measures clean and Poisson-noise test accuracy and
``Delta_noise = (acc_clean - acc_noisy) / acc_clean * 100``.

Multi-GPU / multi-node: launch with ``torchrun --nproc_per_node N python -m classify train ...``; the
process group is initialised from the environment (nccl on CUDA, gloo on CPU), ``--batch-size`` is
the *global* batch (split evenly over ranks), data are sharded with ``DistributedSampler``, and only
rank 0 writes.  With BatchNorm, statistics are per rank (as in plain DDP) unless ``--sync-bn``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from inr.runfiles import json_text, replacing, save_torch, versions, write_json, write_new
from inr.train import load_checkpoint, resolve_device, seed_everything

from . import data as D
from . import models as M
from inr.errors import InputError


@dataclass
class TrainArgs:
    model: str = "resnet20"
    data: str = "digits"
    out: str = "runs/classify"
    epochs: int = 10
    batch_size: int | None = None        # global batch; None: the paper's default for the model
    lr: float | None = None              # None: the paper's default for the model (see models.TRAIN_DEFAULTS)
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None          # step | cosine | constant
    milestones: tuple | None = None      # epochs for the step schedule (default: the paper's, scaled)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    lr_g: float | None = None            # QResNet ReLinear-sg learning rates (None: paper's 1e-5)
    lr_b: float | None = None
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    compile: bool = False
    amp: str = "auto"                    # auto (bf16 on CUDA) | bf16 | off
    channels_last: str = "auto"          # auto (on for CUDA) | on | off
    sync_bn: bool = False
    augment: bool | None = None          # None: on (crop + flip), except for digits (a flip changes a digit)
    image_size: int | None = None        # resize every image to this (folder: also the decode size)
    test_fraction: float = 0.1
    split_seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    targets: tuple = ()                  # test accuracies (0..1) whose first crossing is timed
    noise_peak: float | None = None      # also report Poisson-noise accuracy at the end
    eval_batch_size: int = 256
    threads: int | str | None = "auto"   # CPU intra-op threads; auto: 1 when the machine is already loaded
    resume: bool = False
    quiet: bool = False
    model_args: dict = field(default_factory=dict)


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024   # --image-size (the network input is SIZE x SIZE)
BLOWUP_FACTOR = 1e3   # an epoch's mean cross-entropy above this x min(ln(classes), lowest so far) has diverged


class TrainError(RuntimeError):
    """Training could not go on (divergence, bad resume state); the message says what to change."""


# ----------------------------------------------------------------------------- distributed helpers
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_arg: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_arg)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_arg != "cpu" and torch.cuda.is_available()
    if device_arg.startswith("cuda") and not use_cuda:
        raise InputError("--device cuda was asked for but no CUDA device is available")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    return Dist(rank, world, local), device


def _all_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t)
    return t


# ----------------------------------------------------------------------------- small utilities
def lr_factor(epoch: float, a: TrainArgs, milestones) -> float:
    """Learning-rate multiplier at fractional ``epoch`` (linear warm-up, then step/cosine/constant)."""
    if a.warmup_epochs and epoch < a.warmup_epochs:
        return (epoch + 1e-3) / a.warmup_epochs
    if a.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(epoch / a.epochs, 1.0)))
    if a.schedule == "step":
        return a.gamma ** sum(int(epoch) >= m for m in milestones)
    return 1.0


def resolve_args(a: TrainArgs) -> TrainArgs:
    """Fill the paper's defaults for the model family and validate every option."""
    dflt = M.train_defaults(a.model)
    for k in ("lr", "momentum", "weight_decay", "schedule", "batch_size"):
        if getattr(a, k) is None:
            setattr(a, k, dflt[k])
    if M.family(a.model) == "qresnet":
        a.lr_g = dflt["lr_g"] if a.lr_g is None else a.lr_g
        a.lr_b = dflt["lr_b"] if a.lr_b is None else a.lr_b
    if a.augment is None:
        a.augment = not a.data.startswith("digits")
    if a.milestones is None:
        a.milestones = tuple(sorted({max(1, round(f * a.epochs)) for f in dflt["milestones"]}))
    checks = [(a.epochs >= 1, "--epochs must be >= 1"), (a.batch_size >= 1, "--batch-size must be >= 1"),
              (math.isfinite(a.lr) and a.lr > 0, "--lr must be a finite number > 0"),
              (all(v is None or math.isfinite(v) for v in (a.momentum, a.weight_decay, a.grad_clip, a.lr_g,
                                                             a.lr_b, a.gamma, a.warmup_epochs, a.noise_peak)),
               "--momentum, --weight-decay, --grad-clip, --lr-g, --lr-b, --gamma, --warmup-epochs and "
               "--noise-peak must be finite numbers"), (a.schedule in ("step", "cosine", "constant"),
                                               "--schedule must be step, cosine or constant"),
              (a.amp in ("auto", "bf16", "off"), "--amp must be auto, bf16 or off"),
              (a.channels_last in ("auto", "on", "off"), "--channels-last must be auto, on or off"),
              (a.workers >= 0, "--workers must be >= 0"), (a.weight_decay >= 0, "--weight-decay must be >= 0"),
              (all(0 < t <= 1 for t in a.targets), "--target values are accuracies in (0, 1]"),
              (a.noise_peak is None or a.noise_peak > 0, "--noise-peak must be > 0"),
              (a.epochs <= 100_000, "--epochs must be <= 100000"),
              (a.batch_size <= 1 << 20, "--batch-size must be <= 1048576"), (a.workers <= 256, "--workers must be <= 256"),
              (a.image_size is None or MIN_IMAGE_SIZE <= a.image_size <= MAX_IMAGE_SIZE,
               f"--image-size must be from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels")]
    for ok, msg in checks:
        if not ok:
            raise InputError(msg)
    return a


def _limit(ds, n, seed):
    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise InputError("--limit-train/--limit-test must be >= 1")
    return ds.subset(np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False)))


def open_data(a: TrainArgs):
    bundle = D.load(a.data, image_size=a.image_size, test_fraction=a.test_fraction, split_seed=a.split_seed)
    bundle.train = _limit(bundle.train, a.limit_train, a.split_seed)
    bundle.test = _limit(bundle.test, a.limit_test, a.split_seed + 1)
    return bundle


def _param_groups(model: nn.Module, a: TrainArgs) -> list[dict]:
    if M.family(a.model) == "qresnet":
        from approx.relinear import relinear_groups
        return relinear_groups(model, a.lr, a.lr_g, a.lr_b, weight_decay=a.weight_decay)
    return [{"name": "all", "params": [p for p in model.parameters() if p.requires_grad], "lr": a.lr,
             "weight_decay": a.weight_decay}]


def _autocast(device: torch.device, amp: str):
    on = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if on and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        on = False
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on), on


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, ds, pre: D.Preprocess, device, d: Dist, *, batch_size=256, amp="off", workers=0) -> dict:
    """Accuracy and mean loss on ``ds`` (sharded over ranks, summed exactly: no padding), its batches
    prepared by ``pre`` (normalisation, size, layout and, for a noisy evaluation, the Poisson noise)."""
    model.eval()
    shard = torch.arange(len(ds))[d.rank::d.world]
    tot = torch.zeros(3, dtype=torch.float64, device=device)   # loss sum, correct, count
    ac, _ = _autocast(device, amp)
    for xb, yb, idx in D.batches(ds, shard, batch_size, device=device, workers=workers):
        x = D.prepare(xb, pre, idx=idx)
        with ac:
            logits = model(x)
        tot[0] += F.cross_entropy(logits.float(), yb, reduction="sum").double()
        tot[1] += (logits.argmax(1) == yb).sum()
        tot[2] += len(yb)
    _all_sum(tot, d)
    n = max(tot[2].item(), 1)
    return {"loss": tot[0].item() / n, "acc": tot[1].item() / n, "n": int(tot[2].item())}


def delta_noise(acc_clean: float, acc_noisy: float) -> float:
    """Relative accuracy drop under noise, in percent: ``(clean - noisy) / clean * 100``."""
    return (acc_clean - acc_noisy) / acc_clean * 100.0 if acc_clean > 0 else float("nan")


# ----------------------------------------------------------------------------- training
def _progress(total, quiet, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=quiet or not sys.stderr.isatty(), leave=False, dynamic_ncols=True)


def plot_curves(history: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots(1, 2)
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train")
    ax[0].plot(ep, [h["test_loss"] for h in history], label="test")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("cross-entropy"), ax[0].legend()
    ax[1].plot(ep, [h["train_acc"] for h in history], label="train")
    ax[1].plot(ep, [h["test_acc"] for h in history], label="test")
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("accuracy"), ax[1].legend()
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def train(a: TrainArgs) -> dict:
    """Train ``a.model`` on ``a.data``; returns the final metrics dict (also in ``a.out/metrics.json``)."""
    a = resolve_args(a)
    run, folder = _open_out(a)   # an unusable or existing --out is refused before any work
    from inr.train import resolve_threads
    threads = resolve_threads(a.threads)
    if threads:
        torch.set_num_threads(threads)
    d, device = init_distributed(a.device)
    if a.batch_size % d.world:
        raise InputError(f"--batch-size {a.batch_size} must be divisible by the number of processes ({d.world})")
    local_bs = a.batch_size // d.world
    seed_everything(a.seed)
    bundle = open_data(a)
    size = (a.image_size, a.image_size) if a.image_size else None
    mean, std = D.channel_stats(bundle.train, seed=a.split_seed)
    model = M.build(a.model, bundle.num_classes, bundle.in_channels, **a.model_args).to(device)
    n_params = M.count_params(model)
    channels_last = a.channels_last == "on" or (a.channels_last == "auto" and device.type == "cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    pre = D.Preprocess(mean, std, size, channels_last)
    if a.sync_bn and device.type != "cuda":
        raise InputError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU implementation)")
    if a.sync_bn and d.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    groups = _param_groups(model, a)
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = torch.optim.SGD(groups, lr=a.lr, momentum=a.momentum)
    ac, amp_on = _autocast(device, a.amp)

    ctx = run if (run is not None and d.main) else contextlib.nullcontext()
    with ctx:
        ckpt_path = os.path.join(folder, "checkpoint.pt")
        history, start_epoch, train_seconds, reached = [], 0, 0.0, {}
        if a.resume:
            if not os.path.isfile(ckpt_path):
                raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
            ck = load_checkpoint(ckpt_path, map_location=device)
            if ck.get("model_config") != model.config:
                raise TrainError(f"--resume: {ckpt_path} holds {ck.get('model_config')}, not {model.config}")
            try:
                model.load_state_dict(ck["model"])
                opt.load_state_dict(ck["optimizer"])
                history, start_epoch = ck["history"], ck["epoch"]
                train_seconds, reached = ck["train_seconds"], ck["reached"]
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise TrainError(f"--resume: {ckpt_path} does not fit this run ({' '.join(str(e).split())[:200]})") \
                    from None

        net = model
        if d.world > 1:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if a.compile:
            net = torch.compile(net)

        config = {"args": {**asdict(a), "targets": list(a.targets), "milestones": list(a.milestones)},
                  "model_config": model.config, "params": n_params, "seed": a.seed, "device": str(device),
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                  "world_size": d.world, "amp_bf16": amp_on, "channels_last": channels_last, "versions": versions(),
                  "data": {"name": bundle.name, "train": len(bundle.train), "test": len(bundle.test),
                           "num_classes": bundle.num_classes, "in_channels": bundle.in_channels,
                           "image_size": list(size or bundle.image_size), "classes": bundle.classes},
                  "normalization": {"mean": mean, "std": std}}
        if d.main:
            write_json(config, os.path.join(folder, "config.json"))

        sampler = torch.utils.data.DistributedSampler(bundle.train, num_replicas=d.world, rank=d.rank, shuffle=True,
                                                      seed=a.seed, drop_last=False)
        augment = D.Augment(len(bundle.train), a.seed) if a.augment else None
        steps_per_epoch = len(sampler) // local_bs
        if steps_per_epoch == 0:
            raise InputError(f"--batch-size {a.batch_size} is larger than the training set ({len(bundle.train)} images)")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        for epoch in range(start_epoch, a.epochs):
            model.train()
            sampler.set_epoch(epoch)
            if augment is not None:
                augment.set_epoch(epoch)
            stats = torch.zeros(3, dtype=torch.float64, device=device)
            bar = _progress(steps_per_epoch, a.quiet or not d.main, f"epoch {epoch + 1}/{a.epochs}")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for step, (xb, yb, idx) in enumerate(D.batches(bundle.train, list(sampler), local_bs, device=device,
                                                            workers=a.workers, drop_last=True)):
                f = lr_factor(epoch + step / steps_per_epoch, a, a.milestones)
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * f
                x = D.prepare(xb, pre, augment=augment, idx=idx)
                with ac:
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if a.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
                opt.step()
                with torch.no_grad():
                    stats[0] += loss.detach().double() * len(yb)
                    stats[1] += (logits.argmax(1) == yb).sum()
                    stats[2] += len(yb)
                if bar is not None:
                    bar.update(1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_s = time.perf_counter() - t0
            train_seconds += epoch_s
            if bar is not None:
                bar.close()
            _all_sum(stats, d)
            if d.world > 1:  # evaluate (and save) rank 0's BatchNorm statistics on every rank
                for b in model.buffers():
                    dist.broadcast(b, 0)
            train_loss = stats[0].item() / stats[2].item()
            reference = min([math.log(max(bundle.num_classes, 2))] + [h["train_loss"] for h in history])
            if not math.isfinite(train_loss) or train_loss > BLOWUP_FACTOR * reference:
                what = "non-finite loss" if not math.isfinite(train_loss) else (
                    f"loss blow-up: {train_loss:.3g} > {BLOWUP_FACTOR:g} x {reference:.3g}")
                raise TrainError(f"training diverged in epoch {epoch + 1} ({what}); "
                                 f"lower --lr (now {a.lr:g}) or set --grad-clip")
            ev = evaluate(model, bundle.test, pre, device, d, batch_size=a.eval_batch_size, amp=a.amp,
                          workers=a.workers)
            for t in a.targets:
                if ev["acc"] >= t and str(t) not in reached:
                    reached[str(t)] = train_seconds
            rec = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": stats[1].item() / stats[2].item(),
                   "test_loss": ev["loss"], "test_acc": ev["acc"], "lr": a.lr * lr_factor(epoch, a, a.milestones),
                   "epoch_seconds": epoch_s, "images_per_s": stats[2].item() / epoch_s, "train_seconds": train_seconds}
            history.append(rec)
            if d.main:
                save_torch({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                               "history": history, "train_seconds": train_seconds, "reached": reached,
                               "model_config": model.config}, ckpt_path)
                write_json(_summary(history, reached, a, n_params, device), os.path.join(folder, "metrics.json"))
                if not a.quiet:
                    print(f"epoch {epoch + 1}/{a.epochs}  loss {train_loss:.4f}  train acc {rec['train_acc']:.4f}  "
                          f"test acc {ev['acc']:.4f}  {rec['images_per_s']:.0f} img/s", file=sys.stderr)

        summary = _summary(history, reached, a, n_params, device)
        if a.noise_peak:
            kw = dict(batch_size=a.eval_batch_size, amp=a.amp, workers=a.workers)
            cl = evaluate(model, bundle.test, pre, device, d, **kw)
            nz = evaluate(model, bundle.test, replace(pre, noise_peak=a.noise_peak, noise_seed=a.split_seed), device,
                          d, **kw)
            summary["noise"] = {"peak": a.noise_peak, "acc_clean": cl["acc"], "acc_noisy": nz["acc"],
                                "delta_noise_percent": delta_noise(cl["acc"], nz["acc"])}
        if d.main:
            save_torch(model.state_dict(), os.path.join(folder, "model.pt"))
            write_json(summary, os.path.join(folder, "metrics.json"))
            if history:
                plot_curves(history, os.path.join(folder, "curves.png"))
    _finish(d)
    return summary


def _open_out(a: TrainArgs):
    """``(RunFolder or None, folder to write into)``.  A new run is built in a hidden staging folder and
    renamed to ``a.out`` at the end (an existing ``a.out`` is refused); ``--resume`` continues either an
    interrupted run (its staging folder) or a finished one in place (``a.out/checkpoint.pt``)."""
    from inr.runs import RunFolder, staging_dir

    if a.resume:
        if os.path.isfile(os.path.join(a.out, "checkpoint.pt")):
            return None, a.out
        if not (staging_dir(a.out) / "checkpoint.pt").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {os.path.join(a.out, 'checkpoint.pt')} or in "
                                    f"{staging_dir(a.out)}")
    run = RunFolder(a.out, resume=a.resume, keep_checkpoint=True)
    return run, str(run.path)


def _finish(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _summary(history, reached, a: TrainArgs, n_params, device) -> dict:
    s = {"model": a.model, "params": n_params, "epochs_done": len(history), "history": history,
         "time_to_target_s": {t: reached.get(str(t)) for t in a.targets}}
    if history:
        s.update(final_test_acc=history[-1]["test_acc"], best_test_acc=max(h["test_acc"] for h in history),
                 train_seconds=history[-1]["train_seconds"],
                 images_per_s=float(np.median([h["images_per_s"] for h in history])))
    if device.type == "cuda":
        s["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return s


def evaluate_run(run_dir: str, *, noise_peak: float = 10.0, device: str = "auto", batch_size: int = 256,
                 data: str | None = None, workers: int = 0, noise_seed: int | None = None,
                 out_file: str | None = None) -> dict:
    """Clean and Poisson-noise test accuracy of a finished run; with ``out_file`` also written as JSON to
    that new file (refused if it exists; the run folder is never written into)."""
    cfg_path, w_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "model.pt")
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"not a finished run folder: {p} is missing")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
        args = TrainArgs(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg["args"].items()})
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read run config {cfg_path}: {e}") from None
    if data:
        args.data = data
    if args.image_size is not None and not (isinstance(args.image_size, int)
                                            and MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE):
        raise InputError(f"{cfg_path}: image_size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got "
                         f"{args.image_size!r}")
    d, dev = init_distributed(device)
    bundle = open_data(args)
    try:
        model = M.from_config(cfg["model_config"], device=dev)
        model.load_state_dict(torch.load(w_path, map_location=dev, weights_only=True))
    except Exception as e:  # noqa: BLE001 - truncated / foreign / unsafe model file
        raise InputError(f"{w_path}: corrupt or incompatible model file ({' '.join(str(e).split())[:200]})") \
            from None
    mean, std = cfg["normalization"]["mean"], cfg["normalization"]["std"]
    size = (args.image_size, args.image_size) if args.image_size else None
    seed = args.split_seed if noise_seed is None else noise_seed
    pre = D.Preprocess(mean, std, size)
    kw = dict(batch_size=batch_size, amp=args.amp, workers=workers)
    cl = evaluate(model, bundle.test, pre, dev, d, **kw)
    nz = evaluate(model, bundle.test, replace(pre, noise_peak=noise_peak, noise_seed=seed), dev, d, **kw)
    out = {"run": run_dir, "data": args.data, "n_test": cl["n"], "acc_clean": cl["acc"], "acc_noisy": nz["acc"],
           "loss_clean": cl["loss"], "loss_noisy": nz["loss"], "noise_peak": noise_peak, "noise_seed": seed,
           "delta_noise_percent": delta_noise(cl["acc"], nz["acc"])}
    if d.main and out_file is not None:
        write_new(out_file, json_text(out))
    _finish(d)
    return out
