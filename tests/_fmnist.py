"""A tiny, learnable Fashion-MNIST stand-in written in the real IDX format.

`write_fashion_mnist(folder)` writes the four gzipped IDX files that
`ann2snn.data.images.find_fashion_mnist` looks for. Each class k lights one block of a 2×5 grid
on a dim noisy background, so a small CNN learns the task within one short epoch. The
files are generated from a fixed seed: every test sees the same images.

`isolate_data(monkeypatch, tmp_path)` hides the user's data, the Debian package folder,
the cache and the network from in-process code, so only an explicit ``data_dir`` counts.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

SIDE = 28
CLASSES = 10


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX as in the Fashion-MNIST distribution (big-endian magic and sizes, uint8), gzipped."""
    header = struct.pack(">II", 2051 if array.ndim == 3 else 2049, len(array))
    if array.ndim == 3:
        header += struct.pack(">II", *array.shape[1:])
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, 28, 28], uint8 [n]): class k brightens block k of a 2×5 grid."""
    labels = rng.integers(0, CLASSES, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, SIDE, SIDE)).astype(np.int64)
    for i, k in enumerate(labels):
        r, c = 2 + 13 * (int(k) // 5), 1 + 5 * (int(k) % 5)  # block of 11 × 5 pixels
        images[i, r : r + 11, c : c + 5] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_fashion_mnist(folder: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    """Write train/t10k images and labels (gzipped IDX) into ``folder``; return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (xtr, ytr), (xte, yte) = make_images(n_train, rng), make_images(n_test, rng)
    for name, array in {
        "train-images-idx3-ubyte": xtr,
        "train-labels-idx1-ubyte": ytr,
        "t10k-images-idx3-ubyte": xte,
        "t10k-labels-idx1-ubyte": yte,
    }.items():
        _write_idx(folder / f"{name}.gz", array)
    return folder


def isolate_data(monkeypatch, tmp_path: Path) -> None:
    """No in-process lookup may find the user's data, the Debian package or the network."""
    from ann2snn.data import images as data

    monkeypatch.delenv("ANN2SNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")

    def no_download(root):
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(data, "_download_fashion_mnist", no_download)
