"""Bad input to ``python -m tomography`` (options, files, their combinations): each case is answered
by exit code 2 and one line on stderr, without a traceback, without allocating the scan, and without
writing anything (the CLI's ``main(argv)`` is called in-process)."""
import os
import struct
import zlib

import numpy as np
import pytest

from inr.errors import InputError
from tomography.cli import main
from tomography.config import CTConfig, ScanSpec


class _Payload:
    """Unpickling this would create a file: the test that it never is."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _png(path, w, h, depth=16, ctype=0, body=b""):
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body))
                     + chunk(b"IEND", b""))


@pytest.fixture
def inputs(tmp_path):
    import tifffile
    from PIL import Image

    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    np.save(d / "sino.npy", rng.random((10, 16)))
    np.save(d / "flat_low.npy", np.zeros(16))
    np.save(d / "flat_bad.npy", np.ones(7))
    np.save(d / "truth_bad.npy", rng.random((20, 20)))
    np.save(d / "one_d.npy", rng.random(16))
    nan = rng.random((10, 16))
    nan[3, 4] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "pickle.npy", np.array([_Payload(str(tmp_path / "PWNED")), 1], dtype=object), allow_pickle=True)
    # a header that claims 200000 x 200000 float64 (320 GB) and carries 80 bytes
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (200000, 200000), }"
    header += " " * (118 - len(header)) + "\n"
    (d / "bomb.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 80)
    full = (d / "sino.npy").read_bytes()
    (d / "truncated.npy").write_bytes(full[:len(full) // 2])
    tifffile.imwrite(d / "pages.tif", rng.random((5, 10, 16)).astype(np.float32))
    _png(d / "bomb.png", 100_000, 100_000)
    Image.fromarray((rng.random((10, 16, 3)) * 255).astype(np.uint8)).save(d / "rgb.png")
    (d / "notes.txt").write_text("hello\n")
    (d / "angles_bad.txt").write_text("0 10 twenty\n")
    (d / "angles_short.txt").write_text("0 10 20\n")
    return d


def _tree(root):
    return sorted(os.path.relpath(os.path.join(a, f), root) for a, ds, fs in os.walk(root) for f in fs + ds)


SINO = ["recon", "--sinogram", "{d}/sino.npy", "--size", "16"]
CASES = [
    (["recon", "--phantom", "--params", "1000000000000"], "--params"),
    (["recon", "--phantom", "--views", "100000"], "--views"),
    (["recon", "--phantom", "--size", "4096", "--views", "4000"], "estimated"),
    (["recon", "--phantom", "thorax", "--size", "8192", "--views", "1"], "estimated"),
    (["recon", "--phantom", "--size", "64", "--views", "10", "--max-memory", "0.001"], "--max-memory"),
    (["recon", "--phantom", "--lr", "nan"], "--lr"),
    (["recon", "--phantom", "--box", "1", "0"], "--box"),
    (["recon", "--phantom", "--size", "64", "--geometry", "fan", "--source-distance", "10"], "--source-distance"),
    (["recon", "--phantom", "--size", "64", "--geometry", "fan", "--source-distance", "100",
      "--detector-distance", "50"], "--detector-distance"),
    (["recon", "--phantom", "--source-distance", "100"], "--geometry fan"),
    (["recon", "--phantom", "--angles", "{d}/angles_short.txt"], "--sinogram"),
    (["simulate", "--phantom", "--size", "16", "--raw"], "--photons"),
    (["recon", "--sinogram", "{d}/missing.npy"], "no such file"),
    (["recon", "--sinogram", "{d}/notes.txt"], "unrecognised format"),
    (["recon", "--sinogram", "{d}/pickle.npy"], "never unpickled"),
    (["recon", "--sinogram", "{d}/bomb.npy"], "above the limit"),
    (["recon", "--sinogram", "{d}/truncated.npy"], "corrupt"),
    (["recon", "--sinogram", "{d}/pages.tif"], "pages"),
    (["recon", "--sinogram", "{d}/bomb.png"], "above the limit"),
    (["recon", "--sinogram", "{d}/rgb.png"], "grayscale"),
    (["recon", "--sinogram", "{d}/one_d.npy"], "2-D"),
    (["recon", "--sinogram", "{d}/nan.npy"], "non-finite"),
    (["recon", "--sinogram", "{d}/sino.npy", "--phantom"], "takes no IMAGE"),
    (["recon", "--sinogram", "{d}/sino.npy", "--photons", "1e4"], "--photons"),
    (["recon", "--sinogram", "{d}/sino.npy", "--views", "5"], "--views 5"),
    (["recon", "--sinogram", "{d}/sino.npy", "--size", "20"], "detector bins"),
    (["recon", "--sinogram", "{d}/sino.npy", "--geometry", "fan"], "--size is needed"),
    ([*SINO, "--angles", "{d}/angles_short.txt"], "3 angles"),
    ([*SINO, "--angles", "{d}/angles_bad.txt"], "expected numbers"),
    ([*SINO, "--angles", "{d}/angles_short.txt", "--angle-range", "90"], "not both"),
    ([*SINO, "--raw"], "--raw needs --flat"),
    ([*SINO, "--flat", "{d}/flat_low.npy"], "need --raw"),
    ([*SINO, "--raw", "--flat", "{d}/flat_low.npy"], "flat field must exceed"),
    ([*SINO, "--raw", "--flat", "{d}/flat_bad.npy"], "--flat"),
    ([*SINO, "--truth", "{d}/truth_bad.npy"], "--truth"),
    ([*SINO, "--truth", "{d}/bomb.npy"], "above the limit"),
]


@pytest.mark.parametrize("argv,needle", CASES, ids=[f"{i:02d}-{c[1]}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, inputs, capsys, argv, needle):
    out = tmp_path / "out"
    argv = [a.format(d=inputs) for a in argv] + ["--out", str(out)]
    if argv[0] == "recon":
        argv += ["--threads", "1", "--quiet", "--steps", "1", "--sart-iterations", "1", "--tv-iterations", "1"]
    before = _tree(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert _tree(tmp_path) == before            # no run folder, no staging folder, no file
    assert not (tmp_path / "PWNED").exists()    # the pickle was never loaded


def test_config_dataclasses_name_the_option():
    for kw, flag in (({"params": 10 ** 12}, "--params"), ({"params": 0}, "--params"), ({"steps": -1}, "--steps"),
                     ({"model": "nope"}, "--model"), ({"seconds": float("inf")}, "--seconds"),
                     ({"view_batch": 0}, "--view-batch"), ({"coarse_to_fine": 2.0}, "--coarse-to-fine"),
                     ({"max_memory_gb": -1.0}, "--max-memory"), ({"box": (0.0, float("nan"))}, "--box")):
        with pytest.raises(InputError, match=flag):
            CTConfig(**kw)
    for kw, flag in (({"views": 100_000}, "--views"), ({"views": 0}, "--views"), ({"size": (4, 4)}, "--size"),
                     ({"angle_range": 400.0}, "--angle-range"), ({"geometry": "cone"}, "--geometry"),
                     ({"readout": 2.0}, "--photons"), ({"detectors": 10 ** 7, "geometry": "fan"}, "--detectors")):
        with pytest.raises(InputError, match=flag):
            ScanSpec(**kw)


def test_memory_estimate_refuses_before_allocating_and_names_the_estimate():
    from tomography import fan_geometry, make_geometry

    cfg = CTConfig(max_memory_gb=1.0)
    g = make_geometry((2048, 2048), np.zeros(2000))          # only the description: nothing is built
    with pytest.raises(InputError, match=r"estimated .* GB .* 2000 views x 2048 detectors .* limit of 1 GB"):
        cfg.check_memory(g)
    small = cfg.check_memory(fan_geometry((64, 64), np.zeros(10)))
    assert small["total"] < 1e9 and small["projector_nnz"] > 0
