"""Checkpoints: safetensors + JSON, rebuilt by name, verified, atomic, pickle-free."""

from __future__ import annotations

import hashlib
import json
import pickle
import re

import _tiny
import pytest
import torch
from torch import nn

import ann2snn
from ann2snn import checkpoint as ckpt
from ann2snn.checkpoint import CheckpointError


def _record(name="tiny", **extra):
    kwargs = dict(num_classes=_tiny.CLASSES, in_channels=3, act="qcfs", levels=4, pool="avg",
                  image_size=_tiny.IMAGE)  # fmt: skip
    return {"model": name, "model_kwargs": kwargs, "activation": "qcfs", "levels": 4,
            "epoch": 1, "metrics": {"val_acc": 50.0}, "extra": {}, **extra}  # fmt: skip


def _trained_tiny(seed=0) -> nn.Module:
    """A tiny model whose BN statistics and λ are not at their initial values."""
    torch.manual_seed(seed)
    model = _tiny.TinyNet()
    model.train()
    model(torch.randn(16, 3, _tiny.IMAGE, _tiny.IMAGE) * 3)  # move BN running stats
    with torch.no_grad():
        model.features[2].set_threshold(2.5)
    return model.eval()


@pytest.fixture
def saved(tmp_path):
    model = _trained_tiny()
    ckpt.save_checkpoint(tmp_path, model, _record(), tag="last")
    return tmp_path, model


def _x():
    return torch.randn(5, 3, _tiny.IMAGE, _tiny.IMAGE, generator=torch.Generator().manual_seed(7))


def test_save_load_roundtrip_identical_outputs(saved):
    run, model = saved
    for path in (run, run / "last.json", run / "last.safetensors"):
        loaded = ckpt.load(path)
        assert not loaded.training
        assert torch.equal(loaded(_x()), model(_x()))
        assert loaded.ann2snn_record["model"] == "tiny"
        assert loaded.ann2snn_record["epoch"] == 1


def test_record_is_self_describing(saved):
    run, _ = saved
    record = json.loads((run / "last.json").read_text())
    assert record["format"] == "ann2snn-checkpoint" and record["format_version"] == 2
    assert record["weights_file"] == "last.safetensors"
    assert (
        record["weights_sha256"]
        == hashlib.sha256((run / "last.safetensors").read_bytes()).hexdigest()
    )
    assert set(record["versions"]) >= {"ann2snn", "torch", "python"}
    assert "T" in record["created"]
    assert ckpt.load_record(run) == record


def test_registered_model_roundtrip(tmp_path):
    models = pytest.importorskip("ann2snn.models")
    kwargs = dict(num_classes=10, in_channels=1, act="qcfs", levels=4, pool="avg", image_size=28)
    name = "cnn" if "cnn" in models.list_models() else models.list_models()[0]
    torch.manual_seed(0)
    model = models.create_model(name, **kwargs).eval()
    ckpt.save_checkpoint(tmp_path, model, {"model": name, "model_kwargs": kwargs})
    loaded = ckpt.load(tmp_path)
    x = torch.randn(2, 1, 28, 28)
    assert type(loaded) is type(model)
    assert torch.equal(loaded(x), model(x))


def test_run_folder_prefers_best(tmp_path):
    ckpt.save_checkpoint(tmp_path, _trained_tiny(0), _record(epoch=3), tag="last")
    ckpt.save_checkpoint(tmp_path, _trained_tiny(1), _record(epoch=2), tag="best")
    assert ckpt.load(tmp_path).ann2snn_record["epoch"] == 2
    assert ckpt.load(tmp_path / "last.json").ann2snn_record["epoch"] == 3


def test_load_weights_into_existing_model(saved):
    run, model = saved
    other = _tiny.TinyNet().eval()
    ckpt.load_weights(other, run / "last.json")
    assert torch.equal(other(_x()), model(_x()))
    assert set(ckpt.load_state_dict(run)) == set(model.state_dict())


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_weights_are_refused(saved, damage):
    run, _ = saved
    path = run / "last.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0xFF  # one flipped byte inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"last\.safetensors.*sha256") as e:
        ckpt.load(run)
    assert "corrupted" in str(e.value)


def test_unreadable_header_is_refused(saved):
    run, _ = saved
    record = json.loads((run / "last.json").read_text())
    del record["record_sha256"]  # a record of before record hashes (format 1), and
    del record["weights_sha256"]  # no hash to catch it first: the header parse must
    record["format_version"] = 1
    (run / "last.json").write_text(json.dumps(record))
    path = run / "last.safetensors"
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])  # absurd header length
    with pytest.raises(CheckpointError, match=r"last\.safetensors.*header"):
        with pytest.warns(UserWarning, match="format-1 record without record_sha256"):
            ckpt.load(run)


def test_bad_json_is_refused(saved):
    run, _ = saved
    (run / "last.json").write_text('{"format": "ann2snn-checkpoint", ')
    with pytest.raises(CheckpointError, match=r"last\.json.*not valid JSON"):
        ckpt.load(run)
    with pytest.raises(CheckpointError, match=r"last\.json.*not valid JSON"):
        ckpt.load_record(run / "last.safetensors")


def test_wrong_format_is_refused(saved):
    run, _ = saved
    (run / "last.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match=r"format is 'something-else'"):
        ckpt.load(run)
    (run / "last.json").write_text(json.dumps(["not", "a", "record"]))
    with pytest.raises(CheckpointError, match="expected 'ann2snn-checkpoint'"):
        ckpt.load(run)


def test_newer_format_version_is_refused(saved):
    run, _ = saved
    record = json.loads((run / "last.json").read_text())
    record["format_version"] = 99
    (run / "last.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="upgrade ann2snn"):
        ckpt.load(run)


def test_missing_files_are_refused(saved, tmp_path):
    run, _ = saved
    with pytest.raises(CheckpointError, match="file not found"):
        ckpt.load(run / "nope.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in this folder"):
        ckpt.load(empty)
    (run / "last.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"last\.safetensors: weights file missing"):
        ckpt.load(run)
    (run / "last.json").rename(run / "moved.json")
    with pytest.raises(CheckpointError, match="record last.json is missing"):
        ckpt.load(run / "last.safetensors")


def test_mismatched_keys_are_listed(tmp_path):
    model = _trained_tiny()
    state = model.state_dict()
    ckpt.save_checkpoint(tmp_path, model, _record())
    wide = ann2snn.create_model("tiny_wide", **_record()["model_kwargs"])  # width 8 vs 6
    with pytest.raises(CheckpointError) as e:
        ckpt.load_weights(wide, tmp_path)
    msg = str(e.value)
    assert (
        "mis-shaped keys" in msg
        and "features.0.weight (checkpoint (6, 3, 3, 3), model (8, 3, 3, 3))" in msg
    )
    assert "last.safetensors" in msg

    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _tiny.TinyNet()

    with pytest.raises(CheckpointError) as e:
        ckpt.load_weights(Renamed(), tmp_path)
    missing, unexpected = str(e.value).split("; ")[1:3]
    assert missing.startswith("missing keys: ")
    assert unexpected.startswith("unexpected keys: ")
    for key in state:  # 10 keys: all listed, nothing elided
        assert f"body.{key}" in missing and key in unexpected
    assert "more" not in unexpected


def test_atomic_writes_leave_no_temp_files(tmp_path):
    model = _trained_tiny()
    for tag in ("last", "best", "last"):
        ckpt.save_checkpoint(tmp_path, model, _record(), tag=tag)
    ckpt.save_resume_state(tmp_path, {"epoch": 1, "w": torch.ones(3)})
    names = sorted(
        re.sub(r"resume-[0-9a-f]{16}", "resume-<hash>", p.name) for p in tmp_path.iterdir()
    )
    assert names == ["best.json", "best.safetensors", "last.json", "last.safetensors",
                     "resume-<hash>.safetensors", "resume.json"]  # fmt: skip


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    old = _trained_tiny(0)
    ckpt.save_checkpoint(tmp_path, old, _record(epoch=1))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, _trained_tiny(1), _record(epoch=2))
    monkeypatch.undo()
    assert str(calls[0]).endswith("last.safetensors")  # weights are published first
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert torch.equal(ckpt.load(tmp_path)(_x()), old(_x()))


def test_no_pickle_anywhere(saved, monkeypatch):
    run, model = saved
    ckpt.save_resume_state(run, {"epoch": 1, "opt": {0: {"buf": torch.ones(2)}}})
    for p in run.glob("*.safetensors"):
        head = p.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK"  # not a pickle stream, not a torch zip
        n = int.from_bytes(p.read_bytes()[:8], "little")
        json.loads(p.read_bytes()[8 : 8 + n])  # safetensors: u64 length + JSON header

    def boom(*args, **kwargs):
        raise AssertionError("pickle/torch.load must not be used")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    assert torch.equal(ckpt.load(run)(_x()), model(_x()))
    assert ckpt.load_resume_state(run)["epoch"] == 1


def test_resume_state_roundtrip(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "epoch": 3,
        "optimizer": opt.state_dict(),  # int keys, tensors
        "misc": {"tuple": (1, 2.5, None), "nan": float("nan"), "__dunder__": [True, "s"]},
        "rng": torch.get_rng_state(),
    }
    ckpt.save_resume_state(tmp_path, state)
    back = ckpt.load_resume_state(tmp_path)
    assert back["epoch"] == 3
    assert back["misc"]["tuple"] == (1, 2.5, None) and back["misc"]["__dunder__"] == [True, "s"]
    assert back["misc"]["nan"] != back["misc"]["nan"]
    assert torch.equal(back["rng"], state["rng"]) and back["rng"].dtype == torch.uint8
    sd = opt.state_dict()
    assert back["optimizer"]["param_groups"] == sd["param_groups"]
    assert set(back["optimizer"]["state"]) == set(sd["state"]) == {0, 1}
    for k in sd["state"]:
        assert torch.equal(
            back["optimizer"]["state"][k]["momentum_buffer"], sd["state"][k]["momentum_buffer"]
        )
    opt2 = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(back["optimizer"])  # accepted by torch as-is


def test_resume_state_damage_is_refused(tmp_path):
    ckpt.save_resume_state(tmp_path, {"w": torch.arange(100.0)})
    (p,) = tmp_path.glob("resume-*.safetensors")
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match=r"resume-[0-9a-f]{16}\.safetensors.*sha256"):
        ckpt.load_resume_state(tmp_path)
    with pytest.raises(CheckpointError, match="no resume state"):
        ckpt.load_resume_state(tmp_path / "elsewhere")


def test_record_values_are_strict_json(tmp_path):
    rec = _record(metrics={"val_acc": float("nan"), "t": torch.tensor(2.0)}, path=tmp_path)
    ckpt.save_checkpoint(tmp_path, _trained_tiny(), rec)
    text = (tmp_path / "last.json").read_text()
    assert "NaN" not in text
    back = ckpt.load_record(tmp_path)
    assert back["metrics"] == {"val_acc": None, "t": 2.0} and back["path"] == str(tmp_path)
    with pytest.raises(TypeError, match="JSON cannot hold"):
        ckpt.save_checkpoint(tmp_path, _trained_tiny(), _record(extra={"obj": object()}))
    with pytest.raises(ValueError, match="model_kwargs"):
        ckpt.save_checkpoint(tmp_path, _trained_tiny(), {"model": "tiny"})
    with pytest.raises(ValueError, match="tag"):
        ckpt.save_checkpoint(tmp_path, _trained_tiny(), _record(), tag="../x")


# ----------------------------------------------------------------------------- record integrity


def test_an_edited_record_is_refused(saved):
    """Editing model_kwargs.levels from 4 to 8 used to load a different model silently."""
    run, _ = saved
    record = json.loads((run / "last.json").read_text())
    record["model_kwargs"]["levels"] = 8
    (run / "last.json").write_text(json.dumps(record, indent=2))
    with pytest.raises(
        CheckpointError, match=r"last\.json: the record was changed after it was written"
    ):
        ckpt.load(run)
    with pytest.raises(CheckpointError, match="record was changed"):
        ckpt.load_record(run)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("model_kwargs", [4], "field 'model_kwargs' must be an object, got list"),
        ("model", 3, "field 'model' must be a string, got int"),
        ("prepare", "qcfs", "field 'prepare' must be an object or null, got str"),
        ("epoch", "2", "field 'epoch' must be an integer or null, got str"),
    ],
)
def test_wrongly_typed_fields_are_named_with_the_file(saved, field, value, match):
    run, _ = saved
    record = json.loads((run / "last.json").read_text())
    record[field] = value
    record["record_sha256"] = ckpt.record_digest(record)  # a consistent but wrong record
    (run / "last.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=match):
        ckpt.load(run)
