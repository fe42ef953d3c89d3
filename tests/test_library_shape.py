"""The library's shape: per-family defaults live only in the specs, and a folder of one file trains
exactly as that file alone."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import fit_and_save, fit_files
from inr.models import MODELS, names, spec
from inr.spec import TASKS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("inr", "approx", "pde", "tomography", "classify", "benchmarks")


def _family_tables(path: Path):
    """Dict literals keyed by two or more family names whose values are numbers or dicts."""
    families = set(names()) | {"mlp-tanh", "kan"}
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
            if len(set(keys) & families) >= 2 and all(
                    isinstance(v, (ast.Constant, ast.Dict, ast.UnaryOp, ast.Tuple)) for v in node.values):
                yield node.lineno


def test_no_tool_holds_its_own_per_family_table():
    found = []
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            found += [f"{f.relative_to(ROOT)}:{line}" for line in _family_tables(f)]
    assert not found, f"per-family tables outside the specs: {found}"


def test_every_family_has_image_and_audio_defaults_and_a_checked_schema():
    for name in MODELS:
        s = spec(name)
        assert set(s.tasks) <= set(TASKS) and {"image", "audio", "ct"} <= set(s.tasks)
        for task in s.tasks:
            assert s.task(task).lr > 0
            s.check(s.defaults(task))   # a task's defaults pass the family's own schema
        assert s.width_arg in {h.name for h in s.hypers}


TINY = {"siren": {"hidden": 8, "hidden_layers": 1}, "spder": {"hidden": 8, "hidden_layers": 1},
        "gauss": {"hidden": 8, "hidden_layers": 1}, "wire": {"hidden": 6, "hidden_layers": 1},
        "relu-pe": {"hidden": 8, "hidden_layers": 1, "n_freqs": 3},
        "lrnn-siren": {"rank": 6, "depth": 2}, "lrnn-spder": {"rank": 6, "depth": 2},
        "hash": {"table": 64, "levels": 3, "hidden": 8, "hidden_layers": 1}}


@pytest.mark.parametrize("model", MODELS)
def test_a_folder_of_one_file_trains_exactly_as_the_file_alone(tmp_path, torch_one_thread, model):
    """Same FitConfig, same defaults (lr, Adam betas/eps, CPU batch, hyper-parameters): bit-identical
    weights on the CPU's default engine."""
    (tmp_path / "in").mkdir()
    rng = torch.Generator().manual_seed(0)
    img = (torch.rand(12, 10, 3, generator=rng) * 255).to(torch.uint8).numpy()
    Image.fromarray(img).save(tmp_path / "in" / "a.png")
    kw = dict(model=model, steps=6, seconds=None, quiet=True, device="cpu", seed=2, model_options=TINY[model])
    if model.startswith("lrnn"):
        kw["model_options"] = {**TINY[model], "kernel": "fused"}   # no compile step in the test suite
    fit_files([tmp_path / "in"], out=tmp_path / "many", engine="loop", **kw)
    fit_and_save(str(tmp_path / "in" / "a.png"), tmp_path / "one", **kw)
    a = torch.load(tmp_path / "many" / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_folder_of_one_file_trains_exactly_as_the_file_alone_with_every_default(tmp_path, torch_one_thread):
    """The default model (hash grid, --params auto from the signal's size, its CPU batch and Adam settings)."""
    (tmp_path / "in").mkdir()
    img = (torch.rand(24, 20, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).numpy()
    Image.fromarray(img).save(tmp_path / "in" / "a.png")
    kw = dict(steps=4, seconds=None, quiet=True, device="cpu")
    fit_files([tmp_path / "in"], out=tmp_path / "many", engine="loop", **kw)
    fit_and_save(str(tmp_path / "in" / "a.png"), tmp_path / "one", **kw)
    a = torch.load(tmp_path / "many" / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
