"""The documentation names what the code has: citation keys and the README's layout."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"\[([A-Z][A-Za-z]+\d{2}[a-z]*)\]")


def _sources() -> list[Path]:
    return [p for d in ("sde_gen", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py")]


def test_every_citation_key_is_in_the_references():
    listed = set(KEY.findall((ROOT / "docs" / "references.md").read_text()))
    used = {k: p for p in [*_sources(), ROOT / "README.md"] for k in KEY.findall(p.read_text())}
    missing = {k: str(p.relative_to(ROOT)) for k, p in used.items() if k not in listed}
    assert not missing, f"keys missing from docs/references.md: {missing}"


def test_readme_layout_names_every_module_and_subpackage():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```")[1]
    pkg = ROOT / "sde_gen"
    names = {p.name for p in pkg.glob("*.py") if p.name != "__init__.py"}
    names |= {f"{p.name}/" for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    for sub in ("app", "sampling", "likelihood", "nets", "data"):
        names |= {f"{sub}/{p.name}" for p in (pkg / sub).glob("*.py") if p.name != "__init__.py"}
    missing = sorted(n for n in names if n.rsplit("/", 1)[-1] not in block)
    assert not missing, f"README layout leaves out: {missing}"
