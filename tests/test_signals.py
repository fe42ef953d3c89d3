"""inr.signals: every format round-trips exactly, coordinates are pixel centres, errors are clear."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
import tifffile
from PIL import Image

from conftest import smooth_image
from inr import signals as S
from inr.signals import SignalError

SHAPES = {1: (5, 9), 2: (6, 4, 2), 3: (7, 10, 3), 4: (9, 6, 4)}  # non-square on purpose
MODES8 = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _as_hwc(a):
    return a[:, :, None] if a.ndim == 2 else a


# ---------------------------------------------------------------------------- images


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("fmt", ["png", "bmp", "tif"])
def test_8bit_images_round_trip(tmp_path, fmt, channels):
    if fmt == "bmp" and channels in (2, 4):
        pytest.skip("BMP has no gray+alpha layout, and Pillow reads 32-bit BMPs without their alpha")
    a = smooth_image(*SHAPES[channels][:2], channels=channels, seed=channels)
    p = tmp_path / f"img.{fmt}"
    if fmt == "tif":
        tifffile.imwrite(p, a, photometric="minisblack" if channels <= 2 else "rgb",
                         extrasamples=["unassalpha"] if channels in (2, 4) else None)
    else:
        Image.fromarray(a).save(p)
    s = S.load(p)
    assert s.kind == "image" and s.bit_depth == 8
    assert s.shape == a.shape[:2] and s.channels == channels
    np.testing.assert_array_equal(s.values, _as_hwc(a) / 255.0)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16bit_tiff_and_float_tiff_round_trip(tmp_path, channels):
    a = smooth_image(*SHAPES[channels][:2], channels=channels, dtype=np.uint16, seed=7)
    photometric = "minisblack" if channels == 1 else "rgb"
    tifffile.imwrite(tmp_path / "a.tif", a, photometric=photometric)
    s = S.load(tmp_path / "a.tif")
    assert s.bit_depth == 16
    np.testing.assert_array_equal(s.values, _as_hwc(a) / 65535.0)
    f = (a / 65535.0).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tiff", f, photometric=photometric)
    s = S.load(tmp_path / "f.tiff")
    assert s.bit_depth == "float"
    np.testing.assert_array_equal(s.values, _as_hwc(f).astype(np.float64))


def test_planar_tiff_is_read_channel_last(tmp_path):
    a = smooth_image(5, 8, channels=3, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(a, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(S.load(tmp_path / "p.tif").values, a / 65535.0)


def test_16bit_gray_png_written_by_pillow(tmp_path):
    a = smooth_image(6, 11, dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g.png")
    s = S.load(tmp_path / "g.png")
    assert s.bit_depth == 16
    np.testing.assert_array_equal(s.values, a[:, :, None] / 65535.0)


def _filtered_png16(a: np.ndarray, filt: int) -> bytes:
    """An independent 16-bit PNG encoder (PNG spec section 9) using one filter type on every row."""
    h, w, c = a.shape
    bpp = 2 * c
    raw = a.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int64)
    rows = []
    for y in range(h):
        cur = raw[y]
        up = raw[y - 1] if y else np.zeros_like(cur)
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])
        if filt == 0:
            pred = np.zeros_like(cur)
        elif filt == 1:
            pred = left
        elif filt == 2:
            pred = up
        elif filt == 3:
            pred = (left + up) // 2
        else:
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        rows.append(bytes([filt]) + ((cur - pred) % 256).astype(np.uint8).tobytes())

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("filt", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_every_filter_and_layout(tmp_path, filt, channels):
    rng = np.random.default_rng(filt * 10 + channels)
    a = rng.integers(0, 65536, size=(5, 7, channels), dtype=np.uint16)  # noise exercises every byte path
    (tmp_path / "x.png").write_bytes(_filtered_png16(a, filt))
    s = S.load(tmp_path / "x.png")
    assert s.bit_depth == 16
    np.testing.assert_array_equal(s.values, a / 65535.0)


def _decode_png_filter0(data: bytes):
    """Independent reader for PNGs written with filter 0 only: checks CRCs, returns (ihdr, rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i, chunks = 8, {}
    while i < len(data):
        n, tag = struct.unpack(">I4s", data[i:i + 8])
        body = data[i + 8:i + 8 + n]
        assert struct.unpack(">I", data[i + 8 + n:i + 12 + n])[0] == zlib.crc32(tag + body)
        chunks.setdefault(tag, []).append(body)
        i += 12 + n
    w, h, depth, ctype = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
    raw = np.frombuffer(zlib.decompress(b"".join(chunks[b"IDAT"])), np.uint8).reshape(h, -1)
    assert (raw[:, 0] == 0).all()
    return (w, h, depth, ctype), raw[:, 1:]


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_writer_keeps_size_channels_and_16_bits(tmp_path, channels):
    a = smooth_image(*SHAPES[channels][:2], channels=channels, dtype=np.uint16, seed=3)
    tifffile.imwrite(tmp_path / "in.tif", a, photometric="minisblack" if channels <= 2 else "rgb",
                     extrasamples=["unassalpha"] if channels in (2, 4) else None)
    s = S.load(tmp_path / "in.tif")
    out = s.write(s.values, tmp_path / "out.png")
    (w, h, depth, ctype), rows = _decode_png_filter0(out.read_bytes())
    assert (h, w, depth, ctype) == (a.shape[0], a.shape[1], 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels])
    np.testing.assert_array_equal(rows.view(">u2").reshape(_as_hwc(a).shape), _as_hwc(a))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_writer_8bit_png(tmp_path, channels):
    a = smooth_image(*SHAPES[channels][:2], channels=channels, seed=5)
    s = S.image_from_array(a)
    flat = s.values.reshape(-1, channels)  # the writer takes flat (N, C) predictions too
    s.write(flat, tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as im:
        assert im.mode == MODES8[channels] and im.size == (a.shape[1], a.shape[0])
        np.testing.assert_array_equal(np.asarray(im), a)


def test_jpeg_matches_pillows_decoding(tmp_path):
    for channels in (1, 3):
        a = smooth_image(12, 17, channels=channels)
        p = tmp_path / f"j{channels}.jpg"
        Image.fromarray(a).save(p, quality=90)
        with Image.open(p) as im:
            ref = np.asarray(im)
        s = S.load(p)
        assert s.shape == (12, 17) and s.channels == channels
        np.testing.assert_array_equal(s.values, _as_hwc(ref) / 255.0)


def test_palette_png_becomes_rgb(tmp_path):
    a = smooth_image(8, 9, channels=3)
    Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        ref = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(S.load(tmp_path / "p.png").values, ref / 255.0)


def test_pixel_centre_coordinates():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    s = S.image_from_array(a)
    c, t = s.coords().double().numpy(), s.targets().double().numpy()
    assert c.shape == (12, 2) and t.shape == (12, 1)
    ys, xs = np.array([-2 / 3, 0, 2 / 3]), np.array([-0.75, -0.25, 0.25, 0.75])
    for i in range(3):
        for j in range(4):
            k = i * 4 + j
            np.testing.assert_allclose(c[k], [ys[i], xs[j]], atol=1e-7)
            assert t[k, 0] == pytest.approx(a[i, j] / 255.0)


def test_default_signal_is_cameraman():
    from skimage import data

    s = S.load(None)
    assert s.shape == (512, 512) and s.channels == 1 and s.builtin == {"name": "cameraman"}
    np.testing.assert_array_equal(s.values[..., 0], data.camera() / 255.0)


# ---------------------------------------------------------------------------- audio

SUBTYPES = ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"]


def _exact_samples(subtype: str, n: int, channels: int, rng) -> np.ndarray:
    """Float samples that the subtype stores exactly (so a round trip must reproduce them bit for bit)."""
    bits = {"PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}.get(subtype)
    if bits is None:
        x = rng.uniform(-0.9, 0.9, size=(n, channels))
        return x.astype(np.float32).astype(np.float64) if subtype == "FLOAT" else x
    q = 2.0 ** (bits - 1)
    return rng.integers(-q * 0.9, q * 0.9, size=(n, channels)) / q


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("subtype", SUBTYPES)
def test_wav_round_trip(tmp_path, subtype, channels):
    rng = np.random.default_rng(len(subtype) + channels)
    x = _exact_samples(subtype, 300, channels, rng)
    p = tmp_path / "a.wav"
    sf.write(p, x, 11025, subtype=subtype)
    s = S.load(p)
    assert s.kind == "audio" and s.rate == 11025 and s.subtype == subtype
    assert s.shape == (300,) and s.channels == channels
    peak = np.abs(x).max()
    assert s.scale == peak
    np.testing.assert_array_equal(s.values, x / peak)
    # the writer keeps rate, channels and subtype; the samples come back exactly
    s.write(s.values, tmp_path / "b.wav")
    info = sf.info(tmp_path / "b.wav")
    assert (info.samplerate, info.channels, info.subtype, info.format) == (11025, channels, subtype, "WAV")
    y, _ = sf.read(tmp_path / "b.wav", dtype="float64", always_2d=True)
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-15 if subtype in ("FLOAT", "DOUBLE") else 0)


def test_audio_coordinates_are_sample_times():
    s = S.audio_from_array(np.array([0.5, -1.0, 0.25, 0.0, 1.0]), 1000)
    np.testing.assert_allclose(s.coords().numpy()[:, 0], [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(s.targets().numpy()[:, 0], [0.5, -1.0, 0.25, 0.0, 1.0])


def test_test_audio_helper():
    s = S.test_audio(seconds=0.25, rate=8000)
    assert s.shape == (2000,) and s.channels == 1 and s.rate == 8000
    assert np.abs(s.values).max() == pytest.approx(1.0)
    spec = np.abs(np.fft.rfft(s.values[:, 0]))
    freqs = np.fft.rfftfreq(2000, 1 / 8000)
    assert spec[np.argmin(abs(freqs - 220))] > 10 * np.median(spec)  # the 220 Hz fundamental is present
    np.testing.assert_array_equal(S.test_audio(0.25, 8000).values, s.values)


# ---------------------------------------------------------------------------- errors


def _bad(tmp_path, name, content=None, array=None, wav=None):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    if array is not None:
        tifffile.imwrite(p, array) if name.endswith(".tif") else Image.fromarray(array).save(p)
    if wav is not None:
        sf.write(p, *wav)
    return p


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file"),
    ("folder", "is a folder"),
    ("empty", "empty"),
    ("text_png", "not a readable image"),
    ("text_wav", "not a readable sound file"),
    ("text_noext", "not an image or sound file"),
    ("truncated_png", "corrupt"),
    ("one_pixel", "too small"),
    ("empty_wav", "empty"),
    ("silent_wav", "silent"),
    ("int32_tif", "bit depth"),
    ("float_range", "[0, 1]"),
    ("volume_tif", "not a single 2-D image"),
])
def test_bad_inputs_raise_signal_error_naming_the_file(tmp_path, case, needle):
    a = smooth_image(16, 16)
    if case == "missing":
        p = tmp_path / "nope.png"
    elif case == "folder":
        p = tmp_path / "dir.png"
        p.mkdir()
    elif case == "empty":
        p = _bad(tmp_path, "e.png", b"")
    elif case == "text_png":
        p = _bad(tmp_path, "t.png", b"hello, not an image")
    elif case == "text_wav":
        p = _bad(tmp_path, "t.wav", b"hello, not a sound")
    elif case == "text_noext":
        p = _bad(tmp_path, "t.data", b"hello, not anything")
    elif case == "truncated_png":
        Image.fromarray(a).save(tmp_path / "full.png")
        p = _bad(tmp_path, "cut.png", (tmp_path / "full.png").read_bytes()[:60])
    elif case == "one_pixel":
        p = _bad(tmp_path, "one.png", array=np.zeros((1, 1), np.uint8))
    elif case == "empty_wav":
        p = _bad(tmp_path, "e.wav", wav=(np.zeros((0, 1)), 8000))
    elif case == "silent_wav":
        p = _bad(tmp_path, "s.wav", wav=(np.zeros(100), 8000))
    elif case == "int32_tif":
        p = _bad(tmp_path, "i.tif", array=np.arange(64, dtype=np.int32).reshape(8, 8))
    elif case == "float_range":
        p = _bad(tmp_path, "f.tif", array=np.linspace(-1, 2, 64, dtype=np.float32).reshape(8, 8))
    else:
        p = _bad(tmp_path, "v.tif", array=np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(SignalError) as e:
        S.load(p)
    msg = str(e.value)
    assert needle in msg and p.name in msg and "\n" not in msg
