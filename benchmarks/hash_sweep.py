"""Seconds to 30/35/40 dB of full-image PSNR for the hash-grid model (Instant-NGP) on the CPU.

The cameraman (``skimage.data.camera``) resized to SIZE x SIZE with ``skimage.transform.resize``; the
model is ``build("hash", 2, 1, params=PARAMS, levels=L, features=F)``; Adam with a cosine decay to 0.1x
over the wall budget (the same loss, batch sampler and schedule as ``inr fit``: ``inr.fitting.make_loss``,
``inr.train.lr_factor``).  Every ``--eval-every`` steps the whole image is predicted and its PSNR
(clamped to [0, 1]) recorded *off the clock*; a target's time is the training time (evaluation
excluded) at the first evaluation that reached it, so it is resolved to ``eval-every`` steps.

``--adam ngp`` uses Instant-NGP's Adam settings (betas (0.9, 0.99), eps 1e-15) instead of torch's
defaults (0.9, 0.999, 1e-8), which is what ``inr fit`` uses.

    python benchmarks/hash_sweep.py --seconds 5 --lrs 3e-3,1e-2,3e-2 --batches 2048,4096,8192 --levels 8,16
    python benchmarks/hash_sweep.py --quick                  # a 64x64 smoke run (seconds)
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from inr import metrics as M  # noqa: E402
from inr.fitting import from_network, make_loss  # noqa: E402
from inr.models import build, count_params  # noqa: E402
from inr.signals import image_from_array  # noqa: E402
from inr.train import TrainConfig, lr_factor, seed_everything  # noqa: E402


def cameraman(size: int):
    from skimage import data
    from skimage.transform import resize

    a = resize(data.camera().astype(np.float64) / 255.0, (size, size), anti_aliasing=True)
    return image_from_array((np.clip(a, 0, 1) * 65535).round().astype(np.uint16))


def run_one(sig, *, lr, batch, levels, features, params, seconds, max_steps, eval_every, adam, seed, targets):
    seed_everything(seed)
    net = build("hash", sig.coord_dim, sig.channels, params=params, levels=levels, features=features)
    coords, values = sig.coords(), sig.targets()
    loss_fn = make_loss(net, coords, values, sig.kind, batch)
    kw = {"betas": (0.9, 0.99), "eps": 1e-15} if adam == "ngp" else {}
    opt = torch.optim.Adam(net.parameters(), lr=lr, **kw)
    cfg = TrainConfig(steps=max_steps, seconds=seconds, lr=lr)
    truth = values.numpy().reshape(-1)
    reached: dict = {t: None for t in targets}
    clock, step, best = 0.0, 0, -np.inf
    while step < max_steps and clock < seconds:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(clock / seconds, cfg, step)
        loss, _ = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        clock += time.perf_counter() - t0
        if step % eval_every == 0 or clock >= seconds or step == max_steps:
            with torch.no_grad():
                pred = from_network(net(coords), sig.kind).clamp(0, 1).numpy().reshape(-1)
            psnr = M.psnr_from_mse(float(np.mean((pred - truth) ** 2)))
            best = max(best, psnr)
            for t in targets:
                if reached[t] is None and psnr >= t:
                    reached[t] = clock
    return {"params": count_params(net), "table": net.config["table"], "steps": step, "seconds": clock,
            "ms_per_step": 1000 * clock / max(step, 1), "final_psnr": psnr, "best_psnr": best,
            "reached": reached}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--params", type=int, default=200_000)
    p.add_argument("--seconds", type=float, default=6.0, help="training wall budget per setting")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--lrs", default="3e-3,1e-2,3e-2")
    p.add_argument("--batches", default="2048,4096,8192")
    p.add_argument("--levels", default="8,16")
    p.add_argument("--features", default="2")
    p.add_argument("--adam", choices=("torch", "ngp"), default="torch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="64x64, 20k params, 1 s, two settings")
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.params, a.seconds, a.lrs, a.batches = 64, 20_000, 1.0, "1e-2", "1024,4096"
    torch.set_num_threads(a.threads)
    sig = cameraman(a.size)
    targets = (30.0, 35.0, 40.0)
    load = os.getloadavg()
    print(f"# cameraman {a.size}x{a.size}, ~{a.params} params, {a.seconds:g} s per setting, adam={a.adam}, "
          f"threads={a.threads}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| lr | batch | levels | F | table | params | steps | ms/step | t30 | t35 | t40 | final dB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    fl = lambda s, f: [f(x) for x in s.split(",")]
    for lr, batch, levels, feats in itertools.product(fl(a.lrs, float), fl(a.batches, int), fl(a.levels, int),
                                                      fl(a.features, int)):
        r = run_one(sig, lr=lr, batch=batch, levels=levels, features=feats, params=a.params, seconds=a.seconds,
                    max_steps=a.max_steps, eval_every=a.eval_every, adam=a.adam, seed=a.seed, targets=targets)
        ts = " | ".join("-" if r["reached"][t] is None else f"{r['reached'][t]:.2f}" for t in targets)
        print(f"| {lr:g} | {batch} | {levels} | {feats} | {r['table']} | {r['params']} | {r['steps']} | "
              f"{r['ms_per_step']:.1f} | {ts} | {r['final_psnr']:.2f} |", flush=True)
    load = os.getloadavg()
    print(f"# load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
