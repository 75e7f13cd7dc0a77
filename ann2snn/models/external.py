"""Models from outside the zoo, by name: ``torchvision:NAME``, ``timm:NAME`` or a user's
builder ``package.module:function``, made convertible by `ann2snn.prepare`.

`build_external` builds the architecture with ``num_classes`` (random weights; load
pretrained ones with `load_pretrained`), fits its first convolution to ``in_channels``,
checks that it runs on ``image_size`` inputs (a clear error before any training), and
returns ``prepare(model, act, levels, pool, **act_kwargs)``. Rebuilding from the same
arguments gives the same module names, so a checkpoint record (model name + kwargs) is
enough for `ann2snn.load`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ..conversion.preparation import prepare

__all__ = ["is_external", "build_external", "load_pretrained", "PretrainedReport"]


def is_external(name: str) -> bool:
    """True for ``source:name`` model names (not in the built-in zoo)."""
    return isinstance(name, str) and ":" in name


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _call_builder(fn: Any, spec: str, **kwargs: Any) -> tuple[nn.Module, set[str]]:
    """Call a user's builder with the keywords it accepts; (model, keywords passed)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    passed = {k: v for k, v in kwargs.items() if takes_all or k in params}
    model = fn(**passed)
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model {spec!r}: the builder returned {type(model).__name__}, not an nn.Module"
        )
    return model, set(passed)


def _raw_model(
    spec: str, num_classes: int, in_channels: int, image_size: int
) -> tuple[nn.Module, bool]:
    """(the unprepared architecture, whether it already takes ``in_channels``)."""
    source, _, name = spec.partition(":")
    if source == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
        if name not in known:
            raise ValueError(
                f"model {spec!r}: torchvision has no model {name!r}{_suggest(name, known)}"
            )
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes), False
    if source == "timm":
        try:
            timm = importlib.import_module("timm")
        except ImportError:
            raise ValueError(
                f"model {spec!r}: timm is not installed; `pip install timm` (or `make "
                "integrations`)"
            ) from None
        known = timm.list_models()
        if name not in known:
            raise ValueError(f"model {spec!r}: timm has no model {name!r}{_suggest(name, known)}")
        model = timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_channels
        )
        return model, True
    try:
        module = importlib.import_module(source)
    except ImportError as e:
        raise ValueError(f"model {spec!r}: cannot import {source!r} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"model {spec!r}: {source!r} has no callable {name!r}")
    model, passed = _call_builder(
        fn, spec, num_classes=num_classes, in_channels=in_channels, image_size=image_size
    )
    return model, "in_channels" in passed


def _fit_input_channels(model: nn.Module, in_channels: int) -> None:
    """Give the first convolution ``in_channels`` inputs (a fresh one of the same shape
    otherwise; `load_pretrained` later maps RGB weights onto it)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels == in_channels:
                return
            new = nn.Conv2d(
                in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.groups if m.groups == 1 else in_channels,
                m.bias is not None,
                m.padding_mode,
            )
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, new)
            return


def build_external(
    spec: str,
    num_classes: int = 10,
    in_channels: int = 3,
    act: str = "qcfs",
    levels: int = 4,
    pool: str = "avg",
    image_size: int = 32,
    **act_kwargs: Any,
) -> nn.Module:
    """Build ``torchvision:NAME``, ``timm:NAME`` or ``package.module:function`` and
    `prepare` it (the same keywords as the zoo's `create_model`).

    Raises:
        ValueError: unknown source or name (with suggestions), a builder that returns no
            module, or an architecture that does not run on ``in_channels`` ×
            ``image_size`` × ``image_size`` inputs.
        ann2snn.ConversionError: the model has ops `prepare` cannot handle.
    """
    source, _, name = spec.partition(":")
    if not source or not name:
        raise ValueError(
            f"model {spec!r}: expected torchvision:NAME, timm:NAME or package.module:function"
        )
    model, takes_channels = _raw_model(spec, num_classes, in_channels, image_size)
    if not takes_channels:
        _fit_input_channels(model, in_channels)
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as e:  # noqa: BLE001 - any failure here is a shape mismatch to report
        raise ValueError(
            f"model {spec!r} does not run on {in_channels}×{image_size}×{image_size} inputs: "
            f"{type(e).__name__}: {e}"
        ) from None
    if not isinstance(out, Tensor) or out.shape != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"model {spec!r}: expected logits of shape (B, {num_classes}), got {shape}"
        )
    model.train(was_training)
    return prepare(model, act, levels, pool, **act_kwargs)


class PretrainedReport(dict):
    """What `load_pretrained` did: ``loaded``, ``adapted``, ``skipped`` (name: reason) and
    ``missing`` key lists, plus ``path``."""

    def summary(self) -> str:
        parts = [f"{len(self['loaded'])} tensors loaded from {self['path']}"]
        if self["adapted"]:
            parts.append(
                f"{len(self['adapted'])} adapted to the input channels "
                f"({', '.join(self['adapted'])})"
            )
        if self["skipped"]:
            parts.append(f"{len(self['skipped'])} skipped ({', '.join(self['skipped'])})")
        if self["missing"]:
            parts.append(f"{len(self['missing'])} left at their initial values")
        return "; ".join(parts)


def _read_weights(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    # weights_only: tensors and plain containers only, so the file cannot run code.
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"init: {path} holds no state dict (name -> tensor)")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> PretrainedReport:
    """Load the tensors of a weights file (safetensors, or a torch ``.pth``/``.pt`` state
    dict, read with ``weights_only=True``) into ``model`` in place, by name: tensors of
    the same shape are copied; an RGB first convolution is mapped onto a model with
    other input channels (summed for one channel, as timm does); tensors of another
    shape (a 1000-class head) are skipped and listed.

    Raises:
        ValueError: the file is missing or unreadable, or none of its tensors fits.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"init: no weights file at {path}")
    try:
        state = _read_weights(path)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - report any unreadable file by name
        raise ValueError(f"init: cannot read {path}: {type(e).__name__}: {e}") from None
    own = model.state_dict()
    report = PretrainedReport(path=str(path), loaded=[], adapted=[], skipped=[], missing=[])
    with torch.no_grad():
        for name, value in state.items():
            target = own.get(name)
            if target is None:
                continue
            if target.shape == value.shape:
                target.copy_(value)
                report["loaded"].append(name)
            elif (
                value.dim() == 4
                and value.shape[1] == 3
                and target.shape[0] == value.shape[0]
                and target.shape[2:] == value.shape[2:]
            ):
                c = target.shape[1]
                w = (
                    value.float().sum(1, keepdim=True)
                    if c == 1
                    else value.float().repeat(1, -(-c // 3), 1, 1)[:, :c] * (3 / c)
                )
                target.copy_(w.expand_as(target))
                report["adapted"].append(name)
            else:
                report["skipped"].append(f"{name} {tuple(value.shape)}→{tuple(target.shape)}")
    if not report["loaded"] and not report["adapted"]:
        example = ", ".join(list(state)[:3])
        raise ValueError(
            f"init: none of the {len(state)} tensors in {path} fits the model (e.g. {example})"
        )
    used = set(report["loaded"]) | set(report["adapted"])
    report["missing"] = [k for k in own if k not in used]
    return report
