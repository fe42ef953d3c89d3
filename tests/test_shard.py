"""Sharding (inr.shard): every file is fitted by exactly one rank; the merge gives one summary;
a real 2-process gloo torchrun run."""
from __future__ import annotations

from conftest import fit_files
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import smooth_image
from inr import batched as B
from inr import fitting as F
from inr.shard import dist_env, shard_files

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden": 8, "hidden_layers": 1}


@pytest.mark.parametrize("n_files", [0, 1, 5, 16])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_every_file_exactly_once(n_files, world):
    files = [f"img{(i * 7919) % 101:03d}.png" for i in range(n_files)]   # unsorted input
    shards = [shard_files(files, r, world) for r in range(world)]
    flat = [f for s in shards for f in s]
    assert sorted(flat) == sorted(files) and len(flat) == len(set(flat))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1      # balanced
    order = sorted(files)
    for r, s in enumerate(shards):                                # rank r takes r, r + W, ...
        assert s == [order[i] for i in range(r, n_files, world)]
    with pytest.raises(ValueError):
        shard_files(files, world, world)


def test_dist_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist_env() is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_env() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(F.RunError):
        dist_env()


def _images(folder, n):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(smooth_image(8, 8, seed=i)).save(folder / f"p{i}.png")


def test_ranks_in_one_process_then_merge(tmp_path, torch_one_thread):
    _images(tmp_path / "in", 5)
    (tmp_path / "in" / "zz.png").write_bytes(b"garbage")
    out = tmp_path / "run"
    kw = dict(model="siren", params=None, steps=2, batch=None, device="cpu", quiet=True, model_options=TINY, out=out)
    fit_files([tmp_path / "in"], shard=(1, 3), merge=False, **kw)
    with pytest.raises(F.RunError, match=r"shard\(s\) \[0, 2\] of 3"):
        B.merge_run(out)
    fit_files([tmp_path / "in"], shard=(0, 3), merge=False, **kw)
    fit_files([tmp_path / "in"], shard=(2, 3), merge=False, **kw)
    s = B.merge_run(out)
    assert s["n_ok"] == 5 and s["n_failed"] == 1 and s["world_size"] == 3
    assert sorted(r["folder"] for r in s["results"]) == [f"p{i}" for i in range(5)]
    assert json.loads((out / "summary.json").read_text())["n_ok"] == 5
    assert not F.staging_dir(out).exists() and not list(out.glob(".*"))
    with pytest.raises(F.RunError, match="already merged"):
        B.merge_run(out)


def test_torchrun_two_gloo_processes(tmp_path):
    _images(tmp_path / "in", 3)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                        "-m", "inr", "fit", str(tmp_path / "in"), "--out", str(out), "--model", "siren",
                        "--hidden", "8", "--hidden-layers", "1", "--steps", "2", "--batch", "full", "--threads", "1",
                        "--device", "cpu"], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["n_ok"] == 3
    ranks = sorted(json.loads((out / f"p{i}" / "metrics.json").read_text())["config"]["batch"]["world_size"]
                   for i in range(3))
    assert ranks == [2, 2, 2]
    assert r.stdout.count("3 of 3 signals fitted") == 1    # rank 0 reports the merged run, rank 1 is silent
