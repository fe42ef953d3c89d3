"""Measured scans from files: sinograms, angle lists, flat and dark fields (untrusted input).

Formats: ``.npy`` (read with ``allow_pickle=False``; the shape and dtype come from the header and are
checked before any data is read), TIFF (one page; ``tifffile``, shape from the header) and PNG (8- or
16-bit grayscale, size from the IHDR header before decoding).  Angle lists may also be text (one
number per line, or whitespace/comma separated; at most 1 MB).  Every file is limited to
:func:`inr.signals.max_pixels` values (``$INR_MAX_PIXELS``), refused from its header.  Every problem
raises :class:`inr.errors.InputError` naming the option and the file.

Raw transmission data (:func:`line_integrals`): ``p = -log(T) / mu`` with the transmission
``T = (I - dark) / (flat - dark)`` floored at 1e-6 (a ray that records nothing has no finite log).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from inr.errors import InputError

_NPY = b"\x93NUMPY"
_PNG = b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
MAX_TEXT_BYTES = 1 << 20
MIN_TRANSMISSION = 1e-6


def _limit() -> int:
    from inr.signals import max_pixels

    return max_pixels()


def _open_checked(path, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{flag} {p}: no such file")
    if not p.is_file():
        raise InputError(f"{flag} {p}: not a regular file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{flag} {p}: file is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise InputError(f"{flag} {p}: file is empty")
    return p


def _check_count(p, flag, shape, limit) -> None:
    n = 1
    for s in shape:
        n *= int(s)
    if n > limit:
        raise InputError(f"{flag} {p}: the file declares shape {tuple(int(s) for s in shape)} = {n:,} values, above "
                         f"the limit of {limit:,} (set INR_MAX_PIXELS to allow more)")


def _read_npy(p: Path, flag: str, limit: int) -> np.ndarray:
    with open(p, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as e:
            raise InputError(f"{flag} {p}: not a readable .npy file ({' '.join(str(e).split())})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InputError(f"{flag} {p}: .npy holds {dtype} values; expected integers or floats (object arrays are "
                         f"never unpickled)")
    _check_count(p, flag, shape, limit)
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{flag} {p}: corrupt .npy file ({' '.join(str(e).split())})") from None


def _read_tiff(p: Path, flag: str, limit: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            if len(tf.pages) != 1:
                raise InputError(f"{flag} {p}: TIFF has {len(tf.pages)} pages; expected one 2-D page")
            shape = tf.pages[0].shape
            _check_count(p, flag, shape, limit)
            return tf.pages[0].asarray()
    except InputError:
        raise
    except Exception as e:  # tifffile raises many kinds on corrupt input
        raise InputError(f"{flag} {p}: corrupt or unreadable TIFF ({' '.join(str(e).split()) or type(e).__name__})") \
            from None


def _read_png(p: Path, flag: str, limit: int) -> np.ndarray:
    from PIL import Image

    with open(p, "rb") as f:
        head = f.read(33)
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise InputError(f"{flag} {p}: corrupt PNG header")
    w, h = struct.unpack(">II", head[16:24])
    depth, ctype = head[24], head[25]
    _check_count(p, flag, (h, w), limit)
    if ctype != 0 or depth not in (8, 16):
        raise InputError(f"{flag} {p}: PNG is colour type {ctype} at {depth} bits; a sinogram must be 8- or 16-bit "
                         f"grayscale")
    try:
        with Image.open(p) as im:
            im.load()
            a = np.asarray(im)
    except Exception as e:
        raise InputError(f"{flag} {p}: corrupt PNG ({' '.join(str(e).split()) or type(e).__name__})") from None
    return a


def _read_text(p: Path, flag: str) -> np.ndarray:
    if p.stat().st_size > MAX_TEXT_BYTES:
        raise InputError(f"{flag} {p}: text file larger than {MAX_TEXT_BYTES:,} bytes")
    try:
        text = p.read_text(encoding="ascii")
        vals = [float(t) for t in text.replace(",", " ").split()]
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{flag} {p}: expected numbers separated by whitespace or commas") from None
    return np.asarray(vals, dtype=np.float64)


def read_array(path, flag: str, ndim: tuple = (2,), text: bool = False) -> np.ndarray:
    """A finite float64 array from ``path`` (module docstring), with ``ndim`` in ``ndim`` (after squeezing
    unit axes); ``text``: also accept text files."""
    p = _open_checked(path, flag)
    limit = _limit()
    with open(p, "rb") as f:
        head = f.read(8)
    if head[:6] == _NPY:
        a = _read_npy(p, flag, limit)
    elif head[:4] in _TIFF:
        a = _read_tiff(p, flag, limit)
    elif head[:8] == _PNG:
        a = _read_png(p, flag, limit)
    elif text:
        a = _read_text(p, flag)
    else:
        raise InputError(f"{flag} {p}: unrecognised format; expected .npy, TIFF or 16-bit PNG")
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{flag} {p}: holds {a.dtype} values; expected integers or floats")
    a = a.astype(np.float64)
    if a.ndim > 1:
        a = a.reshape([s for s in a.shape if s != 1] or [1])
    if a.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise InputError(f"{flag} {p}: array of shape {a.shape}; expected {want}")
    if a.size == 0:
        raise InputError(f"{flag} {p}: holds no values")
    if not np.isfinite(a).all():
        raise InputError(f"{flag} {p}: holds non-finite values (NaN or inf)")
    return a


def read_sinogram(path, flag: str = "--sinogram") -> np.ndarray:
    """``(views, detectors)``: one row per angle."""
    a = read_array(path, flag, ndim=(2,))
    if min(a.shape) < 2:
        raise InputError(f"{flag} {path}: a sinogram needs at least 2 views and 2 detector bins, got {a.shape}")
    return a


def read_angles(path, views: int, flag: str = "--angles") -> np.ndarray:
    """``views`` projection angles in degrees (npy, TIFF or text)."""
    a = read_array(path, flag, ndim=(1,), text=True).reshape(-1)
    if a.size != views:
        raise InputError(f"{flag} {path}: {a.size} angles for a sinogram of {views} rows (one row per angle)")
    return a


def line_integrals(counts: np.ndarray, flat, dark=None, mu: float = 1.0, flags=("--flat", "--dark")) -> np.ndarray:
    """``-log((counts - dark) / (flat - dark)) / mu`` with the transmission floored at 1e-6; ``flat`` and
    ``dark`` are scalars, one row per detector ``(n_det,)`` or the sinogram's shape."""
    dark = np.zeros(1) if dark is None else np.asarray(dark, dtype=np.float64)
    flat = np.asarray(flat, dtype=np.float64)
    for a, flag in ((flat, flags[0]), (dark, flags[1])):
        if a.size != 1 and a.shape != counts.shape[-1:] and a.shape != counts.shape:
            raise InputError(f"{flag}: shape {a.shape} fits neither one value, one row of {counts.shape[-1]} "
                             f"detector bins, nor the sinogram's {counts.shape}")
    f, d = (a.reshape(()) if a.size == 1 else a for a in (flat, dark))
    gain = np.broadcast_to(f - d, counts.shape)
    if not (gain > 0).all():
        raise InputError(f"{flags[0]}: the flat field must exceed the dark field at every detector bin")
    if not (mu > 0 and np.isfinite(mu)):
        raise InputError(f"--mu must be a positive number, got {mu}")
    t = np.maximum((counts - d) / gain, MIN_TRANSMISSION)
    return -np.log(t) / mu


def write_array(path, a: np.ndarray) -> None:
    """Write ``a`` as ``.npy`` or float32 TIFF (by the suffix) into a new file (``open(..., "xb")``: an
    existing file or a planted symlink is never written through).  Used inside a run's staging folder."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".tif", ".tiff"):
        raise InputError(f"{p}: unsupported output format {suffix!r}; use .npy or .tif")
    with open(p, "xb") as f:
        if suffix == ".npy":
            np.save(f, np.asarray(a), allow_pickle=False)
        else:
            import tifffile

            tifffile.imwrite(f, np.asarray(a, dtype=np.float32))
