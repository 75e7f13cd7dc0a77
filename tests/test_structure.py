"""The package's shape, checked from its source: wings on floors with every import pointing
down (function-level imports included), no import cycle, short functions, a small public
face, and the entry points that run it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import ann2snn

PKG = Path(ann2snn.__file__).parent

# Each wing or top-level module and its floor: a unit may import only units on lower
# floors (and itself). The order is the design; a new import that breaks it is a new
# upward arrow, and this table is where to decide whether the unit belongs higher.
FLOORS = {
    "_version": -1,
    "_util": 0, "_io": 0, "_progress": 0,
    "nn": 1, "data": 1,
    "conversion": 2, "simulation": 2,
    "models": 3, "calibration": 3, "deploy": 3, "report": 3,
    "detection": 4, "checkpoint": 4, "methods": 4, "evaluation": 4,
    "training": 5,
    "runs": 6,
    "demo": 7, "__init__": 7,
    "cli": 8, "__main__": 9,
}  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every package module ``name`` imports, anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.split(".")[0] == "ann2snn"}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_floor():
    assert {_unit(m) for m in MODULES} == set(FLOORS)


def test_imports_point_down():
    upward = [
        f"{name} → {target}"
        for name, path in MODULES.items()
        for target in _imports(name, path)
        if _unit(target) != _unit(name) and FLOORS[_unit(target)] >= FLOORS[_unit(name)]
    ]
    assert not upward, "imports that do not point to a lower floor:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules():
    # Package __init__ files count as modules: importing a wing runs its __init__.
    graph = {
        name: {t for t in _imports(name, path) if t in MODULES and t != name}
        for name, path in MODULES.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " → ".join([*stack[stack.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_no_function_longer_than_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                start = body[0].end_lineno + 1 if doc else node.lineno
                if node.end_lineno - start + 1 > 80:
                    long.append(f"{name}.{node.name}: {node.end_lineno - start + 1} lines")
    assert not long, long


def test_public_face_is_small_and_every_name_resolves():
    assert len(ann2snn.__all__) <= 55
    for name in ann2snn.__all__:
        assert getattr(ann2snn, name) is not None, name


@pytest.mark.parametrize("name", ["fold_bn", "init_thresholds", "PASSES", "biases_off", "neurons",
                                  "LayerDiff", "ActivityMonitor", "CalibrationLog", "Unrolled",
                                  "is_binarized", "SpikeScale", "load_record", "is_prepared"])  # fmt: skip
def test_names_moved_into_wings_are_still_importable_from_the_top(name):
    moved = getattr(ann2snn, name)
    home = ann2snn._MOVED[name]
    assert moved is getattr(__import__(f"ann2snn.{home}", fromlist=[name]), name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        ann2snn.no_such_name  # noqa: B018


def test_version_has_one_source():
    from importlib.metadata import version

    from ann2snn._io import versions

    assert ann2snn.__version__ == version("ann2snn") == versions()["ann2snn"]


def test_python_dash_m_ann2snn_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "ann2snn", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "eval" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "ann2snn", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"ann2snn {ann2snn.__version__}"


def test_import_ann2snn_is_light_and_names_load_on_first_use():
    code = "import sys, ann2snn; print('torch' in sys.modules); ann2snn.convert; print('torch' in sys.modules)"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "True"], out.stderr
    assert set(ann2snn.__all__) <= set(dir(ann2snn))


def test_ctrl_c_while_the_cli_is_starting_is_one_line(monkeypatch, capsys):
    import importlib.abc

    import ann2snn.__main__ as entry

    class Interrupt(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ann2snn.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "ann2snn.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupt(), *sys.meta_path])
    assert entry.main() == 130
    assert capsys.readouterr().err == "ann2snn: interrupted while starting\n"
