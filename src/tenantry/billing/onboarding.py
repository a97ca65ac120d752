"""Onboarding (Stripe checkout -> an active tenant) and offboarding, as idempotent, resumable steps.

Onboarding, for one `checkout.session.completed`:

1. `tenant_row`     upsert the tenant, status `provisioning`, keyed by the checkout
                    session (its id is a UUIDv5 of the session id) or, for a
                    returning customer, by the Stripe customer id;
2. `configuration`  plan (from `metadata.plan`) and default limits, while provisioning;
   `tier`           its plan's isolation tier provisioned (`tiers.place_tenant`: a schema or a
                    database; none for the shared tier; a repeat finds it there);
3. `api_key`        the first API key, made once; its secret is kept encrypted at rest
                    (Fernet, key derived from `TENANTRY_JWT_SECRET` by HKDF) until an
                    operator claims it, once, with `POST /api/tenants/{id}/onboarding-key`;
4. `stripe_ids`     customer and subscription ids (and parked usage is retried);
5. `canary`         `health_check` as the new tenant through the real MCP path (the SDK
                    client against `TENANTRY_GATEWAY_BASE_URL`), with a short-lived
                    canary token, the only credential a provisioning tenant is admitted with;
6. `activate`       status `active`, only now.

Every step reads what is there before it writes, so a retry after a failure
at any step finishes the job, and the same event twice ends in the same state.

Offboarding: revoke keys, report the remaining usage, archive the usage
ledger into `usage_archive`, soft-delete (`deleted_at`, ids kept).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from tenantry import tenants as tenant_service
from tenantry import tiers
from tenantry.auth.api_keys import create_key, revoke_all_keys
from tenantry.auth.jwt import issue_canary_token
from tenantry.billing.events import replay_unmatched
from tenantry.billing.reporter import Reporter, unpark_tenant, utcnow
from tenantry.billing.subscriptions import plan_for_checkout
from tenantry.client import call_tool
from tenantry.db.engine import Database
from tenantry.db.models import onboarding_keys, tenants
from tenantry.errors import Conflict, NotFound, Unavailable
from tenantry.settings import Settings
from tenantry.tenancy import TenantStatus

STEPS = ("tenant_row", "configuration", "tier", "api_key", "stripe_ids", "canary", "activate")
_NAMESPACE = uuid.UUID("1f0c2b8e-4d7a-5c39-9a51-7e3f0d2c6b14")

FaultHook = Callable[[str], Awaitable[None]]


def tenant_id_for_session(session_id: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"checkout:{session_id}")


def _fernet(settings: Settings) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tenantry onboarding keys").derive(
        settings.jwt_secret.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


@dataclass
class OnboardingResult:
    tenant_id: uuid.UUID
    status: str
    steps: list[str] = field(default_factory=list)
    canary: dict[str, Any] | None = None

    def public(self) -> dict[str, Any]:
        return {"tenant_id": str(self.tenant_id), "status": self.status, "steps": self.steps, "canary": self.canary}


class Onboarding:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        reporter: Reporter | None = None,
        fault: FaultHook | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._reporter = reporter
        self.fault = fault
        self.base_url = settings.self_base_url

    async def _at(self, step: str) -> None:
        if self.fault is not None:
            await self.fault(step)

    async def onboard(self, session: dict[str, Any]) -> OnboardingResult:
        session_id = str(session["id"])
        customer = session.get("customer")
        subscription = session.get("subscription")
        result = OnboardingResult(tenant_id=await self._tenant_row(session_id, customer, session), status="")
        tid = result.tenant_id
        result.steps.append("tenant_row")
        await self._at("tenant_row")

        async with self._db.system() as conn:
            row = (await conn.execute(select(tenants.c.status).where(tenants.c.id == tid))).one()
        if row.status != TenantStatus.PROVISIONING:
            result.status = row.status  # onboarded already (or changed since): nothing to redo
            return result

        async with self._db.system() as conn:
            # The checkout's plan, unless a subscription event already said better (a retry after replay).
            await tenant_service.configure_provisioning(conn, tid, plan_for_checkout(self._settings, session))
        result.steps.append("configuration")
        await self._at("configuration")

        # Its plan's isolation tier, before anything is stored (a repeated checkout finds it there).
        await tiers.place_tenant(self._db, self._settings, tid)
        result.steps.append("tier")
        await self._at("tier")

        key_id = await self._first_key(tid)
        result.steps.append("api_key")
        await self._at("api_key")

        if customer:
            try:
                async with self._db.system() as conn:
                    await conn.execute(
                        update(tenants)
                        .where(tenants.c.id == tid)
                        .values(
                            stripe_customer_id=str(customer),
                            stripe_subscription_id=func.coalesce(subscription, tenants.c.stripe_subscription_id),
                            updated_at=func.now(),
                        )
                    )
                    await unpark_tenant(conn, tid, utcnow())
                    await replay_unmatched(conn, self._settings, str(customer))
            except IntegrityError:
                raise Conflict(
                    f"Stripe customer {customer} belongs to another tenant", code="stripe_customer_taken"
                ) from None
        result.steps.append("stripe_ids")
        await self._at("stripe_ids")

        result.canary = await self.canary(tid, key_id)
        result.steps.append("canary")
        await self._at("canary")

        async with self._db.system() as conn:
            await tenant_service.activate_tenant(conn, tid)
        result.steps.append("activate")
        result.status = TenantStatus.ACTIVE
        return result

    async def _tenant_row(self, session_id: str, customer: Any, session: dict[str, Any]) -> uuid.UUID:
        async with self._db.system() as conn:
            found = (
                await conn.execute(select(tenants.c.id).where(tenants.c.checkout_session_id == session_id))
            ).scalar()
            if found is None and customer:
                found = (
                    await conn.execute(
                        select(tenants.c.id).where(
                            tenants.c.stripe_customer_id == str(customer), tenants.c.deleted_at.is_(None)
                        )
                    )
                ).scalar()
            if found is not None:
                return uuid.UUID(str(found))
            tid = tenant_id_for_session(session_id)
            await tenant_service.provision_tenant(
                conn, tid, name=_name(session), plan=self._settings.default_plan, checkout_session_id=session_id
            )
        return tid

    async def _first_key(self, tid: uuid.UUID) -> uuid.UUID:
        async with self._db.system() as conn:
            # Two deliveries of one checkout at once must not make two keys: serialise on the tenant row.
            await conn.execute(select(tenants.c.id).where(tenants.c.id == tid).with_for_update())
            existing = (
                await conn.execute(select(onboarding_keys.c.key_id).where(onboarding_keys.c.tenant_id == tid))
            ).scalar()
            if existing is not None:
                return uuid.UUID(str(existing))
            info, secret = await create_key(conn, tid, "onboarding")
            await conn.execute(
                insert(onboarding_keys).values(
                    tenant_id=tid, key_id=info.id, ciphertext=_fernet(self._settings).encrypt(secret.encode())
                )
            )
        return info.id

    async def canary(self, tid: uuid.UUID, key_id: uuid.UUID) -> dict[str, Any]:
        """`health_check` as the tenant, through the gateway's own MCP endpoint."""
        token = issue_canary_token(self._settings, tid, key_id)
        headers = {"Tenant-ID": str(tid), "Authorization": f"Bearer {token}"}
        url = f"{self.base_url}/mcp"
        try:
            result = await call_tool(url, headers, "http", "health_check", {})
        except Exception as exc:  # any failure of the path is the canary failing; the step is retried
            raise Unavailable(f"canary call failed: {type(exc).__name__}: {exc}"[:300], code="canary_failed") from exc
        structured = result.get("structuredContent") or {}
        if result.get("isError") or structured.get("tenant_id") != str(tid):
            raise Unavailable(f"canary answered wrongly: {structured}", code="canary_failed")
        return dict(structured)

    async def offboard(self, tid: uuid.UUID) -> dict[str, Any]:
        """Revoke keys, report remaining usage, archive usage, soft-delete. Repeating it changes nothing."""
        async with self._db.system() as conn:
            await tenant_service.get_tenant(conn, tid)
            revoked = await revoke_all_keys(conn, tid)
        reported = None
        if self._reporter is not None and self._settings.billing_enabled:
            reported = (await self._reporter.run_once([tid])).public()
        async with self._db.system() as conn:
            archived = (await conn.execute(_ARCHIVE, {"tenant_id": tid})).rowcount
            tenant = await tenant_service.deprovision_tenant(conn, tid)
        # Its schema or database: archived into the shared tables, then dropped.
        tier = await tiers.offboard_tier(self._db, self._settings, tid)
        return {
            "tenant": tenant.public(),
            "keys_revoked": revoked,
            "report": reported,
            "events_archived": archived,
            "tier": tier,
        }


_ARCHIVE = text(
    """
    INSERT INTO usage_archive (tenant_id, event_id, tool, units, outcome, occurred_at, report_id)
    SELECT e.tenant_id, e.event_id, e.tool, e.units, e.outcome, e.occurred_at, c.report_id
    FROM usage_events e
    LEFT JOIN usage_report_events c ON c.tenant_id = e.tenant_id AND c.event_id = e.event_id
    WHERE e.tenant_id = :tenant_id
    ON CONFLICT DO NOTHING
    """
)


async def claim_onboarding_key(db: Database, settings: Settings, tid: uuid.UUID) -> dict[str, Any]:
    """The onboarding key's secret, once: it is erased as it is handed out."""
    async with db.system() as conn:
        tenant = await tenant_service.get_tenant(conn, tid)
        row = (
            await conn.execute(
                select(onboarding_keys.c.key_id, onboarding_keys.c.ciphertext, onboarding_keys.c.claimed_at)
                .where(onboarding_keys.c.tenant_id == tid)
                .with_for_update()
            )
        ).one_or_none()
        if row is None:
            raise NotFound(f"tenant {tid} was not onboarded through Stripe", code="onboarding_key_not_found")
        if tenant.status != TenantStatus.ACTIVE:
            raise Conflict(f"tenant is {tenant.status}; its key is handed out once it is active", code="not_active")
        if row.claimed_at is not None or row.ciphertext is None:
            raise Conflict("the onboarding key was claimed already", code="onboarding_key_claimed")
        await conn.execute(
            update(onboarding_keys)
            .where(onboarding_keys.c.tenant_id == tid)
            .values(ciphertext=None, claimed_at=func.now())
        )
    secret = _fernet(settings).decrypt(row.ciphertext).decode()
    return {"tenant_id": str(tid), "key_id": str(row.key_id), "secret": secret}


def _name(session: dict[str, Any]) -> str:
    details = session.get("customer_details") or {}
    name = (session.get("metadata") or {}).get("tenant_name") or details.get("name") or details.get("email")
    return str(name or f"customer {session.get('customer') or session['id']}")[:200]
