"""Tests for ann2snn.data.images on tiny files written in the real on-disk formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from _fmnist import isolate_data

from ann2snn.data import DatasetNotFoundError, create_loaders, list_datasets
from ann2snn.data import images as data
from ann2snn.data.images import find_fashion_mnist, read_idx

REAL_DEBIAN_DIR = data.DEBIAN_FASHION_MNIST_DIR
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test may see the user's data, the Debian package or the network."""
    isolate_data(monkeypatch, tmp_path)


# --- writers for the real formats -----------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX as in the Fashion-MNIST distribution: big-endian magic, sizes, then uint8 data."""
    header = struct.pack(">II", 2051 if array.ndim == 3 else 2049, len(array))
    if array.ndim == 3:
        header += struct.pack(">II", *array.shape[1:])
    raw = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def make_fashion(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), array)
    return arrays


def make_cifar(root: Path, hundred: bool = False) -> dict:
    """Pickled dicts with bytes keys and uint8 [N,3072] rows, like the real batches."""
    rng = np.random.default_rng(1)
    if hundred:
        folder, key, classes = root / "cifar-100-python", b"fine_labels", 100
        files = {"train": 15, "test": 6}
        meta = {"meta": {b"fine_label_names": [b"c%d" % i for i in range(100)]}}
    else:
        folder, key, classes = root / "cifar-10-batches-py", b"labels", 10
        files = {f"data_batch_{i}": 3 for i in range(1, 6)} | {"test_batch": 6}
        meta = {"batches.meta": {b"label_names": [b"c%d" % i for i in range(10)]}}
    folder.mkdir(parents=True)
    out = {}
    for name, n in files.items():
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            key: [int(v) for v in rng.integers(0, classes, n)],
            b"batch_label": name.encode(),
        }
        if hundred:
            batch[b"coarse_labels"] = [0] * n
        (folder / name).write_bytes(pickle.dumps(batch))
        out[name] = batch
    for name, content in meta.items():
        (folder / name).write_bytes(pickle.dumps(content))
    return out


def normalise(x: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [N,C,H,W] -> what the loaders should yield without augmentation."""
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return (torch.from_numpy(x).float() / 255 - mean) / std


def collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


# --- Fashion-MNIST ------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_shapes_labels_normalisation(tmp_path, gz):
    arrays = make_fashion(tmp_path / "fm", gz=gz)
    loaders = create_loaders(
        "fashion-mnist", tmp_path / "fm", batch_size=8, val_fraction=0.2, device="cpu"
    )
    assert (loaders.num_classes, loaders.in_channels, loaders.image_size) == (10, 1, 28)
    assert loaders.name == "fashion-mnist"
    assert (loaders.train.dataset_size, loaders.val.dataset_size) == (16, 4)
    assert loaders.test.dataset_size == 10
    assert (len(loaders.train), len(loaders.val), len(loaders.test)) == (2, 1, 2)
    x, y = next(iter(loaders.train))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0 <= y.min() and y.max() <= 9
    # Test split: unaugmented, in file order, last partial batch kept.
    x, y = collect(loaders.test)
    expected = normalise(arrays["t10k-images-idx3-ubyte"][:, None], (FMNIST_MEAN,), (FMNIST_STD,))
    torch.testing.assert_close(x, expected)
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_val_split_is_disjoint_and_covers_train(tmp_path):
    arrays = make_fashion(tmp_path, n_train=20)
    loaders = create_loaders("fashion-mnist", tmp_path, batch_size=4, augment=False, device="cpu")
    train_idx, val_idx = loaders.train.indices, loaders.val.indices
    assert len(val_idx) == 2 and len(train_idx) == 18
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(20))
    # The images themselves: val holds exactly the training images at val_idx.
    x, y = collect(loaders.val)
    images = arrays["train-images-idx3-ubyte"][val_idx.numpy()][:, None]
    torch.testing.assert_close(x, normalise(images, (FMNIST_MEAN,), (FMNIST_STD,)))
    assert y.tolist() == arrays["train-labels-idx1-ubyte"][val_idx.numpy()].tolist()
    # Without augmentation the train set is the same images, only shuffled.
    x, _ = collect(loaders.train)
    assert x.shape == (18, 1, 28, 28)


def test_seeded_determinism_and_set_epoch(tmp_path):
    make_fashion(tmp_path, n_train=40)
    kw = dict(batch_size=8, val_fraction=0.25, device="cpu", limit_train=24)
    a = create_loaders("fashion-mnist", tmp_path, **kw)
    b = create_loaders("fashion-mnist", tmp_path, **kw)
    c = create_loaders("fashion-mnist", tmp_path, seed=7, **kw)
    assert torch.equal(a.val.indices, b.val.indices)
    assert not torch.equal(a.val.indices, c.val.indices)
    assert a.train.dataset_size == 24 and a.val.dataset_size == 10
    epoch0_a, epoch0_b = collect(a.train), collect(b.train)
    assert torch.equal(epoch0_a[0], epoch0_b[0]) and torch.equal(epoch0_a[1], epoch0_b[1])
    epoch1 = collect(a.train)  # iterating again moves on to epoch 1
    assert not torch.equal(epoch1[0], epoch0_a[0])
    a.train.set_epoch(0)  # a resumed run replays an epoch exactly
    assert torch.equal(collect(a.train)[0], epoch0_a[0])
    a.train.set_epoch(1)
    assert torch.equal(collect(a.train)[0], epoch1[0])
    # Evaluation splits never change between epochs.
    assert torch.equal(collect(a.val)[0], collect(a.val)[0])


def test_limits_and_eval_batch_size(tmp_path):
    make_fashion(tmp_path, n_train=20, n_test=10)
    loaders = create_loaders(
        "fashion-mnist", tmp_path, batch_size=4, eval_batch_size=3, limit_train=6, limit_test=5
    )
    assert loaders.train.dataset_size == 6 and len(loaders.train) == 2
    assert loaders.test.dataset_size == 5 and len(loaders.test) == 2
    assert loaders.val.dataset_size == 2  # round(0.1 * 20), under limit_test
    assert [len(y) for _, y in loaders.test] == [3, 2]


def test_dataloader_path_matches_in_memory_path(tmp_path):
    make_fashion(tmp_path)
    kw = dict(batch_size=8, device="cpu", augment=False)
    fast = create_loaders("fashion-mnist", tmp_path, in_memory=True, **kw)
    slow = create_loaders("fashion-mnist", tmp_path, in_memory=False, **kw)
    assert isinstance(fast.train, data.InMemoryLoader)
    assert isinstance(slow.train, data.TorchLoader)
    for split in ("train", "val", "test"):
        f, s = getattr(fast, split), getattr(slow, split)
        assert len(f) == len(s) and f.dataset_size == s.dataset_size
        xf, yf = collect(f)
        xs, ys = collect(s)
        assert torch.equal(yf, ys)
        torch.testing.assert_close(xf, xs)


# Python 3.12+ warns about fork() once CUDA threads exist; the workers touch no CUDA.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_dataloader_augmentation_reproducible_across_workers(tmp_path):
    make_fashion(tmp_path)
    kw = dict(batch_size=8, device="cpu", in_memory=False, autoaugment=True, cutout=6)
    serial = create_loaders("fashion-mnist", tmp_path, num_workers=0, **kw)
    parallel = create_loaders("fashion-mnist", tmp_path, num_workers=2, **kw)
    xs, ys = collect(serial.train)
    xp, yp = collect(parallel.train)
    assert torch.equal(ys, yp) and torch.equal(xs, xp)
    assert not torch.equal(collect(serial.train)[0], xs)  # next epoch differs
    # Per-sample seeding happens in a forked RNG: the caller's random stream is untouched.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    collect(serial.train)
    assert torch.equal(torch.rand(3), expected)


def test_find_fashion_mnist_layouts(tmp_path, monkeypatch):
    make_fashion(tmp_path / "env" / "FashionMNIST" / "raw", gz=False)
    monkeypatch.setenv("ANN2SNN_DATA", str(tmp_path / "env"))
    assert find_fashion_mnist() == tmp_path / "env" / "FashionMNIST" / "raw"
    make_fashion(tmp_path / "mine" / "fashion-mnist")
    assert find_fashion_mnist(tmp_path / "mine") == tmp_path / "mine" / "fashion-mnist"
    monkeypatch.delenv("ANN2SNN_DATA")
    make_fashion(tmp_path / "deb")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "deb")
    assert find_fashion_mnist() == tmp_path / "deb"
    # A --data-dir that holds no data is an error, never a silent fall-back to another copy.
    with pytest.raises(DatasetNotFoundError) as info:
        find_fashion_mnist(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(info.value) and str(tmp_path / "deb") not in str(
        info.value
    )


def test_missing_fashion_mnist_lists_every_place(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("ANN2SNN_DATA", str(empty))
    with pytest.raises(DatasetNotFoundError) as info:
        create_loaders("fashion-mnist")
    message = str(info.value)
    for root in (empty,):
        for sub in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw"):
            assert str(sub) in message
    assert str(tmp_path / "no-debian") in message
    assert str(tmp_path / "xdg-cache" / "ann2snn") in message
    assert "network disabled in tests" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "internet" in message and "--data-dir" in message
    assert isinstance(info.value, FileNotFoundError)


def test_corrupt_idx_names_the_file(tmp_path):
    make_fashion(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(struct.pack(">IIII", 1234, 20, 28, 28) + bytes(20 * 784)))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz.*magic number 1234"):
        create_loaders("fashion-mnist", tmp_path)
    bad.write_bytes(gzip.compress(struct.pack(">IIII", 2051, 20, 28, 28) + bytes(100)))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*truncated"):
        read_idx(bad, 2051)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*corrupt"):
        read_idx(bad, 2051)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(ValueError, match="expected 2051"):  # labels file read as images
        read_idx(labels, 2051)


@pytest.mark.skipif(not REAL_DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", REAL_DEBIAN_DIR)
    folder = find_fashion_mnist()
    assert folder == REAL_DEBIAN_DIR
    sizes = {"train": 60000, "t10k": 10000}
    for split, n in sizes.items():
        x = read_idx(folder / f"{split}-images-idx3-ubyte.gz", 2051)
        y = read_idx(folder / f"{split}-labels-idx1-ubyte.gz", 2049)
        assert x.shape == (n, 28, 28) and y.shape == (n,)
        assert np.bincount(y).tolist() == [n // 10] * 10  # balanced classes
        if split == "train":
            assert abs(x.mean() / 255 - FMNIST_MEAN) < 1e-3
            assert abs(x.std() / 255 - FMNIST_STD) < 1e-3
    loaders = create_loaders("fashion-mnist", batch_size=64, limit_train=256, limit_test=128)
    assert loaders.train.dataset_size == 256 and loaders.test.dataset_size == 128
    x, y = next(iter(loaders.train))
    assert x.shape == (64, 1, 28, 28) and 0 <= y.min() and y.max() <= 9
    assert abs(x.mean().item()) < 0.5  # roughly normalised


# --- CIFAR --------------------------------------------------------------------------------


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles(tmp_path, hundred):
    batches = make_cifar(tmp_path, hundred)
    name = "cifar100" if hundred else "cifar10"
    loaders = create_loaders(name, tmp_path, batch_size=4, val_fraction=0.2, device="cpu")
    assert (loaders.num_classes, loaders.in_channels, loaders.image_size) == (
        100 if hundred else 10,
        3,
        32,
    )
    assert (loaders.train.dataset_size, loaders.val.dataset_size) == (12, 3)
    x, y = next(iter(loaders.train))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.long
    test = batches["test" if hundred else "test_batch"]
    x, y = collect(loaders.test)
    mean, std = data._STATS[name]
    torch.testing.assert_close(x, normalise(test[b"data"].reshape(-1, 3, 32, 32), mean, std))
    assert y.tolist() == test[b"fine_labels" if hundred else b"labels"]
    # Val images come from the training batches, with their own labels.
    key = b"fine_labels" if hundred else b"labels"
    train_files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    all_x = np.concatenate([batches[f][b"data"] for f in train_files]).reshape(-1, 3, 32, 32)
    all_y = sum((batches[f][key] for f in train_files), [])
    x, y = collect(loaders.val)
    idx = loaders.val.indices.numpy()
    torch.testing.assert_close(x, normalise(all_x[idx], mean, std))
    assert y.tolist() == [all_y[i] for i in idx]


def test_cifar_autoaugment_and_cutout(tmp_path):
    make_cifar(tmp_path)
    loaders = create_loaders("cifar10", tmp_path, batch_size=5, autoaugment=True, cutout=8)
    assert isinstance(loaders.train, data.TorchLoader)
    assert isinstance(loaders.test, data.TorchLoader)
    x, y = next(iter(loaders.train))
    assert x.shape == (5, 3, 32, 32) and y.shape == (5,)
    x, _ = collect(loaders.test)
    assert x.shape == (6, 3, 32, 32)
    # Cutout alone stays on the vectorised path; every image gets a >= 4x4 zero hole.
    fast = create_loaders("cifar10", tmp_path, batch_size=5, cutout=8, device="cpu")
    assert isinstance(fast.train, data.InMemoryLoader)
    x, _ = collect(fast.train)
    assert ((x == 0).all(dim=1).flatten(1).sum(1) >= 16).all()
    with pytest.raises(ValueError, match="AutoAugment"):
        create_loaders("cifar10", tmp_path, autoaugment=True, in_memory=True)


def test_missing_cifar(tmp_path, monkeypatch):
    monkeypatch.setenv("ANN2SNN_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetNotFoundError) as info:
        create_loaders("cifar100", tmp_path / "nothing")
    message = str(info.value)
    # An explicit data_dir is the only place looked (no silent fall-back to other copies).
    assert str(tmp_path / "nothing" / "cifar-100-python") in message
    assert str(tmp_path / "env") not in message
    assert "--download" in message and "--data-dir" in message
    with pytest.raises(DatasetNotFoundError) as info:
        create_loaders("cifar100")
    for root in (tmp_path / "env", tmp_path / "xdg-cache" / "ann2snn"):
        assert str(root / "cifar-100-python") in str(info.value)


# --- augmentation kernels -----------------------------------------------------------------


def test_random_crop_matches_reference():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    offsets = torch.randint(0, 5, (6, 2))
    out = data._random_crop(x, offsets, 2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i, (r, c) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, r : r + 8, c : c + 8])


def test_cutout_mask():
    mask = data._cutout_mask(torch.tensor([[4, 4], [0, 7]]), 4, 8, 8)
    assert mask[0, 2:6, 2:6].all() and mask[0].sum() == 16
    assert mask[1, 0:2, 5:8].all() and mask[1].sum() == 6  # clipped at the corner


# --- ImageNet (ImageFolder) ---------------------------------------------------------------


def make_image_folder(root: Path, counts: dict[str, dict[str, int]]) -> None:
    from PIL import Image

    rng = np.random.default_rng(2)
    for split, classes in counts.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_imagenet_image_folder(tmp_path):
    make_image_folder(tmp_path, {"train": {"cat": 3, "dog": 3}, "val": {"cat": 2, "dog": 2}})
    loaders = create_loaders("imagenet", tmp_path, batch_size=2, val_fraction=0.34, device="cpu")
    assert (loaders.num_classes, loaders.in_channels, loaders.image_size) == (2, 3, 224)
    assert isinstance(loaders.train, data.TorchLoader)
    assert (loaders.train.dataset_size, loaders.val.dataset_size) == (4, 2)
    x, y = next(iter(loaders.train))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.long
    x, y = collect(loaders.test)
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="ImageNet"):
        create_loaders("imagenet", tmp_path, in_memory=True)


def test_imagenet_val_reuses_train_class_numbers(tmp_path):
    make_image_folder(tmp_path, {"train": {"cat": 2, "dog": 2}, "val": {"dog": 2}})
    loaders = create_loaders("imagenet", tmp_path, batch_size=2, device="cpu")
    assert collect(loaders.test)[1].tolist() == [1, 1]


def test_missing_imagenet_and_unknown_name(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="image-net.org") as info:
        create_loaders("imagenet", tmp_path / "nothing")
    assert str(tmp_path / "nothing" / "imagenet") in str(info.value)
    with pytest.raises(ValueError, match="unknown dataset"):
        create_loaders("mnist", tmp_path)
    assert list_datasets() == ["cifar10", "cifar100", "fashion-mnist", "imagenet",
                                   "fashion-scenes", "voc", "coco"]  # fmt: skip
