"""Layers import one way only: schemas ← ledger ← ingest and pipelines ← the local stack, CLI, benches.

Walks every module's imports (at any depth: function-level imports count too) and fails
on an arrow that runs back up, naming the module, the line and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "ledger", "ingest", "pipelines")
TOP = ("pipelines.local", "pipelines.bench")
"""The top layer: the local stack, the CLI and the benchmarks may import any layer."""

ALLOWED = {
    "schemas": {"schemas"},
    "ledger": {"schemas", "ledger"},
    "ingest": {"schemas", "ledger", "ingest"},
    "pipelines": {"schemas", "ledger", "pipelines"},
}
"""What each layer may import, by top-level package (the top layer is checked apart)."""

HEAVY_FOR_LEDGER = ("apache_beam", "google.cloud")
"""The stored record's code runs in the gateway and the archiver too: never Beam or Pub/Sub."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _layer(module: str) -> str:
    if any(module == top or module.startswith(top + ".") for top in TOP):
        return "top"
    return module.split(".")[0]


MODULES = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _violations(path: Path) -> list[str]:
    module = _module_name(path)
    layer = _layer(module)
    found = []
    for line, imported in _imports(path):
        target = imported.split(".")[0]
        if target not in PACKAGES:
            if layer == "ledger" and imported.startswith(HEAVY_FOR_LEDGER):
                found.append(f"{module}:{line} imports {imported} (the stored record must not load it)")
            continue
        if layer == "top":
            continue
        if _layer(imported) == "top" or target not in ALLOWED[layer]:
            found.append(f"{module}:{line} imports {imported}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=[_module_name(path) for path in MODULES])
def test_imports_run_one_way(path: Path) -> None:
    assert _violations(path) == []


def test_the_walk_sees_an_arrow_back_up() -> None:
    # The check itself must be able to fail: a ledger module importing ingest, and one
    # importing Beam, inside a function.
    rogue = ROOT / "ledger" / "_layers_probe.py"
    rogue.write_text("def f():\n    import ingest.pubsub\n    from apache_beam import Pipeline\n")
    try:
        assert _violations(rogue) == [
            "ledger._layers_probe:2 imports ingest.pubsub",
            "ledger._layers_probe:3 imports apache_beam (the stored record must not load it)",
        ]
    finally:
        rogue.unlink()
