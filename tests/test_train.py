"""Training loop: config validation, schedule, checkpoints per epoch, exact resume."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import _tiny
import pytest
import torch
from _tiny import train_tiny
from torch import nn

from ann2snn import checkpoint as ckpt
from ann2snn._progress import ProgressBar
from ann2snn.training import (
    PRESETS,
    TrainConfig,
    evaluate,
    lr_at,
    param_groups,
    train,
    train_one_epoch,
)
from ann2snn.training import lock as ckpt_lock

WORKER = Path(__file__).with_name("_train_worker.py")


def _config(out_dir, **overrides) -> TrainConfig:
    kw = dict(model="tiny", dataset="synthetic", epochs=1, batch_size=16, lr=0.05,
              device="cpu", out_dir=str(out_dir), progress=False)  # fmt: skip
    return TrainConfig(**{**kw, **overrides})


def _history(record):
    return [{k: v for k, v in e.items() if k != "time_s"} for e in record["metrics"]["history"]]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("epochs", 0, "epochs must be an integer >= 1"),
        ("batch_size", -4, "batch_size"),
        ("lr", 0.0, "lr must be a positive number"),
        ("lr", float("nan"), "lr must be a positive number"),
        ("act", "tanh", "unknown act 'tanh'; choose one of"),
        ("levels", 0, "levels"),
        ("pool", "median", "pool must be 'avg'"),
        ("momentum", 1.0, "momentum"),
        ("weight_decay", -1e-4, "weight_decay"),
        ("label_smoothing", 1.0, "label_smoothing"),
        ("val_fraction", 1.0, "val_fraction"),
        ("warmup_epochs", 1, r"warmup_epochs \(1\) must be < epochs \(1\)"),
        ("amp", "fp8", "amp must be one of"),
        ("channels_last", "yes", "channels_last"),
        ("device", "gpu0", "device must be"),
        ("limit_train", 0, "limit_train"),
        ("seed", 1.5, "seed"),
        ("model", "", "model must be a non-empty name"),
        ("act_kwargs", [("sigma", 0.1)], "act_kwargs must be a dict"),
    ],
)
def test_config_validation(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, **{field: value})


def test_config_defaults_and_shorthands():
    cfg = TrainConfig(model="resnet20", dataset="cifar10", amp=False)
    assert cfg.out_dir == "runs/cifar10-resnet20-qcfs-L4"
    assert cfg.amp == "off" and TrainConfig(model="m", dataset="d", amp=True).amp == "bf16"
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.seed) == (
        0.1,
        0.9,
        5e-4,
        128,
        42,
    )


def test_presets():
    assert set(PRESETS) == {"qcfs", "nq", "casc", "gn"}
    casc = TrainConfig.from_preset("casc", model="vgg16", dataset="cifar10")
    assert (casc.act, casc.levels, casc.lr, casc.weight_decay) == ("clipq", 8, 0.1, 1e-4)
    assert (casc.label_smoothing, casc.warmup_epochs) == (0.1, 5)
    nq = TrainConfig.from_preset("nq", model="vgg16", dataset="cifar10", epochs=10)
    assert (nq.act, nq.lr, nq.weight_decay, nq.levels, nq.epochs) == ("nq", 0.05, 5e-4, 4, 10)
    qcfs = TrainConfig.from_preset("qcfs", model="vgg16", dataset="cifar10")
    assert (qcfs.act, qcfs.lr, qcfs.weight_decay, qcfs.warmup_epochs) == ("qcfs", 0.1, 5e-4, 0)
    gn = TrainConfig.from_preset("gn", model="resnet20", dataset="cifar100")
    assert gn.levels == 8 and gn.act_kwargs == {"init_threshold": 8.0}
    gn.act_kwargs["x"] = 1  # presets are copied, not shared
    assert PRESETS["gn"]["act_kwargs"] == {"init_threshold": 8.0}
    with pytest.raises(ValueError, match="unknown preset 'foo'; choose one of qcfs"):
        TrainConfig.from_preset("foo", model="m", dataset="d")
    with pytest.raises(ValueError, match="unknown TrainConfig field.*epoch_count"):
        TrainConfig.from_preset("qcfs", model="m", dataset="d", epoch_count=3)


def test_lr_schedule():
    cfg = TrainConfig(model="m", dataset="d", epochs=10, lr=0.1)
    lrs = [lr_at(e, cfg) for e in range(10)]
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for e in range(10):
        assert lrs[e] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        ref.step()
    warm = TrainConfig(model="m", dataset="d", epochs=10, lr=0.1, warmup_epochs=5)
    assert lr_at(0, warm) == pytest.approx(1e-6)
    assert lr_at(4, warm) == pytest.approx(1e-6 + (0.1 - 1e-6) * 4 / 5)
    assert lr_at(5, warm) == pytest.approx(0.1)
    assert lr_at(9, warm) == pytest.approx(0.05 * (1 + math.cos(math.pi * 4 / 5)))


def test_thresholds_get_no_weight_decay():
    model = _tiny.TinyNet(act="qcfs")
    groups = param_groups(model, 5e-4)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert groups[1]["params"] == [model.features[2].log_threshold]
    assert len(groups[0]["params"]) == len(list(model.parameters())) - 1
    assert len(param_groups(_tiny.TinyNet(act="clipq", levels=8), 1e-4)) == 1


# ----------------------------------------------------------------------------- the core loop


def test_core_loop_works_with_any_module_and_iterable():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = evaluate(model, batches)
    for _ in range(20):
        scores = train_one_epoch(model, batches, opt)
    acc, loss = evaluate(model, batches, "cpu")
    assert model.training  # evaluate restores the mode it found
    assert acc > 90 and loss < first.loss and 0 <= scores.acc <= 100
    assert all(math.isnan(v) for v in evaluate(model, []))


def test_train_one_epoch_rejects_nan_loss():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="lower lr"):
        train_one_epoch(model, [(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))], opt)


# ----------------------------------------------------------------------------- train_tiny()


def test_one_epoch_writes_loadable_checkpoint(tmp_path):
    seen = {}

    def on_epoch_end(model, epoch, loaders, record):
        seen["model"] = copy.deepcopy(model).eval()  # exactly what is about to be saved
        seen["epoch"] = epoch
        return {"note": f"epoch {epoch}"}

    record = train_tiny(
        _config(tmp_path, act="nq", act_kwargs={"sigma": 0.05}), {"on_epoch_end": on_epoch_end}
    )
    assert seen["epoch"] == 1 and record["epoch"] == 1
    names = sorted(
        re.sub(r"resume-[0-9a-f]{16}", "resume-<hash>", p.name) for p in tmp_path.iterdir()
    )
    assert names == ["best.json", "best.safetensors", "last.json", "last.safetensors",
                     "resume-<hash>.safetensors", "resume.json"]  # fmt: skip
    loaded = ckpt.load(tmp_path / "last.json")
    x = torch.randn(8, 3, _tiny.IMAGE, _tiny.IMAGE)
    assert torch.equal(loaded(x), seen["model"](x))
    # Trained channels_last ("auto") -> loaded channels_last.
    conv = next(m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    rec = loaded.ann2snn_record
    assert rec["model"] == "tiny" and rec["activation"] == "nq" and rec["levels"] == 4
    assert rec["model_kwargs"] == dict(num_classes=_tiny.CLASSES, in_channels=3, act="nq", levels=4,
                                       pool="avg", image_size=_tiny.IMAGE, sigma=0.05)  # fmt: skip
    assert rec["recipe"]["lr"] == 0.05 and rec["seed"] == 42 and rec["extra"] == {"note": "epoch 1"}
    (entry,) = rec["metrics"]["history"]
    assert entry["epoch"] == 1 and entry["time_s"] > 0
    for key in ("train_loss", "train_acc", "val_acc", "test_acc", "lr"):
        assert isinstance(entry[key], float)
    assert rec["metrics"]["val_acc"] == entry["val_acc"] == entry["select_metric"]
    assert rec["runtime"] == {
        "device": "cpu",
        "amp": "off",
        "channels_last": True,  # "auto": NHWC on every device
        "compile": "off",
        "world_size": 1,
        "backend": None,
    }


def test_select_metric_from_hook_picks_best(tmp_path):
    # The hook scores epoch 1 highest; best must stay at epoch 1 whatever val_acc does.
    hooks = type(
        "Hooks",
        (),
        {"on_epoch_end": staticmethod(lambda m, e, l, r: {"select_metric": -e, "sigma": [e]})},
    )
    record = train_tiny(_config(tmp_path, epochs=2), hooks)
    assert record["epoch"] == 2 and record["metrics"]["best_epoch"] == 1
    assert ckpt.load_record(tmp_path / "best.json")["epoch"] == 1
    assert ckpt.load_record(tmp_path)["epoch"] == 1  # the folder loads best
    assert record["extra"] == {"sigma": [2]} and "select_metric" not in record["extra"]
    assert [e["select_metric"] for e in record["metrics"]["history"]] == [-1, -2]


def test_no_validation_split_makes_last_the_best(tmp_path):
    record = train_tiny(_config(tmp_path, epochs=2, val_fraction=0.0))
    assert record["metrics"]["val_acc"] is None and record["metrics"]["best_epoch"] == 2


def test_refuses_to_overwrite_a_run(tmp_path):
    train_tiny(_config(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="resume=True.*another out_dir"):
        train_tiny(_config(tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(ValueError, match=r"different recipe \(lr: 0.05 → 0.1\)"):
        train_tiny(_config(tmp_path, lr=0.1), resume=True)
    # Resuming a finished run trains nothing and returns its record.
    record = train_tiny(_config(tmp_path, progress=True), resume=True)
    assert record["epoch"] == 1 and len(record["metrics"]["history"]) == 1
    assert (tmp_path / "last.safetensors").read_bytes() == before["last.safetensors"]


def test_resume_flag_on_empty_folder_starts_fresh(tmp_path):
    record = train_tiny(_config(tmp_path / "new", resume=True))
    assert record["epoch"] == 1


def test_progress_is_one_line_per_epoch_off_a_terminal(tmp_path, capsys):
    train_tiny(_config(tmp_path, epochs=2, progress=True))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and lines[0].startswith("training: tiny")
    assert lines[1].startswith("epoch 1/2") and "val" in lines[1] and "test" in lines[1]
    assert "\r" not in "".join(lines)


def test_progress_bar_redraws_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = ProgressBar(4, "epoch 1/1", stream=out, min_interval=0.0)
    calls = []
    for _ in range(4):
        bar.update(1, stats=lambda: calls.append(1) or {"loss": 0.5})
    bar.close("done")
    text = out.getvalue()
    assert text.count("\r") == 5 and "[#####" in text and "loss 0.5" in text
    assert text.endswith("done\033[K\n") and len(calls) == 4
    quiet = io.StringIO()
    ProgressBar(4, stream=quiet, enabled=False).close("x")
    assert quiet.getvalue() == ""


# ----------------------------------------------------------------------------- kill + resume


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """A run SIGKILLed in the middle of epoch 2 and resumed ends bit for bit where an
    uninterrupted run with the same seed ends: optimizer, scheduler and all RNG states
    (the fake loader draws from torch, NumPy and Python generators; NQ noise from torch)
    must be restored for that to hold."""
    epochs = 3
    common = dict(epochs=epochs, act="nq", act_kwargs={"sigma": 0.05}, warmup_epochs=1)
    reference = train_tiny(_config(tmp_path / "reference", **common))

    run = tmp_path / "killed"
    marker = tmp_path / "epoch2-started"
    cfg = asdict(_config(run, **common))
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(cfg), "1", str(marker), str(torch.get_num_threads())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 50
        while not marker.exists():  # epoch 1 is checkpointed and epoch 2 has started
            if proc.poll() is not None:
                pytest.fail(f"worker exited early:\n{proc.stdout.read().decode()}")
            assert time.monotonic() < deadline, "worker did not reach epoch 2"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.load_record(run / "last.json")["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]

    with pytest.raises(FileExistsError):
        train_tiny(_config(run, **common))
    resumed = train_tiny(_config(run, **common, resume=True))

    assert resumed["epoch"] == epochs and len(resumed["metrics"]["history"]) == epochs
    assert [e["epoch"] for e in resumed["metrics"]["history"]] == [1, 2, 3]
    assert _history(resumed) == _history(reference)
    got, want = ckpt.load_state_dict(run), ckpt.load_state_dict(tmp_path / "reference")
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    ckpt.load(run)  # the final folder is a valid checkpoint


# ----------------------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_and_the_first_run_completes(tmp_path):
    """Two trainings into one folder used to both print "done", leaving a mix of the two."""
    run, marker = tmp_path / "run", tmp_path / "started"
    cfg = asdict(_config(run, epochs=2))
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(cfg), "0", str(marker), "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 50
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"worker exited early:\n{proc.stdout.read().decode()}")
            assert time.monotonic() < deadline, "worker did not start"
            time.sleep(0.05)
        for resume in (False, True):
            with pytest.raises(
                ckpt_lock.RunFolderBusyError, match=rf"in use by process {proc.pid} on host"
            ):
                train_tiny(_config(run, epochs=2, lr=0.1), resume=resume)
        assert proc.wait(120) == 0, proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    record = ckpt.load_record(run / "last.json")
    assert record["epoch"] == 2 and record["recipe"]["lr"] == 0.05  # the first run's, whole
    ckpt.load(run)
    assert not (run / ".lock").exists()


def test_a_lock_from_another_host_is_never_broken(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(FileExistsError, match=r"in use by process 1 on host elsewhere.*delete"):
        train_tiny(_config(run))
    assert (run / ".lock").exists()


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    with pytest.raises(TypeError, match="loaders"):
        train(_config(tmp_path / "never"), loaders=object())
    assert not (tmp_path / "never").exists()


def test_a_finished_run_can_be_extended_but_not_cut_below_what_is_done(tmp_path):
    train_tiny(_config(tmp_path / "run", epochs=2))
    record = train_tiny(_config(tmp_path / "run", epochs=3), resume=True)
    assert record["epoch"] == 3 and [e["epoch"] for e in record["metrics"]["history"]] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"epochs: 3 → 1"):
        train_tiny(_config(tmp_path / "run", epochs=1), resume=True)


def test_a_run_killed_in_its_first_checkpoint_write_resumes(tmp_path):
    """best/last of epoch 1 written, the commit point (resume.*) not, plus a staging file:
    ``--resume`` redoes the run from the start, as an uninterrupted run would have gone."""
    reference = train_tiny(_config(tmp_path / "reference", epochs=2))
    run = tmp_path / "run"
    train_tiny(_config(run, epochs=2, progress=False), resume=False)
    for path in [run / "resume.json", *run.glob("resume-*.safetensors")]:
        path.unlink()
    record = json.loads((run / "last.json").read_text())  # the state after epoch 1's save
    record["epoch"] = 1
    record["record_sha256"] = ckpt.record_digest(record)
    for tag in ("best", "last"):
        (run / f"{tag}.json").write_text(json.dumps(record))
    (run / ".resume.json.abc123.tmp").write_text("half written")
    with pytest.raises(FileExistsError):
        train_tiny(_config(run, epochs=2))  # without resume: refused as always
    resumed = train_tiny(_config(run, epochs=2), resume=True)
    assert resumed["epoch"] == 2 and _history(resumed) == _history(reference)
    assert not list(run.glob(".*.tmp"))


def test_a_folder_with_later_epochs_but_no_resume_state_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    train_tiny(_config(run, epochs=2))
    (run / "resume.json").unlink()
    with pytest.raises(FileExistsError, match="cannot be resumed"):
        train_tiny(_config(run, epochs=2), resume=True)


class _Killed(BaseException):
    """Stands for SIGKILL/SIGINT at one rename (a BaseException: nothing catches it)."""


def test_a_kill_at_every_rename_leaves_a_run_that_resumes_bit_identically(tmp_path, monkeypatch):
    import ann2snn._io as io

    reference = train_tiny(_config(tmp_path / "reference", epochs=2))
    ref_state = ckpt.load_state_dict(tmp_path / "reference" / "last.json")
    real_replace = io.os.replace
    renames = []
    monkeypatch.setattr(io.os, "replace", lambda a, b: renames.append(b) or real_replace(a, b))
    train_tiny(_config(tmp_path / "count", epochs=2))
    total = len(renames)
    assert total >= 10  # last and resume pairs of two epochs, best when it improved
    for k in range(total):
        run, calls = tmp_path / f"killed-{k}", []

        def replace(a, b, k=k, calls=calls):
            if len(calls) == k:
                raise _Killed(f"killed before rename {k} ({Path(b).name})")
            calls.append(b)
            real_replace(a, b)

        monkeypatch.setattr(io.os, "replace", replace)
        with pytest.raises(_Killed):
            train_tiny(_config(run, epochs=2))
        monkeypatch.setattr(io.os, "replace", real_replace)
        record = train_tiny(_config(run, epochs=2), resume=True)
        assert _history(record) == _history(reference), k
        state = ckpt.load_state_dict(run / "last.json")
        assert all(torch.equal(state[n], ref_state[n]) for n in ref_state), k
        assert len(list(run.glob("resume-*.safetensors"))) == 1 and not list(run.glob(".*tmp"))
