"""Graph capture and graph surgery shared by `check`, `prepare` and `convert`.

`capture` traces a model with ``torch.fx`` into a `GraphModule` whose submodules keep their
qualified names (``layer1.0.conv1``), so state dicts and reports speak of the user's
modules. Quantized activations, spiking neurons and spiking pools stay leaves (one node
each). When tracing fails, `NotTraceableError` names the module that broke it.

`install` makes one call site of the graph call a new module: the rewrite every pass of
`ann2snn.conversion.passes` is made of.
"""

from __future__ import annotations

import copy
from typing import Any

import torch.fx as fx
from torch import nn

from ..nn.activations import is_quantized_activation
from ..nn.state import is_stateful_module

__all__ = ["capture", "install", "set_submodule", "NotTraceableError"]


class NotTraceableError(ValueError):
    """``torch.fx`` could not capture the model's graph; the message names the module."""


class _Tracer(fx.Tracer):
    """fx tracer that keeps quantized activations and stateful modules as leaves and
    remembers which module was being traced when tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.failed_at: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_quantized_activation(m) or is_stateful_module(m):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.stack[-1] or "<root>"
            raise
        finally:
            self.stack.pop()


def capture(model: nn.Module, copy_model: bool = True) -> fx.GraphModule:
    """Trace ``model`` into a `GraphModule` (of a deep copy unless ``copy_model=False``:
    a GraphModule shares the submodules of the module it was traced from).

    The result has the model's class name and train/eval mode. Optional inputs of
    ``forward`` after the first that the graph never reads (``def forward(self, x,
    mask=None)`` with ``mask`` unused) are dropped, so the graph takes what it uses.

    Raises:
        NotTraceableError: naming the module whose forward could not be traced and why.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    source = copy.deepcopy(model) if copy_model else model
    tracer = _Tracer()
    try:
        graph = tracer.trace(source)
    except Exception as e:  # noqa: BLE001 - any tracing failure is reported by name
        where = tracer.failed_at or "<root>"
        raise NotTraceableError(
            f"not traceable: torch.fx could not trace the model at module '{where}': "
            f"{type(e).__name__}: {e}"
        ) from e
    for node in [n for n in graph.nodes if n.op == "placeholder"][1:]:
        if not node.users:
            graph.erase_node(node)
    gm = fx.GraphModule(source, graph, type(model).__name__)
    gm.train(model.training)
    return gm


def set_submodule(root: nn.Module, qualname: str, module: nn.Module) -> None:
    """Replace (or add) the submodule at dotted path ``qualname``."""
    parent_name, _, attr = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def _free_name(gm: fx.GraphModule, base: str) -> str:
    taken = {name for name, _ in gm.named_modules()}
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def _is_inplace(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return bool(getattr(module, "inplace", False))
    if node.kwargs.get("inplace") is True:
        return True
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return name.endswith("_") and not name.endswith("__")


def _input_of(node: fx.Node) -> Any:
    if node.args:
        return node.args[0]
    for key in ("input", "self", "x"):
        if key in node.kwargs:
            return node.kwargs[key]
    raise ValueError(f"cannot find the tensor input of graph node {node.name}")


def install(
    gm: fx.GraphModule, node: fx.Node, module: nn.Module, name: str, installed: set[str]
) -> str:
    """Make the call site ``node`` call ``module`` (on the site's tensor input); return the
    qualified name it got.

    * A module site keeps its name, except that a module called at several sites (one
      shared ``nn.ReLU``, as in torchvision's BasicBlock) gets one module per site: later
      sites get a fresh name (``relu_1``), so stateful replacements never share a membrane.
      ``installed`` holds the names already given out (shared by the calls of one pass).
    * A function or method site (``F.relu(x)``, ``x.clamp(min=0)``) becomes a module call
      named ``name`` (made unique).
    * An in-place site (``x.relu_()``, ``nn.ReLU(inplace=True)``) also redirects the later
      uses of its input, since in eager PyTorch those read the overwritten tensor.

    The caller recompiles the graph (`fx.GraphModule.recompile`) after its last rewrite.
    """
    old = gm.get_submodule(node.target) if node.op == "call_module" else None
    inplace = _is_inplace(node, old)
    source = _input_of(node)
    if node.op == "call_module" and node.target not in installed:
        set_submodule(gm, node.target, module)
        installed.add(node.target)
        target, new = node.target, node
    else:
        base = node.target if node.op == "call_module" else name
        target = _free_name(gm, base)
        gm.add_submodule(target, module)
        installed.add(target)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(target, (source,))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    if inplace and isinstance(source, fx.Node):
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        for user in list(source.users):
            if user is not new and order[user] > order[new]:
                user.replace_input_with(source, new)
    return target
