"""Plans: what each plan allows a tenant, and what a call of each tool costs.

`Limits` is the one definition of a plan's limits: the settings hold one per
plan (`TENANTRY_PLAN_LIMITS`), a tenant's row may override any field
(`tenants.limits`), and each limit is enforced where what it counts is
written: the meter (`metering/meter.lua`) counts calls, reads, requests and
calls in flight in Redis; the data store counts stored bytes and keys in
PostgreSQL (`tools/data_store.py`, table `tenant_storage`); creating an
upstream counts upstreams (`federation/registry.py`); the catalog counts the
tools it exposes (`gateway/catalog.py`). `metering/quotas.py` shows every kind
as used/limit. A plan or override change applies at the next request: the
merged limits travel with the tenant's resolved credential, which every
change of the tenant row makes every replica forget.

`PlanBook` merges a plan with a tenant's overrides once per distinct pair and
shares the result, so the hot path only looks it up.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tenantry.errors import BadRequest

if TYPE_CHECKING:
    from tenantry.settings import Settings


class Limits(BaseModel):
    """What one plan allows a tenant. `None` means no limit of that kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calls_per_window: int | None = Field(default=None, ge=0)  # quota units per window
    window_seconds: int = Field(default=3600, ge=1, le=31 * 86_400)
    requests_per_minute: int | None = Field(default=None, ge=0)  # MCP + REST requests, per tenant
    max_concurrent: int | None = Field(default=None, ge=0)  # in-flight tool calls, per tenant
    reads_per_window: int | None = Field(default=None, ge=0)  # resource-read units per window (window_seconds)
    storage_bytes: int | None = Field(default=None, ge=0, le=2**50)  # data store: UTF-8 key + canonical JSON value
    storage_keys: int | None = Field(default=None, ge=0, le=2**31 - 1)  # data store: keys held
    max_upstreams: int | None = Field(default=None, ge=0, le=100_000)  # upstream MCP servers registered
    max_tools: int | None = Field(default=None, ge=0, le=1_000_000)  # tools exposed: built-ins + upstream tools
    # When Redis is unreachable: admit unmetered and record the pass (True), or refuse (False).
    fail_open: bool = False

    @property
    def window_ms(self) -> int:
        return self.window_seconds * 1000

    @property
    def unmetered(self) -> bool:
        """No limit the meter keeps: it has nothing to check or count, and does not touch Redis."""
        return (
            self.calls_per_window is None
            and self.requests_per_minute is None
            and self.max_concurrent is None
            and self.reads_per_window is None
        )


_MIB = 1_048_576

# Each paid step is roughly ten times the one below; keys stay within TENANTRY_DATA_MAX_KEYS_PER_TENANT
# (10,000 by default, a hard cap for every plan), and tools leave room for a few upstreams' worth.
DEFAULT_PLAN_LIMITS: dict[str, Limits] = {
    "free": Limits(
        calls_per_window=100,
        requests_per_minute=120,
        max_concurrent=4,
        fail_open=False,
        reads_per_window=500,
        storage_bytes=10 * _MIB,
        storage_keys=1_000,
        max_upstreams=3,
        max_tools=50,
    ),
    "starter": Limits(
        calls_per_window=1_000,
        requests_per_minute=600,
        max_concurrent=16,
        fail_open=True,
        reads_per_window=5_000,
        storage_bytes=100 * _MIB,
        storage_keys=5_000,
        max_upstreams=10,
        max_tools=200,
    ),
    "pro": Limits(
        calls_per_window=10_000,
        requests_per_minute=3_000,
        max_concurrent=64,
        fail_open=True,
        reads_per_window=50_000,
        storage_bytes=1_024 * _MIB,
        storage_keys=10_000,
        max_upstreams=50,
        max_tools=1_000,
    ),
    # Unlimited: the meter does not touch Redis at all for these tenants, and nothing else is capped.
    "enterprise": Limits(fail_open=True),
}

OVERRIDABLE = frozenset(Limits.model_fields)


def validate_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` if every key is a limit with a valid value; else a 400 that names the problem."""
    unknown = set(overrides) - OVERRIDABLE
    if unknown:
        raise BadRequest(f"unknown limit(s) {sorted(unknown)}; limits are {sorted(OVERRIDABLE)}", code="invalid_limits")
    try:
        Limits.model_validate(overrides, strict=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise BadRequest(problems, code="invalid_limits") from None
    return overrides


# A plan since removed from the settings admits nothing until the tenant is moved.
_REMOVED_PLAN = Limits(calls_per_window=0)


class PlanBook:
    def __init__(self, settings: Settings) -> None:
        self._plans = settings.plan_limits
        self._tool_costs = settings.tool_costs
        self._cache: dict[tuple[str, str], Limits] = {}

    def limits(self, plan: str, overrides: dict[str, Any] | None = None) -> Limits:
        """The plan's limits with the tenant's `overrides` applied."""
        key = (plan, json.dumps(overrides, sort_keys=True) if overrides else "")
        found = self._cache.get(key)
        if found is None:
            base = self._plans.get(plan) or _REMOVED_PLAN
            found = base.model_copy(update=overrides) if overrides else base
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = found
        return found

    def cost(self, tool: str, default: int = 1) -> int:
        return self._tool_costs.get(tool, default)
