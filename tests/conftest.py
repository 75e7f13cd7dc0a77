"""Shared builders for the conversion tests: small VGG- and ResNet-style QCFS networks
with random weights, random per-layer thresholds λ and random BatchNorm statistics.

Everything is seeded, so every test sees the same networks on every run.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import Tensor, nn

from ann2snn import QCFS


def randomize(
    model: nn.Module, seed: int, lam_range: tuple[float, float] = (0.5, 3.0)
) -> nn.Module:
    """Give every QCFS a random λ, every BN random running stats and affine parameters.

    Returns ``model`` in eval mode (BN uses its running statistics).
    """
    gen = torch.Generator().manual_seed(seed)
    lo, hi = lam_range
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QCFS):
                m.set_threshold(lo + (hi - lo) * torch.rand((), generator=gen).item())
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen))
    return model.eval()


class VGGStyle(nn.Module):
    """conv-BN-QCFS blocks with average pooling, then Linear-QCFS-Linear."""

    def __init__(self, levels: int = 4, width: int = 8, classes: int = 5):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            QCFS(levels),
            nn.Conv2d(w, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            QCFS(levels),
            nn.AvgPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            QCFS(levels),
            nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * w * 2 * 2, 16),
            QCFS(levels),
            nn.Dropout(0.0),
            nn.Linear(16, classes),
        )

    def forward(self, x: Tensor) -> Tensor:  # x: (B, 3, 8, 8)
        return self.classifier(self.features(x))


class Block(nn.Module):
    """BasicBlock: conv-BN-QCFS-conv-BN, add the shortcut (1×1 conv+BN or identity), QCFS."""

    def __init__(self, cin: int, cout: int, stride: int, levels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = QCFS(levels)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = QCFS(levels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return self.act2(out)


class ResNetStyle(nn.Module):
    """Stem conv-BN-QCFS, an identity-shortcut block, a 1×1-shortcut block, pool, Linear."""

    def __init__(self, levels: int = 4, width: int = 8, classes: int = 5):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), QCFS(levels)
        )
        self.layer1 = Block(w, w, 1, levels)
        self.layer2 = Block(w, 2 * w, 2, levels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, classes)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, 3, 8, 8)
        out = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(out), 1))


def make_vgg(levels: int = 4, seed: int = 0) -> VGGStyle:
    torch.manual_seed(seed)
    return randomize(VGGStyle(levels), seed + 1000)


def make_resnet(levels: int = 4, seed: int = 0) -> ResNetStyle:
    torch.manual_seed(seed)
    return randomize(ResNetStyle(levels), seed + 1000)


def make_mlp(
    levels: int = 4, seed: int = 0, sizes: tuple[int, ...] = (6, 16, 16, 16, 4)
) -> nn.Sequential:
    """Linear-QCFS stack ending in a Linear (no activation), random λ per layer."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(QCFS(levels))
    return randomize(nn.Sequential(*layers), seed + 1000)


def images(batch: int = 16, seed: int = 0) -> Tensor:
    """A batch of (B, 3, 8, 8) inputs."""
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def model_signature(model: nn.Module) -> tuple[list[tuple[str, type]], dict[str, Tensor], bool]:
    """(module names and types, cloned state_dict, training flag): to detect mutation."""
    types = [(n, type(m)) for n, m in model.named_modules()]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return types, state, model.training


def assert_unchanged(model: nn.Module, signature) -> None:
    types, state, training = signature
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    now = model.state_dict()
    assert list(now) == list(state)
    for k, v in state.items():
        assert torch.equal(now[k], v), k
    assert model.training == training


# Under pytest-xdist (`make test`: one worker per core) each worker takes its share of the
# cores, so workers do not oversubscribe the machine with torch's intra-op threads.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread for a test: tiny layers run faster, much faster on a busy box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
