"""docs/DESIGN.md's import direction holds in the code ("Layout and import direction").

The coordinator and the sites are deployed as separate processes that share only the
lower packages, so an import across them (even a lazy one inside a function) would pull
one role's code, and its dependencies, into the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("skeletons", "models", "strategies", "client", "server", "privacy", "simulations")

# package -> the project packages it may import (besides itself)
ALLOWED = {
    "models": {"skeletons"},
    "strategies": {"skeletons", "models"},
    "server": {"skeletons", "models", "strategies", "privacy"},
    "client": {"skeletons", "models", "privacy"},
}


def project_imports(package: str) -> dict[str, set[str]]:
    """Each project package that ``package`` imports -> the files that import it, lazy
    imports inside functions included."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_scanner_sees_lazy_imports() -> None:
    # server/federation.py imports privacy.coordinator inside a function only
    assert "server/federation.py" in project_imports("server")["privacy"]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_design_allows(package: str) -> None:
    extra = {top: files for top, files in project_imports(package).items() if top not in ALLOWED[package]}
    assert not extra, f"{package} imports {extra}; docs/DESIGN.md allows only {sorted(ALLOWED[package])}"


def test_nothing_imports_simulations() -> None:
    importers = {package: project_imports(package).get("simulations") for package in PACKAGES if package != "simulations"}
    assert not any(importers.values()), importers
