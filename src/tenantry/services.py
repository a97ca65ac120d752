"""The objects the app is made of, built once in the lifespan and torn down in reverse."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from tenantry.audit.maintenance import AuditMaintenance
from tenantry.audit.trail import AuditTrail
from tenantry.auth.issuers import TenantIssuers
from tenantry.auth.resolver import CredentialResolver
from tenantry.billing.runtime import Billing
from tenantry.db.engine import Database
from tenantry.db.listener import ChangeListener
from tenantry.federation.changes import UpstreamChanges
from tenantry.federation.discovery import Discovery
from tenantry.gateway.calls import ToolCalls
from tenantry.gateway.catalog import Catalog
from tenantry.gateway.server import Gateway
from tenantry.governance.kills import KillSwitch
from tenantry.governance.store import Policies
from tenantry.metering.cluster import ClusterClient
from tenantry.metering.commands import RedisCommands, RedisPyCommands
from tenantry.metering.drain import LedgerDrainer
from tenantry.metering.ledger import Ledger
from tenantry.metering.meter import Meter
from tenantry.metering.resp import RespClient
from tenantry.metrics import Metrics
from tenantry.observability import Tracing
from tenantry.plans import Limits, PlanBook
from tenantry.secrets import SecretBox
from tenantry.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    redis: Redis
    metrics: Metrics
    tracing: Tracing
    resolver: CredentialResolver
    calls: ToolCalls
    gateway: Gateway
    plans: PlanBook
    meter: Meter
    ledger: Ledger
    drainer: LedgerDrainer
    secrets: SecretBox
    discovery: Discovery  # each tenant's upstream tools; its pool holds the upstream sessions
    listener: ChangeListener
    changes: UpstreamChanges
    policies: Policies
    kills: KillSwitch
    issuers: TenantIssuers
    billing: Billing | None = None
    hot: RedisCommands | None = None  # the meter's and the ledger's per-call commands
    drain_client: RedisCommands | None = None  # the drainer's own connection
    audit: AuditTrail | None = None
    audit_maintenance: AuditMaintenance | None = None  # the trail's partitions and retention
    catalog: Catalog | None = None  # the tools each tenant sees (counted for its `max_tools` quota)

    async def tool_counts(self, tenant_id: uuid.UUID, limits: Limits) -> tuple[int, int] | None:
        """The catalog's (exposed, offered) tool count of the tenant, for its `max_tools` quota."""
        return None if self.catalog is None else await self.catalog.tool_counts(tenant_id, limits)

    @property
    def commands(self) -> RedisCommands:
        """Redis commands routed as the meter's are (to the right master on a Redis Cluster), for the rest
        of the app's keys (the console's sessions, the ledger's health)."""
        return self.hot if self.hot is not None else RedisPyCommands(self.redis)

    async def aclose_redis(self) -> None:
        """Close every Redis client."""
        for client in (self.hot, self.drain_client):
            if isinstance(client, RespClient | ClusterClient):
                await client.aclose()
        await self.redis.aclose()
