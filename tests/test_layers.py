"""The package's layers: the math never imports the application, and nothing imports in a cycle.

Every import statement counts, also those inside functions (a lazy import hides a cycle, it does
not remove it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sde_gen

PKG = Path(sde_gen.__file__).parent
APP = "sde_gen.app"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """The ``sde_gen`` modules that module ``name`` imports (a package counts as its __init__)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_app(name: str) -> bool:
    return name == APP or name.startswith(APP + ".")


def test_graph_sees_the_package():
    assert len(GRAPH) > 40
    assert "sde_gen.sampling.sample" in GRAPH["sde_gen.sampling"]
    assert any(_is_app(m) for m in GRAPH["sde_gen.app.cli"])


def test_nothing_outside_the_application_imports_it():
    bad = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if not _is_app(m)
                 for d in deps if _is_app(d))
    assert not bad, "math/data imports the application: " + ", ".join(bad)


def test_math_does_not_import_the_datasets():
    data = [m for m in GRAPH if m.startswith("sde_gen.data")]
    bad = sorted(f"{m} -> {d}" for m, deps in GRAPH.items()
                 if not _is_app(m) and m not in data for d in deps if d in data)
    assert not bad, "math imports the data package: " + ", ".join(bad)


def _cycle() -> list[str] | None:
    """One import cycle of the graph (depth-first search), or None."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if colour.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in colour and (found := visit(d)):
                return found
        stack.pop()
        colour[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in colour and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_detector_finds_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "sde_gen.sde", GRAPH["sde_gen.sde"] | {"sde_gen.losses"})
    assert _cycle() is not None  # losses imports sde


def test_importing_the_math_loads_no_dataset_or_image_io():
    code = ("import sys, sde_gen.sampling, sde_gen.likelihood, sde_gen.analytic, sde_gen.losses; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('sde_gen.data', "
            "'sde_gen.app', 'PIL', 'torchvision', 'matplotlib', 'safetensors', 'typer')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
