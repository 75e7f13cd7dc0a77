"""Files and provenance, written one way: every file the library writes goes through
`atomic_write` (a fsynced temporary file in the target's folder, then `os.replace`, mode
0644), and the package version has one source (`importlib.metadata`)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._version import VERSION

#: Files of a run folder that no export or report may ever replace.
CHECKPOINT_FILES = {
    f"{tag}.{ext}" for tag in ("best", "last", "resume") for ext in ("json", "safetensors")
}

__all__ = [
    "VERSION",
    "CHECKPOINT_FILES",
    "check_output",
    "staged_output",
    "writable_folder",
    "check_free_space",
    "stage",
    "commit",
    "atomic_write",
    "write_json",
    "sha256_file",
    "json_safe",
    "versions",
    "environment",
    "source_revision",
]


def stage(path: Path, data: bytes) -> Path:
    """Write ``data`` to a fsynced temporary file next to ``path``; return its path.

    Same folder as the target so that the later `os.replace` is a rename within one
    file system, which POSIX makes atomic.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def commit(pairs: list[tuple[Path, Path]]) -> None:
    """Rename staged files onto their targets in order, then fsync the folder."""
    try:
        for tmp, path in pairs:
            os.replace(tmp, path)
    finally:
        for tmp, _ in pairs:  # on failure, leave no temporary files behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    folder = pairs[0][1].parent
    # Make the renames themselves durable; not possible on every OS/file system.
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: A staging file this old was left by a killed writer (a live one renames it in seconds).
STALE_SECONDS = 600


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, flush + fsync, `os.replace`);
    staging files of ``path`` that a killed writer left behind are removed first."""
    path = Path(path)
    now = time.time()
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > STALE_SECONDS:
                stale.unlink()
    commit([(stage(path, data), path)])


def versions() -> dict[str, str]:
    import safetensors

    return {
        "ann2snn": VERSION,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def json_safe(obj: Any, where: str = "record") -> Any:
    """Turn a record into strict JSON values: tuples → lists, 0-d tensors/numpy scalars →
    numbers, paths → str, NaN/inf → None (so tools such as jq can read every record)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return json_safe(obj.item(), where)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return json_safe(obj.item(), where)
    raise TypeError(
        f"{where} has a value of type {type(obj).__name__} that JSON cannot hold; "
        "store numbers, strings, lists or dicts in checkpoint records"
    )


def environment() -> dict[str, Any]:
    """Versions and hardware, for reproducible reports."""
    env = {
        "ann2snn": VERSION,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    env["git"] = source_revision()
    return env


def source_revision() -> dict[str, Any] | None:
    """Commit of the ann2snn source tree and its uncommitted library files, or None when
    the package is not a git checkout: results record which code produced them."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = os.environ | {"GIT_OPTIONAL_LOCKS": "0"}  # read-only: no index refresh

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, env=env, capture_output=True, text=True, timeout=10
        ).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "ann2snn")
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None
    return {"commit": commit, "modified": [ln[3:] for ln in dirty.splitlines()]} if commit else None


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(obj, indent=2, default=str).encode())
    return path


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """A matplotlib figure as a PNG, written atomically (never a truncated image)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())
    return path


def writable_folder(folder: str | os.PathLike, what: str, create: bool = True) -> Path:
    """``folder`` (created if missing and ``create``), checked writable before any work is
    done for it; a missing folder that is not to be created is left to the caller."""
    folder = Path(folder)
    if not create and not folder.exists():
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"{what} {folder}: cannot create the folder ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise PermissionError(
            f"{what} {folder}: the folder is not writable (read-only?); choose another"
        )
    return folder


def check_output(path: str | os.PathLike, force: bool = False, what: str = "output") -> Path:
    """Where a file is about to be written: refused if it is a run's checkpoint file (never
    replaced), an existing file unless ``force``, not a regular file, or in a folder that
    does not exist (named)."""
    path = Path(path)
    if path.name in CHECKPOINT_FILES and any(
        (path.parent / f"{tag}.json").exists() for tag in ("best", "last", "resume")
    ):
        raise FileExistsError(
            f"{what} {path}: that is a checkpoint file of the run in {path.parent}; it is never "
            "replaced — write the export elsewhere (e.g. next to it as net.nir)"
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"{what} {path}: the folder {path.parent} does not exist; create it first"
        )
    if path.exists() and not path.is_file():
        raise FileExistsError(f"{what} {path}: exists and is not a regular file")
    if path.exists() and not force:
        raise FileExistsError(
            f"{what} {path}: the file exists; pass force=True (CLI: --force) to replace it"
        )
    return path


def check_free_space(path: str | os.PathLike, nbytes: int, what: str) -> None:
    """Refuse to start writing ~``nbytes`` where the disk cannot hold them (writers such as
    h5py fail badly on a full disk); twice the estimate plus 1 MiB must be free."""
    free = shutil.disk_usage(Path(path).parent).free
    need = 2 * nbytes + (1 << 20)
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"No space left on device: {what} needs about {need / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB are free",
            str(path),
        )


@contextlib.contextmanager
def staged_output(path: str | os.PathLike):
    """For writers that write by file name (h5py, the ONNX and torch.export writers): yields
    a path with ``path``'s name in a fresh folder beside it; when the block succeeds, every
    file written there (the file and any side file, e.g. ONNX's ``.data``, whose names the
    file refers to) is renamed into ``path``'s folder, the main file last, so a kill at any
    instant leaves the old file or the new one, never half of either. On failure nothing is
    left behind."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp / path.name
        written = sorted(tmp.iterdir(), key=lambda p: p.name == path.name)  # main file last
        for f in written:
            os.chmod(f, 0o644)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(f, path.parent / f.name)
    finally:
        for f in tmp.iterdir() if tmp.exists() else ():
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            tmp.rmdir()
