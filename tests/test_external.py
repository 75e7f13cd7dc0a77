"""Models from outside the zoo: train, checkpoint, load and evaluate them by name
(``torchvision:NAME``, ``timm:NAME``, ``package.module:function``), or pass a module;
pretrained weights initialise them."""

from __future__ import annotations

import json
import textwrap

import _fmnist
import _tiny
import pytest
import torch
from torch import nn

import ann2snn
from ann2snn import QCFS, CheckpointError, TrainConfig, create_model, load
from ann2snn.cli import main
from ann2snn.models.external import load_pretrained

torchvision = pytest.importorskip("torchvision")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return _fmnist.write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=120, n_test=40)


def test_torchvision_model_by_name_takes_one_channel_and_is_prepared():
    m = create_model("torchvision:resnet18", num_classes=10, in_channels=1, image_size=28, levels=2)
    assert ann2snn.is_prepared(m) and m.conv1.in_channels == 1
    qs = [x for x in m.modules() if isinstance(x, QCFS)]
    assert len(qs) == 17 and {q.levels for q in qs} == {2}
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # Same name and kwargs → same module names: what `load` relies on.
    again = create_model("torchvision:resnet18", num_classes=10, in_channels=1, image_size=28)
    assert list(again.state_dict()) == list(m.state_dict())


@pytest.mark.parametrize(
    "name, match",
    [
        ("torchvision:resnet81", "torchvision has no model 'resnet81'; did you mean resnet18"),
        ("torchvision:vgg11_bn", r"does not run on 1×28×28 inputs"),
        ("no_such_package_xyz:build", "cannot import 'no_such_package_xyz'"),
        ("json:nope", "'json' has no callable 'nope'"),
        ("torchvision:", "expected torchvision:NAME"),
    ],
)
def test_bad_external_names_are_refused_with_the_reason(name, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, num_classes=10, in_channels=1, image_size=28)


def test_cli_trains_a_torchvision_model_and_evaluates_its_folder(data_dir, tmp_path, capsys):
    """`ann2snn train --model torchvision:resnet18` from a pretrained .pth, then `eval`."""
    pretrained = torchvision.models.resnet18()  # ImageNet layout: 3 channels, 1000 classes
    torch.save(pretrained.state_dict(), tmp_path / "resnet18.pth")
    out = tmp_path / "run"
    rc = main(["train", "--model", "torchvision:resnet18", "--dataset", "fashion-mnist",
               "--data-dir", str(data_dir), "--epochs", "1", "--batch-size", "32",
               "--levels", "4", "--out", str(out), "--no-progress", "--device", "cpu",
               "--init", str(tmp_path / "resnet18.pth")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 0, err
    # What --init did is printed, not only recorded:
    assert "init:" in err and "adapted" in err and "conv1.weight" in err and "fc.weight" in err
    record = json.loads((out / "last.json").read_text())
    assert record["model"] == "torchvision:resnet18"
    assert record["model_kwargs"]["in_channels"] == 1
    init = record["init"]
    # Everything but the 1000-class head and the RGB stem, which is adapted:
    assert init["loaded"] == len(pretrained.state_dict()) - 3
    assert init["adapted"] == ["conv1.weight"]  # RGB → one channel
    assert [s.split()[0] for s in init["skipped"]] == ["fc.weight", "fc.bias"]
    model = load(out)  # rebuilt from the record alone
    assert isinstance(model.conv1, nn.Conv2d) and model.conv1.in_channels == 1
    capsys.readouterr()
    rc = main(["eval", str(out), "--data-dir", str(data_dir), "--neuron", "gn", "--T", "1,2",
               "--no-progress", "--json", "--device", "cpu"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    row = report["rows"][0]
    # GN with τ = L is the ANN at T = 1 (same test images, same predictions).
    assert row["accuracy_by_wake"]["1"] == pytest.approx(row["ann_accuracy"])


def test_load_pretrained_maps_rgb_weights_and_reports_what_it_did(tmp_path):
    src = torchvision.models.resnet18(num_classes=10)
    from safetensors.torch import save_file

    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = create_model("torchvision:resnet18", num_classes=10, in_channels=1, image_size=28)
    report = load_pretrained(dst, tmp_path / "w.safetensors")
    assert report["adapted"] == ["conv1.weight"] and not report["skipped"]
    torch.testing.assert_close(dst.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(
        dst.get_submodule("layer1.0.conv1").weight, src.layer1[0].conv1.weight
    )
    # The thresholds are not in a torchvision file: they keep their values.
    assert all(k.endswith("log_threshold") for k in report["missing"])
    with pytest.raises(ValueError, match="none of the 2 tensors"):
        torch.save({"a": torch.zeros(1), "b": torch.zeros(2)}, tmp_path / "x.pth")
        load_pretrained(dst, tmp_path / "x.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_pretrained(dst, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="no weights file"):
        load_pretrained(dst, tmp_path / "missing.pth")


def test_train_a_users_module_and_load_it_back(tmp_path):
    """`train(cfg, model=...)` prepares a plain module; `load` needs the architecture."""
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, _tiny.CLASSES),
    )  # fmt: skip
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = TrainConfig(model="my-net", dataset="synthetic", epochs=1, batch_size=16, lr=0.05,
                      device="cpu", out_dir=str(tmp_path / "run"), progress=False)  # fmt: skip
    record = _tiny.train_tiny(cfg, model=net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # not mutated
    assert record["prepare"] == {"act": "qcfs", "levels": 4, "pool": "avg", "act_kwargs": {}}
    assert "99.9th percentile" in record["init"]["thresholds"]  # not the default λ = 8
    with pytest.raises(CheckpointError, match=r"pass the architecture: ann2snn.load\(path, model"):
        load(tmp_path / "run")
    model = load(tmp_path / "run", model=net)
    # A GraphModule keeps the qualified names (its containers are plain modules).
    assert isinstance(model.get_submodule("3"), nn.AvgPool2d)
    assert isinstance(model.get_submodule("2"), QCFS)
    x = torch.randn(4, 3, _tiny.IMAGE, _tiny.IMAGE)
    snn = ann2snn.convert(model, "gn")
    torch.testing.assert_close(ann2snn.run(snn, x, 1), model(x), rtol=1e-4, atol=1e-5)


def test_a_users_builder_by_module_path_trains_and_loads_without_user_code(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def small(num_classes, in_channels=3):
                return nn.Sequential(
                    nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(4, num_classes),
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = TrainConfig(model="my_models:small", dataset="synthetic", epochs=1, batch_size=16,
                      lr=0.05, device="cpu", out_dir=str(tmp_path / "run"), progress=False)  # fmt: skip
    assert cfg.out_dir.endswith("run")
    record = _tiny.train_tiny(cfg)
    assert record["model"] == "my_models:small" and record["prepare"] is None
    assert "validation" in record["init"]["thresholds"]
    # The record names code (my_models:small): loading it is the caller's decision.
    with pytest.raises(CheckpointError, match=r"import 'my_models' and call 'my_models:small'.*trust_code=True"):  # fmt: skip
        load(tmp_path / "run")
    model = load(tmp_path / "run", trust_code=True)
    assert float(next(m for m in model.modules() if isinstance(m, QCFS)).threshold.detach()) != 8.0
    assert sum(isinstance(m, QCFS) for m in model.modules()) == 1
    assert (
        TrainConfig(model="my_models:small", dataset="x").out_dir
        == "runs/x-my_models-small-qcfs-L4"
    )
