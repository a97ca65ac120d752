"""The house's floors: no module imports from a package above it, and the runtime never imports the dev tooling.

Each top-level module or package of `tenantry` has a floor; a module may import
from lower floors and from its own package, never from a higher floor or a
sibling on the same floor. Imports under `if TYPE_CHECKING:` do not count (they
run only in the type checker). A new top-level module must be given a floor
here, which is the moment to decide where it belongs.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SRC = ROOT / "src" / "tenantry"

FLOORS: dict[str, int] = {
    # things every floor may use
    "__init__": -1,  # the package itself: its version
    "errors": 0,
    "observability": 0,
    "secrets": 0,
    "metrics": 0,
    "client": 0,
    "ids": 0,
    "plans": 1,
    "tls": 1,
    "balancer": 1,  # stdlib only: `tenantry balance`
    "settings": 2,
    "tenancy": 2,
    # storage and the per-call services
    "db": 3,
    "auth": 4,
    "metering": 4,
    "migrations": 4,
    "dev": 4,
    "tenants": 5,
    "tiers": 5,
    "audit": 5,
    # what a call runs, and what runs around calls
    "tools": 6,
    "tier_moves": 6,  # moves a plan change made due (run by billing's lifespan task)
    "federation": 7,
    "billing": 7,
    "governance": 7,
    # the MCP face, every long-lived object, the REST face
    "gateway": 8,
    "services": 9,
    "api": 10,
    # the composition root and the command line
    "app": 11,
    "cli": 12,
}
# Development tooling starts servers and creates users: only the `tenantry dev` command may reach it.
DEV_TOOLING_USERS = {"cli", "dev"}


def _top(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tenantry" or len(parts) < 2:
        return None
    # `from tenantry import X`: X is a module, or a name of the package's own `__init__` (its version).
    return parts[1] if (SRC / parts[1]).exists() or (SRC / f"{parts[1]}.py").exists() else "__init__"


def _runtime_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of each `tenantry` import that runs at import or call time."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "tenantry" else [f"tenantry.{a.name}" for a in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("tenantry.")]


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        out.append((rel.parts[0].removesuffix(".py"), path))
    return out


def test_every_top_level_module_has_a_floor() -> None:
    tops = {top for top, _ in _modules() if top != "__init__"}
    assert tops - set(FLOORS) == set(), "give these a floor in tests/test_layers.py"


def test_no_module_imports_from_a_floor_above_it_or_beside_it() -> None:
    wrong = []
    for top, path in _modules():
        if top == "__init__":
            continue
        for line, module in _runtime_imports(ast.parse(path.read_text())):
            target = _top(module)
            if target is None or target == top:
                continue
            if FLOORS[target] >= FLOORS[top]:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line} ({top}, floor {FLOORS[top]}) imports {module} "
                    f"(floor {FLOORS[target]})"
                )
    assert wrong == []


def test_only_the_dev_command_reaches_the_development_tooling() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}"
        for top, path in _modules()
        for line, module in _runtime_imports(ast.parse(path.read_text()))
        if _top(module) == "dev" and top not in DEV_TOOLING_USERS
    ]
    assert wrong == []
