"""Activity and energy: spikes, SynOps, MACs and energy counted by hand on small networks,
cross-checked against SpikingJelly's counter, and reported by simulate / eval."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn import QCFS, ClipQuant, activity, convert, simulate
from ann2snn.simulation.fanout import fanout_maps, mac_counts


def _conv(cin, cout, k, weight, bias=None, **kw) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, bias=bias is not None, **kw)
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).expand_as(conv.weight))
        if bias is not None:
            conv.bias.fill_(bias)
    return conv


def hand_net() -> nn.Module:
    """x [B, 1, 4, 4] → 1×1 conv (channel 0: 0.6·x, channel 1: 0.3·x) → IF θ = 1 →
    3×3 conv, stride 2, padding 1, groups 2, 4 outputs (weights 0, bias 0.5) → IF θ = 1 →
    flatten (16) → Linear(16, 3)."""
    conv1 = _conv(1, 2, 1, torch.tensor([0.6, 0.3]).view(2, 1, 1, 1))
    conv2 = _conv(2, 4, 3, 0.0, bias=0.5, stride=2, padding=1, groups=2)
    return nn.Sequential(conv1, QCFS(4, 1.0), conv2, QCFS(4, 1.0), nn.Flatten(),
                         nn.Linear(16, 3)).eval()  # fmt: skip


def test_conv_fanout_with_padding_stride_and_groups_is_exact():
    snn = convert(hand_net(), "if", v_init=0.0)
    fan = fanout_maps(snn, torch.ones(1, 1, 4, 4))
    # Kernel rows {-1,0,1} and {1,2,3} of a 4-row input: row r is read by 1, 2, 1, 1 taps.
    per_row = torch.tensor([1.0, 2.0, 1.0, 1.0])
    expected = 2 * torch.outer(per_row, per_row)  # out_channels/groups = 4/2 outputs per tap
    assert fan["1"].shape == (2, 4, 4)
    torch.testing.assert_close(fan["1"][0], expected)
    torch.testing.assert_close(fan["1"][1], expected)
    torch.testing.assert_close(fan["3"], torch.full((4, 2, 2), 3.0))  # Linear(16, 3)
    # MACs: conv1 32·1, conv2 16 outputs·(2/2·9), linear 16·3; conv1 reads the image.
    assert mac_counts(snn, torch.ones(1, 1, 4, 4)) == (32 + 144 + 48, 32)


def test_if_spikes_synops_macs_and_energy_by_hand():
    snn = convert(hand_net(), "if", v_init=0.0)
    rep = activity(snn, torch.ones(2, 1, 4, 4), T=4)
    first, second = rep.layers
    # Channel 0 charges 0.6 per step: spikes at t = 2, 4; channel 1 (0.3): at t = 4.
    assert first.events == [0.0, 16.0, 0.0, 32.0] and first.neurons == 32
    assert first.synops == [0.0, 50.0, 0.0, 100.0]  # Σ fan-out of one channel: 2·5·5 = 50
    # Second layer: bias 0.5 per step → spikes at t = 2, 4 in all 16 neurons, 3 synapses each.
    assert second.events == [0.0, 16.0, 0.0, 16.0] and second.synops == [0.0, 48.0, 0.0, 48.0]
    assert rep.synops == [0.0, 98.0, 98.0, 246.0]
    assert rep.ann_macs == 224 and rep.snn_macs == [32.0, 64.0, 96.0, 128.0]
    assert first.firing_rate() == pytest.approx([0.0, 0.25, 1 / 6, 0.375])
    e = rep.energy()
    assert e["ann"] == pytest.approx(4.6e-12 * 224)
    assert e["ratio"][-1] == pytest.approx((0.9e-12 * 246 + 4.6e-12 * 128) / (4.6e-12 * 224))
    e2 = rep.energy(e_mac=1.0, e_ac=1.0)
    assert e2["ratio"][1] == pytest.approx((98 + 64) / 224)
    assert rep.images == 2 and rep.by_wake_steps()["4"]["synops"] == 246.0
    with pytest.raises(ValueError):
        rep.energy(e_mac=0)
    json.dumps(rep.to_dict())  # JSON-able


def test_group_neuron_emission_of_k_quanta_is_k_events():
    snn = convert(hand_net(), "gn", tau=4, v_init=0.0)
    rep = activity(snn, torch.ones(1, 1, 4, 4), T=4)
    # Channel 0, input 0.6 per step, quantum θ/τ = 0.25 (v: .6→.1, .7→.2, .8→.05, .65→.15)
    # emits 2, 2, 3, 2 quanta; channel 1 (0.3): 1, 1, 1, 1 (v: .3→.05, .35→.1, .4→.15, .45→.2).
    assert rep.layers[0].events == [16 * 3.0, 16 * 3.0, 16 * 4.0, 16 * 3.0]
    assert rep.layers[0].synops == [50 * 3.0, 50 * 3.0, 50 * 4.0, 50 * 3.0]


def test_consistent_if_negative_spike_is_one_event_and_sleep_steps_count():
    """First CIF layer: input 0.6 per step, fires at t = 2. Second: bias 1 and weight −1.5
    from the first: +1 at t = 1 (input 1), then input −0.5 at t = 2 retracts it (−1)."""
    conv1 = _conv(1, 1, 1, 0.6)
    conv2 = _conv(1, 1, 1, -1.5, bias=1.0)
    model = nn.Sequential(conv1, ClipQuant(8), conv2, ClipQuant(8), nn.Flatten(),
                          nn.Linear(4, 2)).eval()  # fmt: skip
    snn = convert(model, "cif", fold_batchnorm=False)
    rep = activity(snn, torch.ones(1, 1, 2, 2), T=2, sleep=3)
    assert rep.wake_steps == [1, 2, 2, 2, 2] and rep.total_steps == [1, 2, 3, 4, 5]
    first, second = rep.layers
    assert first.events == [0.0, 4.0, 0.0, 0.0, 0.0]
    emitted = []  # the second layer's output per step, recorded by a hook of our own
    h = snn.body.get_submodule(second.name).register_forward_hook(
        lambda m, i, o: emitted.append(o.detach().clone())
    )
    ann2snn.run(snn, torch.ones(1, 1, 2, 2), T=2, sleep=3)
    h.remove()
    per_step = torch.cat(emitted).view(5, -1)
    assert per_step[:, 0].tolist() == [1.0, -1.0, 0.0, 0.0, 0.0]  # +1, then retracted
    assert second.events == per_step.abs().sum(1).tolist()  # each ±1 spike is one event
    assert len(rep.synops) == 5  # sleep steps are counted like wake steps


def test_fanout_follows_pooling_and_residual_adds():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _conv(1, 1, 1, 1.0)
            self.a, self.b = QCFS(4, 1.0), QCFS(4, 1.0)
            self.pool = nn.AvgPool2d(3, stride=1, padding=1)
            self.fc = nn.Linear(16, 5)

        def forward(self, x):  # x: [B, 1, 4, 4]
            y = self.a(self.conv(x))
            z = self.b(y)
            return self.fc(self.pool(y + z).flatten(1))

    snn = convert(Net().eval(), "if")
    fan = fanout_maps(snn, torch.ones(1, 1, 4, 4))
    # A 3×3/1/1 window set on 4×4: corners lie in 4 windows, edges in 6, inside in 9;
    # each window feeds Linear(16, 5). Both branches of the add get the same fan-out;
    # `a` also feeds `b` directly (one synapse per element).
    count = torch.tensor([2.0, 3.0, 3.0, 2.0])
    windows = torch.outer(count, count)
    torch.testing.assert_close(fan["b"][0], 5 * windows)
    torch.testing.assert_close(fan["a"][0], 5 * windows + 1)


def test_synops_equal_spikingjellys_counter_on_a_binary_if_network():
    op_counter = pytest.importorskip("spikingjelly.activation_based.op_counter")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), QCFS(4, 1.0), nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
        QCFS(4, 1.0), nn.Conv2d(6, 8, 3, padding=1), QCFS(4, 1.0), nn.Flatten(), nn.Linear(8 * 16, 10),
    ).eval()  # fmt: skip
    snn = convert(model, "if", v_init=0.0)  # θ = 1: every spike is exactly 1.0
    x = torch.rand(3, 1, 8, 8) * 2
    rep = activity(snn, x, T=6)
    counter = op_counter.SynOpCounter()
    with op_counter.DispatchCounterMode([counter]):
        ann2snn.run(snn, x, T=6)
    assert rep.synops[-1] > 0
    assert rep.synops[-1] * 3 == counter.get_total()


def test_simulate_with_activity_and_recording_off_leaves_no_hooks():
    torch.manual_seed(1)
    model = ann2snn.create_model("cnn", num_classes=10, in_channels=1, image_size=28).eval()
    snn = convert(model, "if")
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    res = simulate(snn, (x, y), T=4, progress=False, activity=True)
    assert res.activity is not None and len(res.activity.synops) == 4
    assert res.to_dict()["activity"]["by_wake"]["4"]["synops"] == res.activity.synops[-1]
    assert all(not n._forward_hooks for _, n in snn.spiking_layers())
    plain = simulate(snn, (x, y), T=4, progress=False)
    assert plain.activity is None and plain.accuracy == res.accuracy


def test_a_monitor_leaves_no_hooks_behind_even_when_the_data_fails():
    torch.manual_seed(2)
    snn = convert(ann2snn.create_model("cnn", num_classes=10, in_channels=1, image_size=28).eval())

    def batches():
        yield torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        simulate(snn, batches(), T=2, progress=False, activity=True)
    assert all(not n._forward_hooks for _, n in snn.spiking_layers())


def test_activity_can_be_counted_on_the_first_batches_only():
    torch.manual_seed(3)
    snn = convert(ann2snn.create_model("cnn", num_classes=10, in_channels=1, image_size=28).eval())
    batches = [(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))) for _ in range(3)]
    res = simulate(snn, batches, T=2, progress=False, activity=True, activity_batches=2)
    assert res.activity.images == 8 and res.images == 12  # accuracy still on every batch
    assert all(not n._forward_hooks for _, n in snn.spiking_layers())
    alone = ann2snn.activity(snn, batches[:2], T=2)
    assert alone.synops == res.activity.synops


def test_transposed_convolution_fanout_counts_the_outputs_each_input_writes():
    model = nn.Sequential(_conv(1, 2, 1, 1.0), QCFS(4, 1.0),
                          nn.ConvTranspose2d(2, 6, 3, stride=2, padding=1, groups=2)).eval()  # fmt: skip
    snn = convert(model, "if")
    fan = fanout_maps(snn, torch.ones(1, 1, 3, 3))["1"]
    # Output 5×5; input i writes rows 2i-1..2i+1 ∩ [0, 4]: 2, 3, 2 rows; 3 outputs per group.
    rows = torch.tensor([2.0, 3.0, 2.0])
    torch.testing.assert_close(fan[0], 3 * torch.outer(rows, rows))


def test_spikes_through_a_spiking_max_pool_are_charged_where_they_leave_it():
    # 1×1 conv (weight 1) → CIF θ = 1 → 2×2 LIPool → flatten → Linear(2·1·1 → 3).
    # Input: one 2×2 window per channel, all four pixels 1: at T = 1 four neurons per
    # channel spike (8 events) and the pool emits one spike per window (2 events).
    conv = _conv(2, 2, 1, torch.eye(2).view(2, 2, 1, 1))
    model = nn.Sequential(conv, ClipQuant(1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 3))
    snn = convert(model.eval(), "cif", v_init=0.0)
    assert any(isinstance(m, ann2snn.LIPool) for m in snn.modules())
    rep = activity(snn, torch.ones(1, 2, 2, 2), T=1)
    (layer,) = rep.layers
    assert layer.events == [8.0]  # the neurons' own spikes (firing rate unchanged)
    # SynOps: the pool's 2 output spikes × 3 Linear synapses, not 8 input spikes × 3.
    assert layer.synops == [6.0] and rep.synops == [6.0]
    fan = fanout_maps(snn, torch.ones(1, 2, 2, 2))
    torch.testing.assert_close(fan["1"], torch.zeros(2, 2, 2))  # entering the pool: free
