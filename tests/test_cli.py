"""The ``ann2snn`` command line: help, check, train → eval end to end, errors and resume.

End-to-end tests run the console script in a subprocess on a tiny generated Fashion-MNIST
(300 train / 100 test images in IDX format, `_fmnist`). Tests that need the dataset
lookup isolated (the Debian folder, the cache, the network) call `ann2snn.cli.main`
in-process with monkeypatching.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import _fmnist
import pytest
import torch

import ann2snn
from ann2snn.checkpoint import load_record
from ann2snn.cli import main
from ann2snn.nn.neurons import compile_unavailable
from ann2snn.training import TrainConfig, train

SCRIPT = Path(sys.executable).with_name("ann2snn")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "ann2snn.cli"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the tiny CNN is faster that way, and much faster on a busy box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(tmp / "xdg-cache"))
    env.pop("ANN2SNN_DATA", None)
    return env


def cli(*args: str, cwd: Path, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    """Run ``ann2snn ARGS`` in a subprocess; assert its exit code unless check_rc is None."""
    proc = subprocess.run([*COMMAND, *args], cwd=cwd, env=_env(cwd), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def data_dir(work) -> Path:
    return _fmnist.write_fashion_mnist(work / "fmnist", n_train=300, n_test=100)


def _train_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "cnn", "--dataset", "fashion-mnist", "--data-dir", str(data_dir),
            "--epochs", "1", "--out", str(out), "--batch-size", "16", "--no-progress", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(work, data_dir) -> Path:
    """One trained QCFS CNN (1 epoch), trained through the console script."""
    out = work / "run"
    proc = cli(*_train_args(data_dir, out), cwd=work)
    assert "done: 1 epoch, val acc " in proc.stdout and str(out) in proc.stdout
    return out


def _eval_json(run_dir: Path, data_dir: Path, out: Path, *extra: str, capsys) -> dict:
    """In-process ``ann2snn eval ... --json``; the parsed report."""
    capsys.readouterr()
    rc = main(["eval", str(run_dir), "--data-dir", str(data_dir), "--out", str(out),
               "--no-progress", "--json", *extra])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


# ----------------------------------------------------------------------------- help, check


def test_help_of_every_command_exits_0(work):
    commands = {
        None: ["train", "eval", "check", "demo"],
        "train": ["--model", "--dataset", "--resume", "--nq-steps"],
        "eval": ["--neuron", "--T", "--tau", "--sleep", "--json", "--csv"],
        "check": ["--neuron", "--pool"],
        "demo": ["--epochs", "--T", "--sleep", "--methods"],
    }
    procs = {
        cmd: subprocess.Popen(
            [*COMMAND, *([cmd] if cmd else []), "--help"],
            cwd=work,
            env=_env(work),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cmd in commands
    }
    for cmd, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.startswith("usage: ann2snn" + (f" {cmd}" if cmd else ""))
        for word in commands[cmd]:
            assert word in out, (cmd, word)


def _subparsers(parser):
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_help_with_its_default_and_every_command_examples_that_parse():
    from ann2snn.cli import build_parser

    parser = build_parser()
    for name, sub in _subparsers(parser).items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
            text = formatter._get_help_string(action)
            has_value = action.default is not None and action.default is not False
            if action.option_strings and (has_value or action.nargs != 0) and not action.required:
                # Every option that takes a value says its default (argparse's or the text's),
                # or that a new run requires it.
                said = "default" in text or "required" in text
                assert said, f"{name} {action.option_strings}: no default shown"
        # The epilog's examples are commands this parser accepts.
        examples = [ln.strip() for ln in (sub.epilog or "").splitlines()[1:] if ln.strip()]
        assert examples, f"{name}: no examples"
        for line in examples:
            argv = line.split("#")[0].split(">")[0].split()
            if argv[0] != "ann2snn" or "..." in argv:
                continue
            parser.parse_args(argv[1:])


def test_check_vgg16_with_max_pooling_lists_each_maxpool_and_its_fix(work):
    proc = cli("check", "vgg16", "--pool", "max", cwd=work, check_rc=1)
    bad = [line for line in proc.stdout.splitlines() if "unsupported" in line and "->" in line]
    assert len(bad) == 5  # VGG-16 has five pooling layers
    for line in bad:
        assert "MaxPool2d" in line
        assert "pool='avg'" in line and "neuron='cif'" in line
    assert "5 unsupported op(s)" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_check_cnn_is_supported(work, capsys):
    proc = cli("check", "cnn", cwd=work)
    assert proc.stdout.rstrip().endswith("supported")
    assert "unsupported" not in proc.stdout
    assert proc.stdout.count(" neuron") == 4  # the small CNN's four activations
    # --json (in-process): the same verdict, machine-readable.
    assert main(["check", "cnn", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["traced"] is True
    assert sum(op["status"] == "neuron" for op in report["ops"]) == 4
    # Under CIF neurons max pooling converts (lateral-inhibition pooling).
    assert main(["check", "cnn", "--pool", "max", "--neuron", "cif", "--json"]) == 0
    ops = json.loads(capsys.readouterr().out)["ops"]
    assert [op["status"] for op in ops if op["op"] == "MaxPool2d"] == ["spiking-pool"] * 2


# ----------------------------------------------------------------------------- train → eval


def test_train_writes_a_run_folder(run_dir, data_dir):
    assert {p.name for p in run_dir.iterdir()} >= {
        "best.json", "best.safetensors", "last.json", "last.safetensors", "resume.json",
    }  # fmt: skip
    assert len(list(run_dir.glob("resume-*.safetensors"))) == 1
    record = load_record(run_dir)
    assert record["model"] == "cnn" and record["epoch"] == 1
    assert record["model_kwargs"]["in_channels"] == 1
    assert record["model_kwargs"]["image_size"] == 28
    assert record["recipe"]["batch_size"] == 16 and record["recipe"]["dataset"] == "fashion-mnist"
    assert record["recipe"]["data_dir"] == str(data_dir)
    # The images are class-dependent: one epoch learns them well beyond chance (10 %).
    assert record["metrics"]["test_acc"] > 30


def test_eval_prints_a_table_and_writes_report_and_plot(run_dir, data_dir, work):
    proc = cli("eval", str(run_dir), "--T", "1,2,4", "--data-dir", str(data_dir),
               "--no-progress", cwd=work)  # fmt: skip
    lines = proc.stdout.splitlines()
    assert lines[0] == "test accuracy (%)"  # one unit, said
    assert lines[1] == "| method | ANN | T=1 | T=2 | T=4 |"
    assert lines[3].startswith("| qcfs+if |")
    folder = run_dir / "eval" / "if-T1_2_4"  # one folder per kind of evaluation
    assert (folder / "report.json").is_file()
    assert (folder / "accuracy_vs_T.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"report: {folder / 'report.json'}" in proc.stdout
    assert f"plot: {folder / 'accuracy_vs_T.png'}" in proc.stdout

    report = json.loads((folder / "report.json").read_text())
    assert "fraction" in report["units"]["accuracy, map50, map"]
    (row,) = report["rows"]
    assert report["steps"] == [1, 2, 4]
    assert set(row["accuracy_by_wake"]) >= {"1", "2", "4"}
    assert all(0 <= row["accuracy_by_wake"][t] <= 1 for t in ("1", "2", "4"))
    assert row["neuron"] == "if" and row["convert"]["neuron"] == "if"
    assert row["images"] == 100
    # ANN accuracy: the checkpoint's test accuracy as measured during training.
    assert 0 <= row["ann_accuracy"] <= 1
    assert abs(100 * row["ann_accuracy"] - report["record"]["metrics"]["test_acc"]) <= 1.0
    cells = lines[3].strip("| ").split(" | ")
    assert cells[1] == f"{100 * row['ann_accuracy']:.2f}"
    assert cells[2:] == [f"{100 * row['accuracy_by_wake'][t]:.2f}" for t in ("1", "2", "4")]
    assert report["settings"]["T"] == [1, 2, 4] and report["settings"]["neuron"] == "if"
    assert report["settings"]["data_dir"] == str(data_dir)
    env = report["environment"]
    assert env["torch"] == torch.__version__ and {"python", "platform", "ann2snn"} <= set(env)


def test_eval_json_and_csv_outputs(run_dir, data_dir, tmp_path, capsys):
    report = _eval_json(run_dir, data_dir, tmp_path / "j", "--T", "1,2,4", capsys=capsys)
    assert report["steps"] == [1, 2, 4]
    acc = report["rows"][0]["accuracy_by_wake"]
    assert (
        json.loads((tmp_path / "j" / "report.json").read_text())["rows"][0]["accuracy_by_wake"]
        == acc
    )

    rc = main(["eval", str(run_dir), "--data-dir", str(data_dir), "--out", str(tmp_path / "c"),
               "--T", "1,2,4", "--no-progress", "--csv"])  # fmt: skip
    assert rc == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["wake_steps", "total_steps", "accuracy_pct"]
    assert [r[:2] for r in rows[1:]] == [["1", "1"], ["2", "2"], ["4", "4"]]
    assert [float(r[2]) for r in rows[1:]] == pytest.approx([100 * acc[k] for k in ("1", "2", "4")])

    with pytest.raises(SystemExit) as exc:  # --json and --csv exclude each other
        main(["eval", str(run_dir), "--json", "--csv"])
    assert exc.value.code == 2


def test_eval_activity_adds_synops_and_energy_columns(run_dir, data_dir, tmp_path, capsys):
    report = _eval_json(run_dir, data_dir, tmp_path / "a", "--T", "1,2", "--activity",
                        capsys=capsys)  # fmt: skip
    row = report["rows"][0]
    assert set(row["energy_ratio_by_wake"]) == {"1", "2"} and row["ann_macs"] > 0
    assert list(row["layer_firing_rates"]) == row["convert"].get(
        "layers", list(row["layer_firing_rates"])
    )
    assert (tmp_path / "a" / "accuracy_vs_energy.png").exists()
    rc = main(["eval", str(run_dir), "--data-dir", str(data_dir), "--out", str(tmp_path / "c"),
               "--T", "1,2", "--no-progress", "--csv", "--activity"])  # fmt: skip
    assert rc == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == [
        "wake_steps",
        "total_steps",
        "accuracy_pct",
        "synops",
        "snn_macs",
        "energy_ratio",
    ]
    assert [float(r[5]) for r in rows[1:]] == pytest.approx(
        [row["energy_ratio_by_wake"]["1"], row["energy_ratio_by_wake"]["2"]]
    )
    rc = main(["eval", str(run_dir), "--data-dir", str(data_dir), "--out", str(tmp_path / "t"),
               "--T", "1,2", "--no-progress", "--activity"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "SNN energy / ANN energy" in out


def test_eval_group_neurons(run_dir, data_dir, tmp_path, capsys):
    report = _eval_json(run_dir, data_dir, tmp_path, "--T", "1,2,4", "--neuron", "gn",
                        "--tau", "4", capsys=capsys)  # fmt: skip
    (row,) = report["rows"]
    assert row["neuron"] == "gn" and row["convert"]["tau"] == 4 and "tau=4" in row["label"]
    # τ = L: the GN network at T = 1 is the quantized ANN itself (methods.md §6 item 21).
    assert row["accuracy_by_wake"]["1"] == row["ann_accuracy"]


def test_eval_consistent_if_with_sleep(run_dir, data_dir, tmp_path, capsys):
    report = _eval_json(run_dir, data_dir, tmp_path, "--T", "1,2,4", "--neuron", "cif",
                        "--sleep", "8", capsys=capsys)  # fmt: skip
    (row,) = report["rows"]
    assert row["neuron"] == "cif" and row["sleep"] == 8
    assert row["total_steps_by_wake"] == {"1": 9, "2": 10, "4": 12}
    assert set(row["accuracy_by_wake"]) == {"1", "2", "4"}
    # T = L wake steps plus enough sleep: each CIF layer settles on the ANN's count, so
    # the SNN classifies like the ANN (allow one image of float rounding at a tie).
    assert abs(row["accuracy_by_wake"]["4"] - row["ann_accuracy"]) <= 0.01
    # The table names the sleep steps next to the method.
    rc = main(["eval", str(run_dir), "--data-dir", str(data_dir), "--out", str(tmp_path),
               "--T", "1,2,4", "--neuron", "cif", "--sleep", "8", "--no-progress"])  # fmt: skip
    assert rc == 0
    assert "| qcfs+cif (T wake + 8 sleep) |" in capsys.readouterr().out


@pytest.mark.skipif(compile_unavailable("cpu") is not None, reason="no C++ compiler")
def test_eval_compile_neurons_gives_the_same_report(run_dir, data_dir, tmp_path, capsys):
    args = ("--T", "1,2,4", "--neuron", "cif", "--sleep", "4")
    eager = _eval_json(run_dir, data_dir, tmp_path / "a", *args, capsys=capsys)
    fused = _eval_json(run_dir, data_dir, tmp_path / "b", *args, "--compile-neurons", capsys=capsys)
    assert fused["rows"][0]["convert"]["compiled"] is True
    assert "compiled" not in eager["rows"][0]["convert"]
    assert fused["rows"][0]["accuracy_by_wake"] == eager["rows"][0]["accuracy_by_wake"]


def test_eval_csv_counts_sleep_steps_of_a_margin_schedule(run_dir, data_dir, tmp_path, capsys):
    # One run: wake 2, sleep 3, wake 2, sleep 3 → records after 1, 2(+3), 3, 4(+3) wake steps.
    rc = main(["eval", str(run_dir), "--data-dir", str(data_dir), "--out", str(tmp_path),
               "--T", "1,2,3,4", "--neuron", "cif", "--sleep", "3", "--margin", "2",
               "--no-progress", "--csv"])  # fmt: skip
    assert rc == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [(int(r[0]), int(r[1])) for r in rows[1:]] == [(1, 1), (2, 5), (3, 6), (4, 10)]
    report = json.loads((tmp_path / "report.json").read_text())
    acc = report["rows"][0]["accuracy_by_wake"]

    assert [float(r[2]) for r in rows[1:]] == pytest.approx(
        [100 * acc[str(t)] for t in (1, 2, 3, 4)]
    )


# ----------------------------------------------------------------------------- errors


def test_missing_dataset_exits_2_and_lists_where_it_looked(tmp_path, monkeypatch, capsys, run_dir):
    _fmnist.isolate_data(monkeypatch, tmp_path)
    env_dir, given = tmp_path / "env-data", tmp_path / "given"
    env_dir.mkdir(), given.mkdir()
    monkeypatch.setenv("ANN2SNN_DATA", str(env_dir))
    out = tmp_path / "never"
    rc = main(_train_args(given, out))
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("ann2snn train: error: Fashion-MNIST not found. Looked in:")
    # --data-dir names the one place to look: no silent fall-back to $ANN2SNN_DATA & co.
    for place in (given, given / "fashion-mnist", given / "FashionMNIST" / "raw"):
        assert f"  - {place}" in err, place
    assert str(env_dir) not in err and "--data-dir" in err
    # Without --data-dir every other place is listed.
    rc = main(_train_args(given, out)[:5] + _train_args(given, out)[7:])
    err = capsys.readouterr().err
    assert rc == 2
    for place in (env_dir, env_dir / "FashionMNIST" / "raw", tmp_path / "no-debian",
                  tmp_path / "xdg-cache" / "ann2snn"):  # fmt: skip
        assert f"  - {place}" in err, place
    assert "torchvision download" in err and "network disabled in tests" in err
    assert "apt-get install dataset-fashion-mnist" in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written
    # eval of a good checkpoint without its data fails the same way.
    assert main(["eval", str(run_dir), "--data-dir", str(given), "--no-progress"]) == 2
    assert "Fashion-MNIST not found" in capsys.readouterr().err


def test_corrupted_checkpoint_exits_2_with_a_clear_message(run_dir, data_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "best.safetensors").write_bytes(b"\x00not a safetensors file")
    proc = cli("eval", str(broken), "--data-dir", str(data_dir), "--no-progress", cwd=tmp_path,
               check_rc=2)  # fmt: skip
    assert proc.stderr.startswith("ann2snn eval: error: ")
    assert (
        str(broken / "best.safetensors") in proc.stderr and "sha256 does not match" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and proc.stdout == ""

    (broken / "best.json").write_text('{"format": "ann2snn-checkpoint", ')  # truncated
    assert main(["eval", str(broken), "--data-dir", str(data_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "best.json: not valid JSON" in err

    assert main(["eval", str(tmp_path / "nowhere.json"), "--no-progress"]) == 2
    assert "nowhere.json: file not found" in capsys.readouterr().err


def test_training_into_an_existing_run_without_resume_fails_clearly(run_dir, data_dir, capsys):
    digest = hashlib.sha256((run_dir / "best.safetensors").read_bytes()).hexdigest()
    rc = main(_train_args(data_dir, run_dir))
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("ann2snn train: error: ")
    assert "already holds a training run" in err and "--resume" in err
    assert "Traceback" not in err
    assert hashlib.sha256((run_dir / "best.safetensors").read_bytes()).hexdigest() == digest


class _Interrupted(Exception):
    pass


def test_resume_continues_an_interrupted_run(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = TrainConfig(model="cnn", dataset="fashion-mnist", data_dir=str(data_dir), epochs=2,
                      batch_size=16, out_dir=str(out), progress=False)  # fmt: skip

    def stop_in_epoch_2(model, epoch, loaders, record):
        if epoch == 2:  # before epoch 2's checkpoint: the run dies after epoch 1
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train(cfg, hooks={"on_epoch_end": stop_in_epoch_2})
    first = load_record(out / "last.json")
    assert first["epoch"] == 1

    args = _train_args(data_dir, out, "--resume")
    args[args.index("--epochs") + 1] = "2"
    # A different recipe cannot resume the run.
    assert main([*args, "--lr", "0.01"]) == 2
    assert "cannot resume with a different recipe (lr: 0.1 → 0.01)" in capsys.readouterr().err

    assert main(args) == 0
    assert "done: 2 epochs" in capsys.readouterr().out
    last = load_record(out / "last.json")
    assert last["epoch"] == 2
    history = last["metrics"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    drop = {"time_s"}
    assert {k: v for k, v in history[0].items() if k not in drop} == {
        k: v for k, v in first["metrics"]["history"][0].items() if k not in drop
    }
    # Resuming a finished run does no more epochs.
    assert main(args) == 0
    assert load_record(out / "last.json")["metrics"]["history"] == history


def test_train_nq_calibrates_sigma_per_layer(data_dir, tmp_path, capsys):
    out = tmp_path / "nq"
    assert main(_train_args(data_dir, out, "--act", "nq", "--nq-steps", "2")) == 0
    record = load_record(out)
    sigma = record["extra"]["sigma"]
    assert set(sigma) == {"features.2", "features.6", "features.10", "classifier.2"}
    assert all(v > 0 for v in sigma.values())  # T_n = 2 ≠ L = 4: no layer is exact
    snn_acc = record["extra"]["snn_val_acc"]
    assert record["metrics"]["history"][0]["select_metric"] == snn_acc


def test_eval_calibrate_records_one_calibration_per_T(run_dir, data_dir, tmp_path, capsys):
    report = _eval_json(run_dir, data_dir, tmp_path / "k", "--T", "1,2", "--calibrate", "potential",
                        "--calib-batches", "2", capsys=capsys)  # fmt: skip
    row = report["rows"][0]
    assert "potential-calibrated" in row["label"]
    cal = row["calibration_by_wake"]
    assert set(cal) == {"1", "2"} and cal["2"]["T"] == 2 and cal["2"]["method"] == "potential"
    assert cal["1"]["images"] > 0 and cal["1"]["layers"]
    # Once, at one T, for every reported step in one run.
    once = _eval_json(run_dir, data_dir, tmp_path / "o", "--T", "1,2", "--calibrate", "bias",
                      "--calib-T", "2", "--calib-batches", "1", capsys=capsys)["rows"][0]  # fmt: skip
    assert once["calibration"]["T"] == 2 and set(once["accuracy_by_wake"]) == {"1", "2"}
    # COS: the pre-simulation steps are in the totals (T + layers·ρ).
    cos = _eval_json(run_dir, data_dir, tmp_path / "c", "--T", "1,2", "--calibrate", "cos",
                     "--cos-rho", "1", capsys=capsys)  # fmt: skip
    presim = cos["rows"][0]["presim_steps"]  # ρ = 1 per layer
    assert presim > 0 and cos["rows"][0]["total_steps_by_wake"] == {
        "1": 1 + presim,
        "2": 2 + presim,
    }
    # auto: the candidate closest to the ANN on the validation split.
    auto = _eval_json(run_dir, data_dir, tmp_path / "a", "--T", "2", "--calibrate", "auto",
                      "--calib-batches", "1", capsys=capsys)["rows"][0]  # fmt: skip
    assert set(auto["calibration"]["candidates"]) == {"potential", "bias"}
    # A user's mistake is one line, naming the allowed methods.
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(run_dir), "--calibrate", "magic"])
    assert exc.value.code == 2
    assert "choose from 'bias', 'potential', 'cos', 'auto', 'offset'" in capsys.readouterr().err


def test_export_writes_nir_onnx_and_torch(run_dir, tmp_path, capsys):
    pytest.importorskip("nir")
    rc = main(["export", str(run_dir), "--format", "nir", "--out", str(tmp_path / "a.nir")])
    assert rc == 0 and (tmp_path / "a.nir").exists()
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "without ann2snn's metadata loses" in captured.err
    back = ann2snn.import_nir(tmp_path / "a.nir")
    assert back.layers and ann2snn.is_binarized(back)
    # A reader's profile: what that reader loses, per layer, and how it loads the file.
    rc = main(["export", str(run_dir), "--format", "nir", "--profile", "sinabs",
               "--out", str(tmp_path / "s.nir")])  # fmt: skip
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if x.startswith("sinabs loses: ")]
    assert rc == 0 and len(lines) == len(back.layers)
    assert all("the initial membrane v(0)" in x and "⌊v/θ⌋ spikes" in x for x in lines)
    assert f"load it with: sinabs.from_nir(nir.read('{tmp_path / 's.nir'}')" in captured.out
    rc = main(["export", str(run_dir), "--format", "torch", "--T", "2", "--binary",
               "--out", str(tmp_path / "a.pt2")])  # fmt: skip
    assert rc == 0 and (tmp_path / "a.pt2").exists()
    # A user's mistakes: one line each.
    rc = main(["export", str(run_dir), "--format", "onnx", "--sleep", "4", "--out", str(tmp_path / "b.onnx")])  # fmt: skip
    assert rc == 2 and "carried by NIR only" in capsys.readouterr().err
    rc = main(["export", str(tmp_path / "nothing"), "--format", "nir", "--out", str(tmp_path / "c.nir")])  # fmt: skip
    assert rc == 2 and "ann2snn export: error:" in capsys.readouterr().err


def test_exports_never_replace_a_run_and_refuse_what_their_format_ignores(run_dir, tmp_path, capsys):  # fmt: skip
    pytest.importorskip("nir")
    weights = (run_dir / "best.safetensors").read_bytes()
    cases = [
        (["--format", "nir", "--out", str(run_dir / "best.safetensors")], "checkpoint file of the run"),
        (["--format", "nir", "--out", str(tmp_path / "missing" / "a.nir")], "does not exist; create it"),
        (["--format", "nir", "--T", "8", "--out", str(tmp_path / "a.nir")], "--T shapes an unrolled"),
        (["--format", "nir", "--time-input", "--out", str(tmp_path / "a.nir")], "--time-input shapes"),
        (["--format", "onnx", "--T", "100000", "--out", str(tmp_path / "a.onnx")], "at most 1024"),
        (["--format", "onnx", "--profile", "sinabs", "--out", str(tmp_path / "a.onnx")], "is a NIR profile"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(["export", str(run_dir), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (run_dir / "best.safetensors").read_bytes() == weights
    out = tmp_path / "net.nir"
    assert main(["export", str(run_dir), "--format", "nir", "--out", str(out)]) == 0
    before = out.read_bytes()
    assert main(["export", str(run_dir), "--format", "nir", "--out", str(out)]) == 2
    assert "pass force=True (CLI: --force)" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--format", "nir", "--out", str(out), "--force"]) == 0
    assert out.read_bytes()[:8] == before[:8] and not list(tmp_path.glob(".*tmp"))


def test_an_interrupted_export_leaves_the_previous_file_whole(run_dir, tmp_path, monkeypatch):
    pytest.importorskip("nir")
    import nir

    out = tmp_path / "net.nir"
    assert main(["export", str(run_dir), "--format", "nir", "--out", str(out)]) == 0
    before = out.read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nir, "write", killed)
    assert main(["export", str(run_dir), "--format", "nir", "--out", str(out), "--force"]) == 130
    assert out.read_bytes() == before and not list(tmp_path.glob(".*tmp"))


def test_eval_into_a_read_only_folder_is_refused_before_simulating(run_dir, data_dir, tmp_path, capsys):  # fmt: skip
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    rc = main(["eval", str(run_dir), "--data-dir", str(data_dir), "--out", str(ro), "--T", "1"])
    assert rc == 2 and "not writable" in capsys.readouterr().err


def test_a_full_disk_during_training_says_what_is_safe_and_resume_finishes(data_dir, tmp_path, capsys, monkeypatch):  # fmt: skip
    import errno as _errno

    import ann2snn.checkpoint as ck

    real_stage, saves = ck.stage, []

    def stage(path, data):
        saves.append(path)
        if len(saves) > 6:  # epoch 1's best, last and resume pairs are written, then: full
            raise OSError(_errno.ENOSPC, "No space left on device", str(path))
        return real_stage(path, data)

    monkeypatch.setattr(ck, "stage", stage)
    out = tmp_path / "run"
    args = _train_args(data_dir, out)
    args[args.index("--epochs") + 1] = "2"
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()  # the run's lines, then one error line
    assert err[0].startswith("training: cnn") and err[1].startswith("epoch 1/2")
    assert err[-1].startswith("ann2snn train: error: No space left on device")
    assert "every complete epoch before this one is saved" in err[-1] and len(err) == 3
    monkeypatch.setattr(ck, "stage", real_stage)
    assert main([*args, "--resume"]) == 0
    assert "done: 2 epochs" in capsys.readouterr().out


def test_resume_reads_the_rest_of_the_recipe_from_the_run(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(data_dir, out)) == 0
    captured = capsys.readouterr()
    assert "done: 1 epoch, val acc " in captured.out
    # --no-progress: no live bar, but the header and one plain line per epoch.
    lines = captured.err.splitlines()
    assert lines[0].startswith("training: cnn") and "1 epoch, cpu" in lines[0]
    assert lines[1].startswith("epoch 1/1  lr ") and "\r" not in captured.err
    # Only what changes: the run's record gives model, dataset, data and recipe.
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("done: 2 epochs, val acc ") and line.rstrip().endswith(str(out))
    assert main(["train", "--epochs", "1", "--out", str(tmp_path / "new")]) == 2
    assert "--model and --dataset are required for a new run" in capsys.readouterr().err


def test_finetune_writes_a_run_that_eval_simulates_and_never_replaces_one(
    run_dir, data_dir, tmp_path, capsys
):
    out = tmp_path / "ft"
    argv = ["finetune", str(run_dir), "--T", "2", "--epochs", "1", "--out", str(out),
            "--data-dir", str(data_dir), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "images at T=2" in printed and f"run: {out}" in printed
    record = load_record(out)
    assert record["finetune"]["T"] == 2 and record["finetune"]["images"] > 0
    assert record["run_id"] != load_record(run_dir)["run_id"]
    source = load_record(run_dir)  # the record the fine-tune started from, by its hash
    assert record["finetune"]["source_record_sha256"] == source["record_sha256"]
    # The saved ANN converts back to the fine-tuned SNN: eval runs it like any run.
    report = _eval_json(out, data_dir, tmp_path / "e", "--T", "1,2", capsys=capsys)
    assert set(report["rows"][0]["accuracy_by_wake"]) == {"1", "2"}
    before = (out / "best.safetensors").read_bytes()
    assert main(argv) == 2  # never over a run's checkpoints
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "best.safetensors").read_bytes() == before
