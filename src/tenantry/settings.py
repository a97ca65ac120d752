"""Every setting Tenantry reads, in one place.

Nothing else reads the environment. Settings come from `TENANTRY_*` variables
(or a `.env` file) and are validated once; placeholder secrets are refused
outside development mode so a production deployment cannot start with the
defaults a laptop uses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from tenantry.plans import DEFAULT_PLAN_LIMITS, Limits
from tenantry.tls import DEFAULT_GROUPS, parse_groups

# Values that are fine on a laptop and fatal anywhere else.
DEV_ADMIN_API_KEY = "dev-admin-key-change-me"
DEV_OPS_API_KEY = "dev-ops-key-change-me"
DEV_JWT_SECRET = "dev-jwt-secret-change-me-0123456789abcdef"
# A valid Fernet key, public by design: it encrypts laptop upstream credentials and nothing else.
DEV_SECRET_KEY = "ZGV2LXNlY3JldC1rZXktY2hhbmdlLW1lLTAxMjM0NTY="

TierName = Literal["shared", "schema", "database"]
DEFAULT_PLAN_TIERS: dict[str, TierName] = {
    "free": "shared",
    "starter": "shared",
    "pro": "schema",
    "enterprise": "database",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TENANTRY_", env_file=".env", extra="ignore", populate_by_name=True)

    environment: Literal["development", "test", "production"] = "development"

    # The owner role: runs migrations, admin and cross-tenant (system) work.
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/tenantry"
    # The owner's password, when it is not in `database_url` (any characters, no URL escaping needed).
    database_password: str | None = None
    # The role every tenant-scoped statement runs as: not superuser, not owner, NOBYPASSRLS.
    # It connects to the same server and database as `database_url`.
    db_app_role: str = "tenantry_app"
    db_app_password: str | None = None
    # The application pool keeps `db_pool_size` connections; past that, SQLAlchemy opens an overflow
    # connection per checkout and closes it on return, a new connection (and TLS handshake) per
    # request: size the pool for the steady number of concurrent tool calls, not for the peak.
    # Measured: at 16 concurrent calls a pool of 10 cost the gateway 30-40% of its throughput.
    db_pool_size: int = Field(default=20, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=200)
    # --- PgBouncer (README "PgBouncer") ---
    # `database_url` reaches PostgreSQL through a transaction-pooling PgBouncer: a server connection is
    # ours only until each transaction ends, so no prepared statement may outlive one (statements are
    # sent unnamed and parsed with each execution; the statement caches are off).
    db_transaction_pooler: bool = False
    # The owner's URL straight to PostgreSQL, for what needs a session of its own: the change listener's
    # LISTEN and migrations. Required with `db_transaction_pooler`; otherwise `database_url` is used.
    # Same role and password as `database_url` (`database_password` applies to it too).
    database_direct_url: str | None = None
    # --- isolation tiers (README "Isolation tiers") ---
    # The tier each plan's tenants get unless an admin sets one for the tenant: shared tables, their
    # own schema, or their own database.
    plan_tiers: dict[str, TierName] = Field(default_factory=lambda: dict(DEFAULT_PLAN_TIERS))
    # Database-tier tenants' pools: one small engine per tenant database, in one bounded LRU.
    tier_pool_entries: int = Field(default=200, ge=1, le=100_000)
    tier_pool_idle_seconds: float = Field(default=1800.0, gt=0, le=86_400)
    tier_pool_size: int = Field(default=2, ge=1, le=50)
    # Connections all tenant-database pools together may open (caps the pools open at once).
    tier_connection_budget: int = Field(default=400, ge=1, le=100_000)
    # A call that finds its tenant moving waits this long for the move to end (0: refused at once).
    tier_move_hold_ms: int = Field(default=2000, ge=0, le=60_000)
    # How often each replica looks for plan-driven moves to run (`tier_moves.py`; one replica at a time).
    tier_move_interval_seconds: float = Field(default=30.0, gt=0, le=3600)

    redis_url: str = "redis://127.0.0.1:6379/0"
    # The meter's and the ledger's per-call commands over Tenantry's own lean RESP client (False:
    # over redis-py like everything else; kept to measure the difference and as a way back).
    redis_lean_client: bool = True
    # `redis_url` names one node of a Redis Cluster: the meter, the ledger and the drain send each
    # command to the master of its key's slot (the rest of the nodes are found with CLUSTER SLOTS).
    redis_cluster: bool = False
    # The usage ledger's Redis streams; a tenant's entries all go to one, picked by a hash of its id.
    # On a cluster each stream is one key on one master: 16 spreads the ledger's writes and the drain
    # evenly over 2, 4, 8 or 16 masters and within one stream of even over 3, 5 or 6. Lowering it
    # strands the entries of the dropped streams: drain them first (README, Redis Cluster).
    ledger_shards: int = Field(default=16, ge=1, le=256)

    admin_api_key: str = DEV_ADMIN_API_KEY
    # The ops credential: `/metrics` and `/health?tenant=` (the admin key and admin tokens also work).
    # It can do nothing else, so a monitoring system never holds the admin key.
    ops_api_key: str = DEV_OPS_API_KEY
    jwt_secret: str = DEV_JWT_SECRET
    jwt_issuer: str = "tenantry"
    tenant_token_ttl_seconds: int = Field(default=900, ge=60, le=86_400)
    admin_token_ttl_seconds: int = Field(default=3600, ge=60, le=86_400)
    # How long a resolved credential (key -> tenant, tenant status) is trusted before
    # it is read again. Changes made through this process invalidate it at once.
    auth_cache_ttl_seconds: float = Field(default=5.0, ge=0, le=300)
    # While the change listener is connected, changes are announced and a resolved credential is
    # trusted past the TTL, for at most this long (0: never; the TTL alone then), so 10,000 tenants do
    # not each cost a credential query every few seconds.
    auth_cache_max_age_seconds: float = Field(default=3600.0, ge=0, le=86_400)

    stripe_api_key: str = ""
    stripe_api_base: str = "https://api.stripe.com"
    stripe_webhook_secret: str = ""
    # --- billing (see README "Billing") ---
    # Seconds of clock skew a signed webhook may have; older signatures are refused (replays).
    stripe_webhook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)
    stripe_timeout_seconds: float = Field(default=20.0, gt=0, le=120)
    # The reporter runs when a Stripe API key is set and this is on.
    billing_reporter_enabled: bool = True
    billing_report_interval_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Meter event name for every tool, unless `billing_tool_meters` names another for a tool.
    billing_meter_event_name: str = "tenantry_tool_calls"
    billing_tool_meters: dict[str, str] = Field(default_factory=dict)
    # Stripe price or product id -> plan name; a subscription's `metadata.plan` is the fallback.
    billing_price_plans: dict[str, str] = Field(default_factory=dict)
    billing_canceled_plan: str = "free"
    # invoice.payment_failed: the tenant keeps its plan for the grace period, then the policy applies.
    billing_past_due_grace_seconds: int = Field(default=3 * 86_400, ge=0)
    billing_past_due_policy: Literal["restrict", "suspend"] = "restrict"
    billing_past_due_plan: str = "free"
    # Where onboarding's canary reaches this gateway's own MCP endpoint (default http://host:port).
    gateway_base_url: str | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65_535)

    # --- admin console (README "Admin console", src/tenantry/api/console/) ---
    # How long a console sign-in lasts (the session is in Redis; signing out ends it at once).
    console_session_ttl_seconds: int = Field(default=8 * 3600, ge=60, le=7 * 86_400)
    # Failed console sign-ins a client address may make per minute before it is refused (429).
    console_sign_in_attempts: int = Field(default=10, ge=1, le=10_000)

    # --- observability (README "Operating Tenantry") ---
    # One log line per request (and the app's own lines): "json" for machines, "text" for people;
    # default: text in development, json elsewhere.
    log_format: Literal["json", "text"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Prometheus labels per tenant are opt-in and bounded: the first N tenants seen get their own label
    # value, the rest share "_other" (0: no tenant label at all). Per-tenant detail: the usage API.
    metrics_tenant_labels: int = Field(default=0, ge=0, le=10_000)
    # OpenTelemetry traces, exported the standard way: OTEL_TRACES_EXPORTER=otlp (or console) turns them
    # on; OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME and the rest are read by the OTel SDK itself.
    otel_traces_exporter: str = Field(default="none", validation_alias="OTEL_TRACES_EXPORTER")
    # Browser MCP clients and consoles on other origins: exact origins allowed by CORS (empty: CORS off).
    cors_allowed_origins: list[str] = Field(default_factory=list)
    # Let those origins send cookies or HTTP auth (never needed for Bearer headers; off by default).
    cors_allow_credentials: bool = False
    # Stateless JSON is the default: any replica can serve any request.
    mcp_stateful: bool = False
    # Stateful mode: a session with no request in flight (and no open stream) this long is ended and
    # everything kept for it dropped.
    mcp_session_idle_seconds: float = Field(default=1800.0, gt=0, le=86_400)
    # Stateful mode behind a balancer: where the other replicas reach this one, for the requests of
    # sessions it owns (README "Replicas"; default http://host:port, e.g. http://$(POD_IP):8000 in k8s).
    replica_url: str | None = None
    mcp_json_response: bool = True
    # Stateless JSON tools/call answered without the SDK's per-request transport (gateway/fastpath.py).
    mcp_fast_path: bool = True
    # DNS-rebinding defence on the MCP endpoints: allowed Host and Origin values; empty = no check.
    mcp_allowed_hosts: list[str] = Field(default_factory=list)
    mcp_allowed_origins: list[str] = Field(default_factory=list)
    max_request_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)

    # The plans a tenant may be on, and what each allows (a tenant's own `limits` override its plan's).
    plan_limits: dict[str, Limits] = Field(default_factory=lambda: dict(DEFAULT_PLAN_LIMITS))
    default_plan: str = "free"
    # Quota units a call of a tool costs, by tool name (default 1), e.g. {"usage_summary": 2}.
    tool_costs: dict[str, int] = Field(default_factory=dict)
    # Quota units a resource read and a prompt get cost (an upstream's `costs` may name its own:
    # `resource:<its uri>`, `prompt:<its prompt>`). Reads count against `reads_per_window`.
    resource_read_cost: int = Field(default=1, ge=0, le=1_000_000)
    prompt_get_cost: int = Field(default=1, ge=0, le=1_000_000)
    # Off only for benchmarks that measure what metering costs: no quota, no ledger.
    metering_enabled: bool = True
    # Every Redis key Tenantry writes starts with this (one Redis can serve several deployments).
    redis_key_prefix: str = Field(default="tenantry", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    # A meter round trip slower than this counts as "Redis unreachable" (the plan's policy applies).
    meter_timeout_seconds: float = Field(default=0.5, gt=0, le=10)
    # A tool call holds its in-flight slot at most this long (a crashed process frees it then).
    call_timeout_seconds: float = Field(default=120, gt=0, le=3600)
    # /health fails when the oldest usage event not yet in PostgreSQL is older than this.
    ledger_max_lag_seconds: float = Field(default=60, gt=0)
    # Usage events a crashed replica read but never stored are taken over by another after this long.
    ledger_claim_idle_seconds: float = Field(default=30, gt=0, le=3600)

    # The audit trail: one record per request, tool call and admin change. Off only to measure its cost.
    audit_enabled: bool = True
    # Whole months of audit records kept, this one included; older monthly partitions are dropped. 0: all.
    audit_retention_months: int = Field(default=13, ge=0, le=1200)

    # Tenant data store limits.
    data_max_key_length: int = Field(default=256, ge=1, le=1024)
    data_max_value_bytes: int = Field(default=65_536, ge=16, le=16 * 1_048_576)
    data_max_keys_per_tenant: int = Field(default=10_000, ge=1)

    # Upstream federation. Fernet keys for upstream credentials: the first encrypts, all decrypt.
    secret_keys: list[str] = Field(default_factory=lambda: [DEV_SECRET_KEY], min_length=1)
    # SSRF policy: link-local and metadata addresses are always refused; these open the rest.
    upstream_allow_private: bool = False
    upstream_allow_loopback: bool = False
    upstream_discovery_ttl_seconds: float = Field(default=60.0, ge=0, le=86_400)
    upstream_pool_max_sessions: int = Field(default=200, ge=1, le=100_000)
    upstream_idle_ttl_seconds: float = Field(default=1800.0, ge=1, le=86_400)
    upstream_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    upstream_call_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Keep-alive connections kept open per upstream session between calls (more are opened under load).
    upstream_max_idle_connections: int = Field(default=32, ge=0, le=1024)
    upstream_max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=1024**3)
    upstream_breaker_failures: int = Field(default=5, ge=1, le=1000)
    upstream_breaker_cooldown_seconds: float = Field(default=30.0, ge=0, le=3600)

    # --- TLS and post-quantum key exchange (README "TLS and post-quantum key exchange") ---
    # `tenantry serve` terminates TLS itself when a certificate is set (PEM; the key may be in the same
    # file). Without one it serves plain HTTP, for a proxy in front to terminate TLS.
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    # Key-exchange groups, most preferred first (OpenSSL's "A:B:C" syntax), for inbound connections and
    # for connections to upstreams; groups the linked OpenSSL lacks are left out (ML-KEM needs 3.5+).
    tls_groups: str = DEFAULT_GROUPS

    # REST APIs as MCP tools (upstreams of kind `openapi`, #19): the OpenAPI document's size and
    # operation count, and how much of an error response's body a tool error quotes.
    openapi_max_document_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    openapi_max_operations: int = Field(default=500, ge=1, le=10_000)
    openapi_error_body_chars: int = Field(default=500, ge=0, le=10_000)

    def plan_tier(self, plan: str) -> str:
        """The tier a tenant on `plan` gets when no tier was set for it."""
        return self.plan_tiers.get(plan, "shared")

    @property
    def plans(self) -> list[str]:
        return list(self.plan_limits)

    @model_validator(mode="after")
    def _check_plans(self) -> Settings:
        if self.default_plan not in self.plan_limits:
            raise ValueError(f"TENANTRY_DEFAULT_PLAN {self.default_plan!r} is not one of {list(self.plan_limits)}")
        bad = {tool: cost for tool, cost in self.tool_costs.items() if cost < 0}
        if bad:
            raise ValueError(f"TENANTRY_TOOL_COSTS must be >= 0: {bad}")
        return self

    @model_validator(mode="after")
    def _check_pooler(self) -> Settings:
        if self.db_transaction_pooler and not self.database_direct_url:
            raise ValueError(
                "TENANTRY_DB_TRANSACTION_POOLER needs TENANTRY_DATABASE_DIRECT_URL: the change listener's"
                " LISTEN and migrations cannot work through a transaction pooler"
            )
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if self.tls_keyfile and not self.tls_certfile:
            raise ValueError("TENANTRY_TLS_KEYFILE is set without TENANTRY_TLS_CERTFILE")
        if not parse_groups(self.tls_groups):
            raise ValueError("TENANTRY_TLS_GROUPS names no group")
        return self

    @model_validator(mode="after")
    def _check_redis_cluster(self) -> Settings:
        if self.redis_cluster and not self.redis_lean_client:
            raise ValueError("TENANTRY_REDIS_CLUSTER needs TENANTRY_REDIS_LEAN_CLIENT: the cluster client is lean")
        if self.redis_cluster and not self.redis_url.startswith(("redis://", "rediss://")):
            raise ValueError("TENANTRY_REDIS_CLUSTER needs a redis:// or rediss:// URL naming one node of the cluster")
        return self

    @model_validator(mode="after")
    def _check_cors(self) -> Settings:
        wild = [o for o in self.cors_allowed_origins if "*" in o or o.rstrip("/") != o or "://" not in o]
        if wild:
            raise ValueError(f"TENANTRY_CORS_ALLOWED_ORIGINS takes exact origins (scheme://host[:port]), not {wild}")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment == "production":
            if self.admin_api_key == DEV_ADMIN_API_KEY or len(self.admin_api_key) < 24:
                raise ValueError("TENANTRY_ADMIN_API_KEY must be set to a secret of 24+ characters in production")
            if self.ops_api_key == DEV_OPS_API_KEY or len(self.ops_api_key) < 24:
                raise ValueError("TENANTRY_OPS_API_KEY must be set to a secret of 24+ characters in production")
            if self.ops_api_key == self.admin_api_key:
                raise ValueError("TENANTRY_OPS_API_KEY must differ from the admin key")
            if self.jwt_secret == DEV_JWT_SECRET or len(self.jwt_secret) < 32:
                raise ValueError("TENANTRY_JWT_SECRET must be set to a secret of 32+ characters in production")
            if DEV_SECRET_KEY in self.secret_keys:
                raise ValueError("TENANTRY_SECRET_KEYS must not contain the development key in production")
        return self

    @property
    def billing_enabled(self) -> bool:
        return bool(self.stripe_api_key)

    @property
    def self_base_url(self) -> str:
        scheme = "https" if self.tls_certfile else "http"
        return (self.gateway_base_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    @property
    def replica_base_url(self) -> str:
        scheme = "https" if self.tls_certfile else "http"
        return (self.replica_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    @property
    def owner_database_url(self) -> str:
        """`database_url`, with `database_password` in it when that is set."""
        url = make_url(self.database_url)
        if self.database_password is not None:
            url = url.set(password=self.database_password)
        return url.render_as_string(hide_password=False)

    @property
    def direct_database_url(self) -> str:
        """`database_direct_url` (or `database_url`), with `database_password` in it when that is set:
        the URL of what must not go through a transaction pooler (LISTEN, migrations)."""
        url = make_url(self.database_direct_url or self.database_url)
        if self.database_password is not None:
            url = url.set(password=self.database_password)
        return url.render_as_string(hide_password=False)

    @property
    def app_database_url(self) -> str:
        """The owner URL with the application role's credentials in place of the owner's."""
        url = make_url(self.database_url).set(username=self.db_app_role, password=self.db_app_password)
        return url.render_as_string(hide_password=False)

    @property
    def tracing(self) -> bool:
        return self.otel_traces_exporter.strip().lower() not in ("", "none")

    @property
    def json_logs(self) -> bool:
        return self.log_format == "json" if self.log_format else self.environment != "development"
