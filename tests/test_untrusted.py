"""Files from strangers: a run folder, a dataset file or a record someone sent must never
run code on this machine, and edits to a record are caught. Each case puts a payload where
a careless reader would execute it (it would create a marker file) and checks that the
marker never appears and the error names what was refused and how to allow it."""

from __future__ import annotations

import json
import pickle
import textwrap

import numpy as np
import pytest
import torch
from test_checkpoint import _record, _trained_tiny

import ann2snn
from ann2snn import checkpoint as ckpt
from ann2snn.checkpoint import CheckpointError
from ann2snn.cli import main


@pytest.fixture
def run_folder(tmp_path):
    ckpt.save_checkpoint(tmp_path / "run", _trained_tiny(), _record(), tag="best")
    return tmp_path / "run"


def _point_record_at(run, model_name: str) -> None:
    """What a hostile sender does: name code in the record and re-hash it (anyone can)."""
    path = run / "best.json"
    record = json.loads(path.read_text())
    record["model"] = model_name
    record["record_sha256"] = ckpt.record_digest(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("name", ["evil_payload:build", "code:interact", "os:getcwd"])
def test_a_record_naming_code_is_refused_without_running_it(run_folder, tmp_path, monkeypatch, name):  # fmt: skip
    marker = tmp_path / "ran"
    (run_folder / "evil_payload.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").close()  # runs on import
        def build(**kw):
            open({str(marker)!r}, "w").close()
    """))  # fmt: skip
    monkeypatch.syspath_prepend(str(run_folder))
    _point_record_at(run_folder, name)
    with pytest.raises(CheckpointError, match=rf"asks to import .* and call '{name}'.*trust_code=True"):  # fmt: skip
        ann2snn.load(run_folder)
    assert main(["check", str(run_folder)]) == 2
    assert not marker.exists()


def test_trusting_a_record_runs_its_builder(run_folder, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    (tmp_path / "mine.py").write_text(textwrap.dedent(f"""
        from test_checkpoint import _trained_tiny
        def build(**kw):
            open({str(marker)!r}, "w").close()
            return _trained_tiny()
    """))  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    _point_record_at(run_folder, "mine:build")
    model = ann2snn.load(run_folder, trust_code=True)
    assert marker.exists() and model.ann2snn_record["model"] == "mine:build"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_cifar_pickle_that_names_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _Payload(marker)}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=r"data_batch_1: cannot read .*names io\.open.*refused"):
        ann2snn.create_loaders("cifar10", data_dir=tmp_path, device="cpu")
    assert not marker.exists()


def test_a_record_whose_hash_was_deleted_is_refused(run_folder):
    path = run_folder / "best.json"
    record = json.loads(path.read_text())
    record["model_kwargs"] = {**record["model_kwargs"], "levels": 8}  # an edit ...
    del record["record_sha256"]  # ... and the hash that would show it, deleted
    path.write_text(json.dumps(record))
    with pytest.raises(
        CheckpointError, match="has no record_sha256, which every record of format 2"
    ):
        ann2snn.load(run_folder)
    record["format_version"] = 1  # a record written before hashes: read, with a warning
    path.write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="unverified"):
        ckpt.load_record(run_folder)
    with pytest.warns(UserWarning, match="unverified"):
        assert torch.is_tensor(next(iter(ckpt.load_state_dict(run_folder).values())))


@pytest.mark.parametrize("content", ["", "{not json", "[]"])
def test_a_lock_that_names_no_holder_says_so(tmp_path, content):
    from ann2snn.training.lock import RunFolderBusyError, RunLock

    (tmp_path / ".lock").write_text(content)
    with pytest.raises(RunFolderBusyError, match=r"does not say who holds it .* delete it"):
        RunLock(tmp_path).acquire()


@pytest.mark.parametrize(
    "data, message",
    [
        (torch.empty(0, 1, 4, 4), "batch 0 is empty"),
        (torch.full((2, 1, 4, 4), float("nan")), "batch 0 holds 32 NaN/inf"),
    ],
)
def test_calibration_data_is_checked_at_the_door(data, message):
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).eval()
    snn = ann2snn.convert(model, calibration=torch.rand(4, 1, 4, 4))
    with pytest.raises(ValueError, match=message):
        ann2snn.calibrate(snn, data, T=2)
    with pytest.raises((ValueError, ann2snn.ConversionError), match=message):
        ann2snn.prepare(model, calibration=data)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_weights_that_are_not_a_regular_file_are_refused_without_reading(run_folder, kind):
    import os

    weights = run_folder / "best.safetensors"
    weights.unlink()
    if kind == "dev-zero":
        weights.symlink_to("/dev/zero")  # read_bytes would never end
    else:
        os.mkfifo(weights)  # read_bytes would block forever
    with pytest.raises(CheckpointError, match="not a regular file"):
        ann2snn.load(run_folder)


def test_a_checkpoint_copied_in_from_another_run_is_refused(tmp_path):
    import shutil

    from _tiny import train_tiny

    from ann2snn.training import TrainConfig

    def run(name, seed):
        cfg = TrainConfig(model="tiny", dataset="synthetic", epochs=1, batch_size=16, lr=0.05,
                          device="cpu", out_dir=str(tmp_path / name), progress=False, seed=seed)  # fmt: skip
        train_tiny(cfg)
        return cfg

    a, _ = run("a", 1), run("b", 2)
    for name in ("best.json", "best.safetensors"):  # b's best pair, copied over a's
        shutil.copy(tmp_path / "b" / name, tmp_path / "a" / name)
    with pytest.raises(
        CheckpointError, match=r"belongs to run \w+, but the folder's other records"
    ):
        ann2snn.load(tmp_path / "a")
    a.epochs = 2
    with pytest.raises(CheckpointError, match="copied in from elsewhere"):
        train_tiny(a, resume=True)
    assert ann2snn.load(tmp_path / "b").ann2snn_record["run_id"]  # each run alone loads


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0, 7]), r"batch 0: a label is outside 0..2 \(the network has 3 outputs\)"),
        (torch.tensor([0.0, 1.0]), r"labels must be class indices \[B\]"),
        (torch.tensor([0, 1, 2]), r"labels must be class indices .* for 2 images"),
    ],
)
def test_simulate_checks_labels_against_the_network(labels, message):
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), ann2snn.QCFS(4, 1.0)).eval()
    snn = ann2snn.convert(model)
    with pytest.raises(ValueError, match=message):
        ann2snn.simulate(snn, (torch.rand(2, 1, 4, 4), labels), T=2, progress=False)


def test_a_report_replaces_what_a_killed_writer_left_and_is_readable_by_others(tmp_path):
    import os
    import time

    from ann2snn._io import write_json

    stale = tmp_path / ".report.json.abc.tmp"
    fresh = tmp_path / ".report.json.def.tmp"  # maybe a writer at work right now: kept
    stale.write_text("half")
    fresh.write_text("half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    path = write_json({"a": 1}, tmp_path / "report.json")
    assert not stale.exists() and fresh.exists()
    assert path.stat().st_mode & 0o777 == 0o644 and json.loads(path.read_text()) == {"a": 1}
