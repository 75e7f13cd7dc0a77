"""Run a NIR file in another simulator the way its users do: the reader's own loader on the
file as written, one input per step, the reader's own state handling.

`run_reader(name, path, x, T)` returns the reader's output at every step, ``[T, B, out]``,
for tests and benchmarks to compare with ann2snn (and with ``import_nir(path,
reader=name)``, ann2snn's prediction of what the reader computes). A reader that is not
installed in this environment runs in the side environment ``make interop`` builds for
readers whose pins conflict with ours (sinabs pins nir ≤ 1.0.4): the file, the input and
the output cross as files. ``python -m ann2snn.deploy.readers NAME FILE X.npy T OUT.npy``
is that side of it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["READERS", "run_reader", "reader_available", "SIDE_PYTHON"]

#: The side environment's interpreter (``make interop``), overridable for tests.
SIDE_PYTHON = Path(
    os.environ.get(
        "ANN2SNN_INTEROP_PYTHON",
        Path(__file__).resolve().parents[2] / ".venv-interop" / "bin" / "python",
    )
)


def _spikingjelly(path: str, x: Tensor, T: int) -> list[Tensor]:
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    net = import_from_nir(path)  # its default dt = 1e-4: the profile's r = 1/dt
    outs, state = [], None
    for _ in range(T):  # the returned state goes back in: SpikingJelly's stepping contract
        out, state = net(x) if state is None else net(x, state)
        outs.append(out)
    return outs


def _sinabs(path: str, x: Tensor, T: int) -> list[Tensor]:
    import nir
    import sinabs

    # sinabs' layers take [B·T, ...] (batch-major) and keep their state between calls.
    net = sinabs.from_nir(nir.read(path), batch_size=x.shape[0], num_timesteps=T)
    frames = x.unsqueeze(1).expand(x.shape[0], T, *x.shape[1:]).reshape(-1, *x.shape[1:])
    out = net(frames)
    out = out[0] if isinstance(out, tuple) else out
    return list(out.reshape(x.shape[0], T, -1).transpose(0, 1))


def _norse(path: str, x: Tensor, T: int) -> list[Tensor]:
    import nir
    import norse.torch as norse

    net = norse.from_nir(nir.read(path))
    outs, state = [], None
    for _ in range(T):
        out, state = net(x, state)
        outs.append(out)
    return outs


def _snntorch(path: str, x: Tensor, T: int) -> list[Tensor]:
    import nir
    from snntorch.import_nir import import_from_nir

    net = import_from_nir(nir.read(path))  # its neurons keep their state (init_hidden)
    for m in net.modules():
        if hasattr(m, "reset_mem"):
            m.reset_mem()
    outs = []
    for _ in range(T):
        out = net(x)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


#: reader name (a key of `NIR_PROFILES`) → (the module that must import, its runner).
READERS: dict[str, tuple[str, Callable[[str, Tensor, int], list[Tensor]]]] = {
    "spikingjelly": ("spikingjelly.activation_based.nir_exchange", _spikingjelly),
    "sinabs": ("sinabs", _sinabs),
    "norse": ("norse.torch", _norse),
    "snntorch": ("snntorch.import_nir", _snntorch),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def _in_side_environment(module: str) -> bool:
    """Whether the side environment imports ``module`` (asked once per process: a run of
    many batches starts one interpreter per batch, not two)."""
    if not SIDE_PYTHON.exists():
        return False
    probe = f"import importlib.util as u; exit(u.find_spec({module!r}) is None)"
    return subprocess.run([str(SIDE_PYTHON), "-c", probe], capture_output=True).returncode == 0


def reader_available(name: str) -> str | None:
    """Where ``name`` runs: ``"here"``, ``"side"`` (the ``make interop`` environment), or
    None when it is installed in neither."""
    if _importable(READERS[name][0]):
        return "here"
    return "side" if _in_side_environment(READERS[name][0]) else None


def _run_here(name: str, path: str, x: Tensor, T: int) -> Tensor:
    """The reader run in this process: ``[T, B, out]``."""
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # snnTorch prints
        outs = READERS[name][1](path, x.float(), T)
    return torch.stack([o.reshape(x.shape[0], -1).float() for o in outs])


def run_reader(name: str, path: str | Path, x: Tensor, T: int) -> Tensor:
    """The reader's output at each of ``T`` steps of input ``x`` (``[B, ...]``, the same
    frame every step): ``[T, B, out]``.

    Raises:
        ImportError: the reader is installed neither here nor in the side environment.
        RuntimeError: the reader failed on the file (its own error, in the message).
    """
    if name not in READERS:
        raise ValueError(f"run_reader: name must be one of {', '.join(READERS)}, got {name!r}")
    where = reader_available(name)
    if where is None:
        raise ImportError(f"run_reader: {name} is not installed (make interop)")
    if where == "here":
        return _run_here(name, str(path), x, T)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x.float().numpy())
        cmd = [
            str(SIDE_PYTHON),
            "-m",
            "ann2snn.deploy.readers",
            name,
            str(path),
            str(Path(tmp) / "x.npy"),
            str(T),
            str(Path(tmp) / "out.npy"),
        ]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode:
            raise RuntimeError(f"{name} failed on {path}: {done.stderr.strip()[-600:]}")
        return torch.from_numpy(np.load(Path(tmp) / "out.npy"))


def main(argv: list[str] | None = None) -> None:
    """``NAME FILE X.npy T OUT.npy``: run here, write ``[T, B, out]`` to OUT.npy."""
    name, path, x, T, out = sys.argv[1:] if argv is None else argv
    np.save(out, _run_here(name, path, torch.from_numpy(np.load(x)), int(T)).numpy())


if __name__ == "__main__":
    main()
