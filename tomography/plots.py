"""Figures of a CT run: PNG images without pyplot, and the truth / reconstructions / error-map panel."""
from __future__ import annotations

import numpy as np


def save_png(path, array, cmap="gray", vmin=0.0, vmax=1.0) -> None:
    from matplotlib.image import imsave  # no pyplot, no global backend switch

    imsave(path, np.asarray(array), cmap=cmap, vmin=vmin, vmax=vmax, format="png")


def comparison_figure(path, truth, recons: dict, metrics: dict, title: str = "") -> None:
    """Truth and each reconstruction (top) with absolute error maps (bottom)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(recons)
    fig = Figure(figsize=(2.6 * (len(names) + 1), 6.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, len(names) + 1, squeeze=False)
    ax[0, 0].imshow(truth, cmap="gray", vmin=0, vmax=1)
    ax[0, 0].set_title("truth")
    ax[1, 0].axis("off")
    for k, n in enumerate(names, 1):
        ax[0, k].imshow(np.clip(recons[n], 0, 1), cmap="gray", vmin=0, vmax=1)
        m = metrics.get(n, {})
        ax[0, k].set_title(f"{n}\n{m.get('psnr', float('nan')):.2f} dB / {m.get('ssim', float('nan')):.3f}",
                           fontsize=9)
        ax[1, k].imshow(np.abs(np.clip(recons[n], 0, 1) - truth), cmap="inferno", vmin=0, vmax=0.25)
        ax[1, k].set_title("|error| (0..0.25)", fontsize=8)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
