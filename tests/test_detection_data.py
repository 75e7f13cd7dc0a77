"""Detection data: the Fashion-MNIST scene set, flips, and the VOC / COCO loaders on tiny
files written here in their on-disk formats (neither can be downloaded in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import _fmnist
import numpy as np
import pytest
import torch

from ann2snn.data import DatasetNotFoundError, create_loaders
from ann2snn.data.detection import VOC_CLASSES, create_detection_loaders, pad_targets
from ann2snn.data.scenes import make_scenes

ROOT = Path(__file__).resolve().parents[1]


def _items(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), np.uint8)
    y = rng.integers(0, 10, n)
    for i in range(n):  # a bright rectangle with a known extent inside the 28 px item
        r0, c0 = rng.integers(2, 10, 2)
        x[i, r0 : r0 + 12, c0 : c0 + 8] = 200
    return x, y


def test_scenes_are_seeded_tight_and_inside_the_canvas():
    items, labels = _items()
    a, ta = make_scenes(items, labels, 30, seed=3)
    b, tb = make_scenes(items, labels, 30, seed=3)
    c, _ = make_scenes(items, labels, 30, seed=4)
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)
    assert a.shape == (30, 1, 64, 64) and a.dtype == torch.uint8 and ta.shape == (30, 4, 5)
    valid = ta[..., 0] >= 0
    assert valid[:, 0].all()  # every scene keeps its first item
    boxes = ta[valid][:, 1:]
    assert (boxes >= 0).all() and (boxes <= 64).all()
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    # Tight: every visible pixel lies in some box, and each box's border rows/cols are lit.
    for img, t in zip(a[:, 0], ta):
        mask = torch.zeros(64, 64, dtype=torch.bool)
        for cls, x1, y1, x2, y2 in t[t[:, 0] >= 0].long().tolist():
            assert labels.tolist().count(cls) > 0
            mask[y1:y2, x1:x2] = True
            box = img[y1:y2, x1:x2] > 16
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
        assert not ((img > 16) & ~mask).any()


def test_scene_splits_flip_and_limits(tmp_path, monkeypatch):
    _fmnist.isolate_data(monkeypatch, tmp_path)
    folder = _fmnist.write_fashion_mnist(tmp_path / "fm", n_train=200, n_test=50)
    L = create_loaders("fashion-scenes", data_dir=folder, batch_size=8, limit_train=24,
                       limit_test=10, device="cpu")  # fmt: skip
    assert (L.num_classes, L.in_channels, L.image_size, L.name) == (10, 1, 64, "fashion-scenes")
    assert (L.train.dataset_size, L.val.dataset_size, L.test.dataset_size) == (24, 10, 10)
    x, y = next(iter(L.test))
    assert x.shape == (8, 1, 64, 64) and y.shape == (8, 4, 5) and x.dtype == torch.float32
    # Flipped training batches: each box still frames the flipped item's pixels.
    raw = L.train.images.float()
    for x, y in L.train:
        pix = x * L.train.std + L.train.mean  # back to [0, 1]
        for img, t in zip(pix[:, 0], y):
            lit = img > 16 / 255
            mask = torch.zeros_like(lit)
            for _, x1, y1, x2, y2 in t[t[:, 0] >= 0].long().tolist():
                mask[y1:y2, x1:x2] = True
            assert not (lit & ~mask).any()
    assert raw.shape[0] == 24
    # Two epochs flip differently; set_epoch replays one.
    L.train.set_epoch(0)
    e0 = [y for _, y in L.train]
    e1 = [y for _, y in L.train]
    L.train.set_epoch(0)
    assert not all(torch.equal(a, b) for a, b in zip(e0, e1))
    assert all(torch.equal(a, b) for a, b in zip(e0, [y for _, y in L.train]))
    with pytest.raises(ValueError, match="autoaugment=True.*flips"):
        create_loaders("fashion-scenes", data_dir=folder, autoaugment=True)


def test_pad_targets():
    y = pad_targets([torch.tensor([[1.0, 0, 0, 2, 2]]), torch.zeros(0, 5)])
    assert y.shape == (2, 1, 5) and y[1, 0, 0] == -1 and y[0, 0, 0] == 1


# --- VOC ----------------------------------------------------------------------------------


def _jpeg(path: Path, w: int, h: int, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _voc_xml(objects: list[tuple[str, int, int, int, int, int]], w: int, h: int) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2, d in objects
    )
    return f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"  # fmt: skip


def write_voc(root: Path) -> Path:
    """VOCdevkit/VOC2007 with 3 trainval and 1 test image (torchvision's layout)."""
    base = root / "VOCdevkit" / "VOC2007"
    ann = {
        "000001": [("dog", 11, 21, 60, 45, 0), ("person", 1, 1, 20, 40, 1)],  # 2nd: difficult
        "000002": [("car", 5, 5, 95, 45, 0)],
        "000003": [("tvmonitor", 30, 10, 70, 50, 0), ("cat", 1, 1, 10, 10, 0)],
        "000004": [("aeroplane", 21, 11, 80, 40, 0)],
    }
    for i, (stem, objs) in enumerate(ann.items()):
        _jpeg(base / "JPEGImages" / f"{stem}.jpg", 100, 50 + 10 * i, i)
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"{stem}.xml").write_text(_voc_xml(objs, 100, 50 + 10 * i))
    sets = base / "ImageSets" / "Main"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "trainval.txt").write_text("000001\n000002\n000003\n")
    (sets / "test.txt").write_text("000004\n")
    return root


def test_voc_loader_reads_generated_files(tmp_path):
    root = write_voc(tmp_path / "voc")
    L = create_detection_loaders("voc", data_dir=root, batch_size=2, val_fraction=0.0,
                                 image_size=32, augment=False, device="cpu")  # fmt: skip
    assert (L.num_classes, L.in_channels, L.image_size) == (20, 3, 32)
    assert L.val is None and L.train.dataset_size == 3 and L.test.dataset_size == 1
    batches = list(L.train)
    assert batches[0][0].shape == (2, 3, 32, 32)
    rows = torch.cat([y.view(-1, 5) for _, y in batches])
    rows = {int(r[0]): r[1:].tolist() for r in rows if r[0] >= 0}
    # Image 1 (100 × 50): the dog, 0-based edges (10, 20, 60, 45) scaled to 32 px; the
    # difficult person is dropped. Image 2: the car; image 3: a tv monitor and a cat.
    names = {"dog", "car", "tvmonitor", "cat"}
    assert set(rows) == {VOC_CLASSES.index(n) for n in names}
    assert rows[VOC_CLASSES.index("dog")] == pytest.approx([10 * 0.32, 20 * 0.64, 60 * 0.32, 45 * 0.64])  # fmt: skip
    xt, yt = next(iter(L.test))
    assert yt[0, 0, 0] == VOC_CLASSES.index("aeroplane") and xt.shape == (1, 3, 32, 32)
    # Flipped training batches mirror the boxes.
    F = create_detection_loaders("voc", data_dir=root, batch_size=3, val_fraction=0.0,
                                 image_size=32, device="cpu")  # fmt: skip
    seen = set()
    for _ in range(6):
        _, yf = next(iter(F.train))
        dog = yf.view(-1, 5)[yf.view(-1, 5)[:, 0] == VOC_CLASSES.index("dog")][0]
        seen.add(round(dog[1].item(), 3))
    assert seen == {round(10 * 0.32, 3), round(32 - 60 * 0.32, 3)}  # plain and mirrored


def test_voc_missing_names_where_it_looked(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="VOCdevkit/VOC2007"):
        create_detection_loaders("voc", data_dir=tmp_path / "nothing")


# --- COCO ---------------------------------------------------------------------------------


def write_coco(root: Path) -> Path:
    """annotations/instances_{train,val}2017.json and their images; category ids 1 and 3
    (COCO's ids are not contiguous), one crowd box."""
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    for split, specs in {
        "train2017": [
            (1, [(1, [10, 10, 20, 30], 0), (3, [0, 0, 5, 5], 1)]),
            (2, [(3, [40, 8, 50, 20], 0)]),
        ],  # fmt: skip
        "val2017": [(7, [(3, [4, 4, 40, 40], 0)])],
    }.items():
        images, anns = [], []
        for img_id, boxes in specs:
            name = f"{img_id:012d}.jpg"
            _jpeg(root / split / name, 100, 80, img_id)
            images.append({"id": img_id, "file_name": name, "width": 100, "height": 80})
            for cat, bbox, crowd in boxes:
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                             "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": crowd})  # fmt: skip
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    return root


def test_coco_loader_reads_generated_files(tmp_path):
    pytest.importorskip("pycocotools")
    root = write_coco(tmp_path / "coco")
    L = create_detection_loaders("coco", data_dir=root, batch_size=2, val_fraction=0.0,
                                 image_size=20, augment=False, device="cpu")  # fmt: skip
    assert (L.num_classes, L.in_channels, L.image_size) == (2, 3, 20)
    x, y = next(iter(L.train))
    assert x.shape == (2, 3, 20, 20) and y.shape == (2, 1, 5)  # the crowd box is gone
    # Image 1: the person (id 1 → class 0), xywh (10, 10, 20, 30) → xyxy scaled by 0.2 / 0.25;
    # its crowd car is dropped. Image 2: the car (id 3 → class 1).
    rows = {int(r[0]): r[1:].tolist() for r in y.view(-1, 5)}
    assert rows[0] == pytest.approx([2.0, 2.5, 6.0, 10.0])
    assert rows[1] == pytest.approx([8.0, 2.0, 18.0, 7.0])
    _, yt = next(iter(L.test))
    assert yt[0, 0].tolist() == pytest.approx([1, 0.8, 1.0, 8.8, 11.0])


def test_coco_missing_names_the_annotation_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="instances_"):
        create_detection_loaders("coco", data_dir=tmp_path)


def test_unknown_detection_dataset_is_named():
    with pytest.raises(ValueError, match="unknown detection dataset 'kitti'"):
        create_detection_loaders("kitti")


# --- training and evaluation end to end ------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ann2snn.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_cli_trains_and_evaluates_a_detector(tmp_path):
    pytest.importorskip("torchmetrics")
    folder = _fmnist.write_fashion_mnist(tmp_path / "fm", n_train=200, n_test=50)
    run = tmp_path / "det"
    common = ["--data-dir", str(folder), "--device", "cpu"]
    r = _cli("train", "--model", "yolo_tiny", "--dataset", "fashion-scenes", "--task", "detection",
             "--epochs", "1", "--limit-train", "32", "--limit-test", "16", "--batch-size", "16",
             "--lr", "0.01", "--out", str(run), "--no-progress", *common, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "val map50" in r.stdout
    record = json.loads((run / "last.json").read_text())
    assert record["task"] == "detection"
    entry = record["metrics"]["history"][0]
    assert {"val_map50", "val_map", "test_map50", "test_loss"} <= set(entry)
    r = _cli("eval", str(run), "--neuron", "gn", "--T", "1,2", "--limit-test", "16", "--no-progress",
             *common, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "mAP@0.5" in r.stdout and "qcfs+gn (tau=4)" in r.stdout
    folder = run / "eval" / "gn-T1_2"
    report = json.loads((folder / "report.json").read_text())
    row = report["rows"][0]
    assert report["metric"] == "map50" and set(row["map50_by_wake"]) == {"1", "2"}
    assert (folder / "map50_vs_T.png").stat().st_size > 0
    # GN τ = L at T = 1 matches the ANN's mAP up to fp32 threshold flips.
    assert abs(row["map50_by_wake"]["1"] - row["ann_map50"]) < 0.02
    r = _cli("eval", str(run), "--activity", *common, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--activity" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--model", "yolo_tiny", "--dataset", "fashion-mnist", "--task", "detection"],
            "--task detection does not match",
        ),  # fmt: skip
        (["--model", "cnn", "--dataset", "fashion-scenes"], "not a detector"),
        (
            ["--model", "yolo_tiny", "--dataset", "fashion-scenes", "--act", "nq"],
            "act='nq' cannot train a detector",
        ),  # fmt: skip
    ],
)
def test_cli_detection_mistakes_are_one_line(tmp_path, args, message):
    folder = _fmnist.write_fashion_mnist(tmp_path / "fm", n_train=60, n_test=20)
    r = _cli("train", *args, "--epochs", "1", "--limit-train", "8", "--limit-test", "8",
             "--data-dir", str(folder), "--out", str(tmp_path / "r"), "--device", "cpu",
             "--no-progress", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "r" / "last.json").exists()


# --- annotations checked at the door ------------------------------------------------------


def _voc_with(tmp_path: Path, objects: list, raw: str | None = None) -> Path:
    root = write_voc(tmp_path / "voc")
    path = root / "VOCdevkit" / "VOC2007" / "Annotations" / "000002.xml"
    path.write_text(raw if raw is not None else _voc_xml(objects, 100, 60))
    return root


def test_voc_boxes_are_clipped_and_degenerate_ones_dropped_with_a_count(tmp_path):
    # One box reaching past the right edge (clipped), one with negative size (dropped).
    root = _voc_with(tmp_path, [("car", 50, 5, 400, 45, 0), ("dog", 40, 30, 20, 10, 0)])
    with pytest.warns(UserWarning, match=r"PASCAL VOC: 1 box\(es\) clipped .* 1 degenerate"):
        L = create_detection_loaders("voc", data_dir=root, batch_size=4, val_fraction=0.0,
                                     augment=False, device="cpu", image_size=100)  # fmt: skip
    _, y = next(iter(L.train))
    boxes = y.view(-1, 5)[y.view(-1, 5)[:, 0] == VOC_CLASSES.index("car")]
    assert boxes.shape[0] == 1 and float(boxes[0, 3]) == pytest.approx(100.0)  # x2 at the edge
    assert int((y.view(-1, 5)[:, 0] == VOC_CLASSES.index("dog")).sum()) == 1  # 000001's only


@pytest.mark.parametrize(
    "objects, raw, message",
    [
        ([("car", "nan", 5, 90, 45, 0)], None, r"000002\.xml: object 0 has a non-finite box"),
        ([("spaceship", 5, 5, 90, 45, 0)], None, r"000002\.xml: object 0 has class 'spaceship', not one of the 20 VOC classes \(aeroplane, "),
        ([], "<annotation><size><width>10", r"000002\.xml: not a readable VOC annotation"),
    ],
)  # fmt: skip
def test_voc_annotations_that_cannot_be_right_are_named(tmp_path, objects, raw, message):
    root = _voc_with(tmp_path, objects, raw)
    with pytest.raises(ValueError, match=message):
        create_detection_loaders("voc", data_dir=root, device="cpu")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["annotations"][0].update(category_id=999), r"annotation 1 \(image 1\): category_id 999 is not among the file's categories \(1, 3\)"),
        (lambda d: d["annotations"][0].update(bbox=[float("nan"), 1, 2, 3]), r"image 1: object 0 has a non-finite box"),
        (None, r"instances_train2017\.json: not a readable COCO annotation file"),
    ],
)  # fmt: skip
def test_coco_annotations_that_cannot_be_right_are_named(tmp_path, edit, message):
    pytest.importorskip("pycocotools")
    root = write_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_train2017.json"
    if edit is None:
        path.write_text(path.read_text()[:40])  # truncated
    else:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        create_detection_loaders("coco", data_dir=root, device="cpu")
