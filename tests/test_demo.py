"""The end-to-end demo on a tiny generated Fashion-MNIST: every method, one table."""

from __future__ import annotations

import contextlib
import io
import json

import _fmnist
import pytest
import torch

from ann2snn.demo import DemoConfig, run_demo
from ann2snn.evaluation import report_steps

LABELS = ("QCFS+IF", "QCFS+GN", "NQ+IF", "CASC")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of the demo (1 epoch per method, T = 4, 4 sleep steps): (report, out, stdout)."""
    tmp = tmp_path_factory.mktemp("demo")
    data_dir = _fmnist.write_fashion_mnist(tmp / "fmnist", n_train=300, n_test=100)
    out = tmp / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny CNN is faster on one thread (much faster on a busy box)
    mp = pytest.MonkeyPatch()
    try:
        _fmnist.isolate_data(mp, tmp)
        cfg = DemoConfig(out_dir=str(out), data_dir=str(data_dir), epochs=1, T=4, casc_sleep=4,
                         batch_size=16, device="cpu", progress=False)  # fmt: skip
        stdout = io.StringIO()  # capsys is function-scoped; this fixture is not
        with contextlib.redirect_stdout(stdout):
            report = run_demo(cfg)
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return report, out, stdout.getvalue()


def _row(report, prefix):
    (row,) = [r for r in report["rows"] if r["label"].startswith(prefix)]
    return row


def test_steps_are_powers_of_two_up_to_T():
    assert report_steps(1) == [1]
    assert report_steps(4) == [1, 2, 4]
    assert report_steps(16) == [1, 2, 4, 8, 16]
    assert report_steps(6) == [1, 2, 4, 6]


def test_demo_has_a_row_per_method_and_prints_the_table(demo):
    report, out, stdout = demo
    assert [r["label"].split(" ")[0] for r in report["rows"]] == list(LABELS)
    assert report["steps"] == [1, 2, 4]
    table = report["table"].splitlines()
    assert table[0] == "| method | ANN | T=1 | T=2 | T=4 |"
    assert len(table) == 2 + len(LABELS)
    for line, label in zip(table[2:], LABELS):
        assert line.startswith(f"| {label}")
    assert "(T wake + 4 sleep)" in table[-1]  # CASC's latency is quoted with its sleep steps
    assert report["table"] in stdout
    for row in report["rows"]:
        assert 0 <= row["ann_accuracy"] <= 1
        assert {"1", "2", "4"} <= set(row["accuracy_by_wake"])
        assert all(0 <= a <= 1 for a in row["accuracy_by_wake"].values())
        cells = next(li for li in table if li.startswith(f"| {row['label']}")).split(" | ")
        assert cells[1] == f"{100 * row['ann_accuracy']:.2f}"


def test_demo_writes_report_and_plot(demo):
    report, out, stdout = demo
    saved = json.loads((out / "report.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"], default=str))
    assert saved["settings"]["T"] == 4 and saved["settings"]["casc_sleep"] == 4
    assert {"torch", "python", "ann2snn"} <= set(saved["environment"])
    assert set(saved["timings"]) >= {"train_qcfs_s", "train_nq_s", "train_casc_s", "total_s"}
    assert (out / "accuracy_vs_T.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"report: {out / 'report.json'}" in stdout
    for name in ("qcfs", "nq", "casc"):  # one run folder per trained ANN
        assert (out / name / "best.json").is_file()


def test_gn_at_one_step_equals_the_qcfs_ann(demo):
    report, _, _ = demo
    gn, qcfs = _row(report, "QCFS+GN"), _row(report, "QCFS+IF")
    assert gn["convert"]["tau"] == 4
    # τ = L: the group-neuron network at T = 1 *is* the quantized ANN (methods.md §6 item 21).
    assert gn["accuracy_by_wake"]["1"] == gn["ann_accuracy"] == qcfs["ann_accuracy"]
    # The images are class-dependent, so one epoch learns them well beyond chance (10 %).
    assert qcfs["ann_accuracy"] > 0.3


def test_nq_row_records_sigma_and_matches_qcfs_after_one_epoch(demo):
    report, _, _ = demo
    nq, qcfs = _row(report, "NQ+IF"), _row(report, "QCFS+IF")
    sigma = nq["sigma"]
    assert set(sigma) == {"features.2", "features.6", "features.10", "classifier.2"}
    # The first IF layer sees a constant input, and T_n = 4 = L: it is (nearly) exact,
    # while the later layers inherit the unevenness of their spike inputs.
    rest = [v for k, v in sigma.items() if k != "features.2"]
    assert all(v > 0 for v in rest) and sigma["features.2"] < 0.5 * min(rest)
    # σ = 0 throughout epoch 1, so a one-epoch NQ run is the QCFS run bit for bit.
    assert nq["ann_accuracy"] == qcfs["ann_accuracy"]
    assert nq["accuracy_by_wake"] == qcfs["accuracy_by_wake"]


def test_casc_row_counts_sleep_steps(demo):
    report, _, _ = demo
    casc = _row(report, "CASC")
    assert casc["neuron"] == "cif" and casc["sleep"] == 4
    assert casc["total_steps_by_wake"] == {"1": 5, "2": 6, "4": 8}
    assert casc["total_steps"] == [5, 6, 8]


def test_demo_config_validates():
    with pytest.raises(ValueError, match="unknown classification demo method"):
        DemoConfig(methods=("qcfs", "snn"))
    with pytest.raises(ValueError, match=r"unknown detection demo method\(s\) \['nq'\]"):
        DemoConfig(task="detection", methods=("qcfs", "nq"))
    assert DemoConfig(task="detection").methods == ("qcfs", "gn", "casc")
    assert DemoConfig().methods == ("qcfs", "gn", "nq", "casc")
    with pytest.raises(ValueError, match="task must be"):
        DemoConfig(task="segmentation")
    with pytest.raises(ValueError, match="T and epochs must be >= 1"):
        DemoConfig(T=0)


def test_demo_prints_energy_per_method_and_writes_the_cost_plots(demo):
    report, out, stdout = demo
    cost = report["cost_table"].splitlines()
    assert cost[0].startswith("SNN energy / ANN energy")
    assert cost[1] == "| method | ANN MACs | T=1 | T=2 | T=4 |"
    assert len(cost) == 3 + len(LABELS) and report["cost_table"] in stdout
    for r in report["rows"]:
        assert {"1", "2", "4"} <= set(r["energy_ratio_by_wake"])  # every T of the run
        # The first layer's analog MACs alone grow with T; SynOps never decrease.
        ops = [r["synops_by_wake"][k] for k in ("1", "2", "4")]
        assert ops == sorted(ops) and r["ann_macs"] > 0
    assert (out / "accuracy_vs_energy.png").stat().st_size > 0
    assert (out / "firing_rates.png").stat().st_size > 0
