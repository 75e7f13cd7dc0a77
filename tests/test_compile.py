"""torch.compile of the quantized ANNs: one graph (no breaks) and the eager gradients.

`train` compiles on CUDA. A graph break there costs a Python round trip per layer per
step, and the activations take a different code path under compilation than in eager
CPU mode (`activations._fast_cpu_path`), so both facts are checked here on the CPU with
the ``aot_eager`` backend (dynamo + AOTAutograd, no code generation: fast, no compiler).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ann2snn import create_model


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
