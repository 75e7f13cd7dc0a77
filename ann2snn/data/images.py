"""Datasets: Fashion-MNIST, CIFAR-10/100 and ImageNet as train / val / test batch iterables.

* ``val`` is a seeded split carved from the *training* set (model selection); ``test`` is the
  official test set, only for reporting.
* Small datasets (Fashion-MNIST, CIFAR) are held whole as uint8 tensors on the target device
  and augmented there, vectorised (`InMemoryLoader`): no per-image Python work. AutoAugment
  needs PIL, so it (and ImageNet) goes through a torch `DataLoader` (`TorchLoader`).
* Every loader yields ``(x float32 [B,C,H,W], y int64 [B])`` on the chosen device and has
  ``len()`` (batches; the last partial batch is kept), ``dataset_size`` (images) and
  ``set_epoch(epoch)``. Each ``iter()`` then advances the epoch by one, so shuffles differ
  between epochs without any call, and ``set_epoch`` lets a resumed run replay its batches.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    EpochLoader,
    Loaders,
    cache_dir,
    data_roots,
    dataset_not_found,
    epoch_generator,
)

__all__ = ["IMAGE_DATASETS", "create_image_loaders", "image_dataset_key"]
__all__ += ["find_fashion_mnist", "load_fashion_mnist", "read_idx", "InMemoryLoader", "TorchLoader"]

# Where Debian's `dataset-fashion-mnist` package puts the four gzipped IDX files (a module
# constant so tests can point it elsewhere).
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# name -> (mean, std) of the per-channel normalisation.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# name -> (folder, train files, test files, label key, classes), torchvision's layout.
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", _CIFAR10_TRAIN, ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}
_ALIASES = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10"}
_ALIASES |= {"cifar-100": "cifar100", "ilsvrc2012": "imagenet"}
IMAGE_DATASETS = tuple(sorted(_STATS))


def image_dataset_key(name: str) -> str | None:
    """The canonical name of an image-classification dataset (aliases resolved), or None."""
    key = _ALIASES.get(k := str(name).lower().replace("_", "-"), k)
    return key if key in _STATS else None


# --- Fashion-MNIST ------------------------------------------------------------------------


def _idx_file(folder: Path, base: str) -> Path | None:
    return next((p for p in (folder / base, folder / f"{base}.gz") if p.is_file()), None)


def _download_fashion_mnist(root: Path) -> Path:
    """Fetch with torchvision into ``root/FashionMNIST/raw`` (tests replace this function)."""
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=True, download=True)
    return root / "FashionMNIST" / "raw"


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding the four Fashion-MNIST IDX files (each gzipped or not).

    Looks in ``data_dir`` and ``$ANN2SNN_DATA`` (each as is, ``/fashion-mnist`` and
    torchvision's ``/FashionMNIST/raw``), the Debian package folder, the cache
    (``$XDG_CACHE_HOME/ann2snn`` or ``~/.cache/ann2snn``), then tries a torchvision download
    into the cache. Raises `DatasetNotFoundError` listing all of these.
    """
    cache, looked = cache_dir(), []
    subdirs = ("", "fashion-mnist", "FashionMNIST/raw")
    if data_dir is not None:
        # An explicit folder is the only place looked: falling back to another copy would
        # silently train on data the user did not name.
        candidates = [Path(data_dir).expanduser() / s for s in subdirs]
        for folder in candidates:
            if all(_idx_file(folder, b) for b in _IDX_NAMES):
                return folder
        raise dataset_not_found(
            "Fashion-MNIST",
            [str(c) for c in candidates],
            f"put {', '.join(_IDX_NAMES)} (each may be .gz) into --data-dir (data_dir=), or "
            "leave --data-dir out to use $ANN2SNN_DATA, the Debian package or a download.",
        )
    candidates = [r / s for r in data_roots(None) for s in subdirs]
    for folder in [*candidates, DEBIAN_FASHION_MNIST_DIR, cache / "FashionMNIST" / "raw"]:
        if all(_idx_file(folder, b) for b in _IDX_NAMES):
            return folder
        looked.append(str(folder))
    try:
        folder = _download_fashion_mnist(cache)
        if all(_idx_file(folder, b) for b in _IDX_NAMES):
            return folder
        looked.append(f"{folder} (after a torchvision download that left no files)")
    except Exception as e:  # no network, proxy, full disk: report it with the rest
        why = " ".join(str(e).split())  # torchvision's message spans lines
        looked.append(f"torchvision download into {cache}: failed ({type(e).__name__}: {why})")
    raise dataset_not_found(
        "Fashion-MNIST",
        looked,
        "on Debian/Ubuntu `apt-get install dataset-fashion-mnist`; or connect to the internet "
        "(ann2snn then downloads it into the cache by itself); or pass --data-dir (data_dir=) "
        f"naming the folder with {', '.join(_IDX_NAMES)} (each may be .gz).",
    )


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read an IDX file (gzipped if named ``*.gz``): images (magic 2051) -> uint8 [N,H,W],
    labels (magic 2049) -> uint8 [N]. Raises ValueError naming the file if it is corrupt."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: unreadable ({e}); the file is corrupt, fetch it again") from e
    header = 16 if magic == 2051 else 8
    if len(raw) < header:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    found, n = struct.unpack(">II", raw[:8])
    if found != magic:
        kind = "images" if magic == 2051 else "labels"
        raise ValueError(f"{path}: bad IDX magic number {found}, expected {magic} ({kind})")
    shape = (n, *struct.unpack(">II", raw[8:16])) if magic == 2051 else (n,)
    if len(raw) != header + math.prod(shape):
        want = header + math.prod(shape)
        raise ValueError(f"{path}: {len(raw)} bytes, expected {want} for {shape}; truncated?")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()


def load_fashion_mnist(data_dir: str | os.PathLike | None) -> list[np.ndarray]:
    """-> [train_x uint8 [N,1,28,28], train_y int64 [N], test_x, test_y]."""
    folder, out = find_fashion_mnist(data_dir), []
    for images, labels in (_IDX_NAMES[:2], _IDX_NAMES[2:]):
        x = read_idx(_idx_file(folder, images), 2051)  # type: ignore[arg-type]
        y = read_idx(_idx_file(folder, labels), 2049).astype(np.int64)  # type: ignore[arg-type]
        if len(x) != len(y) or (len(y) and y.max() > 9):
            raise ValueError(f"{folder}: {images}/{labels} differ in length or labels exceed 9")
        # reshape, not x[:, None]: a [N, 1, H, W] view of [N, H, W] has channel stride 1,
        # which CPU convolutions take for channels_last (and every op after them slows).
        out += [np.ascontiguousarray(x).reshape(-1, 1, *x.shape[1:]), y]
    return out


# --- CIFAR --------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can build a CIFAR batch and nothing else: dicts, lists, bytes,
    strings and numbers come from the pickle opcodes themselves; the only classes it may
    look up are numpy's array reconstruction and the codec Python 2 byte strings use."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"the pickle names {module}.{name}, which a CIFAR batch never holds (a pickle "
                "that names code runs it); refused without building it"
            )
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch -> uint8 [N,3,32,32], int64 [N].

    The real files are Python-2 pickles of numpy arrays (hence ``latin1``); keys are bytes or
    str depending on the writer. They are read by `_CifarUnpickler`, which builds only the
    numpy and builtin types the format uses: a pickle that names anything else (the way a
    pickle runs code) is refused before that object is made.
    """
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="latin1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
    ) as e:
        raise ValueError(
            f"{path}: cannot read this CIFAR batch ({type(e).__name__}: {e}); the file is "
            "damaged or not a CIFAR pickle — download the dataset again"
        ) from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a CIFAR batch (a {type(d).__name__}, not a dict)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    try:
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[label_key], dtype=np.int64)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a CIFAR batch ({type(e).__name__}: {e})") from e
    if len(x) != len(y):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def _load_cifar(name: str, data_dir: str | os.PathLike | None, download: bool) -> list:
    """-> [train_x uint8 [N,3,32,32], train_y int64 [N], test_x, test_y]."""
    folder, train_files, test_files, label_key, _ = _CIFAR[name]
    roots = data_roots(data_dir) + ([cache_dir()] if data_dir is None else [])
    files = train_files + test_files
    found = [r / folder for r in roots if all((r / folder / f).is_file() for f in files)]
    looked = [str(r / folder) for r in roots]
    local = f"--data-dir (data_dir=) naming the folder that holds {folder}/ (torchvision's layout)"
    if not found and download:
        from torchvision.datasets import CIFAR10, CIFAR100

        root = roots[0]  # data_dir, else $ANN2SNN_DATA, else the cache
        try:  # torchvision downloads, checks the MD5 and extracts; we read the pickles below
            (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=True, download=True)
        except Exception as e:
            raise dataset_not_found(name, looked, f"the download failed ({e}); pass {local}") from e
        found = [root / folder]
    if not found:
        how = f"pass --download (download=True) with internet, or pass {local}."
        raise dataset_not_found(name, looked, how)
    out = []
    for files in (train_files, test_files):
        xs, ys = zip(*(_read_cifar_batch(found[0] / f, label_key) for f in files))
        out += [np.concatenate(xs), np.concatenate(ys)]
    return out


# --- ImageNet -----------------------------------------------------------------------------


def _load_imagenet(data_dir: str | os.PathLike | None) -> tuple[Any, Any]:
    """ImageFolders over ``<root>/train`` and ``<root>/val`` (val numbered like train)."""
    from torchvision.datasets import ImageFolder

    candidates = [r / s for r in data_roots(data_dir) for s in ("", "imagenet")]
    root = next((c for c in candidates if (c / "train").is_dir() and (c / "val").is_dir()), None)
    if root is None:
        raise dataset_not_found(
            "ImageNet (folders train/ and val/)",
            [str(c) for c in candidates] or ["nowhere: no data_dir given, $ANN2SNN_DATA unset"],
            "it cannot be downloaded automatically; get ILSVRC2012 from image-net.org, sort "
            "train/ and val/ into one sub-folder per class, and pass --data-dir (data_dir=).",
        )
    train, val = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
    # ImageFolder numbers the folders it sees; a val/ lacking a class would shift labels.
    if extra := set(val.classes) - set(train.classes):
        raise ValueError(f"{root / 'val'}: classes {sorted(extra)} are not in train/")
    val.samples = val.imgs = [(p, train.class_to_idx[val.classes[t]]) for p, t in val.samples]
    val.targets = [t for _, t in val.samples]
    return train, val


# --- augmentation -------------------------------------------------------------------------


def _cutout_mask(centres: Tensor, size: int, h: int, w: int) -> Tensor:
    """centres long [B,2] (row, col) -> bool [B,H,W], True inside the size×size hole,
    clipped at the border (DeVries & Taylor, 2017)."""
    lo, hi = centres - size // 2, centres + (size - size // 2)  # [B,2]
    r, c = torch.arange(h, device=centres.device), torch.arange(w, device=centres.device)
    in_r = (r >= lo[:, :1]) & (r < hi[:, :1])  # [B,H]
    in_c = (c >= lo[:, 1:]) & (c < hi[:, 1:])  # [B,W]
    return in_r[:, :, None] & in_c[:, None, :]


class Cutout:
    """Zero one size×size square at a random centre of a normalised [C,H,W] tensor."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, x: Tensor) -> Tensor:
        centre = torch.stack([torch.randint(0, m, (1,)) for m in x.shape[-2:]], 1)  # [1,2]
        return x * ~_cutout_mask(centre, self.size, *x.shape[-2:])  # [1,H,W] broadcasts over C


def _random_crop(x: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """Zero-pad uint8 [B,C,H,W] by ``pad``, cut one H×W window per image at ``offsets`` long
    [B,2] in [0, 2·pad]. Pads with pixel value 0, as torchvision's RandomCrop does on PIL."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))  # [B,C,H+2p,W+2p]
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [B,H]
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # [B,W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices split by the ':' move to the front: [B,H,W,C].
    return xp[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _pil_transform(name: str, augment: bool, autoaugment: bool, cutout: int) -> Any:
    """torchvision transform: PIL image -> normalised float [C,H,W]."""
    from torchvision import transforms as T

    if name == "imagenet":
        ops: list[Any] = [T.Resize(256), T.CenterCrop(224)]
        if augment:
            ops = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
            ops.append(T.ColorJitter(0.2, 0.2, 0.2, 0.1))
    else:
        size, pad = (28, 2) if name == "fashion-mnist" else (32, 4)
        ops = [T.RandomCrop(size, padding=pad), T.RandomHorizontalFlip()] if augment else []
    if augment and autoaugment:
        policy = T.AutoAugmentPolicy.IMAGENET if name == "imagenet" else T.AutoAugmentPolicy.CIFAR10
        ops.append(T.AutoAugment(policy))
    ops += [T.ToTensor(), T.Normalize(*_STATS[name])]
    return T.Compose(ops + ([Cutout(cutout)] if augment and cutout else []))


# --- loaders ------------------------------------------------------------------------------


class InMemoryLoader(EpochLoader):
    """Batches from a whole split held as uint8 [N,C,H,W] on ``device``; uint8 takes 4x less
    memory than float, so batches are normalised as they are cut. ``pad > 0`` turns on
    random crop (that padding) and horizontal flip; ``cutout > 0`` one hole of that size.

    All random numbers of an epoch are drawn up front on the CPU from a generator seeded by
    (seed, epoch): the batches are the same on CPU and GPU and after a resume.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        stats: tuple,
        batch_size: int,
        *,
        shuffle: bool = False,
        pad: int = 0,
        cutout: int = 0,
        seed: int = 0,
        device: str | torch.device = "cpu",
        indices: Tensor | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.images, self.labels = images.to(self.device), labels.to(self.device, torch.long)
        self.mean, self.std = (torch.tensor(s, device=self.device).view(1, -1, 1, 1) for s in stats)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.pad, self.cutout = pad, cutout
        # Positions in the source split (inspection only).
        self.indices = indices if indices is not None else torch.arange(len(images))

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        n, _, h, w = self.images.shape
        g, p, dev = epoch_generator(self.seed, epoch), self.pad, self.device
        order = (torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)).to(dev)
        if p:
            offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=g).to(dev)  # crop corners
            flips = (torch.rand(n, generator=g) < 0.5).to(dev)
        if self.cutout:
            centres = torch.stack([torch.randint(0, m, (n,), generator=g) for m in (h, w)], 1)
            centres = centres.to(dev)  # [N,2] hole centres (row, col)
        for s in range(0, n, self.batch_size):
            sl, idx = slice(s, s + self.batch_size), order[s : s + self.batch_size]
            x = self.images[idx]  # uint8 [b,C,H,W]
            if p:
                x = _random_crop(x, offsets[sl], p)
            x = (x.float() / 255 - self.mean) / self.std  # float32 [b,C,H,W]
            if p:
                x = torch.where(flips[sl].view(-1, 1, 1, 1), x.flip(3), x)
            if self.cutout:
                x = x * ~_cutout_mask(centres[sl], self.cutout, h, w)[:, None]
            # Canonical NCHW strides: the crop's gather leaves channels_last-like strides
            # (for C = 1 even `.contiguous()` keeps them), which CPU convolutions follow.
            yield x.clone(memory_format=torch.contiguous_format), self.labels[idx]


class _PILDataset(torch.utils.data.Dataset):
    """``(index, seed)`` -> (transform(PIL image), label). Seeding the transform per sample
    makes random augmentation reproducible whatever ``num_workers`` is."""

    def __init__(self, source: Any, transform: Any) -> None:
        self.source, self.transform = source, transform  # ImageFolder or (x [N,C,H,W], y [N])

    def __getitem__(self, item: tuple[int, int | None]) -> tuple[Tensor, int]:
        from PIL import Image

        (i, seed), src = item, self.source
        if isinstance(src, tuple):
            img = src[0][i].transpose(1, 2, 0)  # uint8 [H,W,C]
            img, label = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img), src[1][i]
        else:
            img, label = src[i]
        with torch.random.fork_rng(devices=[], enabled=seed is not None):  # caller's RNG kept
            if seed is not None:  # CPU generator only: torch.manual_seed would reseed CUDA too
                torch.default_generator.manual_seed(seed)
            return self.transform(img), int(label)


class TorchLoader(EpochLoader):
    """A torch `DataLoader` over PIL transforms, with `InMemoryLoader`'s interface."""

    def __init__(
        self,
        source: Any,
        indices: Tensor,
        transform: Any,
        batch_size: int,
        *,
        shuffle: bool,
        random: bool,
        seed: int,
        num_workers: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.dataset, self.indices = _PILDataset(source, transform), indices
        self.batch_size = batch_size
        self.shuffle, self.random, self.seed, self.num_workers = shuffle, random, seed, num_workers
        self.device = torch.device(device)

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        n, g = len(self.indices), epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        seeds = torch.randint(0, 2**62, (n,), generator=g).tolist() if self.random else [None] * n
        loader = torch.utils.data.DataLoader(
            self.dataset,
            self.batch_size,
            sampler=list(zip(self.indices[order].tolist(), seeds)),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=g,  # its worker base seed: from g, not the caller's global RNG
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


# --- entry point --------------------------------------------------------------------------


def create_image_loaders(
    name: str,
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    val_fraction: float = 0.1,
    seed: int = 42,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    augment: bool = True,
    autoaugment: bool = False,
    cutout: int = 0,
    download: bool = False,
    in_memory: bool | None = None,
    eval_batch_size: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Loaders:
    """Train / val / test loaders of an image-classification dataset (`IMAGE_DATASETS`);
    the arguments are `ann2snn.data.create_loaders`'."""
    key = image_dataset_key(name)
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(IMAGE_DATASETS)}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    autoaugment, cutout = autoaugment and augment, cutout if augment else 0
    fast = in_memory if in_memory is not None else key != "imagenet" and not autoaugment
    if fast and (key == "imagenet" or autoaugment):
        raise ValueError("in_memory=True is not possible for ImageNet or with AutoAugment")
    device = device if device is not None else "cuda" if torch.cuda.is_available() else "cpu"

    if key == "imagenet":
        train_src, test_src = _load_imagenet(data_dir)
        n_train, n_test, classes = len(train_src), len(test_src), len(train_src.classes)
        channels, size = 3, 224
    else:
        if key == "fashion-mnist":
            arrays, classes = load_fashion_mnist(data_dir), 10
        else:
            arrays, classes = _load_cifar(key, data_dir, download), _CIFAR[key][4]
        train_src, test_src = tuple(arrays[:2]), tuple(arrays[2:])  # (x [N,C,H,W], y [N])
        n_train, n_test, (channels, size) = len(arrays[1]), len(arrays[3]), arrays[0].shape[1:3]

    # Seeded split of the training set: perm[:n_val] -> val, the rest -> train.
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    n_val = round(n_train * val_fraction)
    train_idx = perm[n_val:][:limit_train].sort().values  # sorted: file locality (ImageNet)
    val_idx = perm[:n_val][:limit_test].sort().values
    test_idx = torch.arange(n_test)[:limit_test]

    def make(src: Any, idx: Tensor, train: bool) -> EpochLoader:
        bs, aug = (batch_size, augment) if train else (eval_batch_size or batch_size, False)
        kw: dict[str, Any] = dict(shuffle=train, seed=seed, device=device)
        if fast:
            x, y = torch.from_numpy(src[0][idx.numpy()]), torch.from_numpy(src[1][idx.numpy()])
            pad = (2 if key == "fashion-mnist" else 4) if aug else 0
            cut = cutout if aug else 0
            return InMemoryLoader(x, y, _STATS[key], bs, pad=pad, cutout=cut, indices=idx, **kw)
        tf = _pil_transform(key, aug, autoaugment, cutout)
        return TorchLoader(src, idx, tf, bs, random=aug, num_workers=num_workers, **kw)

    train, val, test = (
        make(train_src, train_idx, True),
        make(train_src, val_idx, False),
        make(test_src, test_idx, False),
    )
    mean, std = _STATS[key]
    return Loaders(train, val, test, classes, int(channels), int(size), key, mean, std)
