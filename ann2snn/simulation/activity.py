"""What the spikes cost: firing rates, synaptic operations and energy, for every T.

`ActivityMonitor` is a set of forward hooks on the neurons of a `SpikingNetwork` (the
neurons' kernels know nothing of it, and nothing is recorded when no monitor is open).
Each neuron emits ``count·quantum`` per element and step, so one step's spike events are
``|emitted| / quantum``: an IF spike is one event, a group neuron's emission of k quanta
is k events (k binary member spikes), a consistent-IF negative spike is one event, and
sleep steps count like wake steps. A layer's synaptic operations at a step are its events
weighted by the fan-out of each element (`ann2snn.simulation.fanout.fanout_maps`). Spikes
that enter a spiking max-pool (`LIPool`, CASC) cost nothing there; the spikes the pool
emits (``|output| / quantum`` of the neuron feeding it) are charged with the pool's
fan-out and counted in the synaptic operations of that neuron's layer.

`ann2snn.activity(snn, data, T)` (or ``simulate(..., activity=True)``) runs the schedule once and
returns an `ActivityReport` with every number after every step t = 1..T(+sleep):

* per layer: neurons per image, spike events per image at each step, firing rate (events
  per neuron per step, averaged over steps 1..t);
* ``synops``: synaptic operations per image up to step t;
* ``macs``: the ANN's multiply-accumulates per image, and the SNN's non-spiking MACs up
  to t (the layers that read the analog image compute MACs at every wake step);
* ``energy(e_mac, e_ac)``: E_SNN(t) = e_ac·SynOps(t) + e_mac·MACs_SNN(t) against
  E_ANN = e_mac·MACs_ANN (45 nm figures by default, Horowitz 2014: 4.6 pJ per 32-bit
  float MAC, 0.9 pJ per accumulate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..nn.network import SpikingNetwork
from ..nn.pooling import LIPool
from ..nn.state import state_dtype
from .fanout import fanout_maps, mac_counts, record_values

__all__ = ["ActivityMonitor", "ActivityReport", "LayerActivity", "E_MAC", "E_AC"]

#: Energy per 32-bit float multiply-accumulate and per accumulate, 45 nm (Horowitz 2014).
E_MAC = 4.6e-12
E_AC = 0.9e-12


@dataclass
class LayerActivity:
    """One spiking layer: its size and its spike events per image at each step."""

    name: str
    neurons: int  # per image
    events: list[float]  # spike events per image at each step (not cumulative)
    synops: list[float]  # synaptic operations per image its spikes cause, at each step

    def firing_rate(self) -> list[float]:
        """Events per neuron per step, averaged over steps 1..t, after each step t."""
        out, total = [], 0.0
        for t, e in enumerate(self.events, 1):
            total += e
            out.append(total / (self.neurons * t) if self.neurons else 0.0)
        return out


@dataclass
class ActivityReport:
    """Spikes, synaptic operations, MACs and energy after every simulated step."""

    layers: list[LayerActivity]
    wake_steps: list[int]  # wake steps done after each step
    total_steps: list[int]  # wake + sleep steps done after each step
    images: int
    ann_macs: float  # MACs of the source ANN per image
    analog_macs: float  # MACs per image and wake step of the layers reading the image
    notes: list[str] = field(default_factory=list)

    @property
    def synops(self) -> list[float]:
        """Synaptic operations per image up to each step."""
        out, total = [], 0.0
        for step in zip(*(layer.synops for layer in self.layers)):
            total += sum(step)
            out.append(total)
        return out

    @property
    def snn_macs(self) -> list[float]:
        """Non-spiking MACs per image up to each step (analog-input layers × wake steps)."""
        return [self.analog_macs * w for w in self.wake_steps]

    @property
    def firing_rate(self) -> list[float]:
        """Events per neuron per step over the whole network, after each step."""
        neurons = sum(layer.neurons for layer in self.layers)
        out, total = [], 0.0
        for t, step in enumerate(zip(*(layer.events for layer in self.layers)), 1):
            total += sum(step)
            out.append(total / (neurons * t) if neurons else 0.0)
        return out

    def energy(self, e_mac: float = E_MAC, e_ac: float = E_AC) -> dict[str, Any]:
        """``{"ann": J, "snn": [J after each step], "ratio": [E_SNN/E_ANN ...]}`` per image."""
        if not (e_mac > 0 and e_ac > 0):
            raise ValueError(f"e_mac and e_ac must be > 0, got {e_mac!r}, {e_ac!r}")
        ann = e_mac * self.ann_macs
        snn = [e_ac * s + e_mac * m for s, m in zip(self.synops, self.snn_macs)]
        return {
            "ann": ann,
            "snn": snn,
            "ratio": [e / ann if ann else float("nan") for e in snn],
            "e_mac": e_mac,
            "e_ac": e_ac,
        }

    def index_at(self, wake: int) -> int:
        """Index of the last step with ``wake`` wake steps (after any sleep that follows)."""
        idx = [i for i, w in enumerate(self.wake_steps) if w == wake]
        if not idx:
            raise ValueError(f"no step with {wake} wake steps (ran {max(self.wake_steps)})")
        return idx[-1]

    def by_wake_steps(
        self, e_mac: float = E_MAC, e_ac: float = E_AC
    ) -> dict[str, dict[str, float]]:
        """{t: synops, snn_macs, energy_ratio, firing_rate} after t wake steps (and sleep)."""
        en = self.energy(e_mac, e_ac)
        out = {}
        for w in sorted(set(self.wake_steps)):
            i = self.index_at(w)
            out[str(w)] = {
                "synops": self.synops[i],
                "snn_macs": self.snn_macs[i],
                "energy_ratio": en["ratio"][i],
                "firing_rate": self.firing_rate[i],
                "total_steps": self.total_steps[i],
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            synops=self.synops,
            snn_macs=self.snn_macs,
            firing_rate=self.firing_rate,
            energy=self.energy(),
            by_wake=self.by_wake_steps(),
        )
        for layer, row in zip(self.layers, d["layers"]):
            row["firing_rate"] = layer.firing_rate()
        return d

    def __str__(self) -> str:
        last = len(self.wake_steps) - 1
        width = max([len(layer.name) for layer in self.layers] + [5])
        lines = [f"{'layer':<{width}} {'neurons':>9} {'rate':>8} {'SynOps/img':>12}"]
        for layer in self.layers:
            lines.append(
                f"{layer.name:<{width}} {layer.neurons:>9} {layer.firing_rate()[last]:>8.4f} "
                f"{sum(layer.synops):>12.4g}"
            )
        e = self.energy()
        lines.append(
            f"after {self.wake_steps[last]} wake / {self.total_steps[last]} total steps: "
            f"SynOps {self.synops[last]:.4g}, SNN MACs {self.snn_macs[last]:.4g}, ANN MACs "
            f"{self.ann_macs:.4g}, energy SNN/ANN {e['ratio'][last]:.3f}"
        )
        return "\n".join(lines)


class ActivityMonitor:
    """Forward hooks that count every neuron's spike events and synaptic operations.

    >>> with ActivityMonitor(snn, x) as mon:   # x: one input batch, for the fan-out maps
    ...     for out in run_schedule(...): ...
    ...     mon.end_batch(batch_size)
    >>> report = mon.report(wake_steps, total_steps)

    Recording lives here, not in the neurons: the kernels are the same with or without
    it, and a network with no monitor open runs no hook at all.
    """

    def __init__(self, snn: SpikingNetwork, example: Tensor) -> None:
        if not isinstance(snn, SpikingNetwork):
            raise TypeError(f"expected a SpikingNetwork, got {type(snn).__name__}")
        self.snn = snn
        example = example.to(next(iter(snn.parameters())).device)
        values = record_values(snn, example)  # one recording for both
        fan = fanout_maps(snn, example, values)
        self.ann_macs, self.analog_macs = mac_counts(snn, example, values)
        self.layers = list(snn.spiking_layers())
        self.fanout = {name: f.to(example.device) for name, f in fan.items()}
        self.quantum = {name: float(n.spike_value) for name, n in self.layers}
        # Spiking max-pools: {pool name: (the pool, the neuron layer whose spikes it passes)}.
        self.pools = _pools(snn)
        self.quantum |= {p: self.quantum[feeder] for p, (_, feeder) in self.pools.items()}
        # Per layer: sums over the batches done, and the current batch's per-step lists.
        self.events: dict[str, Tensor | None] = {name: None for name, _ in self.layers}
        self.synops: dict[str, Tensor | None] = {name: None for name, _ in self.layers}
        self._batch: dict[str, list[Tensor]] = {name: [] for name, _ in self.layers}
        self._batch_synops: dict[str, list[Tensor]] = {name: [] for name, _ in self.layers}
        self._batch_synops |= {pool: [] for pool in self.pools}
        self.images = 0
        self._handles: list[Any] = []

    def _hook(self, name: str):
        fan, quantum = self.fanout[name], self.quantum[name]

        def hook(module: Any, _inp: Any, out: Tensor) -> None:
            if module.ann_mode:
                return
            # [T·B, ...] → Σ over the batch of |emitted| per step and element, [T, ...]: one
            # pass over the big tensor (an L1 norm), the rest on the small reduced one.
            folded = module.unfold(out.detach())
            events = torch.linalg.vector_norm(folded, ord=1, dim=1, dtype=state_dtype(folded.dtype))
            events = events.div_(quantum).round_()  # a sum of whole spike counts
            if name not in self.pools:  # a pool's spikes are its feeder's, already counted
                self._batch[name].append(events.flatten(1).sum(1))  # [T]
            self._batch_synops[name].append((events * fan).flatten(1).sum(1))  # [T]

        return hook

    def __enter__(self) -> ActivityMonitor:
        for name, neuron in self.layers:
            self._handles.append(neuron.register_forward_hook(self._hook(name)))
        for name, (pool, _) in self.pools.items():
            self._handles.append(pool.register_forward_hook(self._hook(name)))
        return self

    @property
    def counting(self) -> bool:
        """Whether the hooks are in place (between ``__enter__`` and ``__exit__``)."""
        return bool(self._handles)

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def end_batch(self, batch_size: int) -> None:
        """Fold the batch's per-step counts into the totals."""
        for name, _ in self.layers:
            if not self._batch[name]:
                continue
            ev, so = torch.cat(self._batch[name]), torch.cat(self._batch_synops[name])
            for pool in (p for p, (_, feeder) in self.pools.items() if feeder == name):
                so = so + torch.cat(self._batch_synops[pool])  # [T]: what it passed on
                self._batch_synops[pool] = []
            self.events[name] = ev if self.events[name] is None else self.events[name] + ev
            self.synops[name] = so if self.synops[name] is None else self.synops[name] + so
            self._batch[name], self._batch_synops[name] = [], []
        self.images += batch_size

    def report(self, wake_steps: list[int], total_steps: list[int]) -> ActivityReport:
        n = max(self.images, 1)
        layers = []
        for name, _ in self.layers:
            ev = self.events[name]
            so = self.synops[name]
            layers.append(
                LayerActivity(
                    name=name,
                    neurons=int(self.fanout[name].numel()),
                    events=[] if ev is None else (ev.double() / n).tolist(),
                    synops=[] if so is None else (so.double() / n).tolist(),
                )
            )
        return ActivityReport(
            layers,
            list(wake_steps),
            list(total_steps),
            self.images,
            float(self.ann_macs),
            float(self.analog_macs),
        )


def _pools(snn: SpikingNetwork) -> dict[str, tuple[LIPool, str]]:
    """Every spiking max-pool of ``snn`` that reads one neuron layer's spikes (through
    shape-only ops and other spiking pools), with that layer's name. A pool that reads
    analog values (a max-pool before the activation) passes on no spikes and is not
    counted."""
    gm = snn.body
    if not hasattr(gm, "graph"):
        return {}
    modules = dict(gm.named_modules())
    neurons = {name for name, _ in snn.spiking_layers()}
    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), LIPool):
            continue
        src = node.args[0]
        while (src.op == "call_method" and src.target in ("contiguous", "clone", "to")) or (
            src.op == "call_module" and isinstance(modules.get(src.target), LIPool)
        ):
            src = src.args[0]
        if src.op == "call_module" and src.target in neurons:
            out[node.target] = (modules[node.target], src.target)
    return out
