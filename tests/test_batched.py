"""Batched fitting (inr.batched): same seeds -> same models as one-at-a-time fit_signal runs;
grouping by shape; a corrupt file among good ones is reported and skipped."""
from __future__ import annotations

from conftest import fit_and_save, fit_config, fit_files
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import smooth_image
from inr import batched as B
from inr import fitting as F
from inr.signals import load

TINY = {"siren": {"hidden": 12, "hidden_layers": 1}, "lrnn-spder": {"rank": 6, "depth": 1}}


def _images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"im{i}.png"
        Image.fromarray(smooth_image(h, w, seed=i)).save(p)
        paths.append(p)
    return paths


def _state(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("model,engine", [("siren", "stacked"), ("lrnn-spder", "stacked"), ("siren", "loop")])
def test_batched_run_matches_fitting_each_file_alone(tmp_path, torch_one_thread, model, engine):
    paths = _images(tmp_path / "in", [(12, 12)] * 2)
    kw = dict(model=model, params=None, steps=8, batch=50, device="cpu", quiet=True, model_options=TINY[model],
              seed=3)
    s = fit_files([tmp_path / "in"], out=tmp_path / "batch", engine=engine, **kw)
    assert s["n_ok"] == 2 and s["n_failed"] == 0
    for p in paths:
        alone = fit_and_save(str(p), out=tmp_path / f"alone-{p.stem}", **kw)
        row = next(r for r in s["results"] if r["file"] == str(p.resolve()))
        assert row["psnr"] == pytest.approx(alone["psnr"], abs=1e-4)
        a, b = _state(tmp_path / "batch" / p.stem / "model.pt"), _state(tmp_path / f"alone-{p.stem}" / "model.pt")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
        m = json.loads((tmp_path / "batch" / p.stem / "metrics.json").read_text())
        assert m["psnr"] == pytest.approx(row["psnr"]) and m["group_size"] == 2
        assert sorted(x.name for x in (tmp_path / "batch" / p.stem).iterdir()) == sorted(
            x.name for x in (tmp_path / f"alone-{p.stem}").iterdir())


def test_different_seeds_in_one_group_match_their_own_runs(tmp_path, torch_one_thread):
    """fit_group with one seed per signal (separate point samplers) vs fit_signal with that seed."""
    paths = _images(tmp_path / "in", [(10, 10)] * 2)
    sigs = [load(p) for p in paths]
    seeds = [5, 11]
    cfg = fit_config(model="siren", params=None, steps=6, batch=40, device="cpu", model_options=TINY["siren"],
                     targets=(5.0,)).resolved("image", torch.device("cpu"))
    nets, fits, info = B.fit_group(sigs, seeds, cfg, engine="stacked")
    assert info["engine"] == "stacked"
    for p, seed, net, res in zip(paths, seeds, nets, fits):
        alone = fit_and_save(str(p), model="siren", params=None, steps=6, batch=40, device="cpu", seed=seed,
                             quiet=True, model_options=TINY["siren"], out=tmp_path / f"a{seed}", target_psnr=(5.0,))
        ref = _state(tmp_path / f"a{seed}" / "model.pt")
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, ref[k], rtol=1e-4, atol=1e-5)
        assert res.final_loss == pytest.approx(alone["final_loss"], rel=1e-4)
        assert (res.time_to_target["5.0"] is None) == (alone["time_to_target"]["5.0"] is None)


def test_stacked_forward_equals_each_model(torch_one_thread):
    from inr.models import build

    torch.manual_seed(0)
    nets = [build("siren", 2, 3, hidden=8, hidden_layers=1) for _ in range(4)]
    st = B.StackedINR(nets)
    x = torch.rand(4, 7, 2) * 2 - 1
    torch.testing.assert_close(st(x), torch.stack([n(x[i]) for i, n in enumerate(nets)]))
    torch.testing.assert_close(st(x[0]), torch.stack([n(x[0]) for n in nets]))


def test_corrupt_file_is_reported_and_the_others_finish(tmp_path, torch_one_thread):
    paths = _images(tmp_path / "in", [(8, 8), (8, 8), (10, 6)])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "in" / "notes.txt").write_text("ignored: not an image suffix")
    s = fit_files([tmp_path / "in"], model="siren", params=None, steps=3, batch=None, device="cpu", quiet=True,
                   model_options=TINY["siren"], out=tmp_path / "run", group_size=1)
    assert s["n_ok"] == 3 and s["n_failed"] == 1
    assert s["failures"][0]["file"].endswith("broken.png") and "broken.png" in s["failures"][0]["error"]
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == ["im0", "im1", "im2", "summary.csv", "summary.json", "summary.md"]
    assert not F.staging_dir(out).exists()
    assert "broken.png" in (out / "summary.md").read_text()
    csv = (out / "summary.csv").read_text().splitlines()
    assert len(csv) == 1 + 4
    for p in paths:
        assert (out / p.stem / "reconstruction.png").is_file()
    assert {r["group_size"] for r in s["results"]} == {1}


def test_grouping_by_shape_and_chunks():
    class S:
        def __init__(self, kind, shape, ch):
            self.kind, self.shape, self.channels = kind, shape, ch

    sigs = [S("image", (8, 8), 1), S("image", (8, 8), 3), S("image", (8, 8), 1), S("audio", (8,), 1),
            S("image", (8, 8), 1), S("image", (4, 8), 1)]
    assert B.group_signals(sigs, 2) == [[0, 2], [4], [1], [3], [5]]
    assert B.group_signals(sigs, 16) == [[0, 2, 4], [1], [3], [5]]


def test_folder_names_are_unique_and_stable(tmp_path):
    files = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "summary.json.png", tmp_path / "x-2.png"]
    names = B.folder_names(files)
    assert len(set(names.values())) == 4
    assert names == B.folder_names(list(reversed(files)))


def test_bad_options_and_empty_input(tmp_path):
    with pytest.raises(F.RunError, match="no input files"):
        fit_files([tmp_path], out=tmp_path / "r")
    _images(tmp_path / "in", [(8, 8)])
    with pytest.raises(F.RunError, match="group-size"):
        fit_files([tmp_path / "in"], out=tmp_path / "r", group_size=0)
    (tmp_path / "exists").mkdir()
    with pytest.raises(F.RunError, match="already exists"):
        fit_files([tmp_path / "in"], out=tmp_path / "exists")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("shared,kernel,component", [(False, "fused", "harmonic"), (True, "fused", "harmonic"),
                                                     (True, "compiled", "harmonic"), (False, "fused", "mlp"),
                                                     (True, "compiled", "mlp")])
def test_fused_lrnn_stack_matches_each_model_and_its_gradients(torch_one_thread, shared, kernel, component):
    """The wide-ProductFn LRNN path (no vmap) against each model's own forward and backward, float64
    (kernel="compiled": the torch.compile'd pair, in the stack and in each model)."""
    from inr.models import build

    torch.manual_seed(1)
    nets = [build("lrnn-spder", 2, 2, rank=4, depth=2, width=3, shared=shared, dtype=torch.float64,
                  kernel=kernel, component=component) for _ in range(3)]
    st = B.StackedINR(nets)
    assert st.fused
    x = torch.rand(3, 9, 2, dtype=torch.float64) * 2 - 1
    y, ref = st(x), torch.stack([n(x[i]) for i, n in enumerate(nets)])
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    (y ** 2).sum().backward()
    (ref ** 2).sum().backward()
    for name, p in st.named_parameters():
        k = name.replace("__", ".")
        g = torch.stack([dict(n.named_parameters())[k].grad for n in nets])
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def test_success_rate_benchmark_quick(tmp_path, torch_one_thread):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "success_rate", Path(__file__).resolve().parents[1] / "benchmarks" / "success_rate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--out", str(tmp_path), "--threads", "1"]) == 0
    m = json.loads((tmp_path / "success_rate" / "metrics.json").read_text())
    for model, agg in m["models"].items():
        fits = m["fits"][model]
        assert agg["fits"] == len(fits) == 2
        hits = [f for f in fits if f["time_to_target"]["30.0"] is not None]
        assert agg["success_30.0"] == pytest.approx(len(hits) / 2)
        assert agg["mean_final_psnr"] == pytest.approx(np.mean([f["psnr"] for f in fits]))
    assert (tmp_path / "success_rate" / "success_rate.png").stat().st_size > 1000
    assert "| siren |" in (tmp_path / "success_rate" / "table.md").read_text()
    t = json.loads((tmp_path / "batched_throughput" / "metrics.json").read_text())["results"]
    r = t["12x12/siren"]
    for mode in ("batched-stacked", "batched-loop"):
        assert r["speedup_over_sequential"][mode] == pytest.approx(
            r["median_seconds"]["sequential"] / r["median_seconds"][mode])


def test_cli_folder_runs_batched_with_warnings_and_exit_codes(tmp_path, torch_one_thread, capsys):
    from inr.cli import main

    _images(tmp_path / "in", [(8, 8), (8, 8)])
    (tmp_path / "in" / "bad.png").write_bytes(b"nope")
    tiny = ["--model", "siren", "--hidden", "8", "--hidden-layers", "1", "--steps", "3", "--batch", "full",
            "--seconds", "none"]
    assert main(["fit", str(tmp_path / "in"), *tiny, "--out", str(tmp_path / "run")]) == 0
    cap = capsys.readouterr()
    assert "2 of 3 signals fitted" in cap.out and "im0: PSNR" in cap.out
    assert cap.err.count("warning") == 1 and "bad.png" in cap.err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_ok"] == 2
    # two files named on the command line, explicit engine and group size
    files = [str(tmp_path / "in" / "im0.png"), str(tmp_path / "in" / "im1.png")]
    assert main(["fit", *files, *tiny, "--quiet", "--engine", "stacked", "--group-size", "1",
                 "--out", str(tmp_path / "run2")]) == 0
    assert {r["group_size"] for r in json.loads((tmp_path / "run2" / "summary.json").read_text())["results"]} == {1}
    # every file bad: exit 1; options that only make sense for one file: exit 2
    (tmp_path / "bad2.png").write_bytes(b"nope")
    assert main(["fit", str(tmp_path / "in" / "bad.png"), str(tmp_path / "bad2.png"), *tiny, "--quiet",
                 "--out", str(tmp_path / "run3")]) == 1
    assert "none of the 2 files" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "in"), "--resume", "--out", str(tmp_path / "r4")]) == 2
    assert main(["merge", str(tmp_path / "nothing")]) == 2
    assert "no run in progress" in capsys.readouterr().err
    assert not (tmp_path / "r4").exists()
