"""What the call pipeline asks of governance, in the order it asks (`gateway/calls.py`).

    stopped(principal, tool)      a kill or a throttle stops the call         -> the refusal, or None
    policy(principal)             the tenant's compiled policy                -> Policy, or None (no policy)
    denied(principal, policy, t)  the policy refused the call: count it       -> a probing trigger's refusal
    shape(principal, policy, ...) the arguments the tool gets; loop counted   -> raises the refusal
    running(principal, tool)      around the execution: a kill cancels it

A tenant without a policy and with nothing killed pays a dictionary lookup or two per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantry.errors import TenantryError
from tenantry.governance.kills import InFlight, KillSwitch
from tenantry.governance.policy import Policy
from tenantry.governance.store import Policies
from tenantry.governance.triggers import TriggerWatch
from tenantry.tenancy import Principal

# Refused by the tenant's policy, a kill or a trigger: counted apart in /metrics, never billed.
GOVERNANCE_CODES = frozenset(
    {"tool_forbidden", "argument_forbidden", "argument_invalid", "killed", "throttled", "pii_blocked"}
)


class Gate:
    def __init__(self, policies: Policies, kills: KillSwitch, triggers: TriggerWatch) -> None:
        self.policies = policies
        self.kills = kills
        self.triggers = triggers

    def stopped(self, principal: Principal, tool: str) -> TenantryError | None:
        kill = self.kills.stops(principal, tool)
        return kill.refusal() if kill is not None else self.triggers.throttled(principal)

    async def policy(self, principal: Principal) -> Policy | None:
        return await self.policies.for_tenant(principal.tenant_id)

    async def denied(self, principal: Principal, policy: Policy | None, tool: str) -> TenantryError | None:
        if policy is None or policy.triggers.probing is None:
            return None
        return await self.triggers.denied(principal, policy, tool)

    async def shape(
        self, principal: Principal, policy: Policy | None, tool: str, arguments: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """The arguments `tool` runs with. Raises the refusal: an argument rule's, or a trigger's."""
        if policy is None:
            return arguments
        shaped = policy.shape(principal, tool, arguments)
        if policy.triggers.loop is not None:
            refusal = await self.triggers.call(principal, policy, tool, shaped)
            if refusal is not None:
                raise refusal
        return shaped

    def running(self, principal: Principal, tool: str) -> Any:
        """A context manager yielding the call's `InFlight` (its `killed_by` is set if a kill cancels it)."""
        return self.kills.running(principal, tool)


__all__ = ["GOVERNANCE_CODES", "Gate", "InFlight"]
