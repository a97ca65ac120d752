"""From a tenant's plan (and its own overrides) to the `Limits` the meter enforces.

Plans are settings (`TENANTRY_PLAN_LIMITS`); a tenant's row may override any
field of its plan (`tenants.limits`, set by an admin). The result is computed
once per (plan, overrides) and shared, so the hot path only looks it up.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from tenantry.errors import BadRequest
from tenantry.metering.meter import Limits
from tenantry.settings import PlanLimits, Settings

OVERRIDABLE = frozenset(PlanLimits.model_fields)


def validate_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` if every key is a plan field with a valid value; else a 400 that names the problem."""
    unknown = set(overrides) - OVERRIDABLE
    if unknown:
        raise BadRequest(f"unknown limit(s) {sorted(unknown)}; limits are {sorted(OVERRIDABLE)}", code="invalid_limits")
    try:
        PlanLimits.model_validate(overrides, strict=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise BadRequest(problems, code="invalid_limits") from None
    return overrides


class PlanBook:
    def __init__(self, settings: Settings) -> None:
        self._plans = settings.plan_limits
        self._tool_costs = settings.tool_costs
        self._cache: dict[tuple[str, str], Limits] = {}

    def limits(self, plan: str, overrides: dict[str, Any] | None = None) -> Limits:
        key = (plan, json.dumps(overrides, sort_keys=True) if overrides else "")
        found = self._cache.get(key)
        if found is None:
            # A plan since removed from the settings admits nothing until the tenant is moved.
            base = self._plans.get(plan) or PlanLimits(calls_per_window=0)
            merged = base.model_copy(update=overrides or {})
            found = Limits(
                calls_per_window=merged.calls_per_window,
                window_seconds=merged.window_seconds,
                requests_per_minute=merged.requests_per_minute,
                max_concurrent=merged.max_concurrent,
                fail_open=merged.fail_open,
            )
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = found
        return found

    def cost(self, tool: str, default: int = 1) -> int:
        return self._tool_costs.get(tool, default)
