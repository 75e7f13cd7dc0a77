"""A run as a library object: the typed record (every fallback of old records), the method
table, and evaluating or exporting a run without the CLI."""

from __future__ import annotations

import pytest
import torch
from _fmnist import write_fashion_mnist
from hypothesis import given
from hypothesis import strategies as st

import ann2snn
from ann2snn.checkpoint import RunRecord
from ann2snn.methods import METHODS, epoch_hook, get_method, needs_threshold_data, neuron_options
from ann2snn.runs import evaluate_run, example_input
from ann2snn.training import TrainConfig, train

names = st.text(st.characters(categories=("Ll", "Nd")), min_size=1, max_size=8)


@given(dataset=names, act=names, levels=st.integers(1, 16), where=st.sampled_from(["top", "recipe", "both"]))  # fmt: skip
def test_record_fields_read_the_same_from_every_layout(dataset, act, levels, where):
    # Records written by older versions keep facts at the top, newer ones in recipe and
    # model_kwargs; the typed record reads both, the newer place first.
    raw = {"model": "cnn", "model_kwargs": {}}
    if where in ("top", "both"):
        raw |= {"dataset": "old-" + dataset if where == "both" else dataset, "activation": act,
                "levels": levels}  # fmt: skip
    if where in ("recipe", "both"):
        raw |= {"recipe": {"dataset": dataset}}
        raw["model_kwargs"] = {"act": act, "levels": levels, "image_size": 28, "in_channels": 1}
    record = RunRecord(raw)
    assert (record.dataset, record.act, record.levels) == (dataset, act, levels)
    assert record.task == "classification"
    assert record.input_shape == ((1, 28, 28) if where != "top" else None)
    assert "task" not in record.summary() and record.summary()["model"] == "cnn"
    assert RunRecord(raw | {"task": "detection"}).summary()["task"] == "detection"


def test_record_of_a_plain_module_is_refused_by_name():
    with pytest.raises(ValueError, match="Linear carries no run record"):
        RunRecord.of(torch.nn.Linear(2, 2))


def test_method_table_rows():
    assert list(METHODS) == ["qcfs", "gn", "nq", "casc"]
    assert {m.act for m in METHODS.values()} <= set(ann2snn.list_activations())
    assert {m.neuron for m in METHODS.values()} <= set(ann2snn.list_neurons())
    assert get_method("gn").label(8) == "QCFS+GN (tau=8)"
    assert get_method("casc").label() == "CASC (Q=8)" and get_method("casc").run_per_T
    with pytest.raises(ValueError, match="unknown method 'snn'; choose from qcfs, gn, nq, casc"):
        get_method("snn")


@given(levels=st.integers(1, 32) | st.none(), tau=st.integers(1, 32) | st.none())
def test_group_neurons_take_tau_from_the_levels_unless_given(levels, tau):
    assert neuron_options("gn", levels, tau) == (
        {"tau": tau} if tau else {"tau": levels} if levels else {}
    )
    assert neuron_options("if", levels) == {} and neuron_options("cif", levels) == {}


def test_per_activation_knowledge():
    assert needs_threshold_data("relu") and not needs_threshold_data("qcfs")
    assert epoch_hook("qcfs") is None and callable(epoch_hook("nq", log=None))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = write_fashion_mnist(root / "fmnist", n_train=200, n_test=64)
    cfg = TrainConfig(model="cnn", dataset="fashion-mnist", data_dir=str(data), epochs=1,
                      batch_size=32, out_dir=str(root / "run"), progress=False, device="cpu")  # fmt: skip
    train(cfg)
    return root / "run", data


def test_evaluate_run_is_the_cli_eval_as_a_function(tiny_run):
    run, data = tiny_run
    report = evaluate_run(run, "gn", [2, 1], data_dir=str(data), progress=False, device="cpu")
    (row,) = report["rows"]
    assert report["steps"] == [1, 2] and report["title"] == "cnn on fashion-mnist: qcfs+gn (tau=4)"
    assert row["convert"]["neuron"] == "gn" and row["images"] == 64
    # GN with τ = L is the ANN at T = 1 (the run's own accuracy, from the same test split).
    assert row["accuracy_by_wake"]["1"] == pytest.approx(row["ann_accuracy"], abs=1 / 64)
    assert report["record"]["epoch"] == 1 and "environment" in report


def test_evaluate_run_calibrates_on_the_validation_split_when_asked(tiny_run):
    run, data = tiny_run
    report = evaluate_run(run, "if", [1], data_dir=str(data), calibrate="bias", calib_batches=1,
                          progress=False, device="cpu")  # fmt: skip
    assert "bias-calibrated" in report["rows"][0]["label"]


def test_example_input_has_the_run_shape(tiny_run):
    run, _ = tiny_run
    record = RunRecord.of(ann2snn.load(run))
    assert example_input(record).shape == (2, 1, 28, 28)
