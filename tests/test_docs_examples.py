"""docs/examples.md: every worked example runs as it is (in a fresh folder)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "examples.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_there_is_an_example_per_new_capability():
    text = "\n".join(BLOCKS)
    for needle in ('"poisson"', '"helmholtz"', '"heat"', "from_sinogram", "fan_geometry", "render("):
        assert needle in text, needle


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_example_runs(i, tmp_path, monkeypatch, torch_one_thread):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[i], f"docs/examples.md block {i + 1}", "exec"), {"__name__": "__example__"})
