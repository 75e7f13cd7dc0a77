"""torchrun on the CPU (gloo): two processes train one run folder, evaluate one test set."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import _fmnist
import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(tmp / "cache"))
    env.pop("ANN2SNN_DATA", None)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(args: list[str], tmp: Path, procs: int = 0) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={procs}"] if procs else [sys.executable]  # fmt: skip
    proc = subprocess.run([*launcher, "-m", "ann2snn", *args], cwd=tmp, env=_env(tmp),
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_torchrun_trains_one_consistent_run_and_evaluates_exactly(tmp_path):
    data = _fmnist.write_fashion_mnist(tmp_path / "fm", n_train=200, n_test=60)
    run = tmp_path / "run"
    common = ["--model", "cnn", "--dataset", "fashion-mnist", "--data-dir", str(data),
              "--batch-size", "32", "--out", str(run), "--no-progress", "--device", "cpu"]  # fmt: skip
    out = _run(["train", *common, "--epochs", "1"], tmp_path, procs=2)
    assert out.stdout.count("done: 1 epoch,") == 1  # one report, from the primary rank
    record = json.loads((run / "last.json").read_text())
    assert record["runtime"]["world_size"] == 2 and record["runtime"]["backend"] == "gloo"
    # Checked inside the run: every parameter identical on both ranks after the epoch.
    assert record["extra"]["ddp_max_weight_difference"] == 0.0
    assert sorted(re.sub(r"resume-[0-9a-f]{16}", "resume-<hash>", p.name) for p in run.iterdir()) == [
        "best.json", "best.safetensors", "last.json", "last.safetensors",
        "resume-<hash>.safetensors", "resume.json",
    ]  # fmt: skip
    # The distributed evaluation equals the single-process one (exact counts summed).
    ev = ["eval", str(run), "--data-dir", str(data), "--T", "1,2", "--json", "--no-progress",
          "--device", "cpu"]  # fmt: skip
    single = json.loads(_run([*ev, "--out", str(tmp_path / "e1")], tmp_path).stdout)
    both = _run([*ev, "--out", str(tmp_path / "e2")], tmp_path, procs=2).stdout
    both = json.loads(both[both.index("{") :])
    r1, r2 = single["rows"][0], both["rows"][0]
    assert r2["world_size"] == 2 and r2["images"] == r1["images"] == 60
    assert r2["ann_accuracy"] == r1["ann_accuracy"]
    assert r2["accuracy_by_wake"] == r1["accuracy_by_wake"]
    # A run started on two processes resumes on one.
    _run(["train", *common, "--epochs", "2", "--resume"], tmp_path)
    record = json.loads((run / "last.json").read_text())
    assert record["epoch"] == 2 and record["runtime"]["world_size"] == 1


def test_sync_bn_is_refused_on_cpus_by_name():
    from ann2snn.models import create_model
    from ann2snn.training import TrainConfig, prepare_training
    from ann2snn.training.distributed import Runtime

    cfg = TrainConfig(model="cnn", dataset="fashion-mnist", device="cpu", sync_bn=True)
    model = create_model("cnn", num_classes=10, in_channels=1, image_size=28)
    with pytest.raises(ValueError, match="sync_bn needs CUDA devices"):
        prepare_training(model, cfg, Runtime(rank=0, world_size=2, backend="gloo"))
