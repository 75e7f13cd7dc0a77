"""torch.compile: the quantized ANNs (one graph, eager gradients) and the neuron steps.

`train` compiles on CUDA. A graph break there costs a Python round trip per layer per
step, and the activations take a different code path under compilation than in eager
CPU mode (`activations._fast_cpu_path`), so both facts are checked here on the CPU with
the ``aot_eager`` backend (dynamo + AOTAutograd, no code generation: fast, no compiler).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from ann2snn import IFNeuron, convert, create_model
from ann2snn.nn.neurons import compile_unavailable, neurons


def _grads(
    model: torch.nn.Module, step, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Parameter gradients of ``model`` after one loss backward through ``step``."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(step(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "model_name, act",
    [("cnn", "qcfs"), ("cnn", "nq"), ("cnn", "clipq"), ("resnet20", "qcfs"),
     pytest.param("resnet20", "nq", marks=pytest.mark.slow),
     pytest.param("resnet20", "clipq", marks=pytest.mark.slow)],
)  # fmt: skip
def test_compiled_training_step_is_one_graph_with_eager_gradients(model_name, act):
    torch.manual_seed(0)
    levels = 8 if act == "clipq" else 4
    model = create_model(model_name, num_classes=10, in_channels=1, act=act, levels=levels,
                         image_size=28, **({} if act == "clipq" else {"init_threshold": 2.0}))  # fmt: skip
    model.train()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 1, 28, 28, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    # NQ at σ = 0: eager CPU draws nothing, compiled code draws 0·ε; both are QCFS exactly.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eager = _grads(model, model, x, y)
    model.load_state_dict(state)  # BatchNorm running stats moved in the eager step
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # raises on a break
    got = _grads(model, compiled, x, y)
    assert got.keys() == eager.keys()
    thresholds = [k for k in got if k.endswith("log_threshold")]
    for k in got:
        # λ-gradients are sums of many terms in another order: equal to rounding.
        assert torch.allclose(got[k], eager[k], rtol=1e-4, atol=1e-6), k
    if act != "clipq":
        assert thresholds and any(float(got[k]) != 0.0 for k in thresholds)


# ----------------------------------------------------------------- compiled neuron steps
# `compiled=True` runs each neuron's step (`SpikingNeuron.kernel`) through torch.compile
# with inductor, which on the CPU generates and builds C++: these tests need a compiler.
needs_compiler = pytest.mark.skipif(
    compile_unavailable("cpu") is not None, reason="no C++ compiler for torch.compile"
)


def _snn_pair(neuron: str, channels_last: bool):
    """The same conversion with eager and with compiled neuron steps, and a random
    ``[T, B, 1, 28, 28]`` input (conv layers: rank-4 neurons; classifier: rank 2)."""
    torch.manual_seed(0)
    act, levels = ("clipq", 8) if neuron == "cif" else ("qcfs", 4)
    model = create_model("cnn", num_classes=10, in_channels=1, act=act, levels=levels,
                         image_size=28, **({} if act == "clipq" else {"init_threshold": 2.0})).eval()  # fmt: skip
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    eager, compiled = convert(model, neuron), convert(model, neuron, compiled=True)
    assert not any(m.compiled for _, m in neurons(eager))
    assert all(m.compiled for _, m in neurons(compiled))
    return eager, compiled, torch.rand(5, 3, 1, 28, 28) * 2


@needs_compiler
@pytest.mark.parametrize("neuron", ["if", "gn", "cif"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_neurons_equal_eager_exactly(neuron, channels_last):
    eager, compiled, x = _snn_pair(neuron, channels_last)
    dtypes = [torch.float32, torch.bfloat16] if neuron == "cif" else [torch.float32]
    for dtype in dtypes:
        for snn in (eager, compiled):
            snn.to(dtype).reset()
        # Two calls: the state (membrane, CIF counts) must carry over identically.
        for chunk in (x[:3], x[3:]):
            assert torch.equal(eager(chunk.to(dtype)), compiled(chunk.to(dtype)))
        for (name, a), (_, b) in zip(neurons(eager), neurons(compiled)):
            assert torch.equal(a.v, b.v), name
        if neuron == "cif":
            with eager.sleeping(), compiled.sleeping():
                zero = torch.zeros_like(x[:4]).to(dtype)
                assert torch.equal(eager(zero), compiled(zero))
            for (name, a), (_, b) in zip(neurons(eager), neurons(compiled)):
                assert torch.equal(a.count, b.count), name
                assert a.wake_steps == b.wake_steps == 5, name
        for snn in (eager, compiled):
            snn.float()


@needs_compiler
def test_compiled_neuron_is_one_graph_for_every_rank_layout_and_batch():
    """Flat views of the operands: conv (both layouts) and linear neurons, any batch size,
    share one compiled graph per neuron type and dtype; an input in another layout than
    the membrane runs the eager kernel, with the same result."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager, compiled = IFNeuron(0.7), IFNeuron(0.7, compiled=True)
    shapes = [(4, 6, 5, 5), (7, 6, 5, 5), (4, 9), (3, 10)]
    inputs = [torch.randn(s) for s in shapes] + [
        torch.randn(4, 6, 5, 5).to(memory_format=torch.channels_last)
    ]
    inputs.append(torch.randn(6, 4).t())  # v is dense, x transposed: no shared layout
    for x in inputs:
        eager.reset(), compiled.reset()
        for _ in range(3):
            assert torch.equal(eager.step(x), compiled.step(x))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 1, f"{graphs} compiled graphs; the flat views should share one"


def test_compiled_neuron_without_compiler_says_what_to_do(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"C\+\+ compiler.*g\+\+.*compiled=False"):
        IFNeuron(1.0, compiled=True)
    IFNeuron(1.0)  # the default needs none
