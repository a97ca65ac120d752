"""The official MCP conformance suite (npm `@modelcontextprotocol/conformance`), at the fixture
upstream itself and through the gateway: every scenario that passes at the fixture passes through
the gateway, whatever it exercises (tools, resources, prompts, completion, elicitation, streams).

The suite and the Node 22 it needs come from the npm registry, cached under
`.tenantry/conformance`; where npm or the registry cannot be had, these tests skip and say why.
The pieces are the ones `scripts/conformance.sh` runs (docs/conformance.md): the fixture
(`scripts/conformance_fixture.py`), the shim that adds the tenant headers and undoes the gateway's
namespacing (`scripts/conformance_shim.py`), and the suite's runner and judge
(`scripts/conformance_suite.py`). The gateway is this run's, on loopback, in the mode that relays
what an upstream sends mid-call (stateful sessions, SSE answers) and with its DNS-rebinding check on.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests import conftest

SCRIPTS = conftest.ROOT / "scripts"
CACHE = conftest.ROOT / ".tenantry" / "conformance"
LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*"]
LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*"]

# npm may need minutes on a slow registry; the suite itself runs in seconds.
pytestmark = pytest.mark.timeout(600)


def _script_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


suite_module = _script_module("conformance_suite")


@contextmanager
def _process(args: list[str], answers_at: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run a helper server as its own process until the block ends; wait (bounded) until it answers."""
    # Its output goes where the test's goes: pytest captures it, and shows it when the test fails.
    proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.post(answers_at, timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{args[0]} did not answer at {answers_at}") from None
            threading.Event().wait(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a stream a client left open can hold a graceful shutdown
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def suite() -> Any:
    try:
        return suite_module.install(CACHE)
    except suite_module.Unavailable as exc:
        pytest.skip(f"official MCP conformance suite not run: {exc}")


@pytest.fixture(scope="module")
def fixture_url() -> Iterator[str]:
    port = conftest.free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with _process([str(SCRIPTS / "conformance_fixture.py"), str(port)], url):
        yield url


@pytest.fixture(scope="module")
def direct_run(suite: Any, fixture_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("direct")
    suite.run(fixture_url, out)
    return out


@pytest.fixture(scope="module")
def direct(direct_run: Path) -> dict[str, bool]:
    verdicts: dict[str, bool] = suite_module.verdicts(direct_run)
    return verdicts


def test_the_fixture_upstream_passes_every_scenario_of_the_suite(direct: dict[str, bool]) -> None:
    assert direct, "the suite ran no scenario"
    assert all(direct.values()), suite_module.table(direct, {})


@contextmanager
def _gateway_to(fixture_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """This run's gateway with a tenant whose upstream `fx` is the fixture: its URL and the tenant's headers."""
    settings = conftest.test_settings(
        mcp_stateful=True,
        mcp_json_response=False,
        mcp_allowed_hosts=LOOPBACK_HOSTS,
        mcp_allowed_origins=LOOPBACK_ORIGINS,
    )
    with conftest.serve(settings) as url:
        admin = {"Authorization": f"Bearer {conftest.ADMIN_KEY}"}
        with httpx.Client(base_url=url, headers=admin, timeout=30) as http:
            tenant = http.post("/api/tenants", json={"name": "conformance"})
            assert tenant.status_code == 201, tenant.text
            tid = tenant.json()["id"]
            upstream = http.post(f"/api/tenants/{tid}/upstreams", json={"name": "fx", "url": fixture_url})
            assert upstream.status_code == 201, upstream.text
            key = http.post(f"/api/tenants/{tid}/keys", json={"name": "conformance"})
            assert key.status_code == 201, key.text
        yield url, {"TENANT_ID": tid, "API_KEY": key.json()["secret"]}


@pytest.fixture(scope="module")
def gateway_run(suite: Any, settings: object, fixture_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite through the gateway (via the shim), once for the module: its results directory.

    (`settings` is asked for the database it migrates, which the gateway built here uses.)"""
    out = tmp_path_factory.mktemp("gateway")
    with _gateway_to(fixture_url) as (gateway_url, tenant):
        port = conftest.free_port()
        shim_url = f"http://127.0.0.1:{port}/mcp"
        env = {"GATEWAY": gateway_url, "UPSTREAM": "fx", **tenant}
        with _process([str(SCRIPTS / "conformance_shim.py"), str(port)], shim_url, env):
            suite.run(shim_url, out)
    return out


def test_every_scenario_that_passes_at_the_fixture_passes_through_the_gateway(
    direct: dict[str, bool], gateway_run: Path
) -> None:
    gateway = suite_module.verdicts(gateway_run)
    table = suite_module.table(direct, gateway)
    print(table)  # the side-by-side verdicts, for `pytest -s` and the failure report
    assert set(gateway) == set(direct), table
    assert suite_module.regressions(direct, gateway) == [], table


def test_an_agent_is_listed_through_the_gateway_what_the_fixture_lists(direct_run: Path, gateway_run: Path) -> None:
    # The listing scenarios pass on an empty list; an agent that sees no resources would not call that a pass.
    differences = suite_module.listing_differences(
        suite_module.listings(direct_run), suite_module.listings(gateway_run)
    )
    assert differences == [], "\n".join(differences)
