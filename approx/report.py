"""Writes the Runge study's results: metrics.json, table.md, fits.png, coefficients.png, curves.png.

Every file is written to a temporary name and renamed, so a file that exists is complete.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from inr.runfiles import replacing, write_json, write_text


def _atomic_text(path: Path, text: str) -> None:
    write_text(path, text)


def _atomic_fig(fig, path: Path) -> None:
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _fmt(v: float, digits: int = 4) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.{digits}f}"


def table_md(metrics: dict) -> str:
    cfg, summ = metrics["config"], metrics["summary"]
    paper = metrics["paper_table_ii_rmse"]
    lines = [
        f"# Runge study: f(x) = {metrics['target']} on [-1, 1]",
        "",
        f"Network {'-'.join(map(str, cfg['widths']))} ({'compact' if cfg['compact'] else 'full'} quadratic "
        f"neurons for the QNN strategies, ReLU between layers); {cfg['n_train']} equispaced training points, "
        f"{cfg['n_test']} test points off the training grid; full-batch Adam, {cfg['steps']} steps, cosine "
        f"schedule lr {cfg['lr']:g} -> {cfg['lr'] * cfg['lr_final']:g}"
        + (f", then up to {cfg['lbfgs_steps']} L-BFGS steps of {cfg.get('lbfgs_iter', 10)} iterations (lr "
           f"{cfg.get('lbfgs_lr', 1.0):g}, strong Wolfe)" if cfg.get("lbfgs_steps") else "")
        + f"; ReLinear-sg lr_g {cfg['lr_g']:g}, "
        f"lr_b {cfg['lr_b']:g}; ReLinear-sw L1 alpha {cfg['alpha']:g} / L2 beta {cfg['beta']:g} per step; "
        f"{cfg['seeds']} seeds from {cfg['seed']}; device {metrics['device']}.",
        "",
        "| strategy | test RMSE mean +- std | min | max | diverged | pieces (mean) | max abs coef deg 0-2 "
        "| deg 3-8 | deg >= 9 | max rel. error of pieces | paper (Table II) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, v in summ.items():
        r, c = v["test_rmse"], np.asarray(v["max_abs_coef_per_degree"], dtype=float)
        bands = [c[a:b].max() if c[a:b].size else float("nan") for a, b in ((0, 3), (3, 9), (9, None))]
        lines.append(f"| {s} | {_fmt(r['mean'])} +- {_fmt(r['std'])} | {_fmt(r['min'])} | {_fmt(r['max'])} | "
                     f"{v['diverged']}/{v['runs']} | {v['n_pieces']['mean']:.1f} | "
                     + " | ".join("-" if not math.isfinite(b) else f"{b:.3g}" for b in bands)
                     + f" | {v['pieces_max_relative_error']:.1e} | {paper.get(s, '-')} |")
    lines += ["", "Classical references at the same training points (and one at Chebyshev points):", "",
              "| method | test RMSE |", "|---|---|"]
    for k, v in metrics["references"].items():
        lines.append(f"| {k} | {v['test_rmse']:.4g} |")
    width = max(len(v["max_abs_coef_per_degree"]) for v in summ.values())
    lines += ["", "Largest |coefficient| of each degree (monomials in x) over all pieces of all seeds:", "",
              "| strategy | " + " | ".join(str(d) for d in range(width)) + " |",
              "|---|" + "---|" * width]
    for s, v in summ.items():
        c = v["max_abs_coef_per_degree"] + [float("nan")] * (width - len(v["max_abs_coef_per_degree"]))
        lines.append(f"| {s} | " + " | ".join("-" if not math.isfinite(x) else f"{x:.2g}" for x in c) + " |")
    lines += ["", f"Pieces: every trained model expanded exactly; max |formula - network| relative to max |network| "
                  f"on a dense float64 grid, tolerance {cfg['pieces_tol']:g}: "
                  f"{'all within' if metrics['pieces_all_within_tol'] else 'SOME ABOVE'} tolerance.",
              f"Wall time {metrics['seconds']:.0f} s. Models: models/<strategy>-seed<k>/ "
              "(read them with `python -m approx pieces DIR`).", ""]
    return "\n".join(lines)


def write_all(out: Path, metrics: dict, runs: list, refs: dict, data: dict, f) -> None:
    write_json({"config": metrics["config"], "target": metrics.get("target"), "device": metrics.get("device"),
                "versions": metrics.get("versions")}, out / "config.json")   # --config reads "config" back
    write_json(metrics, out / "metrics.json")   # non-finite numbers become null: never a bare NaN token
    _atomic_text(out / "table.md", table_md(metrics))
    plot_fits(out / "fits.png", runs, refs, data, f)
    plot_coefficients(out / "coefficients.png", runs)
    plot_curves(out / "curves.png", runs)


def _first_per_strategy(runs: list) -> dict:
    first = {}
    for r in runs:
        first.setdefault(r["strategy"], r)
    return first


def _figure(size):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def plot_fits(path: Path, runs: list, refs: dict, data: dict, f) -> None:
    import torch

    xs = np.linspace(-1, 1, 2001)
    truth = f(xs)
    fig = _figure((13, 4.5))
    ax, ax2 = fig.subplots(1, 2)
    ax.plot(xs, truth, "k-", lw=2.5, alpha=0.35, label="target")
    ax.plot(data["x_train"], data["y_train"], "ko", ms=3.5, label="training points")
    for s, r in _first_per_strategy(runs).items():
        with torch.no_grad():
            y = r["net"].double()(torch.from_numpy(xs)[:, None])[:, 0].numpy()
        ax.plot(xs, y, lw=1.2, label=f"{s} (seed {r['seed']})")
        ax2.semilogy(xs, np.abs(y - truth) + 1e-12, lw=1.0, label=s)
    for k, v in refs.items():
        y = v["fn"](xs)
        ax.plot(xs, y, "--", lw=1.0, label=k.split(",")[0].split("(")[0].strip())
        ax2.semilogy(xs, np.abs(y - truth) + 1e-12, "--", lw=0.8, label=k.split("(")[0].strip())
    ax.set_ylim(-0.3, 1.3)
    ax.set_title("fits (first seed of each strategy)")
    ax.set_xlabel("x")
    ax.legend(fontsize=7, loc="upper right")
    ax2.set_ylim(1e-7, 10)
    ax2.set_title("|fit - target|")
    ax2.set_xlabel("x")
    ax2.legend(fontsize=7, loc="lower center", ncol=2)
    _atomic_fig(fig, path)


def plot_coefficients(path: Path, runs: list, per_panel: int = 4) -> None:
    """The paper's Fig. 5(b-e): |coefficients| of randomly chosen pieces, one panel per strategy."""

    first = {s: r for s, r in _first_per_strategy(runs).items() if "pw" in r}
    if not first:
        return
    fig = _figure((3.6 * len(first), 3.4))
    axes = fig.subplots(1, len(first), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    for ax, (s, r) in zip(axes[0], first.items()):
        pw = r["pw"]
        pick = rng.choice(len(pw.pieces), size=min(per_panel, len(pw.pieces)), replace=False)
        for k in sorted(pick):
            p = pw.pieces[k]
            c = np.abs(p.coef[:p.degree + 1])
            ax.semilogy(np.arange(c.size), c + 1e-300, "o-", ms=3, lw=0.8, label=f"[{p.lo:.2f}, {p.hi:.2f}]")
        ax.set_title(f"{s} (seed {r['seed']})", fontsize=9)
        ax.set_xlabel("degree")
        ax.set_ylim(1e-12, None)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("|coefficient| (monomials in x)")
    _atomic_fig(fig, path)


def plot_curves(path: Path, runs: list) -> None:

    fig = _figure((6, 4))
    ax = fig.subplots()
    for s, r in _first_per_strategy(runs).items():
        h = [row for row in r["history"] if "loss" in row]
        if h:
            ax.semilogy([row["step"] for row in h], [row["loss"] for row in h], lw=1, label=s)
    ax.set_xlabel("step")
    ax.set_ylabel("training MSE")
    ax.legend(fontsize=8)
    _atomic_fig(fig, path)
