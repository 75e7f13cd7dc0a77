"""The docs run: every ```python block of README.md and docs/*.md is executed, and every
``ann2snn ...`` command line of a ```bash block is parsed by the CLI's own parser.

A file's Python blocks run in order in one namespace, as a reader pasting them would, in a
fresh working folder, on a small stand-in Fashion-MNIST written in the real IDX format
(`_fmnist.py`: 300 training and 100 test images), so blocks that train run as written in
seconds. A block preceded by a visible ``*Not run by the tests: REASON*`` line is skipped and
reported with its reason (pytest -rs shows them).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import _fmnist
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(
    r"(?:\*Not run by the tests: (?P<why>[^*]*)\*\s*\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S
)


def _blocks(path: Path, lang: str) -> list[tuple[int, str, str | None]]:
    """(line number, code, reason it is not run) of each ```lang block of ``path``."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start("code")) + 1, m["code"], m["why"])
        for m in _FENCE.finditer(text)
        if m["lang"] == lang
    ]


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p, "python")], ids=_name)
def test_python_blocks_run_in_order(path, tmp_path, monkeypatch):
    """A file's blocks, in order, in one namespace; a failure names the file and line."""
    _fmnist.isolate_data(monkeypatch, tmp_path)
    data = _fmnist.write_fashion_mnist(tmp_path / "fashion-mnist")
    monkeypatch.setenv("ANN2SNN_DATA", str(data))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__docs__"}
    skipped = []
    for line, code, why in _blocks(path, "python"):
        if why:
            skipped.append(f"{_name(path)}:{line}: {why}")
            continue
        try:
            exec(compile(code, f"{_name(path)}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{_name(path)}, block at line {line}: {err!r}") from err
    if skipped:  # the blocks above ran; say which were not run, and why
        pytest.skip("not run: " + "; ".join(skipped))


def _command_lines(path: Path) -> list[tuple[int, str]]:
    """Each ``ann2snn ...`` line of the file's bash blocks (continuations joined)."""
    lines = []
    for start, code, _ in _blocks(path, "bash"):
        joined = re.sub(r"\\\n\s*", " ", code)
        for offset, line in enumerate(joined.splitlines()):
            command = line.split(" #")[0].strip()
            if command.startswith(("ann2snn ", "torchrun ")) and "..." not in command:
                lines.append((start + offset, command))
    return lines


@pytest.mark.parametrize("path", [p for p in DOCS if _command_lines(p)], ids=_name)
def test_cli_lines_parse(path):
    """Every documented command is one the CLI accepts (flags, choices, types)."""
    from ann2snn.cli import build_parser

    for line, command in _command_lines(path):
        argv = shlex.split(command.split(" > ")[0])
        if argv[0] == "torchrun":  # torchrun [its options] -m ann2snn ARGS
            argv = argv[argv.index("ann2snn") :]
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exit:
            raise AssertionError(f"{_name(path)}:{line}: {command!r} does not parse") from exit


# ----------------------------------------------------------------------------- API page

_API_SECTIONS = (
    ("The workflow", "prepare"),
    ("Building blocks", "QCFS"),
    ("Registries", "create_activation"),
    ("Errors", "ConversionError"),
)  # each section starts at this name of ann2snn.__all__


def _home(name: str) -> str:
    """Where mkdocstrings finds ``ann2snn.<name>``: the module that defines it (a wing's
    module can share a function's name: ``ann2snn.simulation.activity``)."""
    import importlib

    import ann2snn

    obj = getattr(ann2snn, name)
    module = getattr(obj, "__module__", None)
    if module and hasattr(importlib.import_module(module), name):
        return f"{module}.{name}"
    return f"ann2snn.{ann2snn._HOME[name]}.{name}"


def api_page() -> str:
    """docs/api.md: one entry per public name, in `ann2snn.__all__`'s order."""
    import ann2snn

    names = [n for n in ann2snn.__all__ if n != "__version__"]
    starts = {start: title for title, start in _API_SECTIONS}
    lines = [
        "# API reference",
        "",
        "Every name `import ann2snn` gives, documented from its docstring (`ann2snn.convert` is",
        "defined in `ann2snn.conversion.converter`, and so on). Names one import deeper",
        "(`ann2snn.conversion.fold_bn`, `ann2snn.simulation.ActivityMonitor`, ...) are described",
        "in their modules. This page is generated: `python tests/test_docs.py`.",
    ]
    for name in names:
        if name in starts:
            lines += ["", f"## {starts[name]}"]
        lines += ["", f"::: {_home(name)}"]
    return "\n".join(lines) + "\n"


def test_api_page_documents_every_public_name():
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert page == api_page(), "docs/api.md is stale: run python tests/test_docs.py"


if __name__ == "__main__":  # regenerate docs/api.md
    (ROOT / "docs" / "api.md").write_text(api_page(), encoding="utf-8")
