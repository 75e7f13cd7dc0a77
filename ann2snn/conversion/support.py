"""Support report: which ops of a model convert, and how.

`check(model, neuron)` captures the graph (`ann2snn.conversion._graph.capture`) and reads every op
through the rule table (`ann2snn.conversion.rules`) as ``stateless`` (reused at every step),
``neuron`` (an activation a spiking neuron replaces), ``spiking-pool`` or
``unsupported``, with the fix for each unsupported op. A model whose graph cannot be
captured is reported as not traceable (never as supported), with the tracer's reason and
the module that broke it. `ann2snn.convert` runs the same check first, so nothing is
ever half-converted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import nn

from ..nn.neurons import SpikingNeuron, neuron_class
from ._graph import NotTraceableError, capture
from .rules import MAXPOOL, QUANTIZED, RELU, SPIKING, STATELESS, Match, classify, lipool_geometry

__all__ = [
    "check",
    "ConversionError",
    "SupportReport",
    "OpReport",
    "raise_unsupported",
    "report_graph",
]


class ConversionError(ValueError):
    """The model cannot be converted; the message lists every problem and its fix."""


@dataclass
class OpReport:
    """One op of the graph: where it is, what it is, and what conversion does with it."""

    name: str  # qualified module name, or the graph node name for functions
    op: str  # e.g. "Conv2d", "F.relu", "Tensor.view"
    status: str  # "stateless" | "neuron" | "spiking-pool" | "unsupported"
    fix: str = ""


@dataclass
class SupportReport:
    """Every op of a model as supported or unsupported, from `check`.

    ``traced`` is False when the graph could not be captured: then ``ops`` lists only the
    leaf modules (functional ops inside ``forward`` cannot be seen) and the report is
    never ``ok``.
    """

    ops: list[OpReport] = field(default_factory=list)
    traced: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def unsupported(self) -> list[OpReport]:
        return [o for o in self.ops if o.status == "unsupported"]

    @property
    def ok(self) -> bool:
        return self.traced and not self.unsupported

    def __str__(self) -> str:
        width = max([len(o.name) for o in self.ops] + [4])
        lines = [f"{'name':<{width}}  {'op':<22} status"]
        for o in self.ops:
            line = f"{o.name:<{width}}  {o.op:<22} {o.status}"
            lines.append(line + (f"  -> {o.fix}" if o.fix else ""))
        lines += [f"note: {n}" for n in self.notes]
        if not self.traced:
            verdict = "not traceable"
        elif self.ok:
            verdict = "supported"
        else:
            verdict = f"{len(self.unsupported)} unsupported op(s)"
        lines.append(f"{len(self.ops)} ops, {verdict}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "traced": self.traced,
            "ok": self.ok,
            "notes": self.notes,
            "ops": [o.__dict__ for o in self.ops],
        }


MAXPOOL_FIX = (
    "prepare(model, pool='avg') (or build the model with pool='avg') and retrain, or convert "
    "with a neuron that has a spiking max-pool (neuron='cif'; 2-d max-pooling only)"
)


def op_report(match: Match, neuron_cls: type[SpikingNeuron] | None) -> OpReport:
    """The status of one matched op for ``neuron_cls`` (None: for `prepare`, where a
    max-pool is something `prepare` itself handles)."""
    kind = match.kind
    if kind in (QUANTIZED, RELU):
        return OpReport(match.name, match.op, "neuron")
    if kind == STATELESS:
        return OpReport(match.name, match.op, "stateless")
    if kind == MAXPOOL:
        if neuron_cls is not None and neuron_cls.allows_maxpool and lipool_geometry(match):
            return OpReport(match.name, match.op, "spiking-pool")
        return OpReport(match.name, match.op, "unsupported", MAXPOOL_FIX)
    fix = match.rule.fix if kind != SPIKING else "the model is already spiking"
    return OpReport(match.name, match.op, "unsupported", fix)


INPUTS_FIX = (
    "a spiking network here takes one input tensor ([T, B, ...] over time); wrap the model "
    "in a module whose forward takes one tensor (e.g. the inputs concatenated along a "
    "dimension) and splits it before calling the model"
)


def report_graph(gm: fx.GraphModule, neuron_cls: type[SpikingNeuron] | None) -> SupportReport:
    """Support report of an already captured graph: every op, and every input after the
    first that the graph uses (an optional argument of ``forward`` that is used counts:
    the network would be called without it)."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    extra = [OpReport(n.target, "input", "unsupported", INPUTS_FIX) for n in inputs[1:] if n.users]
    return SupportReport(ops=extra + [op_report(m, neuron_cls) for m in classify(gm)])


def _leaf_walk(model: nn.Module, neuron_cls: type[SpikingNeuron], reason: str) -> SupportReport:
    """Report of the leaf modules alone (the graph could not be captured)."""
    graph = fx.Graph()
    root = fx.GraphModule(nn.Module(), graph)
    ops = []
    for name, m in model.named_modules():
        if not name or list(m.children()):
            continue
        root.add_submodule(name.replace(".", "_"), m)
        node = graph.call_module(name.replace(".", "_"))
        for match in classify(root):
            if match.node is node:
                r = op_report(match, neuron_cls)
                ops.append(OpReport(name, r.op, r.status, r.fix))
    return SupportReport(
        ops=ops,
        traced=False,
        notes=[
            reason,
            "only leaf modules are listed: functional ops inside forward (F.relu, torch.relu, "
            "clamp) cannot be seen without tracing; make forward traceable by torch.fx "
            "(no Python control flow on tensor values)",
        ],
    )


def check(model: nn.Module, neuron: str = "if") -> SupportReport:
    """Report every op of ``model`` as supported or unsupported for ``neuron``.

    Does not modify ``model``. Use ``str(report)`` for a table, ``report.unsupported``
    for the problems, each with its fix; ``report.ok`` is False for a model that cannot
    be traced.
    """
    neuron_cls = neuron_class(neuron)
    try:
        gm = capture(model)
    except NotTraceableError as e:
        return _leaf_walk(model, neuron_cls, str(e))
    return report_graph(gm, neuron_cls)


def raise_unsupported(report: SupportReport, what: str = "convert") -> None:
    """Raise `ConversionError` listing every unsupported op of ``report`` (if any)."""
    if report.ok:
        return
    if not report.traced:
        raise ConversionError(f"cannot {what}: {report.notes[0]}; nothing was changed")
    lines = [f"  {o.op} at {o.name}: {o.fix}" for o in report.unsupported]
    raise ConversionError(
        f"cannot {what}: {len(lines)} unsupported op(s); nothing was converted\n" + "\n".join(lines)
    )
