"""The isolation tests, run again with every pooled connection through PgBouncer in transaction pooling
mode (this package's `settings`). Their bodies live where they always did; a transaction pooler hands a
server connection to whoever comes next, so each must still hold when the next one is another tenant's.
"""

from __future__ import annotations

from tests.auth.test_credentials import test_a_token_whose_key_belongs_to_another_tenant_is_rejected
from tests.db.test_rls import *  # noqa: F403  (every test of the catalog and of RLS itself)
from tests.federation.test_openapi import shop, test_another_tenant_neither_sees_nor_calls_a_tenants_rest_tools
from tests.federation.test_upstreams import (
    test_tenant_cannot_see_or_touch_another_tenants_upstream,
    test_two_tenants_on_one_upstream_each_see_what_their_credential_allows,
)
from tests.gateway.test_isolation import *  # noqa: F403  (data tools over MCP, SSE and REST; sessions)
from tests.gateway.test_resources import (
    test_another_tenants_upstream_cannot_be_read_by_naming_it,
    test_two_tenants_on_one_upstream_each_see_only_their_own_resources_and_prompts,
)
from tests.metering.test_gateway_metering import test_a_noisy_tenant_does_not_change_another_tenants_admitted_calls
from tests.metering.test_reports import test_another_tenants_report_never_includes_this_tenants_calls

__all__ = [
    "shop",
    "test_a_noisy_tenant_does_not_change_another_tenants_admitted_calls",
    "test_a_token_whose_key_belongs_to_another_tenant_is_rejected",
    "test_another_tenant_neither_sees_nor_calls_a_tenants_rest_tools",
    "test_another_tenants_report_never_includes_this_tenants_calls",
    "test_another_tenants_upstream_cannot_be_read_by_naming_it",
    "test_tenant_cannot_see_or_touch_another_tenants_upstream",
    "test_two_tenants_on_one_upstream_each_see_only_their_own_resources_and_prompts",
    "test_two_tenants_on_one_upstream_each_see_what_their_credential_allows",
]
