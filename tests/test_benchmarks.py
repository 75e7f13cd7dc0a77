"""Tiny runs of every benchmark script, so the harness cannot rot.

The scripts live in ``benchmarks/`` and are never imported by the package: each is loaded
from its path (`runpy`) and its ``main(argv)`` run in-process on a tiny Fashion-MNIST set
written here in the real IDX format (no Debian package, no network).
"""

from __future__ import annotations

import gzip
import json
import math
import runpy
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from _fmnist import isolate_data

from ann2snn.nn.neurons import compile_unavailable

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049  # images / labels, as `read_idx` expects
    header = struct.pack(">II", magic, len(array))
    if array.ndim == 3:
        header += struct.pack(">II", *array.shape[1:])
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def fmnist(tmp_path, monkeypatch) -> Path:
    """A 240/100-image Fashion-MNIST look-alike; class-dependent brightness so it is
    learnable. Nothing else (user data, Debian package, download) is visible."""
    isolate_data(monkeypatch, tmp_path)
    rng, folder = np.random.default_rng(0), tmp_path / "fmnist"
    folder.mkdir()
    for prefix, n in (("train", 240), ("t10k", 100)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 100, (n, 28, 28)) + 15 * y[:, None, None]
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two OpenMP threads wait on each other
    (every parallel region then costs a scheduler slice), which is what made these tiny
    runs slow, not their size. Restored afterwards for the other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _main(script: str):
    return runpy.run_path(str(BENCH / script), run_name="benchmark_under_test")["main"]


def _finite_positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_accuracy_tiny(fmnist, tmp_path):
    out, runs = tmp_path / "acc.json", tmp_path / "runs"
    argv = ["--models", "cnn", "--epochs", "1", "--T", "1,2,4", "--casc-levels", "4",
            "--casc-sleep", "auto", "--sleep-grid", "0,1,2,4", "--batch-size", "64",
            "--device", "cpu", "--data-dir", str(fmnist), "--out", str(out),
            "--runs-dir", str(runs), "--no-progress"]  # fmt: skip
    main = _main("accuracy.py")
    result = main(argv)
    saved = json.loads(out.read_text())
    assert saved["models"].keys() == {"cnn"}
    entry = saved["models"]["cnn"]
    assert set(entry["rows"]) == {"qcfs", "nq", "casc", "gn", "relu"}
    for row in entry["rows"].values():
        assert set(row["snn_accuracy"]) == {"1", "2", "4"}
        assert all(0 <= a <= 1 for a in row["snn_accuracy"].values())
        assert 0 <= row["ann_accuracy"] <= 1
    casc = entry["rows"]["casc"]
    search = entry["casc_sleep_search"]
    assert set(search["accuracy_by_sleep"]) == {"0", "1", "2", "4"}
    assert casc["sleep"] == (4 if search["loss_free_sleep"] is None else search["loss_free_sleep"])
    assert casc["total_steps"] == {str(t): t + casc["sleep"] for t in (1, 2, 4)}
    assert set(entry["training"]) == {"qcfs", "nq", "clipq", "relu"}
    for info in entry["training"].values():
        assert info["epochs"] == 1 and _finite_positive(info["mean_epoch_time_s"])
    nq = entry["training"]["nq"]
    assert _finite_positive(nq["mean_calibration_s"]) and nq["sigma_final"]
    assert "| cnn | CASC (Q=4" in saved["table"] and saved["environment"]["torch"]
    assert result["models"]["cnn"]["rows"].keys() == entry["rows"].keys()

    # A re-run continues instead of retraining, and keeps the rows it did not redo.
    resume = Path(entry["training"]["qcfs"]["run_dir"]) / "resume.json"
    before = resume.stat().st_mtime_ns
    main(argv + ["--methods", "gn"])
    again = json.loads(out.read_text())["models"]["cnn"]
    assert set(again["rows"]) == set(entry["rows"])
    assert resume.stat().st_mtime_ns == before


def test_speed_tiny(fmnist, tmp_path):
    out, log = tmp_path / "speed.json", tmp_path / "demo.log"
    log.write_text("| method | ...\nreport: x\nwall time: 171.4 s\n")
    argv = ["--models", "cnn", "--device", "cpu", "--batch-size", "16", "--batches", "2",
            "--repeats", "1", "--sim-T", "2", "--limit-train", "45", "--limit-test", "5",
            "--data-dir", str(fmnist), "--data", "real", "--demo-log", str(log),
            "--out", str(out)]  # fmt: skip
    kernels = ["eager"] if compile_unavailable("cpu") else ["eager", "compiled"]
    argv += ["--neuron-kernels", ",".join(kernels)]
    _main("speed.py")(argv)
    saved = json.loads(out.read_text())
    rows = saved["rows"]
    assert saved["data"] == "real"
    assert [r["id"] for r in rows].count("a") == 3  # qcfs, nq, clipq vs relu
    b = [r for r in rows if r["id"] == "b"]  # (if, gn, cif) × (fp32, bf16) × kernels
    assert len(b) == 6 * len(kernels) and {r["neuron_kernel"] for r in b} == set(kernels)
    assert {r["id"] for r in rows} == {"a", "b", "c", "e", "d"}
    for r in rows:
        assert _finite_positive(r["value"]), r
        assert (r["pass"] is None) == (r["id"] == "d")
    d = next(r for r in rows if r["id"] == "d")
    assert d["value"] == 171.4
    e = next(r for r in rows if r["id"] == "e")
    assert e["train_images"] == 45 and _finite_positive(e["eager_epoch_s"])
    assert "| c | cnn |" in saved["table"]


def test_speed_synthetic_data(tmp_path):
    """Without the dataset, c and e run on a random stand-in of the split's size."""
    out = tmp_path / "speed.json"
    argv = ["--models", "cnn", "--device", "cpu", "--batch-size", "16", "--repeats", "1",
            "--limit-train", "32", "--limit-test", "16", "--data", "synthetic", "--only", "c",
            "--out", str(out)]  # fmt: skip
    _main("speed.py")(argv)
    saved = json.loads(out.read_text())
    assert saved["data"] == "synthetic"
    (row,) = saved["rows"]
    assert row["train_images"] == 32 and row["val_images"] == 16
    assert _finite_positive(row["value"])


@pytest.mark.slow  # a subprocess running the whole demo: ~15 s
def test_speed_runs_demo(fmnist, tmp_path):
    """d: --run-demo times a real `ann2snn demo` subprocess (tiny settings here)."""
    out = tmp_path / "speed.json"
    demo_args = f"--data-dir {fmnist} --epochs 1 --T 2 --limit-train 64 --limit-test 32"
    _main("speed.py")(["--only", "none", "--run-demo", "--demo-args", demo_args,
                       "--out", str(out)])  # fmt: skip
    (row,) = json.loads(out.read_text())["rows"]
    assert row["id"] == "d" and _finite_positive(row["value"])


def test_profile_step_tiny(fmnist, tmp_path):
    out = tmp_path / "profile.json"
    argv = ["--device", "cpu", "--models", "cnn", "--acts", "relu,qcfs",
            "--variants", "library,eager-fp32", "--batch-size", "16", "--steps", "3",
            "--repeats", "1", "--profile-steps", "2", "--data-dir", str(fmnist),
            "--out", str(out)]  # fmt: skip
    _main("profile_step.py")(argv)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["act"], r["variant"]) for r in rows] == [
        ("relu", "library"),
        ("relu", "eager-fp32"),
        ("qcfs", "library"),
        ("qcfs", "eager-fp32"),
    ]
    for r in rows:
        assert _finite_positive(r["wall_ms"]) and _finite_positive(r["busy_ms"])
        assert r["pipeline"]["compile"] == "off"  # CPU: the library trains eager
        assert r["top"] and all(t["op"].startswith("aten::") for t in r["top"])
    # QCFS runs more operators per step than ReLU (its forward and backward are several ops).
    assert rows[2]["ops_per_step"] > rows[0]["ops_per_step"]


def test_op_costs_tiny(tmp_path):
    out = tmp_path / "ops.json"
    _main("op_costs.py")(["--shape", "4,3,8,8", "--repeats", "1", "--min-seconds", "0.001",
                          "--out", str(out)])  # fmt: skip
    saved = json.loads(out.read_text())
    names = [r["op"] for r in saved["rows"]]
    assert "randn_like" in names and "hardtanh_backward (band)" in names
    assert "CIF step (eager)" in names and "IF step (eager)" in names
    assert all(_finite_positive(r["ns_per_element"]) for r in saved["rows"])


def test_model_support_tiny(tmp_path):
    pytest.importorskip("torchvision")
    out = tmp_path / "support.json"
    _main("model_support.py")(["--torchvision", "resnet18,vit_b_16", "--timm", "",
                               "--size", "32", "--out", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["resnet18", "vit_b_16"]
    assert rows[0]["prepare"] == "ok" and rows[0]["exact_gn_T1"] is True
    assert rows[0]["activation_sites"] == 17 and rows[0]["convert_if"] == "ok"
    assert "LayerNorm" in rows[1]["prepare"] and rows[1]["convert_gn"] == "-"


def test_activity_cost_tiny(tmp_path):
    out = tmp_path / "cost.json"
    _main("activity_cost.py")(["--models", "cnn", "--batch-size", "4", "--T", "2",
                               "--repeats", "1", "--out", str(out)])  # fmt: skip
    (row,) = json.loads(out.read_text())["rows"]
    assert _finite_positive(row["off_s"]) and _finite_positive(row["on_over_off"])


def test_bad_inputs_tiny(fmnist, tmp_path):
    out = tmp_path / "bad.json"
    tree = str(BENCH.parent)
    _main("bad_inputs.py")(["--tree", tree, "--data-dir", str(fmnist), "--out", str(out),
                            "--cases", "tau = 0,eval --batch-size 0"])  # fmt: skip
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["tau = 0"]["outcome"] == "error" and "tau must be" in rows["tau = 0"]["detail"]
    assert rows["eval --batch-size 0"]["outcome"] == "error"
    assert "--batch-size: must be >= 1" in rows["eval --batch-size 0"]["detail"]


def test_ablation_and_calibration_tiny(fmnist, tmp_path):
    out, runs = tmp_path / "abl.json", tmp_path / "runs"
    summary = _main("ablation.py")(["--epochs", "1", "--variants", "2,6", "--data-dir", str(fmnist),
                                    "--runs-dir", str(runs), "--out", str(out), "--no-progress"])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [r["index"] for r in rows] == [2, 6] and summary["rows"] == rows
    assert rows[0]["flags"] == ["--threshold-param", "raw"] and rows[1]["method"] == "nq"
    for r in rows:
        assert set(r["snn"]) == {"1", "2", "4", "8"} and 0 <= r["ann"] <= 1
        assert all(lam > 0 for lam in r["thresholds"])
    assert "raw λ" in summary["table"]
    run_dir = next(p for p in runs.iterdir() if p.name.endswith("-raw"))
    cal_out = tmp_path / "cal.json"
    result = _main("calibration.py")([str(run_dir), "--T", "1,2", "--batches", "1",
                                      "--data-dir", str(fmnist), "--out", str(cal_out),
                                      "--methods", "bias,potential,cos,finetune", "--ft-epochs", "0.1"])  # fmt: skip
    row = json.loads(cal_out.read_text())["rows"][0]
    assert set(row["plain"]) == {"1", "2"} and set(row["methods"]) == {
        "bias",
        "potential",
        "cos",
        "finetune",
    }
    for by_t in row["methods"].values():
        assert set(by_t) == {"1", "2"}
        assert all(
            _finite_positive(v["seconds"]) and 0 <= v["accuracy"] <= 1 for v in by_t.values()
        )
    assert "| " in result["table"]
    out = tmp_path / "interop.json"
    interop = _main("interop.py")([str(run_dir), "--T", "1,2", "--data-dir", str(fmnist),
                                   "--limit-test", "40", "--out", str(out)])  # fmt: skip
    for row in interop["rows"]:  # the round trip is lossless; installed readers give a result
        assert row["ann2snn, NIR round trip"] == row["ann2snn"]
        for name in ("spikingjelly", "sinabs", "norse", "snntorch"):
            got = row[f"{name}, NIR file (profile {name})"]
            assert isinstance(got, dict) or got.startswith("not installed"), got
        if "spikingjelly, to_spikingjelly" in row:  # the adapter runs the SNN exactly
            assert row["spikingjelly, to_spikingjelly"] == pytest.approx(row["ann2snn"], abs=0.03)
    assert json.loads(out.read_text())["test_images"] == 40


def test_detection_tiny(fmnist, tmp_path):
    pytest.importorskip("torchmetrics")
    out = tmp_path / "det.json"
    result = _main("detection.py")(["--epochs", "1", "--limit-train", "16", "--limit-test", "8",
                                    "--T", "1,2", "--casc-sleep", "2", "--data-dir", str(fmnist),
                                    "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
                                    "--no-progress"])  # fmt: skip
    saved = json.loads(out.read_text())
    assert [r["label"] for r in saved["rows"]] == ["QCFS+IF", "QCFS+GN (τ=4)", "CASC (CIF, Q=8, sleep 2)"]  # fmt: skip
    for r in saved["rows"]:
        assert set(r["map50_by_wake"]) == {"1", "2"} and 0 <= r["ann_map50"] <= 1
        assert r["epochs"] == 1 and r["images"] == 8
    assert saved["rows"][2]["total_steps_by_wake"] == {"1": 3, "2": 4}
    assert saved["test_images"] == 8 and result["rows"] == saved["rows"]
