"""`ann2snn.finetune`: training the converted SNN through its T steps."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_vgg
from torch import nn

import ann2snn
from ann2snn import QCFS, convert, finetune, run
from ann2snn.training import FinetuneLog


def _task(n: int = 64, seed: int = 0):
    """Images of make_vgg's shape whose label is the brightest of 5 quadrant-like blocks."""
    x = images(n, seed=seed)
    y = x.mean(dim=(1, 2)).reshape(n, -1)[:, :5].argmax(1) % 5
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def test_finetune_lowers_the_training_loss_and_keeps_its_input():
    torch.manual_seed(0)
    snn = convert(make_vgg(), "if")
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    data = _task()
    log = FinetuneLog(2)
    tuned = finetune(snn, data, T=2, epochs=6, lr=0.05, log=log)
    assert len(log.losses) == 6 * len(data) and log.images == 6 * 64
    first, last = sum(log.losses[:4]) / 4, sum(log.losses[-4:]) / 4
    assert last < first
    for k, v in snn.state_dict().items():  # the input network is unchanged
        assert torch.equal(v, before[k]), k
    # Weights and thresholds moved; the result is an ordinary IF network.
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
    assert {type(n).__name__ for _, n in tuned.spiking_layers()} == {"IFNeuron"}
    assert tuned.config["finetune"]["T"] == 2
    assert all(not p.requires_grad for p in tuned.parameters())


def test_finetuned_spikes_are_binary_and_it_binarizes_and_round_trips_nir(tmp_path):
    pytest.importorskip("nir")
    torch.manual_seed(1)
    tuned = finetune(convert(make_vgg(), "if"), _task(), T=2, epochs=1, lr=0.05)
    x = images(8, seed=5)
    deploy = ann2snn.binarize(tuned, x)
    seen = []
    hooks = [n.register_forward_hook(lambda m, i, o: seen.append(o))
             for _, n in deploy.spiking_layers()]  # fmt: skip
    out = run(deploy, x, T=2)
    for h in hooks:
        h.remove()
    assert all(set(torch.unique(o).tolist()) <= {0.0, 1.0} for o in seen)
    torch.testing.assert_close(out, run(tuned, x, T=2))
    ann2snn.export_nir(tuned, tmp_path / "t.nir", x)
    back = ann2snn.import_nir(tmp_path / "t.nir")
    torch.testing.assert_close(run(back, x, T=2), run(tuned, x, T=2))


def test_finetune_refuses_what_it_cannot_train():
    model = nn.Sequential(nn.Linear(4, 8), QCFS(4, init_threshold=1.0), nn.Linear(8, 2)).eval()
    data = [(torch.rand(8, 4), torch.randint(0, 2, (8,)))]
    with pytest.raises(ValueError, match="trains IF neurons .* GroupNeuron"):
        finetune(convert(model, "gn", tau=4), data, T=1)
    with pytest.raises(TypeError, match="SpikingNetwork"):
        finetune(model, data, T=1)
    with pytest.raises(ValueError, match="epochs must be a positive number"):
        finetune(convert(model, "if"), data, T=1, epochs=0)
    assert ann2snn.finetune is finetune


def test_finetune_takes_one_batch_and_residual_networks_and_maps_back_to_its_ann():
    from conftest import make_resnet

    from ann2snn.training import to_ann

    torch.manual_seed(2)
    model = make_resnet()
    x, y = images(16), torch.randint(0, 5, (16,))
    tuned = finetune(convert(model, "if"), (x, y), T=2, epochs=2, lr=0.01)
    assert tuned.config["finetune"]["images"] == 32
    # The ANN with the SNN's weights and λ = θ converts back to the same SNN, exactly.
    back = convert(to_ann(tuned, model), "if")
    assert torch.equal(run(back, x, T=2), run(tuned, x, T=2))


def test_a_log_passed_twice_counts_both_runs_and_each_run_trains_in_full():
    snn = convert(make_vgg(), "if")
    data, log = _task(), FinetuneLog(1)
    finetune(snn, data, T=1, epochs=1, log=log)
    again = finetune(snn, data, T=1, epochs=1, log=log)
    assert len(log.losses) == 2 * len(data) and log.images == 2 * 64
    assert again.config["finetune"]["images"] == 64  # this run's images
