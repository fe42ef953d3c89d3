"""Every input checked once, at the door (issue 23): the table of bad inputs.

Each row of :data:`CASES` is one command line that must end with exit code 2, exactly one line on stderr,
no traceback, and nothing written (the files under ``tmp_path`` are the same before and after, bytes and
all; a run folder, a staging folder or a temporary file left behind fails the case).  To add a row:
``Case("id", "tool", ["arg", "{tmp}/x", ...], setup=fn, needle="words of the message")`` -- ``{tmp}`` is
replaced by the case's ``tmp_path``; ``setup(tmp_path)`` creates the input files first; ``memory=True``
runs the case in a fresh process under a 2 GiB address-space limit (for inputs whose risk is an
allocation), the others in-process through the tool's ``main(argv)``.
"""
from __future__ import annotations

import json
import os
import pickle
import resource
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "siren", "--hidden", "8", "--hidden-layers", "1", "--steps", "4", "--batch", "full",
        "--seconds", "none", "--quiet", "--threads", "1"]
MEMORY_LIMIT = 2 << 30


@dataclass
class Case:
    id: str
    tool: str                                   # inr | approx | classify | pde | tomography
    argv: list
    setup: Callable[[Path], None] | None = None
    needle: str = ""                            # a few words the one-line message must hold
    memory: bool = False                        # subprocess under RLIMIT_AS = MEMORY_LIMIT


def _main(tool: str):
    if tool == "inr":
        from inr.cli import main
    elif tool == "approx":
        from approx.cli import main
    elif tool == "classify":
        from classify.cli import main
    elif tool == "pde":
        from pde.__main__ import main
    else:
        from tomography.cli import main
    return main


# ----------------------------------------------------------------------------- setups (input files)
def _png(tmp: Path) -> None:
    from PIL import Image

    Image.fromarray((np.arange(256, dtype=np.uint8).reshape(16, 16))).save(tmp / "img.png")


def _two_page_tiff(tmp: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp / "two.tif", np.zeros((16, 16), np.uint8))
    tifffile.imwrite(tmp / "two.tif", np.full((12, 12), 200, np.uint8), append=True)


def _sparse_wav(tmp: Path) -> None:
    """A float WAV whose header claims a 4 GiB data chunk (10^9 frames), as a sparse file of 4 GiB."""
    n = 0xFFFF0000
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    head = b"RIFF" + struct.pack("<I", n + 36) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    head += b"data" + struct.pack("<I", n)
    with open(tmp / "huge.wav", "wb") as f:
        f.write(head)
        f.truncate(len(head) + n)


def _flac_claims_billions(tmp: Path) -> None:
    """A FLAC header (STREAMINFO) claiming 2^35 samples; no audio frames follow."""
    rate, channels, bps, total = 44100, 2, 16, 1 << 35
    bits = (rate << 44) | ((channels - 1) << 41) | ((bps - 1) << 36) | total
    info = struct.pack(">HH", 4096, 4096) + (0).to_bytes(3, "big") * 2 + bits.to_bytes(8, "big") + bytes(16)
    (tmp / "huge.flac").write_bytes(b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info)


class _ClaimedArray:
    """Pickles as a numpy array that claims ``shape`` but carries one image of bytes."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        from numpy.core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, np.dtype(np.uint8), False, bytes(3072)))


def _cifar_claims_400k(tmp: Path) -> None:
    d = tmp / "cifar"
    d.mkdir()
    batch = {b"data": _ClaimedArray((400_000, 3072)), b"labels": [0] * 10}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))


def _galaxy_claims_billions(tmp: Path) -> None:
    import h5py

    with h5py.File(tmp / "g.h5", "w") as f:
        f.create_dataset("images", shape=(10**9, 64, 64, 3), dtype=np.uint8, chunks=(1, 64, 64, 3))
        f.create_dataset("ans", shape=(10**9,), dtype=np.uint8, chunks=(1024,))


def _run_folder(config, model_pt_bytes: int = 2048) -> Callable[[Path], None]:
    """An ``inr eval`` run folder ``{tmp}/run`` with ``config`` (an object, or raw text) and a model.pt."""
    def setup(tmp: Path) -> None:
        d = tmp / "run"
        d.mkdir()
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
        (d / "model.pt").write_bytes(bytes(model_pt_bytes))
    return setup


GOOD_MODEL = {"name": "siren", "in_features": 2, "out_features": 1, "hidden": 8, "hidden_layers": 1}
CAMERAMAN = {"builtin": {"name": "cameraman"}, "kind": "image"}


def _shards(record, name: str = "m") -> Callable[[Path], None]:
    """A sharded run in progress, ``{tmp}/.NAME.partial`` (the toolkit's marker in it) with one record."""
    def setup(tmp: Path) -> None:
        from inr.runs import MARKER

        stage = tmp / f".{name}.partial"
        stage.mkdir()
        (stage / MARKER).write_text("")
        (stage / ".shard-0-of-1.json").write_text(record if isinstance(record, str) else json.dumps(record))
    return setup


def _merge_into_existing(tmp: Path) -> None:
    _shards({"rank": 0, "world_size": 1, "results": [], "failures": []})(tmp)
    (tmp / "m").mkdir()
    (tmp / "m" / "keep.txt").write_text("mine")


def _approx_model(config) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        d = tmp / "net"
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
        (d / "model.pt").write_bytes(bytes(4096))
    return setup


def _approx_model_and_existing_out(tmp: Path) -> None:
    from approx.nets import build_net, save

    torch.manual_seed(0)
    save(build_net([1, 3, 1]), {"widths": [1, 3, 1], "arch": "qnn", "domain": [-1.0, 1.0]}, tmp / "net")
    (tmp / "pieces.txt").write_text("my notes")


def _foreign_partial(tmp: Path) -> None:
    _png(tmp)
    (tmp / ".run.partial").mkdir()
    (tmp / ".run.partial" / "thesis.tex").write_text("not the toolkit's")


def _symlinked_partial(tmp: Path) -> None:
    _png(tmp)
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "data.txt").write_text("precious")
    os.symlink(tmp / "elsewhere", tmp / ".run.partial")


CASES = [
    # a hang (approx/target.py): bounded by value, not spelling
    Case("target-x-x+9", "approx", ["runge", "--quick", "--target", "(x-x+9)**(x-x+9)**(x-x+9)", "--out", "{tmp}/r"],
         needle="exponent"),
    Case("target-Max", "approx", ["runge", "--quick", "--target", "Max(9,9)**Max(9,9)**Max(9,9)", "--out", "{tmp}/r"],
         needle="exponent"),
    Case("target-sign", "approx", ["runge", "--quick", "--target", "(sign(1)*9)**(sign(1)*9)**(sign(1)*9)",
                                   "--out", "{tmp}/r"], needle="exponent"),
    Case("target-tiny-tower", "approx", ["runge", "--quick", "--target", "((x-x+1/3)**1000)**1000", "--out", "{tmp}/r"],
         needle="constant"),
    # non-finite training is an error, no folder
    Case("runge-lr-1e6", "approx", ["runge", "--quick", "--lr", "1e6", "--threads", "1", "--quiet", "--out", "{tmp}/r"],
         needle="diverged"),
    Case("runge-lr-final-nan", "approx", ["runge", "--quick", "--lr-final", "nan", "--out", "{tmp}/r"],
         needle="--lr-final"),
    Case("runge-alpha-nan", "approx", ["runge", "--quick", "--alpha", "nan", "--out", "{tmp}/r"], needle="--alpha"),
    Case("runge-widths-huge", "approx", ["runge", "--quick", "--widths", "1,100000,1", "--out", "{tmp}/r"],
         needle="--widths"),
    Case("classify-lr-1e6", "classify", ["train", "--data", "digits", "--model", "resnet20", "--model-arg",
                                         "base_width=4", "--epochs", "1", "--lr", "1e6", "--limit-train", "256",
                                         "--limit-test", "64", "--batch-size", "64", "--threads", "1", "--quiet",
                                         "--out", "{tmp}/c"], needle="diverged"),
    # options nobody bounded
    Case("classify-image-size-huge", "classify", ["train", "--data", "digits", "--image-size", "100000",
                                                  "--out", "{tmp}/c"], needle="--image-size"),
    Case("classify-image-size-negative", "classify", ["train", "--data", "digits", "--image-size", "-5",
                                                      "--out", "{tmp}/c"], needle="--image-size"),
    Case("classify-width-huge", "classify", ["train", "--data", "digits", "--model-arg", "base_width=100000",
                                             "--out", "{tmp}/c"], needle="base_width"),
    Case("classify-width-negative", "classify", ["train", "--data", "digits", "--model-arg", "base_width=-4",
                                                 "--out", "{tmp}/c"], needle="base_width"),
    Case("classify-params-estimate", "classify", ["train", "--data", "digits", "--model-arg", "base_width=2048",
                                                  "--out", "{tmp}/c"], needle="parameters"),
    Case("inr-threads-999", "inr", ["fit", "--threads", "999", "--out", "{tmp}/r"], needle="--threads"),
    # approx pieces: a saved network's config.json is untrusted
    Case("pieces-widths-int", "approx", ["pieces", "{tmp}/net"], setup=_approx_model({"widths": 5}),
         needle="widths"),
    Case("pieces-widths-huge", "approx", ["pieces", "{tmp}/net"], setup=_approx_model({"widths": [1, 100000, 1]}),
         needle="widths"),
    Case("pieces-params-vs-file", "approx", ["pieces", "{tmp}/net"], setup=_approx_model({"widths": [1, 4000, 1]}),
         needle="can hold"),
    Case("pieces-out-exists", "approx", ["pieces", "{tmp}/net", "--out", "{tmp}/pieces.txt"],
         setup=_approx_model_and_existing_out, needle="already exists"),
    # inr eval: config.json is untrusted
    Case("eval-not-json", "inr", ["eval", "{tmp}/run", "--device", "cpu"], setup=_run_folder("{not json"),
         needle="config.json"),
    Case("eval-list", "inr", ["eval", "{tmp}/run", "--device", "cpu"], setup=_run_folder([1, 2]),
         needle="object"),
    Case("eval-missing-model", "inr", ["eval", "{tmp}/run", "--device", "cpu"],
         setup=_run_folder({"signal": CAMERAMAN}), needle="'model' is missing"),
    Case("eval-string-number", "inr", ["eval", "{tmp}/run", "--device", "cpu"],
         setup=_run_folder({"model": {**GOOD_MODEL, "in_features": "2"}, "signal": CAMERAMAN}),
         needle="in_features"),
    Case("eval-huge-hidden", "inr", ["eval", "{tmp}/run", "--device", "cpu"],
         setup=_run_folder({"model": {**GOOD_MODEL, "hidden": 4000}, "signal": CAMERAMAN}),
         needle="can hold", memory=True),
    Case("eval-huge-layers", "inr", ["eval", "{tmp}/run", "--device", "cpu"],
         setup=_run_folder({"model": {**GOOD_MODEL, "hidden_layers": 10**6}, "signal": CAMERAMAN}),
         needle="hidden_layers"),
    Case("eval-huge-builtin", "inr", ["eval", "{tmp}/run", "--device", "cpu"],
         setup=_run_folder({"model": {**GOOD_MODEL, "out_features": 1, "in_features": 1},
                            "signal": {"builtin": {"name": "test_audio", "seconds": 1e6, "rate": 48000}}}),
         needle="samples", memory=True),
    Case("eval-unknown-builtin", "inr", ["eval", "{tmp}/run", "--device", "cpu"],
         setup=_run_folder({"model": GOOD_MODEL, "signal": {"builtin": {"name": "/etc/passwd"}}}),
         needle="signal.builtin.name"),
    # inr merge: shard records are untrusted
    Case("merge-missing-key", "inr", ["merge", "{tmp}/m"], setup=_shards({"rank": 0, "world_size": 1}),
         needle="results"),
    Case("merge-list", "inr", ["merge", "{tmp}/m"], setup=_shards([0, 1]), needle="object"),
    Case("merge-string-rank", "inr", ["merge", "{tmp}/m"],
         setup=_shards({"rank": "0", "world_size": 1, "results": [], "failures": []}), needle="rank"),
    Case("merge-bad-result", "inr", ["merge", "{tmp}/m"],
         setup=_shards({"rank": 0, "world_size": 1, "results": [{"signal": 3}], "failures": []}),
         needle="results[0]"),
    Case("merge-into-existing", "inr", ["merge", "{tmp}/m"], setup=_merge_into_existing, needle="already exists"),
    # data files refused from their headers
    Case("wav-sparse-4gib", "inr", ["fit", "{tmp}/huge.wav", *TINY, "--out", "{tmp}/r"], setup=_sparse_wav,
         needle="INR_MAX_SAMPLES", memory=True),
    Case("flac-claims-billions", "inr", ["fit", "{tmp}/huge.flac", *TINY, "--out", "{tmp}/r"],
         setup=_flac_claims_billions, needle="INR_MAX_SAMPLES", memory=True),
    Case("tiff-two-pages", "inr", ["fit", "{tmp}/two.tif", *TINY, "--out", "{tmp}/r"], setup=_two_page_tiff,
         needle="pages"),
    Case("cifar-claims-400k", "classify", ["train", "--data", "cifar10:{tmp}/cifar", "--epochs", "1", "--threads",
                                           "1", "--out", "{tmp}/c"], setup=_cifar_claims_400k, needle="CIFAR-10",
         memory=True),
    Case("galaxy10-claims-billions", "classify", ["train", "--data", "galaxy10:{tmp}/g.h5", "--epochs", "1",
                                                  "--threads", "1", "--out", "{tmp}/c"],
         setup=_galaxy_claims_billions, needle="declares", memory=True),
    # run folders built safely
    Case("foreign-partial-kept", "inr", ["fit", "{tmp}/img.png", *TINY, "--out", "{tmp}/run"],
         setup=_foreign_partial, needle="not made by this toolkit"),
    Case("resume-through-symlink", "inr", ["fit", "{tmp}/img.png", *TINY, "--out", "{tmp}/run", "--resume",
                                           "--checkpoint-every", "2"], setup=_symlinked_partial, needle="symlink"),
]


def _snapshot(root: Path) -> dict:
    """Every path under ``root`` (hidden ones too, symlinks not followed) -> its bytes (files) or kind."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file():
                out[rel] = (p.stat().st_size, p.read_bytes() if p.stat().st_size < 1 << 20 else None)
            else:
                out[rel] = "dir"
    return out


def _run_limited(tool: str, argv: list) -> tuple[int, str]:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", tool, *argv], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=120, preexec_fn=limit)
    return r.returncode, r.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys, torch_one_thread):
    if case.setup is not None:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv]
    if case.memory:
        code, err = _run_limited(case.tool, argv)
    else:
        capsys.readouterr()
        code = _main(case.tool)(argv)
        err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert case.needle in err, (case.needle, err)
    assert _snapshot(tmp_path) == before, "the command wrote, moved or deleted files"


# ----------------------------------------------------------------------------- beyond the table
def test_a_bug_keeps_its_traceback():
    from inr.cliutil import run_main

    def buggy():
        raise ValueError("an internal bug")

    with pytest.raises(ValueError, match="internal bug"):
        run_main("tool", buggy)
    with pytest.raises(KeyError):
        run_main("tool", lambda: {}["missing"])


def test_user_errors_and_oserrors_are_one_line(capsys):
    from inr.cliutil import run_main
    from inr.errors import InputError

    def missing():
        open("/nonexistent/dir/file")

    assert run_main("tool", missing) == 2
    assert run_main("tool", lambda: (_ for _ in ()).throw(InputError("--x must be > 0"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "No such file" in err[0] and "--x must be > 0" in err[1]


def test_atomic_writes_never_follow_a_planted_symlink(tmp_path):
    from inr.runfiles import save_torch, write_json, write_text

    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("eval.json", "summary.md", "model.pt"):   # the old fixed temporary names, and the targets
        os.symlink(outside, run / f".{name}.tmp")
    os.symlink(outside, run / "summary.md")
    write_json({"a": float("nan")}, run / "eval.json")
    write_text(run / "summary.md", "# new")
    save_torch({"w": torch.zeros(2)}, run / "model.pt")
    assert outside.read_text() == "precious"
    assert json.loads((run / "eval.json").read_text()) == {"a": None}
    assert not (run / "summary.md").is_symlink() and (run / "summary.md").read_text() == "# new"


def test_two_runs_with_one_out_do_not_delete_each_other(tmp_path):
    from inr.runs import RunError, RunFolder

    out = tmp_path / "r"
    first = RunFolder(out)
    with first as run:
        run.write_text("a.txt", "first")
        with pytest.raises(RunError, match="another run"):
            RunFolder(out)
        with pytest.raises(RunError, match="another run"):
            RunFolder(out, resume=True)
        assert (run.path / "a.txt").read_text() == "first"
    assert (out / "a.txt").read_text() == "first" and not any(p.name.startswith(".") for p in out.iterdir())


def test_a_stale_partial_of_our_own_is_replaced(tmp_path):
    from inr.runs import RunFolder, staging_dir

    out = tmp_path / "r"
    with pytest.raises(RuntimeError):
        with RunFolder(out) as run:
            run.save_torch("checkpoint.pt", {"step": 1})
            raise RuntimeError("killed")
    assert (staging_dir(out) / "checkpoint.pt").is_file()   # kept for --resume
    with RunFolder(out) as run:                                # not resuming: the stale one is ours, discarded
        assert not run.checkpoint.exists()
    assert out.is_dir()


def test_resume_refuses_another_seed(tmp_path, tiny_png, interrupt_fit_at, capsys):
    from inr.cli import main

    out = tmp_path / "run"
    interrupt_fit_at(3)
    assert main(["fit", str(tiny_png[0]), *TINY, "--out", str(out), "--checkpoint-every", "2"]) == 130
    capsys.readouterr()
    code = main(["fit", str(tiny_png[0]), *TINY, "--out", str(out), "--checkpoint-every", "2", "--resume",
                 "--seed", "7"])
    err = capsys.readouterr().err
    assert code == 2 and "--seed" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("text", ["(x-x+9)**(x-x+9)**(x-x+9)", "Max(9,9)**Max(9,9)**Max(9,9)",
                                  "(sign(1)*9)**(sign(1)*9)**(sign(1)*9)", "E**(x-x+2000)", "((1/3)**1000)**1000",
                                  "(sqrt(-4)**1000)**1000", "exp(1000)", "1/0"])
def test_parse_expression_bounds_values_not_spellings(text):
    from approx.target import parse_expression
    from inr.errors import InputError

    with pytest.raises(InputError):
        parse_expression(text)


def test_parse_expression_keeps_ordinary_expressions():
    import sympy as sp

    from approx.target import parse_expression

    x, y = sp.Symbol("x", real=True), sp.Symbol("y", real=True)
    assert sp.simplify(parse_expression("sin(pi*x)*sin(pi*y)", ("x", "y"), name="--source")
                       - sp.sin(sp.pi * x) * sp.sin(sp.pi * y)) == 0
    assert parse_expression("(x-x+2)**(x-x+10)") == 1024
    assert sp.simplify(parse_expression("exp(-1/x**2) + Max(x, 0)") - (sp.exp(-1 / x**2) + sp.Max(x, 0))) == 0
