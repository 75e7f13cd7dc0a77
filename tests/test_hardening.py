"""Bad input gets a named error and nothing is silently wrong: one test per case found
by trying the library as a new user would, a table of CLI user errors (one line, exit
code 2, no traceback), and property-based tests over the public API's argument ranges."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from pathlib import Path

import _fmnist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import ann2snn
from ann2snn import QCFS, ConversionError, check, convert, run, simulate
from ann2snn.cli import main


def qcfs_net(bn: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), bn or nn.BatchNorm2d(4), QCFS(4, 1.0), nn.Flatten(),
        nn.Linear(4 * 16, 3),
    ).eval()  # fmt: skip


# ----------------------------------------------------------------------------- silent cases


def test_a_network_with_no_activation_is_refused_not_converted_to_zero_neurons():
    with pytest.raises(ConversionError, match="no activation to convert"):
        convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(2)))


def test_data_dependent_control_flow_is_not_traceable_not_supported():
    class Gate(nn.Module):
        def forward(self, x):
            return torch.relu(x) if x.mean() > 0 else x

    report = check(nn.Sequential(nn.Linear(2, 2), Gate()))
    assert not report.ok and not report.traced and "not traceable" in str(report)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_are_refused_not_predicted(bad):
    snn = convert(qcfs_net())
    x = torch.randn(4, 1, 4, 4)
    x[2, 0, 1, 1] = bad
    with pytest.raises(ValueError, match=r"simulate: batch 0: the input holds NaN/inf"):
        simulate(snn, (x, torch.zeros(4, dtype=torch.long)), T=2, progress=False)
    with pytest.raises(ValueError, match="run: the input holds 1 NaN/inf"):
        run(snn, x, T=2)


def test_empty_data_is_an_error_not_accuracy_zero():
    snn = convert(qcfs_net())
    with pytest.raises(ValueError, match="data yielded no batches"):
        simulate(snn, [], T=4, progress=False)


def test_run_on_a_train_mode_snn_updates_no_statistics_and_keeps_the_mode():
    snn = convert(qcfs_net())  # BatchNorm kept (not folded) for IF neurons
    snn.train()
    bn = next(m for m in snn.modules() if isinstance(m, nn.BatchNorm2d))
    before = (bn.running_mean.clone(), bn.num_batches_tracked.clone())
    run(snn, torch.randn(8, 1, 4, 4) * 3 + 1, T=3)
    simulate(snn, (torch.randn(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)), T=2, progress=False)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(
        bn.num_batches_tracked, before[1]
    )
    assert snn.training and bn.training  # the caller's mode is given back
    ann = qcfs_net().train()
    ann2snn.compare(ann, convert(ann), torch.randn(2, 1, 4, 4), T=2)
    assert ann.training


def test_v_init_nan_and_tau_zero_are_refused():
    with pytest.raises(ValueError, match="v_init must be a finite number, got nan"):
        convert(qcfs_net(), v_init=float("nan"))
    with pytest.raises(ValueError, match="tau must be an integer >= 1, got 0"):
        convert(qcfs_net(), "gn", tau=0)  # used to become τ = L silently


def test_batchnorm_without_running_statistics_is_unsupported():
    model = qcfs_net(nn.BatchNorm2d(4, track_running_stats=False))
    report = check(model)
    assert [o.op for o in report.unsupported] == ["BatchNorm2d"]
    with pytest.raises(ConversionError, match="depend on the rest of its batch"):
        convert(model)


@pytest.mark.parametrize("T", [2.5, "4", 0, -1, True, None])
def test_T_of_the_wrong_type_or_range_is_named(T):
    snn = convert(qcfs_net())
    with pytest.raises(ValueError, match=r"T \(wake steps\) must be an integer >= 1, got"):
        run(snn, torch.randn(2, 1, 4, 4), T=T)


def test_shape_errors_speak_of_the_users_shapes():
    snn = convert(qcfs_net())
    with pytest.raises(RuntimeError, match=r"input of shape \[T=4, B=2, 1, 5, 5\]") as info:
        run(snn, torch.randn(2, 1, 5, 5), T=4)  # the Linear expects 4×4 images
    assert "folded" in str(info.value)


def test_an_unreadable_cifar_pickle_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"\x80\x04 this is not a pickle")
    with pytest.raises(ValueError, match=r"data_batch_1: cannot read this CIFAR batch"):
        ann2snn.create_loaders("cifar10", data_dir=tmp_path)
    (folder / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="not a CIFAR batch"):
        ann2snn.create_loaders("cifar10", data_dir=tmp_path)


# ----------------------------------------------------------------------------- CLI user errors


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory):
    """A dataset and one trained run for the CLI error table."""
    root = tmp_path_factory.mktemp("hard")
    data_dir = _fmnist.write_fashion_mnist(root / "fm", n_train=60, n_test=20)
    run_dir = root / "run"
    assert main(["train", "--model", "cnn", "--dataset", "fashion-mnist", "--data-dir",
                 str(data_dir), "--epochs", "1", "--batch-size", "16", "--out", str(run_dir),
                 "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    return {"DATA": str(data_dir), "RUN": str(run_dir), "ROOT": str(root)}


CLI_ERRORS = [
    # (arguments, a phrase the one line must contain)
    (["eval", "RUN", "--T-max", "-1"], "--T-max: must be >= 1, got -1"),
    (["eval", "RUN", "--T", "1.5"], "--T takes integers"),
    (["eval", "RUN", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    (["eval", "RUN", "--limit-test", "0"], "--limit-test: must be >= 1, got 0"),
    (["eval", "RUN", "--neuron", "lif"], "invalid choice: 'lif'"),
    (["eval", "RUN", "--tau", "0"], "--tau: must be >= 1"),
    (["eval", "ROOT/none", "--data-dir", "DATA"], "file not found"),
    (["eval", "RUN", "--data-dir", "ROOT/empty"], "Fashion-MNIST not found"),
    (["train", "--model", "cnn", "--dataset", "fashion-mnist", "--epochs", "0"], "--epochs: must be >= 1"),
    (["train", "--model", "cnn", "--dataset", "fashion-mnist", "--lr", "nan"], "--lr: must be a finite number > 0"),
    (["train", "--model", "cnn", "--dataset", "mnist", "--data-dir", "DATA", "--out", "ROOT/x1"], "mnist"),
    (["train", "--model", "nosuchnet", "--dataset", "fashion-mnist", "--data-dir", "DATA", "--out", "ROOT/x2"], "unknown model 'nosuchnet'"),
    (["train", "--model", "torchvision:resnet81", "--dataset", "fashion-mnist", "--data-dir", "DATA", "--out", "ROOT/x3"], "did you mean resnet18"),
    (["train", "--model", "cnn", "--dataset", "fashion-mnist", "--data-dir", "DATA", "--out", "RUN"], "already holds a training run"),
    (["train", "--model", "cnn", "--dataset", "fashion-mnist", "--init", "ROOT/none.pth"], "init must be a weights file"),
    (["check", "vgg16", "--act", "gelu"], "invalid choice: 'gelu'"),
]  # fmt: skip
if not torch.cuda.is_available():
    CLI_ERRORS.append(
        (["eval", "RUN", "--device", "cuda", "--data-dir", "DATA"], "CUDA is not available")
    )


@pytest.mark.parametrize("args, phrase", CLI_ERRORS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")  # fmt: skip
def test_every_cli_user_error_is_one_line_and_exit_2(cli_world, args, phrase, capsys):
    # In-process (what the console script runs, without a second of start-up per case);
    # test_debug_shows_the_traceback and test_structure run the real entry points.
    args = [a.replace("RUN", cli_world["RUN"]).replace("DATA", cli_world["DATA"])
             .replace("ROOT", cli_world["ROOT"]) for a in args]  # fmt: skip
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [li for li in err.splitlines() if li.strip()]
    error_lines = [li for li in lines if "error:" in li]
    assert len(error_lines) == 1 and phrase in err, err


def test_debug_shows_the_traceback(cli_world):
    proc = subprocess.run([sys.executable, "-m", "ann2snn.cli", "--debug", "eval",
                           str(Path(cli_world["ROOT"]) / "none")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# ----------------------------------------------------------------------------- properties

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
anything = st.one_of(
    st.integers(-3, 9), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=3), st.none(),
)  # fmt: skip


@SETTINGS
@given(T=anything, sleep=anything)
def test_schedule_accepts_exactly_the_valid_steps(T, sleep):
    valid = (
        isinstance(T, int) and not isinstance(T, bool) and T >= 1
        and isinstance(sleep, int) and not isinstance(sleep, bool) and sleep >= 0
    )  # fmt: skip
    if valid:
        s = ann2snn.Schedule(T, sleep)
        assert s.total_steps == T + sleep
    else:
        with pytest.raises(ValueError, match=r"(T \(wake steps\)|sleep) must be an integer"):
            ann2snn.Schedule(T, sleep)


@SETTINGS
@given(threshold=anything, v_init=anything)
def test_neuron_arguments_are_named_when_refused(threshold, v_init):
    try:
        n = ann2snn.IFNeuron(threshold, v_init=v_init)
    except ValueError as e:
        assert "threshold" in str(e) or "v_init" in str(e)
    except TypeError:
        assert isinstance(threshold, str) or threshold is None  # torch.as_tensor refuses
    else:
        assert float(n.threshold) > 0 and math.isfinite(n.v_init)


@SETTINGS
@given(levels=anything, act=st.sampled_from(["qcfs", "nq", "clipq", "relu", "gelu"]),
       pool=st.sampled_from(["avg", "max", "sum"]))  # fmt: skip
def test_prepare_refuses_bad_arguments_by_name(levels, act, pool):
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    ok_levels = isinstance(levels, int) and not isinstance(levels, bool) and levels >= 1
    if ok_levels and act != "gelu" and pool != "sum":
        p = ann2snn.prepare(model, act, levels, pool)
        assert p(torch.randn(2, 3)).shape == (2, 2)
    else:
        with pytest.raises(ValueError, match="(levels|act|pool)"):
            ann2snn.prepare(model, act, levels, pool)


@SETTINGS
@given(tau=anything, T=st.integers(1, 4))
def test_group_neuron_tau_is_checked_and_exact_when_tau_is_L(tau, T):
    model = qcfs_net()
    if isinstance(tau, int) and not isinstance(tau, bool) and tau >= 1:
        snn = convert(model, "gn", tau=tau)
        out = run(snn, torch.randn(2, 1, 4, 4), T=T)
        assert torch.isfinite(out).all()
    elif tau is None:
        assert convert(model, "gn", tau=tau).layers  # None: the ANN's L
    else:
        with pytest.raises((ValueError, TypeError), match="tau"):
            convert(model, "gn", tau=tau)


def test_non_finite_outputs_are_refused_not_predicted():
    model = qcfs_net()
    with torch.no_grad():
        model[4].weight[0, 0] = float("inf")  # a damaged weight
    snn = convert(model)
    x = torch.rand(4, 1, 4, 4) + 1.0
    with pytest.raises(
        ValueError, match="output holds NaN/inf values although the input is finite"
    ):
        simulate(snn, (x, torch.zeros(4, dtype=torch.long)), T=4, progress=False)


def test_a_non_finite_threshold_or_dtype_is_named():
    with pytest.raises(ValueError, match="threshold must be a positive finite scalar"):
        ann2snn.IFNeuron(float("inf"))
    with pytest.raises(ValueError, match="dtype must be"):
        simulate(convert(qcfs_net()), (torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)),
                 T=1, progress=False, dtype=torch.int8)  # fmt: skip


def test_ctrl_c_in_train_is_one_line_that_says_how_to_resume(monkeypatch, capsys):
    import ann2snn.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_train", interrupted)
    rc = cli.main(["train", "--model", "cnn", "--dataset", "fashion-mnist"])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--resume" in err
