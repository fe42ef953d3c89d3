"""Shared fixtures: tiny images and WAV files written into tmp_path, and a one-thread torch."""
from __future__ import annotations

import os

import numpy as np
import pytest

# LRNN fits default to torch.compile'd kernels where a C++ compiler exists; compiling costs ~15-40 s per
# kernel and process, so the suite fits with the eager kernels.  The compiled kernels are tested directly
# (test_lrnn_kernels.py, test_lrnn_harmonic.py), and the choice itself in test_lrnn_harmonic.py.
os.environ.setdefault("INR_COMPILE", "0")


@pytest.fixture
def torch_one_thread():
    """Run torch on one thread for the test (much faster than 2 on a loaded 2-core machine), then restore."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def smooth_image(h: int, w: int, channels: int = 1, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """A smooth random image (a few low-frequency waves) so tiny fits make visible progress."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = []
    for _ in range(channels):
        f = rng.uniform(1, 4, size=(3, 2))
        v = sum(np.sin(2 * np.pi * (a * y + b * x) + rng.uniform(0, 6)) for a, b in f) / 6 + 0.5
        chans.append(v)
    v = np.clip(np.stack(chans, -1), 0, 1)
    top = np.iinfo(dtype).max
    out = np.round(v * top).astype(dtype)
    return out[..., 0] if channels == 1 else out


@pytest.fixture
def tiny_png(tmp_path):
    """A 32 x 32 8-bit gray PNG; returns (path, uint8 array)."""
    from PIL import Image

    a = smooth_image(32, 32)
    p = tmp_path / "tiny.png"
    Image.fromarray(a).save(p)
    return p, a


@pytest.fixture
def tiny_wav(tmp_path):
    """0.05 s of 16-bit mono audio at 8 kHz (two tones); returns (path, int16 array)."""
    import soundfile as sf

    t = np.arange(400) / 8000
    x = 0.6 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 1250 * t)
    a = np.round(x * 32767).astype(np.int16)
    p = tmp_path / "tiny.wav"
    sf.write(p, a, 8000, subtype="PCM_16")
    return p, a


@pytest.fixture
def interrupt_fit_at(monkeypatch):
    """``interrupt_fit_at(step)``: the next fit_signal raises KeyboardInterrupt when it reaches ``step``
    (once), as a Ctrl-C would."""
    from inr import fitting

    def arm(at_step):
        real = fitting.make_loss
        state = {"armed": True}

        def make_loss(*args, **kw):
            inner = real(*args, **kw)

            def loss_fn(step):
                if state["armed"] and step == at_step:
                    state["armed"] = False
                    raise KeyboardInterrupt
                return inner(step)
            return loss_fn

        monkeypatch.setattr(fitting, "make_loss", make_loss)
    return arm


def _fit_overrides(kw: dict) -> dict:
    """Keyword options by name (as ``inr.fit`` takes them), with ``model_options`` spread out and
    ``target_psnr`` / ``target_mse`` as ``targets``."""
    kw = dict(kw)
    opts = kw.pop("model_options", None) or {}
    for k in ("target_psnr", "target_mse"):
        if k in kw:
            kw["targets"] = kw.pop(k)
    return {**kw, **opts}


def fit_and_save(signal, out, **kw) -> dict:
    """``inr.fit(signal, **kw).save(out)``; returns the metrics with ``run_dir``."""
    from inr.fitting import fit

    f = fit(signal, **_fit_overrides(kw))
    f.save(out)
    return {**f.metrics, "run_dir": str(out)}


def fit_config(**kw):
    from inr.fitting import FitConfig, with_overrides

    return with_overrides(FitConfig(), _fit_overrides(kw))


def fit_files(files, out=None, group_size=16, engine="auto", shard=(0, 1), merge=True, **kw) -> dict:
    """``inr.batched.fit_many`` with the options by name."""
    from inr.batched import fit_many

    return fit_many(files, fit_config(**kw), out, group_size, engine, shard=shard, merge=merge)
