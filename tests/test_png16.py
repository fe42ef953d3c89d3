"""The vectorised 16-bit PNG decoder against the previous row-by-row one, for every filter type."""
from __future__ import annotations

import numpy as np
import pytest

from inr import signals
from inr.signals import load
from png16_encoder import encode_png16, filter_rows


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("filters", ["none", "sub", "up", "average", "paeth", "mixed"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (13, 4), (9, 31)])
def test_unfilter_matches_the_previous_decoder(channels, filters, shape):
    rng = np.random.default_rng(hash((channels, filters, shape)) % 2**32)
    h, w = shape
    bpp = 2 * channels
    raw = rng.integers(0, 256, size=(h, w * bpp), dtype=np.uint8)
    kinds = {"none": 0, "sub": 1, "up": 2, "average": 3, "paeth": 4}
    f = rng.integers(0, 5, size=h).astype(np.uint8) if filters == "mixed" else np.full(h, kinds[filters], np.uint8)
    lines = filter_rows(raw, f, bpp)
    new = signals._unfilter(f, lines, bpp)
    assert np.array_equal(new, signals._unfilter_rows(f, lines, bpp))
    assert np.array_equal(new, raw)  # and the encoder round-trips


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_read_png16_every_filter(tmp_path, channels):
    rng = np.random.default_rng(channels)
    a = rng.integers(0, 65536, size=(23, 17, channels), dtype=np.uint16)
    p = tmp_path / "img.png"
    p.write_bytes(encode_png16(a, np.arange(23) % 5))
    got = signals._read_png16(p)
    assert got.dtype == np.uint16 and np.array_equal(got, a[..., 0] if channels == 1 else a)
    sig = load(p)
    assert np.allclose(sig.values, a / 65535.0)


def test_bad_filter_type_is_reported(tmp_path):
    a = np.zeros((3, 3), np.uint16)
    data = bytearray(encode_png16(a, [0, 0, 0]))
    import struct
    import zlib
    body = np.zeros((3, 7), np.uint8)
    body[1, 0] = 7
    idat = zlib.compress(body.tobytes())
    start = data.index(b"IDAT") - 4
    end = data.index(b"IEND") - 4
    data[start:end] = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad PNG filter type 7 in row 1"):
        signals._read_png16(p)
