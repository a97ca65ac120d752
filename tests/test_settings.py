"""Settings refuse what would be unsafe in production and read what operators set the standard way."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from tenantry.settings import Settings

PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "admin_api_key": "a" * 32,
    "ops_api_key": "o" * 32,
    "jwt_secret": "j" * 40,
    "secret_keys": ["cHJvZHVjdGlvbi1rZXktMDEyMzQ1Njc4OWFiY2RlZmc="],
}


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_production_deployment_has_its_own_ops_key_distinct_from_the_admin_key() -> None:
    assert make(**PRODUCTION).ops_api_key == "o" * 32
    with pytest.raises(ValidationError, match="TENANTRY_OPS_API_KEY must be set"):
        make(**{**PRODUCTION, "ops_api_key": "dev-ops-key-change-me"})
    with pytest.raises(ValidationError, match="must differ from the admin key"):
        make(**{**PRODUCTION, "ops_api_key": "a" * 32})


def test_a_database_password_needs_no_url_escaping() -> None:
    password = "p@ss:w/rd?#%"
    settings = make(database_url="postgresql+asyncpg://owner@db.example:5432/tenantry", database_password=password)
    url = make_url(settings.owner_database_url)
    assert (url.username, url.password, url.host, url.database) == ("owner", password, "db.example", "tenantry")
    assert make(database_url="postgresql+asyncpg://owner:inline@db/t").owner_database_url.endswith("owner:inline@db/t")


def test_traces_follow_the_standard_otel_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not make().tracing
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    assert make().tracing
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not make().tracing


def test_logs_are_text_for_development_and_json_elsewhere_unless_chosen() -> None:
    assert not make().json_logs
    assert make(environment="test").json_logs
    assert make(environment="test", log_format="text").json_logs is False
    assert make(log_format="json").json_logs


def test_behind_a_transaction_pooler_listen_and_migrations_need_a_direct_url() -> None:
    pooled = "postgresql+asyncpg://owner@pgbouncer:6432/tenantry"
    with pytest.raises(ValidationError, match="TENANTRY_DATABASE_DIRECT_URL"):
        make(database_url=pooled, db_transaction_pooler=True)
    settings = make(
        database_url=pooled,
        database_password="pw",
        db_transaction_pooler=True,
        database_direct_url="postgresql+asyncpg://owner@db:5432/tenantry",
    )
    direct = make_url(settings.direct_database_url)
    assert (direct.host, direct.port, direct.password) == ("db", 5432, "pw")
    assert make(database_url=pooled).direct_database_url == pooled  # no pooler: one URL for everything
