"""What the gateway imports at run time, it declares: every third-party module `src/tenantry` imports
comes with a runtime dependency of `pyproject.toml` (or one of theirs), never only with the test tools.

A module only the test extra brought in works in the test suite and breaks `scripts/run.sh` on a
fresh machine (it did: the identity-provider client imported `httpx`, a test tool). `tenantry.dev`
may use the `dev` extra, which `tenantry dev` needs and production does not.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

from tests.conftest import ROOT

SRC = ROOT / "src" / "tenantry"


def _closure(requirements: list[str], extras: frozenset[str] = frozenset()) -> set[str]:
    """The distributions `requirements` bring in, transitively (normalized names)."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, wanted = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        todo += [(Requirement(r), frozenset(req.extras)) for r in dist.requires or []]
    return seen


def _imports(path: ast.Module) -> set[str]:
    skipped: set[int] = set()
    for node in ast.walk(path):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    found = set()
    for node in ast.walk(path):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
    return found


def test_every_third_party_module_the_gateway_imports_comes_with_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _closure(project["dependencies"])
    dev = runtime | _closure(project["optional-dependencies"]["dev"])
    providers = metadata.packages_distributions()
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        allowed = dev if "dev" in path.relative_to(SRC).parts[:1] else runtime
        for module in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if module == "tenantry" or module in sys.stdlib_module_names or module == "__future__":
                continue
            dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
            if not dists & allowed:
                missing.append(
                    f"{path.relative_to(ROOT)} imports {module} ({', '.join(sorted(dists)) or 'not installed'})"
                )
    assert not missing, "imported but not a runtime dependency:\n" + "\n".join(missing)
