"""classify + the ConvPU / Newton layers: numbers against independent references (explicit products via
unfold, finite differences, parameter-count formulas, the files the tests write), the trainer end to end,
and a 2-process gloo torchrun run against a single process on the same global batch."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from classify import data as D
from classify import models as M
from classify.cli import main as cli_main
from classify.train import TrainArgs, delta_noise, train
from inr.layers import ConvPU, NewtonBlock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: far faster on an oversubscribed CI machine; restored for other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- ConvPU
def explicit_product(x, w, thr, stride, padding, groups=1):
    """prod over the receptive field of max(x, thr) ** w, by hand with unfold (pad value 1), float64."""
    x = torch.maximum(x.double(), torch.as_tensor(thr, dtype=torch.float64))
    w = w.double()
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = F.pad(x, (padding,) * 4, value=1.0)
    cols = F.unfold(xp, (kh, kw), stride=stride)                       # (N, C*kh*kw, L)
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    out = torch.empty(n, o, cols.shape[-1], dtype=torch.float64)
    per = cg * kh * kw
    for oc in range(o):
        g = oc // (o // groups)
        patch = cols[:, g * per:(g + 1) * per, :]                      # (N, per, L)
        out[:, oc] = torch.prod(patch ** w[oc].reshape(-1, 1), dim=1)
    return out.reshape(n, o, oh, ow)


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, 0, 1), (1, 1, 2)])
def test_convpu_equals_explicit_product(stride, padding, groups):
    torch.manual_seed(0)
    pu = ConvPU(4, 6, 3, stride=stride, padding=padding, groups=groups, dtype=torch.float64)
    with torch.no_grad():
        pu.theta.fill_(-20.0)                       # threshold ~ 1e-7: every positive input passes unclamped
    x = torch.rand(2, 4, 7, 7, dtype=torch.float64) * 2.9 + 0.05
    assert torch.allclose(pu(x), explicit_product(x, pu.weight, 0.0, stride, padding, groups), rtol=1e-10)


def test_convpu_clamp_zero_and_negative_inputs_finite():
    torch.manual_seed(1)
    pu = ConvPU(3, 5, 3, padding=1, dtype=torch.float64)
    thr = F.softplus(torch.tensor(0.0, dtype=torch.float64)) + 1e-7
    assert float(pu.threshold().detach()) == pytest.approx(float(thr))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    x[0, 0, :3] = 0.0
    x.requires_grad_(True)
    y = pu(x)
    assert torch.allclose(y, explicit_product(x.detach(), pu.weight, thr, 1, 1), rtol=1e-10)
    y.sum().backward()
    for g in (x.grad, pu.weight.grad, pu.theta.grad):
        assert torch.isfinite(g).all()
    assert pu.theta.grad.abs() > 0              # clamped inputs exist, so theta learns
    z = pu(torch.full((1, 3, 4, 4), -5.0, dtype=torch.float64))
    assert torch.isfinite(z).all() and (z > 0).all()


def test_convpu_gradcheck_and_init():
    torch.manual_seed(2)
    pu = ConvPU(2, 2, 3, padding=1, bias=True, dtype=torch.float64)
    x = (torch.rand(1, 2, 4, 4, dtype=torch.float64) + 0.8).requires_grad_(True)   # away from the clamp kink
    assert torch.autograd.gradcheck(lambda a: pu(a), (x,))
    big = ConvPU(64, 64, 3)
    bound = 1 / np.sqrt(64 * 9)                 # kaiming_uniform(a=sqrt(5)): gain sqrt(1/3) * sqrt(3/fan_in)
    assert big.weight.abs().max() <= bound and big.weight.abs().max() > 0.95 * bound
    assert float(big.theta.detach()) == 0.0
    assert "init_a" in repr(big)


def test_gpu_speed_paths_match_plain_path_on_cpu():
    """bf16 autocast and channels_last (the GPU defaults) against the plain float32 path."""
    torch.manual_seed(5)
    m = M.build("pure20", base_width=8).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yb = m(x)
            pu_out = m.stages[0][0].pu(torch.rand(1, 8, 6, 6) + 0.1)
        yc = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert pu_out.dtype == torch.float32                   # exp of the product runs in float32
    assert torch.allclose(yc, y, atol=1e-5)
    assert (yb.float() - y).abs().max() < 0.05 * y.abs().max()


# ----------------------------------------------------------------------------- Newton block
def test_newton_block_linear_case_matches_formula():
    """activation none, no norm, no projections: y = x + f + alpha * x * f with f = conv2(conv1(x))."""
    torch.manual_seed(3)
    blk = NewtonBlock(4, 4, x_proj=0, lin_proj=0, activation="none", norm="none", alpha_init=0.7).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    f = F.conv2d(F.conv2d(x, blk.conv1.weight, padding=1), blk.conv2.weight, padding=1)
    assert torch.allclose(blk(x), x + f + 0.7 * x * f)
    blk2 = NewtonBlock(4, 8, stride=2, alpha_init=0.0)
    assert blk2(torch.randn(2, 4, 8, 8)).shape == (2, 8, 4, 4)


# ----------------------------------------------------------------------------- parameter counts
def _bb(cin, w, quad=False):
    """basic block: two 3x3 convs (quadratic: 3 convs with bias each) + two BNs."""
    convs = 9 * cin * w + 9 * w * w
    return (3 * convs + 6 * w if quad else convs) + 4 * w


def cifar_count(n, quad=False, shortcut_b=False, pu=False, classes=10):
    total, cin = 3 * 16 * 9 + 2 * 16, 16
    for i, w in enumerate((16, 32, 64)):
        for j in range(n):
            total += _bb(cin, w, quad) + (1 if pu else 0)
            if shortcut_b and j == 0 and i > 0:
                total += cin * w + 2 * w
            cin = w
    return total + 64 * classes + classes


def imagenet_count(blocks, classes, pu=False, newton=False, stem=7):
    total, cin = 3 * 64 * stem * stem + 2 * 64, 64
    for i, (n, w) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for j in range(n):
            total += _bb(cin, w) + (1 if pu else 0)
            if cin != w:
                total += cin * w + 2 * w
            if newton:
                total += 2 * w * w + 2 * w + 1          # x_proj + lin_proj 1x1 convs, lin_proj BN, alpha
            cin = w
    return total + 512 * classes + classes


def test_parameter_counts_match_formulas_and_papers():
    cp = M.count_params
    assert cp(M.build("resnet20")) == cifar_count(3) == 269_722            # the paper's 0.27M
    assert cp(M.build("resnet110")) == cifar_count(18)
    assert cp(M.build("qresnet20")) == cifar_count(3, quad=True) == 806_266  # the paper's 0.81M
    assert round(cp(M.build("qresnet32")) / 1e6, 2) == 1.39
    assert cp(M.build("pure20")) == cifar_count(3, shortcut_b=True, pu=True)
    assert cp(M.build("pure272")) == cifar_count(45, shortcut_b=True, pu=True)
    assert round(cp(M.build("pure272")) / 1e6, 2) == 4.36
    assert cp(M.build("resnet18", 1000)) == imagenet_count((2, 2, 2, 2), 1000) == 11_689_512  # torchvision's
    assert cp(M.build("resnet18")) == imagenet_count((2, 2, 2, 2), 10) == 11_181_642
    assert cp(M.build("resnet18", stem="cifar")) == imagenet_count((2, 2, 2, 2), 10, stem=3) == 11_173_962
    assert cp(M.build("pure18")) == cp(M.build("resnet18")) + 8
    assert cp(M.build("pure34", 1000)) == cp(M.build("resnet34", 1000)) + 16
    nr = cp(M.build("newton-resnet"))
    assert nr == imagenet_count((2, 2, 1, 1), 10, newton=True, stem=3) == 6_012_240
    assert round(nr / 1e6, 1) == 6.0
    assert round(cp(M.build("newton-resnet", blocks=[3, 3, 2, 2])) / 1e6, 1) == 13.0      # paper Table 1
    assert round(cp(M.build("newton-resnet", blocks=[1, 1, 1, 1], x_proj=0, activation="none")) / 1e6, 1) == 5.3


def test_models_forward_and_config_roundtrip():
    x = torch.randn(2, 3, 32, 32)
    for name, kw in [("pure20", {"base_width": 4}), ("qresnet20", {"base_width": 4, "rezero": True}),
                     ("newton-resnet", {"base_width": 4, "blocks": [1, 1, 1, 1]}), ("pure18", {"base_width": 4})]:
        m = M.build(name, 7, **kw)
        assert m(x).shape == (2, 7)
        m2 = M.from_config(json.loads(json.dumps(m.config)))
        assert M.count_params(m2) == M.count_params(m)
    q = M.build("qresnet20")
    conv = q.stages[0][0].conv1
    assert conv.conv_g.weight.abs().max() == 0 and torch.all(conv.conv_g.bias == 1)   # ReLinear kept
    pure = M.build("pure20")
    assert not any(isinstance(mod, torch.nn.ReLU) for mod in pure.modules())
    with pytest.raises(ValueError, match="bad model argument"):
        M.build("pure20", widthh=3)
    with pytest.raises(ValueError, match="unknown model"):
        M.build("resnet21")


# ----------------------------------------------------------------------------- data
def _write_cifar(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(root)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, n).tolist()
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": name.encode()}, f)
        written[name] = (x, y)
    with open(os.path.join(root, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return written


def test_cifar10_reader(tmp_path):
    w = _write_cifar(str(tmp_path / "cifar"))
    b = D.load(f"cifar10:{tmp_path / 'cifar'}")
    assert len(b.train) == 30 and len(b.test) == 6 and b.classes[3] == "c3"
    x, y, _ = b.train[7]                                   # batch 2, row 1: row-major 3x32x32
    assert torch.equal(x, torch.from_numpy(w["data_batch_2"][0][1].reshape(3, 32, 32)))
    assert int(y) == w["data_batch_2"][1][1]
    os.remove(tmp_path / "cifar" / "data_batch_3")
    with pytest.raises(D.DataError, match="data_batch_3"):
        D.load(f"cifar10:{tmp_path / 'cifar'}")


def test_galaxy10_reader(tmp_path):
    import h5py
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8)
    ans = np.repeat(np.arange(10), 4).astype(np.uint8)
    p = str(tmp_path / "g.h5")
    with h5py.File(p, "w") as f:
        f["images"], f["ans"] = imgs, ans
    b = D.load(f"galaxy10:{p}", test_fraction=0.25)
    assert len(b.train) == 30 and len(b.test) == 10 and b.num_classes == 10
    assert sorted(b.test.labels.tolist()) == list(range(10))        # stratified: one per class
    x, y, _ = b.test[3]
    j = int(b.test.positions[3])
    assert torch.equal(x, torch.from_numpy(imgs[j]).permute(2, 0, 1)) and int(y) == ans[j]
    xs = list(D.batches(b.train, range(30), 8, device="cpu", workers=2))   # worker processes reopen the file
    assert sum(len(t[1]) for t in xs) == 30
    with h5py.File(str(tmp_path / "bad.h5"), "w") as f:
        f["pictures"] = imgs
    with pytest.raises(D.DataError, match="'images' and 'ans'"):
        D.load(f"galaxy10:{tmp_path / 'bad.h5'}")


def test_folder_reader(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(2)
    arrays = {}
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            os.makedirs(tmp_path / split / c)
            for k in range(3):
                a = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
                Image.fromarray(a).save(tmp_path / split / c / f"{k}.png")
                arrays[(split, c, k)] = a
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    b = D.load(f"folder:{tmp_path}", image_size=10)
    assert b.classes == ["cat", "dog"] and len(b.train) == 6 and len(b.test) == 6
    x, y, _ = b.test[4]                                    # val/dog/1.png
    assert int(y) == 1 and torch.equal(x, torch.from_numpy(arrays[("val", "dog", 1)]).permute(2, 0, 1))
    small = D.load(f"folder:{tmp_path}", image_size=6)
    assert small.train[0][0].shape == (3, 6, 6)
    (tmp_path / "train" / "dog" / "2.png").write_bytes(b"garbage")
    with pytest.raises(D.DataError, match="2.png"):
        D.load(f"folder:{tmp_path}", image_size=10).train[5]


def test_augment_and_poisson_against_manual():
    x = torch.rand(3, 2, 6, 6)
    idx = torch.tensor([5, 0, 9])
    aug = D.Augment(10, seed=4, pad=2)
    aug.set_epoch(1)
    out = aug(x, idx)
    for k, i in enumerate(idx.tolist()):
        oy, ox = aug._offsets[i].tolist()
        ref = F.pad(x[k], (2, 2, 2, 2))[:, oy:oy + 6, ox:ox + 6]
        if aug._flips[i]:
            ref = torch.flip(ref, dims=[2])
        assert torch.equal(out[k], ref)
    assert aug._flips.any() and not aug._flips.all()
    img = torch.full((1, 1, 200, 200), 0.3)
    ni = D.poisson_noise(img, torch.tensor([7]), peak=50.0)
    assert abs(ni.mean().item() - 0.3) < 0.01 and abs(ni.var().item() - 0.3 / 50) < 0.001
    two = D.poisson_noise(img.expand(2, -1, -1, -1), torch.tensor([3, 7]), peak=50.0)
    assert torch.equal(two[1], ni[0])                      # a sample's noise does not depend on its batch
    assert delta_noise(0.8, 0.76) == pytest.approx(5.0)


# ----------------------------------------------------------------------------- trainer and CLI
def test_one_epoch_on_digits_beats_chance(tmp_path):
    out = str(tmp_path / "run")
    res = train(TrainArgs(model="resnet20", model_args={"base_width": 8}, epochs=1, batch_size=32, lr=0.1,
                          schedule="cosine", image_size=16, threads=1, quiet=True, out=out, device="cpu",
                          noise_peak=20.0, targets=(0.3,)))
    assert res["final_test_acc"] > 0.5                       # chance is 0.1
    assert res["time_to_target_s"][0.3] is not None
    assert 0 <= res["noise"]["acc_noisy"] <= 1
    for f in ("config.json", "metrics.json", "model.pt", "checkpoint.pt", "curves.png"):
        assert os.path.isfile(os.path.join(out, f))
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["seed"] == 0 and "torch" in cfg["versions"] and cfg["args"]["augment"] is False
    before = sorted(os.listdir(out))
    ev_path = os.path.join(os.path.dirname(out), "eval.json")
    assert cli_main(["eval", out, "--noise-peak", "20", "--device", "cpu", "--out", ev_path]) == 0
    assert sorted(os.listdir(out)) == before                  # the run folder is never written into
    ev = json.load(open(ev_path))
    # an existing --out file is refused and left unchanged
    assert cli_main(["eval", out, "--noise-peak", "20", "--device", "cpu", "--out", ev_path]) == 2
    assert json.load(open(ev_path)) == ev
    assert ev["acc_clean"] == pytest.approx(res["final_test_acc"])
    assert ev["delta_noise_percent"] == pytest.approx(delta_noise(ev["acc_clean"], ev["acc_noisy"]))


TINY = dict(model="resnet20", model_args={"base_width": 4, "norm": "none"}, batch_size=16, limit_train=64,
            limit_test=32, image_size=16, threads=1, quiet=True, device="cpu", augment=True)


def test_resume_continues_exactly(tmp_path):
    a = train(TrainArgs(**TINY, epochs=2, out=str(tmp_path / "full")))
    train(TrainArgs(**TINY, epochs=1, out=str(tmp_path / "part")))
    b = train(TrainArgs(**TINY, epochs=2, out=str(tmp_path / "part"), resume=True))
    assert b["epochs_done"] == 2
    wa, wb = (torch.load(tmp_path / d / "model.pt") for d in ("full", "part"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert a["history"][1]["train_loss"] == pytest.approx(b["history"][1]["train_loss"], rel=1e-5)


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    assert cli_main(["train", "--data", f"cifar10:{tmp_path}/nope", "--out", str(tmp_path / "r")]) == 2
    assert f"{tmp_path}/nope" in capsys.readouterr().err
    assert cli_main(["train", "--data", "galaxy10:/no/such.h5", "--out", str(tmp_path / "r")]) == 2
    assert "/no/such.h5" in capsys.readouterr().err
    assert cli_main(["train", "--model-arg", "widthh=3", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert cli_main(["eval", str(tmp_path / "missing")]) == 2
    r = subprocess.run([sys.executable, "-m", "classify", "train", "--data", f"folder:{tmp_path}/none"],
                       capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"{tmp_path}/none" in r.stderr


def test_torchrun_two_processes_match_single_process(tmp_path):
    """gloo, 2 ranks x 8 = one process x 16.  The model has no BatchNorm (norm=none): with BN, per-rank batch
    statistics legitimately differ from the global batch's.  Augmentation is on: it is keyed on sample index."""
    args = ["--model", "resnet20", "--model-arg", "base_width=4", "--model-arg", "norm=none", "--epochs", "1",
            "--batch-size", "16", "--limit-train", "64", "--limit-test", "32", "--image-size", "16", "--augment",
            "--device", "cpu", "--quiet", "--seed", "3"]
    single = subprocess.run([sys.executable, "-m", "classify", "train", *args, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_port", str(29500 + os.getpid() % 1000), "-m", "classify", "train", *args,
                            "--out", str(tmp_path / "two")], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert multi.returncode == 0, multi.stderr
    w1, w2 = (torch.load(tmp_path / d / "model.pt") for d in ("one", "two"))
    torch.manual_seed(3)
    w0 = M.build("resnet20", 10, 3, base_width=4, norm="none").state_dict()
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 1e-2 and diff < 1e-5
    cfg = json.load(open(tmp_path / "two" / "config.json"))
    assert cfg["world_size"] == 2


def test_benchmark_quick(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/classify.py", "--quick", "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    m = json.load(open(tmp_path / "b" / "metrics.json"))
    assert m["digits"] and m["throughput"]
    assert os.path.isfile(tmp_path / "b" / "table.md")
