"""Self-describing checkpoints without pickle (nanoGPT's idea, safetensors' format).

A run folder written by `ann2snn.train` looks like::

    runs/cifar10-vgg16-qcfs-L4/
      last.safetensors  last.json     # weights + record after the latest complete epoch
      best.safetensors  best.json     # the same for the epoch with the best validation score
      resume-<hash>.safetensors resume.json  # optimizer, scheduler, RNG states, weights;
                                    # resume.json names its weights: its rename is the commit

Weights live in safetensors files (flat ``name -> tensor``); everything else lives in a
JSON record next to them, which names its weights file and carries its sha256, so a
record can always tell whether its weights are complete and unmodified. The record
holds what is needed to rebuild the model (``model`` + ``model_kwargs`` for
`ann2snn.models.create_model`) and what is needed to trust it (recipe, metrics,
versions, seed).

Nothing here uses pickle: `torch.load` is never called, so loading a checkpoint cannot
execute code. Every file is written atomically (temporary file in the same folder,
flush + fsync, `os.replace`), and a JSON file is replaced only after its weights file,
so an interrupted save leaves either the old or the new pair behind, never a record
pointing at half-written weights.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import json
import os
import struct
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor, nn

from ._io import commit, json_safe, stage, versions
from .conversion.preparation import prepare_as
from .models import create_model
from .models.external import is_external

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RESUME_FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load",
    "load_record",
    "load_state_dict",
    "load_weights",
    "find_checkpoint",
    "save_resume_state",
    "load_resume_state",
    "record_digest",
    "clean_orphans",
    "RunRecord",
    "check_same_run",
    "run_ids",
    "new_run_id",
]

FORMAT = "ann2snn-checkpoint"
# 2: every record carries record_sha256 (format 1 records may lack it: read with a warning).
FORMAT_VERSION = 2
RESUME_FORMAT = "ann2snn-resume"
RESUME_TAG = "resume"
# The resume pair's weights carry a content hash in their name, so a new pair never
# overwrites the files of the committed one: resume.json's rename is the commit point.
RESUME_WEIGHTS = RESUME_TAG + "-{digest}.safetensors"

# How many key names an error message lists before it says "... and N more".
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, corrupted or does not fit the model."""


# ----------------------------------------------------------------------------- atomic files


def clean_orphans(run_dir: str | os.PathLike) -> list[Path]:
    """Delete what an interrupted save left in ``run_dir``: this module's staging files
    (``.NAME.*.tmp``) and resume weights no ``resume.json`` names; return them. Call it
    only while holding the folder's lock."""
    removed = []
    for tag in ("best", "last", RESUME_TAG):
        for tmp in Path(run_dir).glob(f".{tag}*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed + _remove_stale_resume_weights(Path(run_dir))


def _remove_stale_resume_weights(run_dir: Path) -> list[Path]:
    """Resume weights files other than the one ``resume.json`` names (the committed pair)."""
    try:
        current = json.loads((run_dir / f"{RESUME_TAG}.json").read_text()).get("weights_file")
    except (OSError, ValueError, AttributeError):
        return []  # no readable commit point: nothing can be known to be stale
    removed = []
    for path in [
        *run_dir.glob(f"{RESUME_TAG}-*.safetensors"),
        run_dir / f"{RESUME_TAG}.safetensors",
    ]:
        if path.name != current and path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def record_digest(record: dict) -> str:
    """sha256 of a record's canonical JSON (sorted keys), without its own
    ``record_sha256``: any edit of any field changes it."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


# Field types a record must have (None allowed where listed); checked on every read.
_FIELD_TYPES: dict[str, tuple[type | None, ...]] = {
    "weights_file": (str,),
    "weights_sha256": (str, None),
    "record_sha256": (str, None),
    "model": (str,),
    "model_kwargs": (dict,),
    "prepare": (dict, None),
    "init": (dict, None),
    "runtime": (dict, None),
    "recipe": (dict, None),
    "metrics": (dict, None),
    "extra": (dict, None),
    "epoch": (int, None),
}


def _check_fields(record: dict, path: Path, required: tuple[str, ...]) -> None:
    for key in required:
        if key not in record:
            raise CheckpointError(
                f"{path}: the record has no {key!r}, so the model cannot be rebuilt; "
                "re-save it with ann2snn.checkpoint.save_checkpoint"
            )
    for key, types in _FIELD_TYPES.items():
        if key not in record:
            continue
        value = record[key]
        ok = any(
            value is None if t is None else isinstance(value, t) and not isinstance(value, bool)
            for t in types
        )
        if not ok:
            names = " or ".join(
                "null" if t is None else {str: "a string", dict: "an object", int: "an integer"}[t]
                for t in types
            )
            raise CheckpointError(
                f"{path}: field {key!r} must be {names}, got {type(value).__name__} {value!r}; "
                "the record was edited or damaged — restore it from a copy"
            )


def _write_pair(
    run_dir: Path, tag: str, weights: bytes, record: dict, weights_name: str | None = None
) -> Path:
    """Write ``<tag>.safetensors`` (or ``weights_name``) then ``<tag>.json``; the record gets
    the weights' hash.

    Both files are staged (written and fsynced) first, so the two renames that publish
    them follow each other within microseconds. With a ``weights_name`` of its own (the
    resume pair) the weights never replace the file the current record names, so the
    record's rename alone is the commit: a kill at any instant leaves a complete pair.
    """
    digest = hashlib.sha256(weights).hexdigest()
    weights_path = run_dir / (weights_name or f"{tag}.safetensors").format(digest=digest[:16])
    json_path = run_dir / f"{tag}.json"
    record = dict(record, weights_file=weights_path.name)
    record["weights_sha256"] = digest
    record.pop("record_sha256", None)
    record["record_sha256"] = record_digest(record)
    # NaN is kept only in resume skeletons (exact round trip); `json_safe` removed it from records.
    text = json.dumps(record, indent=2)
    staged_weights = stage(weights_path, weights)
    try:
        staged_json = stage(json_path, (text + "\n").encode())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged_weights)
        raise
    commit([(staged_weights, weights_path), (staged_json, json_path)])
    return json_path


# ----------------------------------------------------------------------------- records


def _state_to_bytes(state: dict[str, Tensor], where: str) -> bytes:
    """Serialize a flat ``name -> tensor`` dict as safetensors bytes (CPU, contiguous).

    `clone` because safetensors refuses tensors that share storage, and a state dict may
    hold views (e.g. tied weights); channels_last tensors become contiguous here too.
    """
    tensors = {}
    for name, t in state.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{where}: entry {name!r} is a {type(t).__name__}, not a tensor")
        tensors[name] = t.detach().to("cpu").contiguous().clone()
    return _st_save(tensors)


def save_checkpoint(
    run_dir: str | os.PathLike, model: nn.Module, record: dict, tag: str = "last"
) -> Path:
    """Save ``model``'s weights as ``<tag>.safetensors`` and ``record`` as ``<tag>.json``.

    Args:
        run_dir: folder of the run (created if missing).
        model: the network; its full ``state_dict()`` is saved.
        record: at least ``model`` (registry name) and ``model_kwargs`` (keyword arguments
            of `ann2snn.models.create_model`), so `load` can rebuild it; plus whatever
            describes the run (recipe, epoch, metrics, extra, seed, ...).
        tag: file stem, e.g. ``"last"`` or ``"best"``.

    Returns:
        Path of the written JSON record. ``format``, ``format_version``, ``versions``,
        ``created``, ``weights_file`` and ``weights_sha256`` are filled in.
    """
    if not tag or "/" in tag or "\\" in tag or tag.startswith(".") or tag == RESUME_TAG:
        raise ValueError(f"tag must be a plain file stem other than {RESUME_TAG!r}, got {tag!r}")
    for key in ("model", "model_kwargs"):
        if key not in record:
            raise ValueError(
                f"record needs {key!r} so that load() can rebuild the model with "
                "ann2snn.models.create_model(record['model'], **record['model_kwargs'])"
            )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION}
    full.update(json_safe(record))
    full.setdefault("versions", versions())
    full["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    weights = _state_to_bytes(model.state_dict(), f"{type(model).__name__}.state_dict()")
    return _write_pair(run_dir, tag, weights, full)


def find_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The record `load` would pick in a run folder: ``best.json``, else ``last.json``."""
    for tag in ("best", "last"):
        path = Path(run_dir) / f"{tag}.json"
        if path.is_file():
            return path
    return None


def _resolve(path: str | os.PathLike) -> Path:
    """Map a run folder / ``.json`` / ``.safetensors`` path to its JSON record."""
    path = Path(path)
    if path.is_dir():
        found = find_checkpoint(path)
        if found is None:
            raise CheckpointError(
                f"{path}: no checkpoint in this folder (expected best.json or last.json); "
                "pass the out_dir of a run of ann2snn.train, or a .json record"
            )
        return found
    if path.suffix == ".safetensors":
        json_path = path.with_suffix(".json")
        if not json_path.is_file():
            raise CheckpointError(
                f"{path}: its record {json_path.name} is missing; the weights alone do not "
                "say which model to build — keep the .json file next to the .safetensors file"
            )
        return json_path
    if not path.exists():
        raise CheckpointError(
            f"{path}: file not found; check the path (a run folder, .json or .safetensors)"
        )
    return path


def _regular(path: Path) -> Path:
    """``path`` if it is a regular file (a FIFO would block the reader, /dev/zero never
    end); a symlink to a regular file is one."""
    if path.exists() and not path.is_file():
        raise CheckpointError(
            f"{path}: not a regular file (a folder, device, FIFO or socket); a checkpoint "
            "is made of regular .json and .safetensors files"
        )
    return path


def _read_json(path: Path, expected_format: str) -> dict:
    try:
        text = _regular(path).read_text()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({e}); check the path") from e
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path}: not valid JSON ({e}); the record is damaged — restore it from a copy "
            "or re-save the checkpoint"
        ) from e
    if not isinstance(record, dict) or record.get("format") != expected_format:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(
            f"{path}: format is {found!r}, expected {expected_format!r}; this is not a record "
            "written by ann2snn.checkpoint — pass the .json file saved next to the weights"
        )
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this ann2snn reads up to "
            f"{FORMAT_VERSION}); upgrade ann2snn"
        )
    if not isinstance(record.get("weights_file"), str):
        raise CheckpointError(f"{path}: the record names no weights_file; re-save the checkpoint")
    expected = record.get("record_sha256")
    if expected is None and version >= 2:
        raise CheckpointError(
            f"{path}: the record has no record_sha256, which every record of format "
            f"{version} carries: it was edited (the field deleted); restore the original "
            "record, or re-save the model with ann2snn.checkpoint.save_checkpoint"
        )
    if expected is None:
        warnings.warn(
            f"{path}: a format-1 record without record_sha256 is unverified (edits to it "
            "cannot be detected); re-save it with ann2snn.checkpoint.save_checkpoint",
            stacklevel=3,
        )
    if expected is not None and record_digest(record) != expected:
        raise CheckpointError(
            f"{path}: the record was changed after it was written (record_sha256 does not match "
            "its content); an edited field such as model_kwargs would build a different model "
            "without error — restore the original record, or re-save the model with "
            "ann2snn.checkpoint.save_checkpoint"
        )
    _check_fields(record, path, ())
    return record


def load_record(path: str | os.PathLike) -> dict:
    """Read and check the JSON record of a checkpoint (run folder, .json or .safetensors).

    Does not read the weights; `load` and `load_state_dict` verify those.
    """
    json_path = _resolve(path)
    record = _read_json(json_path, FORMAT)
    _check_fields(record, json_path, ("model", "model_kwargs"))
    return record


def _read_tensors(json_path: Path, record: dict) -> dict[str, Tensor]:
    """Read, hash-check and decode the weights file a record points at (CPU tensors)."""
    weights_path = json_path.parent / record["weights_file"]
    try:
        data = _regular(weights_path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"{weights_path}: weights file missing (named by {json_path.name}); copy the "
            ".safetensors file together with its .json record"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{weights_path}: cannot read the weights file ({e})") from e
    expected = record.get("weights_sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{weights_path}: sha256 does not match {json_path.name} ({len(data)} bytes on "
            "disk); the weights are truncated or corrupted, or belong to another save — "
            "copy the file again, or use the other checkpoint of the run (best/last)"
        )
    try:
        return _st_load(data)
    except (SafetensorError, ValueError, RuntimeError, struct.error) as e:
        raise CheckpointError(
            f"{weights_path}: the safetensors header cannot be read ({e}); the file is "
            "damaged or not a safetensors file — re-save or copy it again"
        ) from e


def _read_checkpoint(path: str | os.PathLike) -> tuple[Path, dict, dict[str, Tensor]]:
    """(record path, record, verified CPU weights) of a checkpoint."""
    json_path = _resolve(path)
    record = load_record(json_path)
    check_same_run(json_path, record)
    return json_path, record, _read_tensors(json_path, record)


def new_run_id() -> str:
    """A fresh id for a new run, shared by all its records (`check_same_run`)."""
    return uuid.uuid4().hex[:16]


def run_ids(run_dir: Path) -> dict[str, str]:
    """{record file name: its run_id} of the records in ``run_dir`` that carry one (records
    that cannot be read are left to whoever reads them)."""
    ids = {}
    for tag in ("best", "last", RESUME_TAG):
        path = run_dir / f"{tag}.json"
        try:
            rid = json.loads(_regular(path).read_text()).get("run_id") if path.is_file() else None
        except (OSError, ValueError, AttributeError, CheckpointError):
            rid = None
        if isinstance(rid, str):
            ids[path.name] = rid
    return ids


def check_same_run(json_path: Path, record: dict) -> None:
    """Refuse a record whose run id differs from its folder's other records: a pair copied
    in from another run would otherwise load (and be resumed) as this run's."""
    mine = record.get("run_id")
    if not isinstance(mine, str):
        return  # written before run ids
    others = {k: v for k, v in run_ids(json_path.parent).items() if k != json_path.name}
    if any(v != mine for v in others.values()):
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(others.items()))
        raise CheckpointError(
            f"{json_path}: belongs to run {mine}, but the folder's other records belong to "
            f"another run ({listed}); a checkpoint was copied in from elsewhere — keep each "
            "run's files in their own folder"
        )


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The verified ``name -> tensor`` weights of a checkpoint (CPU), without a model."""
    return _read_checkpoint(path)[2]


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def _load_strict(model: nn.Module, state: dict[str, Tensor], source: Path) -> None:
    """`load_state_dict(strict=True)`, but a mismatch raises CheckpointError that lists the
    missing, unexpected and mis-shaped keys and names the file."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {_listing(misshaped)}")
    if problems:
        raise CheckpointError(
            f"{source}: the weights do not fit {type(model).__name__}; "
            + "; ".join(problems)
            + ". Build the model with the record's model and model_kwargs "
            "(ann2snn.load does this), or save the checkpoint again from this model"
        )
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a checkpoint's verified weights into an existing ``model`` (strict); return it."""
    json_path, record, state = _read_checkpoint(path)
    _load_strict(model, state, json_path.parent / record["weights_file"])
    return model


#: ``source:`` prefixes whose names are looked up in a fixed list, never imported by name.
SAFE_SOURCES = ("torchvision", "timm")


def _refuse_foreign_code(name: str, json_path: Path, trust_code: bool) -> None:
    """A record naming ``package.module:function`` asks to import and call code: refused
    unless the caller trusts the file."""
    source = name.partition(":")[0]
    if trust_code or not is_external(name) or source in SAFE_SOURCES:
        return
    raise CheckpointError(
        f"{json_path}: the record asks to import {source!r} and call {name!r} to build the "
        "model; a file cannot make ann2snn run code. If you trust where this run comes "
        "from: ann2snn.load(path, trust_code=True) (CLI: --trust-code), or pass the "
        "architecture: ann2snn.load(path, model=...)"
    )


def load(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    model: nn.Module | None = None,
    trust_code: bool = False,
) -> nn.Module:
    """Rebuild a trained model from a checkpoint.

    Args:
        path: a run folder (picks ``best.json``, else ``last.json``), a ``.json`` record or
            a ``.safetensors`` weights file with its record next to it.
        map_location: device for the returned model.
        model: the architecture, for runs whose builder `load` cannot import (a model
            passed to ``ann2snn.train(cfg, model=...)``): the module as it was given to
            `train` (it is prepared as the record says, on a copy).
        trust_code: allow a record whose model is ``package.module:function`` to import that
            module and call that function. Loading never runs code a file names unless
            asked: zoo models (and builders registered in this process with
            `ann2snn.register_model`), ``torchvision:NAME`` and ``timm:NAME`` need no
            opt-in; anything else is refused by name (or pass ``model=``).

    Returns:
        ``ann2snn.models.create_model(record["model"], **record["model_kwargs"])`` (zoo
        models, ``torchvision:NAME``, ``timm:NAME``, ``package.module:function``) with the
        verified weights loaded strictly, in eval mode, in the memory format it was
        trained in (channels_last if the record's runtime says so: its evaluation and
        simulation then run in that layout, which is faster on CPUs and GPUs alike), with
        the record attached as ``model.ann2snn_record``.

    Raises:
        CheckpointError: missing/damaged files, hash mismatch, weights that do not fit, or
            a model that cannot be rebuilt from the record.
    """
    json_path, record, state = _read_checkpoint(path)
    prep = record.get("prepare")
    if prep is not None and not isinstance(prep, dict):
        raise CheckpointError(
            f"{json_path}: field 'prepare' must be an object, got {type(prep).__name__}"
        )
    if model is not None:
        try:
            net = prepare_as(model, prep) if prep else copy.deepcopy(model)
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{json_path}: field 'prepare' is malformed ({e})") from None
    else:
        _refuse_foreign_code(record["model"], json_path, trust_code)
        try:
            net = create_model(record["model"], **record["model_kwargs"])
        except (ValueError, TypeError) as e:
            hint = (
                "; pass the architecture: ann2snn.load(path, model=...)"
                if prep is not None or "unknown model" in str(e)
                else ""
            )
            raise CheckpointError(f"{json_path}: cannot rebuild the model: {e}{hint}") from None
    _load_strict(net, state, json_path.parent / record["weights_file"])
    net.ann2snn_record = record
    if (record.get("runtime") or {}).get("channels_last"):
        net = net.to(memory_format=torch.channels_last)
    return net.to(map_location).eval()


# ----------------------------------------------------------------------------- resume state
#
# Optimizer and scheduler state dicts are nested dicts/lists with int keys, tuples and
# tensors. They are split into a flat tensor dict (safetensors) and a JSON skeleton in
# which each tensor is replaced by {"__tensor__": name}; tuples and dicts with non-string
# keys are tagged so that the round trip gives back exactly the same structure.


def _encode(obj: Any, name: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        tensors[name] = obj
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{name}/{k}", tensors) for k, v in obj.items()}
        return {
            "__items__": [
                [_encode(k, f"{name}/{i}.k", tensors), _encode(v, f"{name}/{k}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{name}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(
        f"resume state entry {name!r} is a {type(obj).__name__}; only tensors, numbers, "
        "strings, None, lists, tuples and dicts can be saved without pickle"
    )


def _decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def save_resume_state(run_dir: str | os.PathLike, state: dict) -> Path:
    """Save a nested training state (optimizer/scheduler state dicts, RNG states, epoch,
    ...) as ``resume-<hash>.safetensors`` (its tensors) + ``resume.json`` (everything else,
    and the name of its weights file: its rename commits the pair)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    skeleton = _encode(state, "state", tensors)
    record = {
        "format": RESUME_FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "state": skeleton,
    }
    run_id = (state.get("record") or {}).get("run_id") if isinstance(state, dict) else None
    if isinstance(run_id, str):  # beside the state, where a check of the folder reads it
        record["run_id"] = run_id
    weights = _state_to_bytes(tensors, "resume state")
    path = _write_pair(run_dir, RESUME_TAG, weights, record, RESUME_WEIGHTS)
    _remove_stale_resume_weights(run_dir)
    return path


def load_resume_state(run_dir: str | os.PathLike) -> dict:
    """Inverse of `save_resume_state` (tensors on CPU); raises CheckpointError if damaged."""
    json_path = Path(run_dir) / f"{RESUME_TAG}.json"
    if not json_path.is_file():
        raise CheckpointError(
            f"{json_path}: file not found; there is no resume state in this folder — "
            "start a new run, or pass the out_dir of an interrupted run"
        )
    record = _read_json(json_path, RESUME_FORMAT)
    tensors = _read_tensors(json_path, record)
    try:
        return _decode(record["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{json_path}: the resume structure does not match its tensors ({e!r}); "
            "the pair is damaged — resume from a copy or start a new run"
        ) from e


# ----------------------------------------------------------------------------- typed view


class RunRecord:
    """A typed view of a checkpoint's record: each field's fallbacks written once.

    Records written by older versions name some facts in different places (the dataset
    at the top or in ``recipe``, the activation in ``model_kwargs`` or at the top); the
    properties below read them all, so no caller re-derives them.
    """

    def __init__(self, record: dict[str, Any]) -> None:
        self.raw = dict(record)

    @classmethod
    def of(cls, model: nn.Module) -> RunRecord:
        """The record of a model returned by `load`."""
        record = getattr(model, "ann2snn_record", None)
        if not isinstance(record, dict):
            raise ValueError(
                f"{type(model).__name__} carries no run record; load it with ann2snn.load(path)"
            )
        return cls(record)

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return self.raw.get("model_kwargs") or {}

    @property
    def model(self) -> str | None:
        return self.raw.get("model")

    @property
    def dataset(self) -> str | None:
        """The dataset the run trained on (None: not written by ``ann2snn train``)."""
        return (self.raw.get("recipe") or {}).get("dataset") or self.raw.get("dataset")

    @property
    def act(self) -> str | None:
        """The ANN activation trained (``qcfs``, ``nq``, ``clipq``, ``relu``, ...)."""
        return self.model_kwargs.get("act") or self.raw.get("activation")

    @property
    def levels(self) -> int | None:
        """The activation's quantization levels L."""
        return self.model_kwargs.get("levels") or self.raw.get("levels")

    @property
    def task(self) -> str:
        """``"classification"`` or ``"detection"``."""
        return self.raw.get("task") or "classification"

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) of one input image when the record holds it."""
        size, channels = self.model_kwargs.get("image_size"), self.model_kwargs.get("in_channels")
        if not (size and channels):
            return None
        hw = (size, size) if isinstance(size, int) else tuple(size)
        return (int(channels), *hw)

    def summary(self) -> dict[str, Any]:
        """The fields a report repeats about the run it evaluates."""
        keys = ("model", "model_kwargs", "epoch", "metrics", "recipe", "task")
        return {k: self.raw.get(k) for k in keys if k in self.raw or k != "task"}
