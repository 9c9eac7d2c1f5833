"""``benchmarks/`` is a package: no ``sys.path`` edits, siblings imported through it.

Every script must run as ``python -m benchmarks.NAME`` (and, installed, as
``python benchmarks/NAME.py``), which only holds when no module puts ``benchmarks/`` or the
repository root on ``sys.path`` and imports its siblings as top-level modules. The optional peers
are imported in one place, ``benchmarks/peers.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
MODULES = sorted(BENCH.glob("*.py"))
SIBLINGS = {p.stem for p in MODULES} - {"__init__"}
PEERS = {"k_diffusion", "diffusers"}


def _imports(tree: ast.AST) -> list[tuple[int, int, str]]:
    """``(line, level, dotted name)`` of every import, nested ones included."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, 0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, node.level, node.module or ""))
    return out


def _sys_path_uses(tree: ast.AST) -> list[int]:
    """Lines that touch ``sys.path`` (``sys.path.insert``, ``sys.path[:0] = ...``, ...)."""
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr == "path"
                and isinstance(node.value, ast.Name) and node.value.id == "sys"):
            lines.append(node.lineno)
        elif (isinstance(node, ast.ImportFrom) and node.module in ("sys", "site")
              and any(a.name in ("path", "addsitedir") for a in node.names)):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Attribute) and node.attr == "addsitedir"
              and isinstance(node.value, ast.Name) and node.value.id == "site"):
            lines.append(node.lineno)
    return lines


def test_benchmarks_is_a_package():
    assert (BENCH / "__init__.py").is_file()
    assert {"common", "peers"} <= SIBLINGS


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_no_sys_path_edits_and_no_bare_sibling_imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert not _sys_path_uses(tree), f"{path.name} touches sys.path at {_sys_path_uses(tree)}"
    for line, level, name in _imports(tree):
        where = f"{path.name}:{line}"
        # relative imports break `python benchmarks/NAME.py` (no parent package there)
        assert level == 0, f"{where}: relative import; use `from benchmarks... import ...`"
        assert name.split(".")[0] not in SIBLINGS, (
            f"{where}: bare sibling import `{name}`; use `from benchmarks.{name} import ...`")


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_peers_are_imported_only_in_peers_py(path):
    if path.name == "peers.py":
        return
    tree = ast.parse(path.read_text(), filename=str(path))
    for line, _, name in _imports(tree):
        assert name.split(".")[0] not in PEERS, (
            f"{path.name}:{line} imports {name}; go through benchmarks.peers")


HELP_SCRIPTS = ("samplers", "likelihood")  # cheap: nothing is built at import


def test_help_runs_as_a_module():
    # Started together: each process spends most of its time importing torch.
    procs = {name: subprocess.Popen([sys.executable, "-m", f"benchmarks.{name}", "--help"],
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
             for name in HELP_SCRIPTS}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"python -m benchmarks.{name} --help: {err}"
        assert out.startswith("usage:"), out
