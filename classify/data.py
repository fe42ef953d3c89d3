"""Image-classification data: readers, splits, device-side augmentation, Poisson-noise test sets.

Data specs (``load(spec)``):

* ``digits`` / ``digits:1``: scikit-learn's bundled 8x8 digits (1,797 images, offline), upsampled to
  32x32 (bilinear), 3 replicated channels (``digits:1``: one channel); stratified 80/20 split.
* ``cifar10:/dir``: the ``cifar-10-batches-py`` folder (pickled ``data_batch_1..5`` and ``test_batch``,
  each a dict with ``b"data"`` uint8 (N, 3072) and ``b"labels"``).  Pickle runs code: only read
  files you trust.
* ``galaxy10:/file.h5``: Galaxy10 DECaLS HDF5 (``images`` (N, 256, 256, 3) uint8, ``ans`` labels), read
  lazily; stratified split with ``test_fraction`` (default 0.1).
* ``folder:/root``: ImageNet-style class folders ``root/<class>/*.png|jpg``; ``root/train`` and
  ``root/val`` (or ``root/test``) are used as the splits when present, else a stratified split.
  Images are resized (shorter side) and centre-cropped to ``image_size`` (default 224).

Every reader yields uint8 ``(C, H, W)`` images; :func:`prepare` turns a batch into normalised
floats on the device, with augmentation (random crop with zero padding, horizontal flip) drawn
per sample from ``(seed, epoch, sample index)``, so a run is reproducible and a sample gets the same
augmentation whatever the process count.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from inr.errors import InputError
from inr.signals import max_pixels

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class DataError(InputError):
    """A data set that is missing, corrupt or not in the expected format (names the file)."""


class ArrayImages(Dataset):
    """In-memory uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``; batches are indexed directly."""

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
            raise DataError(f"expected uint8 images (N, C, H, W) and N labels, got {tuple(images.shape)} "
                            f"{images.dtype} and {tuple(labels.shape)}")
        self.images, self.labels = images, labels.long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], i

    def subset(self, idx) -> "ArrayImages":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ArrayImages(self.images[idx], self.labels[idx])

    def shape(self):
        return tuple(self.images.shape[1:])


class IndexedImages(Dataset):
    """Lazily read images: ``read(j) -> uint8 (C, H, W)`` for the stored positions ``positions``."""

    in_memory = False

    def __init__(self, reader, positions, labels, shape):
        self.reader, self.positions = reader, np.asarray(positions, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self._shape = tuple(shape)

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, i):
        return self.reader(int(self.positions[i])), self.labels[i], i

    def subset(self, idx) -> "IndexedImages":
        idx = np.asarray(idx, dtype=np.int64)
        return IndexedImages(self.reader, self.positions[idx], self.labels.numpy()[idx], self._shape)

    def shape(self):
        return self._shape


class H5Reader:
    """Reads ``images[j]`` (H, W, C) from an HDF5 file; one handle per process (DataLoader workers fork)."""

    def __init__(self, path: str, key: str = "images"):
        self.path, self.key, self._pid, self._f = path, key, None, None

    def __call__(self, j: int) -> torch.Tensor:
        if self._pid != os.getpid():
            import h5py
            self._f, self._pid = h5py.File(self.path, "r"), os.getpid()
        return torch.from_numpy(np.ascontiguousarray(self._f[self.key][j])).permute(2, 0, 1).contiguous()

    def __getstate__(self):
        return {"path": self.path, "key": self.key, "_pid": None, "_f": None}


class FileReader:
    """Decodes image files with Pillow; RGB (or L for 1 channel), shorter side -> ``size``, centre crop."""

    def __init__(self, paths, size: int, channels: int = 3):
        self.paths, self.size, self.channels = list(paths), int(size), channels

    def __call__(self, j: int) -> torch.Tensor:
        from PIL import Image
        path = self.paths[j]
        try:
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > max_pixels():   # from the header, before decoding
                    raise DataError(f"image declares {im.size[0]}x{im.size[1]} pixels, above the limit of "
                                    f"{max_pixels():,} (INR_MAX_PIXELS)")
                im = im.convert("RGB" if self.channels == 3 else "L")
                w, h = im.size
                s = self.size / min(w, h)
                if s != 1:
                    im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                im = im.crop((left, top, left + self.size, top + self.size))
                a = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt file for the user
            raise DataError(f"cannot read image {path}: {e}") from None
        a = a[:, :, None] if a.ndim == 2 else a
        return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()


@dataclass
class DataBundle:
    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    classes: list = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        return self.train.shape()[0]

    @property
    def image_size(self) -> tuple:
        return self.train.shape()[1:]


def stratified_split(labels, test_fraction: float, seed: int):
    """Indices (train, test) with each class split in the same proportion (a fixed ``seed``)."""
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _digits(channels: int, split_seed: int) -> DataBundle:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]          # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    x = (x * 255).round().to(torch.uint8).expand(-1, channels, -1, -1).contiguous()
    y = torch.from_numpy(d.target).long()
    tr, te = stratified_split(y.numpy(), 0.2, split_seed)
    full = ArrayImages(x, y)
    return DataBundle("digits", full.subset(tr), full.subset(te), 10, [str(i) for i in range(10)])


# What a CIFAR-10 batch pickle may name: numpy array / dtype / scalar reconstruction (numpy 1 and 2
# module paths, pickle protocols 2-5) and the codec Python 3 uses for bytes at protocol 2.  Anything
# else (os.system, builtins.eval, ...) is refused before it can run.
_CIFAR_GLOBALS = {
    (mod, name)
    for core in ("numpy.core", "numpy._core")
    for mod, name in ((f"{core}.multiarray", "_reconstruct"), (f"{core}.multiarray", "scalar"),
                      (f"{core}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "bytearray")}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that admits only :data:`_CIFAR_GLOBALS` (numpy arrays, dtypes, scalars, bytes)."""

    def find_class(self, module, name):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only numpy "
                                     f"arrays, lists, dicts and bytes")


def safe_unpickle(f) -> object:
    """A restricted unpickler: loads only what CIFAR-10 batches contain (numpy arrays, dtypes, bytes)."""
    return _BatchUnpickler(f, encoding="bytes").load()


MAX_BATCH_BYTES = 256 * 1024 * 1024   # a CIFAR-10 batch is 31 MB (10,000 images); larger files are refused unread
MAX_IMAGES = 10_000_000               # images a Galaxy10 file may declare
MAX_SIDE = 4096                       # pixels per side a Galaxy10 image may declare


def _unpickle(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"CIFAR-10 batch file not found: {path}")
    size = os.path.getsize(path)
    if size > MAX_BATCH_BYTES:
        raise DataError(f"{path}: {size:,} bytes, above the {MAX_BATCH_BYTES:,} a CIFAR-10 batch may have "
                        f"(a batch of 10,000 images is about 31 MB)")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BATCH_BYTES + 1)
        # from memory: an array or byte string that claims more data than the file holds fails on the
        # short buffer instead of allocating what it claims
        d = safe_unpickle(io.BytesIO(raw))
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read CIFAR-10 batch {path}: {' '.join(str(e).split())}") from None
    if not isinstance(d, dict) or b"data" not in d or not (b"labels" in d or b"fine_labels" in d):
        raise DataError(f"{path} is not a CIFAR-10 batch (needs b'data' and b'labels')")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d.get(b"labels", d.get(b"fine_labels")))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: expected uint8 data (N, 3072) and N labels, got {data.dtype} "
                        f"{data.shape} and {len(labels)} labels")
    return {"x": torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), "y": torch.from_numpy(labels.astype(np.int64))}


def _cifar10(root: str) -> DataBundle:
    if not os.path.isdir(root):
        raise DataError(f"CIFAR-10 folder not found: {root} (expected the cifar-10-batches-py folder)")
    parts = [_unpickle(os.path.join(root, f"data_batch_{i}")) for i in range(1, 6)]
    test = _unpickle(os.path.join(root, "test_batch"))
    classes = [str(i) for i in range(10)]
    meta = os.path.join(root, "batches.meta")
    if os.path.isfile(meta):
        try:
            with open(meta, "rb") as f:
                classes = [c.decode() for c in safe_unpickle(f)[b"label_names"]]
        except Exception:  # noqa: BLE001 - names are cosmetic
            pass
    train = ArrayImages(torch.cat([p["x"] for p in parts]), torch.cat([p["y"] for p in parts]))
    y = torch.cat([train.labels, test["y"]])
    if y.min() < 0 or y.max() >= 10:
        raise DataError(f"{root}: CIFAR-10 labels must lie in 0..9, got {int(y.min())}..{int(y.max())}")
    return DataBundle("cifar10", train, ArrayImages(test["x"], test["y"]), 10, classes)


def _galaxy10(path: str, test_fraction: float, split_seed: int) -> DataBundle:
    if not os.path.isfile(path):
        raise DataError(f"Galaxy10 file not found: {path}")
    import h5py
    try:
        with h5py.File(path, "r") as f:
            if "images" not in f or "ans" not in f:
                raise DataError(f"{path}: Galaxy10 HDF5 needs datasets 'images' and 'ans', found {sorted(f.keys())}")
            shape, dtype = f["images"].shape, f["images"].dtype
            ans_shape = f["ans"].shape
            # from the header, before any data is read (a sparse file may declare terabytes)
            if (len(shape) != 4 or not 1 <= shape[0] <= MAX_IMAGES or max(shape[1:3]) > MAX_SIDE
                    or min(shape[1:3]) < 1 or len(ans_shape) not in (1, 2) or int(np.prod(ans_shape)) != shape[0]):
                raise DataError(f"{path}: Galaxy10 HDF5 declares images {shape} and labels {ans_shape}; expected "
                                f"(N, H, W, 3) with N <= {MAX_IMAGES:,}, sides <= {MAX_SIDE}, and N labels")
            labels = np.asarray(f["ans"][()]).astype(np.int64).reshape(-1)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read Galaxy10 HDF5 {path}: {e}") from None
    if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8 or shape[0] != len(labels):
        raise DataError(f"{path}: expected uint8 images (N, H, W, 3) and N labels, got {dtype} {shape} and "
                        f"{len(labels)} labels")
    num_classes = max(int(labels.max()) + 1, 10)   # Galaxy10 has 10 classes even if a file holds fewer
    tr, te = stratified_split(labels, test_fraction, split_seed)
    reader = H5Reader(path)
    chw = (3, shape[1], shape[2])
    return DataBundle("galaxy10", IndexedImages(reader, tr, labels[tr], chw),
                      IndexedImages(reader, te, labels[te], chw), num_classes)


def _scan(root: str, classes=None):
    if classes is None:
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not classes:
            raise DataError(f"{root}: no class folders (expected root/<class_name>/*.png|jpg)")
    paths, labels = [], []
    for k, c in enumerate(classes):
        d = os.path.join(root, c)
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            if fn.lower().endswith(IMAGE_EXTS):
                paths.append(os.path.join(d, fn))
                labels.append(k)
    if not paths:
        raise DataError(f"{root}: no images with extensions {', '.join(IMAGE_EXTS)} in its class folders")
    counts = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DataError(f"{root}: class folder(s) {', '.join(empty)} hold no images "
                        f"({', '.join(IMAGE_EXTS)})")
    if len(classes) < 2:
        raise DataError(f"{root}: only one class folder ({classes[0]}); classification needs at least two")
    return classes, paths, np.asarray(labels)


def _folder(root: str, image_size: int, channels: int, test_fraction: float, split_seed: int) -> DataBundle:
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}")
    shape = (channels, image_size, image_size)
    tr_dir = os.path.join(root, "train")
    te_dir = next((os.path.join(root, n) for n in ("val", "test") if os.path.isdir(os.path.join(root, n))), None)
    if os.path.isdir(tr_dir) and te_dir is not None:
        classes, ptr, ytr = _scan(tr_dir)
        _, pte, yte = _scan(te_dir, classes)
        rtr, rte = FileReader(ptr, image_size, channels), FileReader(pte, image_size, channels)
        train = IndexedImages(rtr, np.arange(len(ptr)), ytr, shape)
        test = IndexedImages(rte, np.arange(len(pte)), yte, shape)
    else:
        classes, paths, y = _scan(root)
        tr, te = stratified_split(y, test_fraction, split_seed)
        r = FileReader(paths, image_size, channels)
        train, test = IndexedImages(r, tr, y[tr], shape), IndexedImages(r, te, y[te], shape)
    if len(test) == 0:
        raise DataError(f"{root}: the test split is empty (too few images per class)")
    return DataBundle("folder", train, test, len(classes), classes)


def load(spec: str, *, image_size: int | None = None, test_fraction: float = 0.1, split_seed: int = 0) -> DataBundle:
    """Open a data set from a spec string (module docstring).  ``split_seed`` fixes the train/test split
    for sets without one (it is deliberately separate from the training seed)."""
    kind, _, arg = spec.partition(":")
    if kind == "digits":
        if arg not in ("", "1", "3"):
            raise DataError(f"--data digits takes ':1' or ':3' channels, got {spec!r}")
        return _digits(int(arg or 3), split_seed)
    if not arg:
        raise DataError(f"--data {spec!r}: expected digits, cifar10:DIR, galaxy10:FILE.h5 or folder:DIR")
    if kind == "cifar10":
        return _cifar10(arg)
    if kind == "galaxy10":
        return _galaxy10(arg, test_fraction, split_seed)
    if kind == "folder":
        return _folder(arg, image_size or 224, 3, test_fraction, split_seed)
    raise DataError(f"--data {spec!r}: unknown data set {kind!r} (digits, cifar10, galaxy10, folder)")


def channel_stats(ds: Dataset, max_images: int | None = None, seed: int = 0) -> tuple[list, list]:
    """Per-channel mean and std of the [0, 1] pixel values of up to ``max_images`` training images
    (default 2000 held in memory, 500 decoded from files)."""
    n = len(ds)
    max_images = max_images or (2000 if getattr(ds, "in_memory", False) else 500)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max_images), replace=False))
    if getattr(ds, "in_memory", False):
        x = ds.images[torch.as_tensor(idx)].double() / 255
    else:
        x = torch.stack([ds[int(i)][0] for i in idx]).double() / 255
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + salt) % 2**63)


class Augment:
    """Random crop (zero padding ``pad``) and horizontal flip, drawn per sample from (seed, epoch, index)."""

    def __init__(self, n: int, seed: int, pad: int = 4, flip: bool = True):
        self.n, self.seed, self.pad, self.flip = n, seed, pad, flip
        self._epoch, self._offsets, self._flips = None, None, None

    def set_epoch(self, epoch: int):
        if epoch != self._epoch:
            g = _epoch_generator(self.seed, epoch, 1)
            self._offsets = torch.randint(0, 2 * self.pad + 1, (self.n, 2), generator=g)
            self._flips = torch.rand(self.n, generator=g) < 0.5 if self.flip else torch.zeros(self.n, dtype=torch.bool)
            self._epoch = epoch

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``x``: float (B, C, H, W) on any device; ``idx``: the samples' dataset indices."""
        b, _, h, w = x.shape
        off = self._offsets[idx.cpu()].to(x.device)
        flip = self._flips[idx.cpu()].to(x.device)
        xp = F.pad(x, (self.pad,) * 4)
        ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        rows = off[:, 0:1] + ar_h                                         # (B, H)
        cols = off[:, 1:2] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (B, W)
        bi = torch.arange(b, device=x.device)[:, None, None]
        return xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def poisson_noise(x: torch.Tensor, idx: torch.Tensor, peak: float, seed: int = 0) -> torch.Tensor:
    """``Poisson(x * peak) / peak`` for [0, 1] images ``x`` (B, C, H, W); each sample's noise is drawn from
    a generator seeded by its dataset index, so the noisy test set is fixed whatever the batching."""
    if not peak > 0:
        raise InputError(f"noise peak must be > 0, got {peak}")
    out = torch.empty_like(x, device="cpu")
    xc = x.detach().float().cpu()
    for k, i in enumerate(idx.tolist()):
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(i))
        out[k] = torch.poisson(xc[k] * peak, generator=g) / peak
    return out.to(x.device)


@dataclass(frozen=True)
class Preprocess:
    """What :func:`prepare` does to every batch apart from augmentation: normalisation by the per-channel
    ``mean`` / ``std``, an optional resize to ``size`` (H, W), optional Poisson noise of peak
    ``noise_peak`` (:func:`poisson_noise`, seeded by ``noise_seed`` and each sample's index) and the
    memory layout (``channels_last``)."""
    mean: tuple
    std: tuple
    size: tuple | None = None
    channels_last: bool = False
    noise_peak: float | None = None
    noise_seed: int = 0


def prepare(x: torch.Tensor, pre: Preprocess, *, augment: Augment | None = None, idx=None) -> torch.Tensor:
    """uint8 batch -> float, optional resize, Poisson noise, augmentation, normalisation (``pre``);
    ``idx``: the samples' dataset indices (noise and augmentation draw per index)."""
    x = x.float().div_(255)
    if pre.size is not None and tuple(x.shape[-2:]) != tuple(pre.size):
        x = F.interpolate(x, size=tuple(pre.size), mode="bilinear", antialias=True, align_corners=False)
    if pre.noise_peak:
        x = poisson_noise(x, idx, pre.noise_peak, pre.noise_seed)
    if augment is not None:
        x = augment(x, idx)
    m = torch.as_tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(pre.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if pre.channels_last else x


def batches(ds: Dataset, indices, batch_size: int, *, device, workers: int = 0, drop_last: bool = False):
    """Yield ``(x uint8, y, idx)`` on ``device`` for ``indices`` in order, ``batch_size`` at a time."""
    indices = torch.as_tensor(list(indices) if not torch.is_tensor(indices) else indices, dtype=torch.long)
    n = len(indices) - (len(indices) % batch_size if drop_last else 0)
    pin = torch.device(device).type == "cuda"
    if getattr(ds, "in_memory", False) or workers == 0:
        for s in range(0, n, batch_size):
            idx = indices[s:s + batch_size]
            if getattr(ds, "in_memory", False):
                x, y = ds.images[idx], ds.labels[idx]
            else:
                items = [ds[int(i)] for i in idx]
                x, y = torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])
            yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin), idx
        return
    from torch.utils.data import DataLoader
    loader = DataLoader(ds, batch_size=batch_size, sampler=indices[:n].tolist(), num_workers=workers,
                        pin_memory=pin, drop_last=drop_last, persistent_workers=False)
    for x, y, idx in loader:
        yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin), idx
