"""`inr fit` on several files: the run folder is an inr.runs.RunFolder and model options are validated as
for a single fit."""
from __future__ import annotations

from conftest import fit_files
from inr.errors import InputError
import json

import pytest
from PIL import Image

from conftest import smooth_image
from inr import batched as B
from inr import fitting as F
from inr.cli import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TINY = dict(model="siren", params=None, steps=3, batch=None, device="cpu", quiet=True)


def _images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(smooth_image(8, 8, seed=i)).save(folder / f"im{i}.png")
    return folder


@pytest.mark.parametrize("opts,word", [({"hidden": 0}, "--hidden"), ({"w0": float("nan")}, "--w0"),
                                       ({"w0_first": -1.0}, "--w0-first")])
def test_bad_model_options_are_refused_before_any_work(tmp_path, opts, word):
    with pytest.raises(InputError, match=word):
        fit_files([_images(tmp_path / "in")], out=tmp_path / "r", model_options=opts, **TINY)
    with pytest.raises(InputError, match="--params"):
        fit_files([tmp_path / "in"], out=tmp_path / "r", **{**TINY, "params": 10**12})
    with pytest.raises(InputError, match="learning rate"):
        fit_files([tmp_path / "in"], out=tmp_path / "r", lr=float("inf"), **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]   # no folder, no staging folder


def test_cli_several_files_bad_option_is_one_line(tmp_path, capsys):
    _images(tmp_path / "in")
    assert main(["fit", str(tmp_path / "in"), "--model", "siren", "--hidden", "0", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--hidden (siren) must be in [1, " in err[0]
    assert not (tmp_path / "r").exists() and not F.staging_dir(tmp_path / "r").exists()


def test_run_folder_is_built_under_a_staging_name_and_cleaned_on_failure(tmp_path, monkeypatch):
    _images(tmp_path / "in")
    seen = {}
    real = B._fit_files

    def spy(stage, *a, **k):
        seen["stage"] = stage
        assert stage == F.staging_dir(tmp_path / "r") and stage.is_dir() and not (tmp_path / "r").exists()
        return real(stage, *a, **k)

    monkeypatch.setattr(B, "_fit_files", spy)
    s = fit_files([tmp_path / "in"], out=tmp_path / "r", model_options={"hidden": 8, "hidden_layers": 1}, **TINY)
    assert s["n_ok"] == 2 and not seen["stage"].exists()
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["n_ok"] == 2
    m = json.loads((tmp_path / "r" / "im0" / "metrics.json").read_text())
    assert set(m["time_to_target"]) == set(m["time_to_target_batch"])   # whole-signal (final) and batch

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(B, "_fit_files", boom)
    with pytest.raises(KeyboardInterrupt):
        fit_files([tmp_path / "in"], out=tmp_path / "r2", model_options={"hidden": 8}, **TINY)
    assert not (tmp_path / "r2").exists() and not F.staging_dir(tmp_path / "r2").exists()
