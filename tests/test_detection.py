"""Detection: target assignment, loss, decoding + NMS, mAP on hand-made boxes, the SNN's
regression readout (exact for GN τ = L at T = 1 and for CIF at T = Q with enough sleep),
and mAP per T from one run."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("torchmetrics")
pytest.importorskip("pycocotools")

from ann2snn import convert  # noqa: E402
from ann2snn.detection.evaluation import (  # noqa: E402
    MapScorer,
    ann_map,
    evaluate_detection_snn,
    simulate_detection,
)
from ann2snn.detection.head import (  # noqa: E402
    YoloSpec,
    assign_targets,
    decode,
    detector_spec,
    kmeans_anchors,
    split_head,
    targets_to_list,
    yolo_loss,
)
from ann2snn.models import create_model  # noqa: E402
from ann2snn.simulation import run  # noqa: E402

SPEC = YoloSpec(num_classes=3, stride=8, anchors=((8.0, 8.0), (16.0, 32.0)))


def _head_for(boxes: list[tuple[int, float, float, float, float]], spec: YoloSpec = SPEC,
              grid: int = 4, conf: float = 8.0) -> torch.Tensor:  # fmt: skip
    """A head output [1, A·(5+C), S, S] whose decoding is exactly ``boxes`` (class, x1..y2):
    each box written at its assigned slot with high objectness and class logit; every other
    slot has objectness −20."""
    y = torch.tensor([boxes], dtype=torch.float32)
    asg = assign_targets(y, spec, (grid, grid))
    p = torch.zeros(1, spec.num_anchors, grid, grid, 5 + spec.num_classes)
    p[..., 4] = -20.0
    for i in range(len(asg.b)):
        slot = (0, asg.a[i], asg.gy[i], asg.gx[i])
        p[slot + (slice(0, 2),)] = torch.logit(asg.txy[i])
        p[slot + (slice(2, 4),)] = asg.twh[i]
        p[slot + (4,)] = conf
        p[slot + (5 + int(asg.cls[i]),)] = 10.0
    return p.permute(0, 1, 4, 2, 3).reshape(1, spec.channels, grid, grid)


def test_assignment_cell_anchor_and_offsets():
    # A 10×10 box centred at (12, 20): cell (row 2, col 1), the square anchor, offsets ½.
    # A 14×30 box centred at (28, 16): cell (2, 3), the tall anchor.
    y = torch.tensor([[[2, 7, 15, 17, 25], [0, 21, 1, 35, 31], [-1, -1, -1, -1, -1]]], dtype=torch.float32)  # fmt: skip
    a = assign_targets(y, SPEC, (4, 4))
    assert a.b.tolist() == [0, 0] and a.cls.tolist() == [2, 0]
    assert a.gy.tolist() == [2, 2] and a.gx.tolist() == [1, 3]
    assert a.a.tolist() == [0, 1]
    assert torch.allclose(a.txy, torch.tensor([[0.5, 0.5], [0.5, 0.0001]]), atol=1e-4)
    assert torch.allclose(a.twh[0], torch.log(torch.tensor([10 / 8, 10 / 8])))
    assert torch.allclose(a.twh[1], torch.log(torch.tensor([14 / 16, 30 / 32])))


def test_decode_inverts_assignment_and_nms_drops_duplicates():
    boxes = [(1, 2.0, 3.0, 14.0, 12.0), (2, 16.0, 4.0, 30.0, 30.0)]
    out = _head_for(boxes)
    det = decode(out, SPEC)[0]
    assert det["labels"].tolist() == [1, 2] or det["labels"].tolist() == [2, 1]
    order = det["labels"].argsort()
    assert torch.allclose(det["boxes"][order], torch.tensor([b[1:] for b in boxes]), atol=1e-3)
    assert (det["scores"] > 0.99).all()
    # Two slots predicting the same box: NMS keeps one.
    p = split_head(out, SPEC).clone()
    slot = p[0, :, :, :, 4].argmax()
    a, r, c = (int(v) for v in torch.unravel_index(slot, p.shape[1:4]))
    p[0, 1 - a, r, c] = p[0, a, r, c]
    p[0, 1 - a, r, c, 2:4] += torch.log(torch.tensor([SPEC.anchors[a][0] / SPEC.anchors[1 - a][0], SPEC.anchors[a][1] / SPEC.anchors[1 - a][1]]))  # fmt: skip
    dup = p.permute(0, 1, 4, 2, 3).reshape(out.shape)
    assert len(decode(dup, SPEC)[0]["boxes"]) == 2


def test_map_on_hand_made_boxes():
    """Class 1 found exactly, class 2 missed (IoU 4/9 < 0.5): mAP@0.5 = 0.5; perfect = 1."""
    s = MapScorer()
    gt = torch.tensor([[[1, 10, 10, 50, 50], [2, 60, 60, 80, 80]]], dtype=torch.float32)
    s.metric.update(
        [
            {
                "boxes": torch.tensor([[10.0, 10, 50, 50], [60, 60, 90, 90]]),
                "scores": torch.tensor([0.9, 0.8]),
                "labels": torch.tensor([1, 2]),
            }
        ],  # fmt: skip
        targets_to_list(gt),
    )
    s.images = 1
    m = s.compute()
    assert m["map50"] == pytest.approx(0.5) and m["map"] == pytest.approx(0.5)
    perfect = MapScorer()
    boxes = [(0, 2.0, 3.0, 14.0, 12.0), (2, 16.0, 4.0, 30.0, 30.0)]
    perfect.update(_head_for(boxes), torch.tensor([boxes]), SPEC)
    assert perfect.compute() == {"map50": pytest.approx(1.0), "map": pytest.approx(1.0)}


def test_loss_prefers_the_right_head_and_handles_empty_images():
    boxes = [(1, 2.0, 3.0, 14.0, 12.0), (2, 16.0, 4.0, 30.0, 30.0)]
    y = torch.tensor([boxes])
    good, zero = _head_for(boxes), torch.zeros(1, SPEC.channels, 4, 4)
    assert float(yolo_loss(good, y, SPEC)) < 0.1 * float(yolo_loss(zero, y, SPEC))
    empty = torch.full((1, 1, 5), -1.0)
    loss = yolo_loss(zero.requires_grad_(), empty, SPEC)
    loss.backward()
    assert math.isfinite(loss.item()) and zero.grad is not None


def test_kmeans_anchors_finds_two_shapes():
    wh = torch.cat([torch.full((50, 2), 10.0), torch.tensor([[12.0, 40.0]]).repeat(50, 1)])
    assert kmeans_anchors(wh, 2) == [(10.0, 10.0), (12.0, 40.0)]


def test_classifier_is_refused_by_name():
    with pytest.raises(ValueError, match="not a detector.*yolo_tiny"):
        detector_spec(create_model("cnn", num_classes=10, in_channels=1, image_size=28))


# --- the SNN's regression readout ----------------------------------------------------------


def _detector(act: str, levels: int, seed: int = 0, pool: str = "avg") -> torch.nn.Module:
    torch.manual_seed(seed)
    m = create_model("yolo_tiny", num_classes=3, in_channels=1, image_size=32, act=act, levels=levels, pool=pool)  # fmt: skip
    g = torch.Generator().manual_seed(seed + 1)
    for mod in m.modules():  # non-trivial BN statistics and a head with real outputs
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)
            mod.weight.data.uniform_(0.5, 1.5, generator=g)
            mod.bias.data.uniform_(0.0, 0.5, generator=g)
    m.head.weight.data.normal_(0, 0.3, generator=g)
    return m.eval().double()


def _scenes(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(n, 1, 32, 32, generator=g, dtype=torch.float64) * 2
    y = torch.tensor([[[0, 2, 2, 14, 20], [2, 16, 10, 30, 30]]] * n, dtype=torch.float32)
    return x, y


def test_gn_readout_equals_ann_head_at_t1():
    """GN τ = L: the head's output after one step is the ANN's (to the readout's fp32)."""
    model = _detector("qcfs", 4)
    x, _ = _scenes()
    ann = model(x)
    snn = convert(model, "gn", tau=4)
    # The layers run in fp64 (no threshold crossing flips); the readout is summed in fp32.
    assert (run(snn, x, T=1) - ann).abs().max() < 1e-5
    # Negative control: plain IF at T = 1 is visibly off.
    assert (run(convert(model, "if"), x, T=1) - ann).abs().max() > 1e-2


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_cif_readout_equals_ann_head_at_t_equal_q_with_sleep(pool):
    """CASC: clip-quant ANN, consistent IF, T = Q wake steps + enough sleep → the ANN's head
    (max pooling through CASC's lateral-inhibition pools)."""
    model = _detector("clipq", 4, pool=pool)
    x, _ = _scenes()
    ann = model(x)
    snn = convert(model, "cif")
    assert (run(snn, x, T=4, sleep=24) - ann).abs().max() < 1e-5
    assert (run(snn, x, T=4, sleep=0) - ann).abs().max() > 1e-3


def test_map_per_t_from_one_run_equals_ann_where_exact():
    model = _detector("qcfs", 4)
    x, y = _scenes()
    # Targets the ANN actually finds: its own confident detections as ground truth.
    dets = decode(model(x).float(), detector_spec(model), conf=0.0, max_det=3)
    y = torch.nn.utils.rnn.pad_sequence(
        [torch.cat([d["labels"][:, None].float(), d["boxes"]], 1) for d in dets],
        batch_first=True, padding_value=-1.0,
    )  # fmt: skip
    ann = ann_map(model, [(x, y)], detector_spec(model))
    assert ann["map50"] > 0.9  # its own top detections (lower-scored extras cost a little)
    gn = simulate_detection(convert(model, "gn", tau=4), (x, y), 3, detector_spec(model))
    assert gn.map50_by_wake[1] == pytest.approx(ann["map50"])
    assert gn.map_by_wake[1] == pytest.approx(ann["map"])
    assert sorted(gn.map50_by_wake) == [1, 2, 3] and gn.images == len(x)
    row = evaluate_detection_snn(model, [(x, y)], "if", steps=[1, 4], label="if")
    assert set(row["map50_by_wake"]) == {"1", "4"} and row["total_steps_by_wake"] == {"1": 1, "4": 4}  # fmt: skip
    # CASC: one run per T, each followed by its sleep; the total steps say so.
    casc = evaluate_detection_snn(_detector("clipq", 4), [(x, y)], "cif", steps=[2, 4], sleep=8)
    assert casc["total_steps_by_wake"] == {"2": 10, "4": 12}


def test_simulate_detection_refuses_bad_steps_and_models():
    model = _detector("qcfs", 4)
    x, y = _scenes(2)
    with pytest.raises(ValueError, match="steps must lie in 1..T=2"):
        simulate_detection(convert(model, "if"), (x, y), 2, detector_spec(model), steps=[3])
    with pytest.raises(TypeError, match="SpikingNetwork"):
        simulate_detection(model, (x, y), 2, detector_spec(model))
