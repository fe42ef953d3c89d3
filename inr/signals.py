"""Signals: files <-> (coordinates, target values, how to write a prediction back).

``load(path)`` reads an image (PNG, JPEG, TIFF, BMP; 1/8/16-bit integer or float; gray, gray+alpha,
RGB, RGBA; any H x W) or a sound file (WAV through soundfile: PCM_U8/16/24/32, FLOAT, DOUBLE, ...;
any channel count and rate) into a :class:`Signal`.

Conventions (docs/methods.md section 1):

- Image values are scaled to [0, 1] by the format's maximum (255 for 8-bit, 65535 for 16-bit;
  float images are taken as they are and must lie in [0, 1]).  Coordinates are pixel centres,
  ``y_i = (2 i + 1) / H - 1`` (rows, first coordinate) and ``x_j = (2 j + 1) / W - 1`` (columns).
- Alpha is kept: an RGBA image is fitted as 4 channels (gray+alpha as 2) and written back with
  its alpha, so a round trip loses nothing; metrics average over all channels, alpha included.
- Audio is scaled by its peak ``max |x|`` to [-1, 1] (the scale is recorded and undone on write).
  Coordinates are sample times mapped linearly onto [-1, 1] (first sample -1, last sample +1).
- ``Signal.write(values, path)`` writes a prediction in the same value scale back as a PNG at the
  input size (16-bit PNG for 16-bit or float input) or a WAV at the input rate, channel count and
  subtype.  Pillow cannot read or write 16-bit colour PNGs, so those go through a small PNG codec here.
"""
from __future__ import annotations

import hashlib
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from .errors import InputError


class SignalError(InputError):
    """A file that cannot be used as a signal; the message names the file."""


# Largest image (pixels, H x W) any reader here will decode; checked from the file header before any
# pixel data is decompressed.  Override with the environment variable INR_MAX_PIXELS or load(max_pixels=).
MAX_PIXELS = 64 * 1024 * 1024


def max_pixels(override: int | None = None) -> int:
    """The pixel limit in force: ``override``, else ``$INR_MAX_PIXELS``, else :data:`MAX_PIXELS`."""
    if override is not None:
        return int(override)
    env = os.environ.get("INR_MAX_PIXELS")
    if env:
        try:
            return int(float(env))
        except (ValueError, OverflowError):
            raise SignalError(f"INR_MAX_PIXELS must be a number of pixels, got {env!r}") from None
    return MAX_PIXELS


# Largest sound (frames x channels) any reader here will decode; checked from the file header (soundfile.info)
# before any sample is read.  Override with the environment variable INR_MAX_SAMPLES.
MAX_SAMPLES = 64 * 1024 * 1024


def max_samples() -> int:
    """The audio sample limit in force (frames x channels): ``$INR_MAX_SAMPLES``, else :data:`MAX_SAMPLES`."""
    env = os.environ.get("INR_MAX_SAMPLES")
    if env:
        try:
            return int(float(env))
        except (ValueError, OverflowError):
            raise SignalError(f"INR_MAX_SAMPLES must be a number of samples, got {env!r}") from None
    return MAX_SAMPLES


def _check_pixels(p, h: int, w: int, limit: int) -> None:
    if h * w > limit:
        raise SignalError(f"{p}: image declares {w}x{h} = {w * h:,} pixels, above the limit of {limit:,} "
                          f"(set INR_MAX_PIXELS or max_pixels= to allow larger images)")


def check_pixels(h: int, w: int, what: str = "render") -> None:
    """Refuse an image of ``h x w`` pixels above :func:`max_pixels` (for images made, not read)."""
    _check_pixels(what, h, w, max_pixels())


RENDER_MAX_SAMPLES = 1 << 31   # audio frames x channels a render may produce


def check_samples(n: int, channels: int, what: str = "render") -> None:
    """Refuse audio of ``n`` frames x ``channels`` above :data:`RENDER_MAX_SAMPLES`."""
    if n * channels > RENDER_MAX_SAMPLES:
        raise SignalError(f"{what}: {n:,} frames x {channels} channels is above the limit of "
                          f"{RENDER_MAX_SAMPLES:,} samples")


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
AUDIO_SUFFIXES = {".wav", ".wave", ".flac", ".ogg", ".aif", ".aiff"}


@dataclass
class Signal:
    """A sampled signal on a regular grid.

    Attributes:
        kind: ``"image"`` or ``"audio"``.
        values: float64 array, images ``(H, W, C)`` in [0, 1], audio ``(N, C)`` in [-1, 1].
        source: the file it came from (absolute path), or None.
        builtin: for generated signals, how to regenerate them (``{"name": "cameraman"}``, ...).
        bit_depth: images: 1, 8, 16 or ``"float"``; audio: None (see ``subtype``).
        rate, subtype, scale: audio sample rate, soundfile subtype and the peak the values were divided by.
    """

    kind: str
    values: np.ndarray
    source: str | None = None
    builtin: dict | None = None
    bit_depth: int | str | None = None
    rate: int | None = None
    subtype: str | None = None
    scale: float = 1.0
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple:
        """Grid shape: ``(H, W)`` or ``(N,)``."""
        return tuple(self.values.shape[:-1])

    @property
    def channels(self) -> int:
        return int(self.values.shape[-1])

    @property
    def coord_dim(self) -> int:
        return len(self.shape)

    @property
    def num_points(self) -> int:
        return int(np.prod(self.shape))

    @property
    def name(self) -> str:
        """A short name for run folders: the file stem or the built-in's name."""
        if self.source:
            return Path(self.source).stem
        return (self.builtin or {}).get("name", self.kind)

    def axes(self) -> list[np.ndarray]:
        """The coordinate of every grid line along each axis, in [-1, 1]."""
        if self.kind == "image":
            return [(2 * np.arange(n) + 1) / n - 1 for n in self.shape]
        n = self.shape[0]
        return [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)]

    def coords(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """``(num_points, coord_dim)`` coordinates, row-major over the grid (matches :meth:`targets`)."""
        grids = np.meshgrid(*self.axes(), indexing="ij")
        c = np.stack([g.reshape(-1) for g in grids], axis=-1)
        return torch.as_tensor(c, dtype=dtype, device=device)

    def targets(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """``(num_points, channels)`` values in the signal's scale ([0, 1] images, [-1, 1] audio)."""
        return torch.as_tensor(self.values.reshape(-1, self.channels), dtype=dtype, device=device)

    def reshape(self, flat) -> np.ndarray:
        """A flat ``(num_points, channels)`` prediction as a grid array shaped like :attr:`values`."""
        a = flat.detach().cpu().numpy() if torch.is_tensor(flat) else np.asarray(flat)
        if a.size != self.values.size:
            raise ValueError(f"prediction has {a.size} values, the signal {self.values.size} "
                             f"({self.shape} x {self.channels} channels)")
        return a.reshape(self.values.shape).astype(np.float64)

    def with_values(self, flat) -> "Signal":
        """A copy on the same grid holding ``flat`` ``(num_points, channels)`` values (e.g. a prediction)."""
        from dataclasses import replace

        return replace(self, values=self.reshape(flat), source=None, builtin=None)

    def digest(self) -> str:
        """SHA-256 of the values, to check later that a reloaded source is the one a run was fitted to."""
        return hashlib.sha256(np.ascontiguousarray(self.values, dtype=np.float64).tobytes()).hexdigest()

    def describe(self) -> dict:
        """JSON-able description (recorded in a run's config.json; :func:`from_description` reloads it)."""
        d = {"kind": self.kind, "source": self.source, "builtin": self.builtin, "shape": list(self.shape),
             "channels": self.channels, "bit_depth": self.bit_depth, "rate": self.rate, "subtype": self.subtype,
             "scale": self.scale, "sha256": self.digest()}
        return {**d, **self.extra}

    def write(self, values, path: str | os.PathLike) -> Path:
        """Write a prediction (same scale as :attr:`values`, flat or grid-shaped) back to ``path``.

        Images: PNG at the input size and channel layout, 16-bit for 16-bit or float input, else 8-bit.
        Audio: WAV at the input rate, channel count and subtype (values are multiplied back by ``scale``).
        Written to a temporary name and renamed.
        """
        if self.kind == "image":   # a view where it can: large images are quantized in bands, not copied
            a = values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)
            a = a.reshape(self.values.shape) if a.size == self.values.size else self.reshape(a)
        else:
            a = self.reshape(values)
        path = Path(path)
        from .runfiles import replacing

        with replacing(path) as tmp:
            if self.kind == "image":
                _write_png(tmp, a, sixteen=self.bit_depth in (16, "float"))
            else:
                _write_wav(tmp, a * self.scale, self.rate, self.subtype)
        return path


# ----------------------------------------------------------------------------------------------
# Construction from arrays


def image_from_array(arr, source: str | None = None, builtin: dict | None = None) -> Signal:
    """An image Signal from ``(H, W)`` or ``(H, W, C)`` (C = 1..4) data: uint8 (/255), uint16 (/65535),
    bool (0/1) or float (taken as is, must lie in [0, 1])."""
    a = np.asarray(arr)
    where = source or "image array"
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or not 1 <= a.shape[2] <= 4:
        raise SignalError(f"{where}: expected an H x W image with 1-4 channels, got array shape {a.shape}")
    if min(a.shape[:2]) < 2:
        raise SignalError(f"{where}: image is {a.shape[0]}x{a.shape[1]} pixels, too small to fit (needs at least 2x2)")
    if a.dtype == np.uint8:
        depth, v = 8, a / 255.0
    elif a.dtype == np.uint16:
        depth, v = 16, a / 65535.0
    elif a.dtype == np.bool_:
        depth, v = 1, a.astype(np.float64)
    elif np.issubdtype(a.dtype, np.floating):
        depth, v = "float", a.astype(np.float64)
        if not np.isfinite(v).all() or v.min() < 0 or v.max() > 1:
            raise SignalError(f"{where}: float image values must be finite and lie in [0, 1] "
                              f"(found {np.nanmin(v):.4g} .. {np.nanmax(v):.4g})")
    else:
        raise SignalError(f"{where}: unsupported bit depth / sample type {a.dtype} "
                          f"(supported: 8- or 16-bit unsigned integers, 1-bit, float in [0, 1])")
    return Signal("image", np.ascontiguousarray(v, dtype=np.float64), source=source, builtin=builtin, bit_depth=depth)


def audio_from_array(data, rate: int, subtype: str = "FLOAT", source: str | None = None,
                     builtin: dict | None = None) -> Signal:
    """An audio Signal from ``(N,)`` or ``(N, C)`` float samples; values are divided by the peak."""
    a = np.asarray(data, dtype=np.float64)
    where = source or "audio array"
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise SignalError(f"{where}: expected (samples, channels) audio, got array shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise SignalError(f"{where}: audio is empty (no samples)")
    if not np.isfinite(a).all():
        raise SignalError(f"{where}: audio contains non-finite samples")
    peak = float(np.abs(a).max())
    if peak == 0:
        raise SignalError(f"{where}: audio is silent (every sample is zero); nothing to fit")
    if int(rate) <= 0:
        raise SignalError(f"{where}: sample rate must be positive, got {rate}")
    return Signal("audio", a / peak, source=source, builtin=builtin, rate=int(rate), subtype=subtype, scale=peak)


# ----------------------------------------------------------------------------------------------
# Built-ins


def default_signal() -> Signal:
    """scikit-image's 512 x 512 8-bit cameraman (ships inside the scikit-image wheel)."""
    from skimage import data

    return image_from_array(data.camera(), builtin={"name": "cameraman"})


def test_audio(seconds: float = 1.0, rate: int = 16000) -> Signal:
    """A deterministic test clip: a linear chirp (100 Hz -> rate/8) plus a 220 Hz tone with 3 harmonics,
    under a slow amplitude envelope; mono, peak-normalised."""
    if not (math.isfinite(seconds) and seconds > 0) or rate <= 0:
        raise InputError(f"test_audio needs seconds > 0 and rate > 0, got {seconds}, {rate}")
    if seconds * rate > max_samples():
        raise SignalError(f"test_audio of {seconds:g} s at {rate} Hz is {seconds * rate:,.0f} samples, above the "
                          f"limit of {max_samples():,} (set INR_MAX_SAMPLES to allow more)")
    n = max(2, int(round(seconds * rate)))
    t = np.arange(n) / rate
    f0, f1 = 100.0, rate / 8.0
    chirp = np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / max(seconds, 1e-9) * t ** 2))
    tone = sum(0.6 / k * np.sin(2 * np.pi * 220.0 * k * t + 0.3 * k) for k in range(1, 5))
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t)
    x = env * (0.5 * chirp + 0.5 * tone)
    return audio_from_array(x, rate, subtype="FLOAT", builtin={"name": "test_audio", "seconds": seconds, "rate": rate})


def check_description(desc, where) -> dict:
    """A signal description read from a run folder (untrusted): every field :func:`from_description`
    uses, checked for type and range (:class:`inr.schema.SchemaError` naming ``where`` and the field)."""
    from .schema import Field, check

    builtin = Field(dict, required=False, nullable=True, fields={
        "name": Field(str, choices=("cameraman", "test_audio")),
        "seconds": Field(float, 1e-6, 1e6, required=False, default=1.0),
        "rate": Field(int, 1, 10_000_000, required=False, default=16000)})
    d = check(desc, {"builtin": builtin, "source": Field(str, required=False, nullable=True, max_len=4096),
                     "sha256": Field(str, required=False, nullable=True, max_len=128),
                     "kind": Field(str, choices=("image", "audio"), required=False)}, where, prefix="signal.")
    b = d.get("builtin")
    if b and b["name"] == "test_audio" and b["seconds"] * b["rate"] > max_samples():
        raise SignalError(f"{where}: field 'signal.builtin' asks for {b['seconds'] * b['rate']:,.0f} samples, above "
                          f"the limit of {max_samples():,} (INR_MAX_SAMPLES)")
    return d


def from_description(desc: dict) -> Signal:
    """Reload the signal a run description (:meth:`Signal.describe`) refers to."""
    b = desc.get("builtin")
    if b:
        if b["name"] == "cameraman":
            return default_signal()
        if b["name"] == "test_audio":
            return test_audio(b["seconds"], b["rate"])
        raise SignalError(f"unknown built-in signal {b['name']!r}")
    if not desc.get("source"):
        raise SignalError("the run was fitted to an in-memory signal with no source file; it cannot be reloaded")
    return load(desc["source"])


# ----------------------------------------------------------------------------------------------
# Loading files


def load(path: str | os.PathLike | None = None, max_pixels: int | None = None) -> Signal:
    """Load an image or sound file; ``None`` gives the built-in cameraman.

    Images larger than ``max_pixels`` (default :func:`max_pixels`: ``$INR_MAX_PIXELS`` or
    :data:`MAX_PIXELS`) are refused from their header, before any pixel data is decompressed.

    Raises:
        SignalError: missing path, not an image/sound file, corrupt file, empty or silent audio,
            an image smaller than 2x2, an unsupported bit depth.
    """
    if path is None:
        return default_signal()
    p = Path(path)
    if not p.exists():
        raise SignalError(f"{p}: no such file")
    if p.is_dir():
        raise SignalError(f"{p}: is a folder, not an image or sound file")
    if not os.access(p, os.R_OK):
        raise SignalError(f"{p}: file is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise SignalError(f"{p}: file is empty")
    src = str(p.resolve())
    suffix = p.suffix.lower()
    if suffix in AUDIO_SUFFIXES:
        return _load_audio(p, src)
    limit = globals()["max_pixels"](max_pixels)
    if suffix in IMAGE_SUFFIXES:
        return _load_image(p, src, limit=limit)
    # unknown suffix: sniff the content
    with open(p, "rb") as f:
        head = f.read(12)   # not the whole file: it may be a sparse file of many GB
    if head[:4] in (b"RIFF", b"RIFX", b"fLaC", b"OggS", b"FORM"):
        return _load_audio(p, src)
    return _load_image(p, src, sniffed=True, limit=limit)


def _load_audio(p: Path, src: str) -> Signal:
    import soundfile as sf

    try:
        info = sf.info(str(p))
    except Exception as e:  # libsndfile's errors are RuntimeError/LibsndfileError with a useful message
        raise SignalError(f"{p}: not a readable sound file ({_one_line(e)})") from None
    limit = max_samples()
    if info.frames * info.channels > limit:   # from the header, before any sample is read
        raise SignalError(f"{p}: sound declares {info.frames:,} frames x {info.channels} channels = "
                          f"{info.frames * info.channels:,} samples, above the limit of {limit:,} "
                          f"(set INR_MAX_SAMPLES to allow longer sounds)")
    try:
        data, rate = sf.read(str(p), dtype="float64", always_2d=True, frames=max(info.frames, 0))
    except Exception as e:
        raise SignalError(f"{p}: not a readable sound file ({_one_line(e)})") from None
    if data.shape[0] == 0:
        raise SignalError(f"{p}: audio is empty (0 samples)")
    return audio_from_array(data, rate, subtype=info.subtype, source=src)


def _load_image(p: Path, src: str, sniffed: bool = False, limit: int = MAX_PIXELS) -> Signal:
    from PIL import Image, UnidentifiedImageError

    with open(p, "rb") as f:
        head = f.read(32)
    if head[:8] == _PNG_SIG and len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        _check_pixels(p, h, w, limit)
    try:
        if head[:4] in _TIFF_MAGIC:  # tifffile: Pillow cannot open float, 16-bit colour or gray+alpha TIFFs
            arr = _read_tiff(p, limit)
        elif head[:8] == _PNG_SIG and len(head) > 24 and head[24] == 16:
            arr = _read_png16(p)
        else:
            with Image.open(p) as im:
                _check_pixels(p, im.size[1], im.size[0], limit)  # from the header; nothing decoded yet
                im.load()
                arr = _pil_to_array(im, p)
    except SignalError:
        raise
    except UnidentifiedImageError:
        what = "an image or sound file" if sniffed else "a readable image"
        raise SignalError(f"{p}: not {what} (unrecognised format or corrupt header)") from None
    except Exception as e:  # decoders raise OSError, ValueError, struct/zlib errors, tifffile errors, ...
        raise SignalError(f"{p}: corrupt or unreadable image ({_one_line(e)})") from None
    return image_from_array(arr, source=src)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _pil_to_array(im, p: Path) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    elif mode == "I":
        a = np.asarray(im)
        if a.min() >= 0 and a.max() <= 65535:  # Pillow widens 16-bit gray to 32-bit in some formats
            return a.astype(np.uint16)
        raise SignalError(f"{p}: unsupported bit depth (32-bit integer samples)")
    return np.asarray(im)


def _read_tiff(p: Path, limit: int = MAX_PIXELS) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(p) as tf:
        if len(tf.pages) > 1 or len(tf.series) > 1:
            raise SignalError(f"{p}: TIFF holds {max(len(tf.pages), len(tf.series))} pages, not a single 2-D "
                              f"image (multi-page / volume TIFFs are not supported)")
        series = tf.series[0]
        axes, shape = series.axes, series.shape
        if "Y" in axes and "X" in axes:
            _check_pixels(p, shape[axes.index("Y")], shape[axes.index("X")], limit)
        if int(np.prod(shape)) > 4 * limit:
            raise SignalError(f"{p}: TIFF declares {shape} samples, above 4 x the pixel limit of {limit:,}")
        arr = series.asarray()
    if axes in ("YX", "YXS"):
        return arr
    if axes == "SYX" and arr.shape[0] <= 4:  # planar (channel-first) storage
        return np.moveaxis(arr, 0, -1)
    raise SignalError(f"{p}: TIFF with axes {axes} and shape {arr.shape} is not a single 2-D image "
                      f"(multi-page / volume TIFFs are not supported)")


# ----------------------------------------------------------------------------------------------
# A small PNG codec for 16-bit images (Pillow truncates 16-bit colour PNGs to 8 bits)

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_CTYPE_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}


def _png_chunks(data: bytes):
    if data[:8] != _PNG_SIG:
        raise ValueError("not a PNG signature")
    i = 8
    while i + 8 <= len(data):
        n, tag = struct.unpack(">I4s", data[i:i + 8])
        body = data[i + 8:i + 8 + n]
        if len(body) != n:
            raise ValueError("truncated PNG chunk")
        yield tag, body
        if tag == b"IEND":
            return
        i += 12 + n
    raise ValueError("PNG has no IEND chunk (truncated file)")


def _read_png16(p: Path) -> np.ndarray:
    data = p.read_bytes()
    idat, ihdr = [], None
    for tag, body in _png_chunks(data):
        if tag == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
    if ihdr is None:
        raise ValueError("PNG has no IHDR chunk")
    w, h, depth, ctype, _, _, interlace = ihdr
    if depth != 16 or ctype not in _CTYPE_CHANNELS:
        raise ValueError(f"unexpected PNG header (bit depth {depth}, colour type {ctype})")
    if interlace:
        raise SignalError(f"{p}: interlaced 16-bit PNGs are not supported; re-save without interlacing")
    c = _CTYPE_CHANNELS[ctype]
    bpp, stride = 2 * c, w * 2 * c
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    if raw.size != h * (stride + 1):
        raise ValueError(f"PNG pixel data has {raw.size} bytes, expected {h * (stride + 1)}")
    raw = raw.reshape(h, stride + 1)
    out = _unfilter(raw[:, 0], raw[:, 1:], bpp)
    a = out.view(">u2").astype(np.uint16).reshape(h, w, c)
    return a[..., 0] if c == 1 else a


def _unfilter(filters: np.ndarray, lines: np.ndarray, bpp: int) -> np.ndarray:
    """Undo the PNG row filters: ``filters`` (H,) types 0-4, ``lines`` (H, stride) filtered bytes ->
    (H, stride) uint8 raw bytes (``bpp`` bytes per pixel, the filters' left distance).

    Without Average (3) / Paeth (4) rows every row is one numpy operation.  With them, each byte depends
    on the reconstructed byte to its left, the one above and the one above-left, so the image is decoded
    along anti-diagonals of pixels (x + y = d): all pixels of a diagonal depend only on the two diagonals
    before it, and in a zero-padded copy stored row-major with row length W + 1 the pixels of one
    diagonal are evenly spaced (step W), so each diagonal is a strided view.  That is H + W - 1 vectorised
    steps over every row's filter type at once instead of H x W per-pixel steps."""
    f = np.asarray(filters)
    if f.size and int(f.max(initial=0)) > 4:
        y = int(np.argmax(f > 4))
        raise ValueError(f"bad PNG filter type {f[y]} in row {y}")
    h, stride = lines.shape
    if not np.isin(f, (3, 4)).any():
        out = np.empty((h, stride), dtype=np.uint8)
        prev = np.zeros(stride, dtype=np.uint8)
        w = stride // bpp
        for y in range(h):
            line = lines[y]
            if f[y] == 0:
                cur = line
            elif f[y] == 1:  # Sub: running sum along the row, per byte of a pixel
                cur = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(-1)
            else:  # Up
                cur = line + prev
            out[y] = cur
            prev = out[y]
        return out
    w = stride // bpp
    # padded pixel grid (h+1, w+1, bpp): row 0 and column 0 are zeros (the PNG's "outside" bytes)
    P = np.zeros(((h + 1) * (w + 1), bpp), dtype=np.int16)
    X = np.zeros_like(P)
    X.reshape(h + 1, w + 1, bpp)[1:, 1:] = lines.reshape(h, w, bpp)
    F = np.zeros((h + 1) * (w + 1), dtype=np.int8)
    F.reshape(h + 1, w + 1)[1:, :] = f[:, None]
    # pixel (y, x) sits at flat index (y+1)(w+1) + x+1; on diagonal d = x + y it is y*w + d + w + 2
    for d in range(h + w - 1):
        y0, y1 = max(0, d - w + 1), min(h - 1, d)
        start = y0 * w + d + w + 2
        sl = slice(start, start + (y1 - y0) * w + 1, w)
        a = P[start - 1:sl.stop - 1:w]             # left
        b = P[start - w - 1:sl.stop - w - 1:w]     # up
        c = P[start - w - 2:sl.stop - w - 2:w]     # up-left
        ft = F[sl][:, None]
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.where(ft == 4, paeth, np.where(ft == 3, (a + b) >> 1,
                                                 np.where(ft == 2, b, np.where(ft == 1, a, 0))))
        P[sl] = (X[sl] + pred) & 0xFF
    return P.reshape(h + 1, w + 1, bpp)[1:, 1:].astype(np.uint8).reshape(h, stride)


def _unfilter_rows(filters: np.ndarray, lines: np.ndarray, bpp: int) -> np.ndarray:
    """The previous, row-by-row decoder (Average / Paeth pixel by pixel): the reference the tests
    compare :func:`_unfilter` against; far slower on Average / Paeth rows."""
    h, stride = lines.shape
    w = stride // bpp
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(h):
        f, line = filters[y], lines[y]
        if f == 0:
            cur = line.copy()
        elif f == 1:
            cur = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif f == 2:
            cur = line + prev
        elif f in (3, 4):
            cur = _unfilter_sequential(f, line, prev, bpp)
        else:
            raise ValueError(f"bad PNG filter type {f} in row {y}")
        out[y], prev = cur, cur
    return out


def _unfilter_sequential(f: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    x, up = line.astype(np.int32), prev.astype(np.int32)
    cur = np.zeros_like(x)
    left = np.zeros(bpp, dtype=np.int32)
    upleft = np.zeros(bpp, dtype=np.int32)
    for i in range(0, x.size, bpp):
        b = up[i:i + bpp]
        if f == 3:
            pred = (left + b) >> 1
        else:
            pa, pb, pc = np.abs(b - upleft), np.abs(left - upleft), np.abs(left + b - 2 * upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, b, upleft))
        left = (x[i:i + bpp] + pred) & 0xFF
        cur[i:i + bpp] = left
        upleft = b
    return cur.astype(np.uint8)


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def _write_png16(path, a: np.ndarray) -> None:
    """Write uint16 ``(H, W, C)`` as a 16-bit PNG (filter type 0 on every row)."""
    h, w, c = a.shape
    ctype = {v: k for k, v in _CTYPE_CHANNELS.items()}[c]
    rows = a.astype(">u2").view(np.uint8).reshape(h, w * c * 2)
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rows], axis=1)
    png = (_PNG_SIG + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _png_chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


PNG_FAST_PIXELS = 1 << 20   # larger 8-bit PNGs are written with zlib level 1 (several times faster, ~10-30 % larger)


def _quantize(a: np.ndarray, top: int, dtype, band: int = 256) -> np.ndarray:
    """``round(clip(a, 0, 1) * top)`` as ``dtype``, in bands of rows (memory ~ the result)."""
    q = np.empty(a.shape, dtype=dtype)
    for r0 in range(0, a.shape[0], band):
        q[r0:r0 + band] = np.round(np.clip(a[r0:r0 + band], 0.0, 1.0) * top)
    return q


def _write_png(path, a: np.ndarray, sixteen: bool) -> None:
    if sixteen:
        _write_png16(path, _quantize(a, 65535, np.uint16))
        return
    from PIL import Image

    q = _quantize(a, 255, np.uint8)
    level = 1 if q.shape[0] * q.shape[1] > PNG_FAST_PIXELS else 6
    Image.fromarray(q[:, :, 0] if q.shape[2] == 1 else q).save(path, format="PNG", compress_level=level)


def _write_wav(path, a: np.ndarray, rate: int, subtype: str | None) -> None:
    import soundfile as sf

    st = subtype if subtype and sf.check_format("WAV", subtype) else "FLOAT"
    if st not in ("FLOAT", "DOUBLE"):
        a = np.clip(a, -1.0, 1.0)  # integer subtypes: keep libsndfile from wrapping around
    sf.write(str(path), a, int(rate), subtype=st, format="WAV")
