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
