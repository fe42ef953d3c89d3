"""The README's Python quickstart blocks run as they are (in a fresh folder, so their run folders and files
land there)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_a_quickstart_for_each_job():
    text = "\n".join(BLOCKS)
    for call in ("inr.fit(", "pde.solve(", "tomography.reconstruct(", "study(RungeConfig(", "train(TrainArgs("):
        assert call in text, call
    assert len(README.read_text().splitlines()) <= 250


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, tmp_path, monkeypatch, torch_one_thread):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[i], f"README.md block {i + 1}", "exec"), {"__name__": "__readme__"})
