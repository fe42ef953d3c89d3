"""A fitted run, re-sampled (``inr render``) or exported (``inr export``).

Both rebuild the model from the run folder (:meth:`inr.fitting.Fit.load`) and write one new file that
must not exist; nothing is written into the run folder.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .fitting import Fit, predict
from .runs import RunError, check_out
from .train import resolve_device


def render_run(run_dir, size=None, rate: int | None = None, out=None, device: str = "auto") -> Path:
    """Write the run's signal at ``size`` (images, ``(H, W)``) or ``rate`` (audio) to ``out`` (PNG / WAV)."""
    f = Fit.load(run_dir, device=str(resolve_device(device)))
    grid = f.render(size, rate)
    if out is None:
        tag = "x".join(str(v) for v in grid.shape) if f.kind == "image" else str(grid.rate)
        out = Path(str(Path(run_dir)).rstrip("/") + f"-render-{tag}" + (".png" if f.kind == "image" else ".wav"))
    out = check_out(out)
    suffix = ".png" if f.kind == "image" else ".wav"
    if out.suffix.lower() != suffix:
        raise RunError(f"--out {out}: a {f.kind} render is written as {suffix}")
    grid.write(grid.values, out)
    return out


class _Plain(torch.nn.Module):
    """The model on the signal's scale, for export (images: [0, 1]; audio: amplitude)."""

    def __init__(self, model, kind: str):
        super().__init__()
        self.model, self.image = model, kind == "image"

    def forward(self, x):
        y = self.model(x)
        return (y + 1) * 0.5 if self.image else y


def exportable(f: Fit):
    """The run's model rebuilt for export: LRNN layers on the plain (autograd) kernel, whose operations
    torch.export traces; the weights are the same."""
    from .models import from_config

    cfg = dict(f.model.config)
    if "kernel" in cfg or cfg["name"].startswith("lrnn"):
        cfg["kernel"] = "plain"
    net = from_config(cfg)
    net.load_state_dict(f.model.state_dict())
    return net.eval()


def export_run(run_dir, fmt: str = "torch", out=None) -> tuple[Path, float]:
    """Export the run's model (signal scale) to ``out``; returns the path and the largest absolute
    difference between the exported program and the model on the fitted grid (up to 65,536 points)."""
    f = Fit.load(run_dir, device="cpu")
    net = _Plain(exportable(f), f.kind)
    grid = f.render()
    coords = grid.coords()[:65536]
    suffix = ".pt2" if fmt == "torch" else ".onnx"
    out = check_out(Path(out) if out is not None else Path(str(Path(run_dir)).rstrip("/") + suffix))
    d = len(f.signal_info["shape"])
    example = (torch.zeros(8, d),)
    batch = torch.export.Dim("points", min=1, max=1 << 30)
    try:
        prog = torch.export.export(net, example, dynamic_shapes=({0: batch},))
    except Exception as e:  # noqa: BLE001 - an operator torch.export cannot trace
        raise RunError(f"{f.model.config['name']}: torch.export cannot trace this model "
                       f"({' '.join(str(e).split())[:200]})") from None
    want = predict(f.model, coords, f.kind).float()
    if fmt == "torch":
        # an exclusive temporary file beside ``out`` (unpredictable name; torch.export.save wants a .pt2
        # suffix), then hard-linked to ``out``: a file that appeared there meanwhile is never replaced
        fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
        os.close(fd)
        try:
            torch.export.save(prog, tmp)
            try:
                os.link(tmp, out)
            except FileExistsError:
                raise RunError(f"--out {out}: already exists; choose a new file (existing files are never "
                               f"replaced)") from None
        finally:
            os.unlink(tmp)
        got = torch.export.load(out).module()(coords)
    else:
        got = _onnx(net, example, coords, out)
    err = float((got.detach().double() - want.double()).abs().max())
    return out, err


def _onnx(net, example, coords, out: Path) -> torch.Tensor:
    try:
        import onnxruntime as ort  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise RunError("--format onnx needs the packages onnx, onnxscript and onnxruntime "
                       "(pip install onnx onnxscript onnxruntime)") from None
    tmp = out.with_name(f".{out.name}.tmp")
    torch.onnx.export(net, example, str(tmp), dynamic_shapes=({0: torch.export.Dim("points")},), dynamo=True)
    os.replace(tmp, out)
    sess = ort.InferenceSession(str(out))
    name = sess.get_inputs()[0].name
    return torch.as_tensor(np.asarray(sess.run(None, {name: coords.numpy()})[0]))
