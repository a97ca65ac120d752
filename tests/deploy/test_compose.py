"""docker-compose.yml, checked without a Docker engine (none runs where the suite does): every gateway's
environment is a configuration the gateway itself accepts, and the replicas profile is wired the way
`tests/test_replicas.py` proves the topology works: three replicas, each reachable by the others at the
address it announces, and the balancer in front of exactly those three."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tenantry.cli import build_parser
from tenantry.settings import Settings

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
GATEWAYS = sorted(name for name, service in SERVICES.items() if name.startswith("gateway"))
# What an operator exports before `docker compose up` (the file refuses to start without the ${X:?} ones).
EXPORTED = {
    "POSTGRES_PASSWORD": "owner password",
    "TENANTRY_DB_APP_PASSWORD": "app password",
    "TENANTRY_ADMIN_API_KEY": "a" * 32,
    "TENANTRY_OPS_API_KEY": "o" * 32,
    "TENANTRY_JWT_SECRET": "j" * 40,
    "TENANTRY_SECRET_KEYS": '["Zm9yLXRlc3RzLW9ubHktMDEyMzQ1Njc4OWFiY2RlZmc="]',
}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:[?-])(?P<arg>[^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`, from EXPORTED."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name in EXPORTED:
            return EXPORTED[name]
        assert op != ":?", f"{name} is required by the file but not exported here"
        return arg if op == ":-" else ""

    return _VARIABLE.sub(one, value)


def environment(service: str) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in (SERVICES[service].get("environment") or {}).items()}


@pytest.mark.parametrize("service", [*GATEWAYS, "migrate"])
def test_each_gateway_environment_is_a_production_configuration_the_gateway_accepts(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    env = environment(service)
    for name, value in env.items():
        if name.startswith("TENANTRY_"):
            assert name.removeprefix("TENANTRY_") in fields, f"{service}: {name} is not a setting"
            monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.environment == "production"
    assert settings.database_password == "owner password"


def test_the_replicas_profile_puts_the_balancer_in_front_of_exactly_the_three_replicas() -> None:
    assert GATEWAYS == ["gateway", "gateway-2", "gateway-3"]
    balancer = SERVICES["balancer"]
    assert balancer["profiles"] == ["replicas"]
    args = build_parser().parse_args(balancer["command"][1:])  # the CLI accepts the command as written
    assert sorted(args.backend) == sorted(f"{name}:8000" for name in GATEWAYS)
    assert set(balancer["depends_on"]) == set(GATEWAYS)
    for name in GATEWAYS:
        # Each replica announces the address the others forward its sessions to: its own service name.
        assert environment(name)["TENANTRY_REPLICA_URL"] == f"http://{name}:8000"
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in GATEWAYS[1:]:
        assert SERVICES[name]["profiles"] == ["replicas"]  # a plain `up` stays one gateway
    # The replicas share the first gateway's configuration, apart from their own address.
    first = {k: v for k, v in environment("gateway").items() if k != "TENANTRY_REPLICA_URL"}
    for name in GATEWAYS[1:]:
        assert {k: v for k, v in environment(name).items() if k != "TENANTRY_REPLICA_URL"} == first
