"""The policy document on its own: validation that points at the bad rule, verdicts, argument rules."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tenantry.errors import TenantryError
from tenantry.governance.policy import Policy, compile_policy
from tenantry.plans import Limits
from tenantry.tenancy import Principal

TENANT = uuid.UUID("00000000-0000-4000-8000-000000000001")

DOCUMENT: dict[str, Any] = {
    "rules": [
        {"effect": "allow", "tools": ["data_get", "data_list", "gh__get_*"], "roles": ["reader"]},
        {"effect": "allow", "tools": ["data_*", "gh__*"], "roles": ["writer"]},
        {"effect": "deny", "tools": ["*delete*"], "roles": ["contractor"], "subjects": ["intern"]},
        {"effect": "allow", "tools": ["health_check"]},
    ],
    "arguments": [
        {"tools": ["gh__search"], "forced": {"org": "${claims.org}", "tenant": "${tenant.id}"}},
        {"tools": ["gh__create_*"], "forced": {"owner": "${subject}"}, "on_client_value": "refuse"},
        {
            "tools": ["data_put"],
            "forbidden": ["ttl"],
            "params": {
                "key": {"max_length": 8, "pattern": "^k"},
                "value": {"minimum": 0, "maximum": 10},
            },
        },
        {"tools": ["gh__search"], "roles": ["reader"], "params": {"sort": {"enum": ["stars", "updated"]}}},
    ],
}


def caller(subject: str, *roles: str, **claims: str) -> Principal:
    return Principal(TENANT, uuid.uuid4(), "pro", "jwt", Limits(), subject, frozenset(roles), claims)


@pytest.fixture
def policy() -> Policy:
    return compile_policy(DOCUMENT, 3)


@pytest.mark.parametrize(
    ("subject", "roles", "tool", "allowed", "rule"),
    [
        ("a", ["reader"], "data_get", True, "rules[0]"),
        ("a", ["reader"], "data_put", False, "default"),
        ("a", ["reader"], "gh__get_issue", True, "rules[0]"),
        ("a", ["reader"], "gh__create_issue", False, "default"),
        ("a", ["writer"], "data_put", True, "rules[1]"),
        ("a", ["writer"], "data_delete", True, "rules[1]"),
        ("intern", ["writer"], "data_delete", False, "rules[2]"),  # deny wins over allow
        ("b", ["writer", "contractor"], "gh__delete_repo", False, "rules[2]"),  # by role
        ("b", ["writer"], "gh__delete_repo", True, "rules[1]"),
        ("a", ["reader", "writer"], "gh__create_issue", True, "rules[1]"),
        ("a", [], "health_check", True, "rules[3]"),  # a rule naming no caller applies to everyone
        ("a", [], "data_get", False, "default"),
        ("a", ["READER"], "data_get", False, "default"),  # role names are exact
        ("a", ["reader"], "data_getx", False, "default"),  # patterns match the whole name
    ],
)
def test_the_verdict_matrix(
    policy: Policy, subject: str, roles: list[str], tool: str, allowed: bool, rule: str
) -> None:
    verdict = policy.decide(subject, frozenset(roles), tool)
    assert (verdict.allowed, verdict.rule) == (allowed, rule)
    assert policy.decide(subject, frozenset(roles), tool) is verdict  # memoised


def test_a_deny_list_policy_allows_what_it_does_not_name() -> None:
    policy = compile_policy({"default": "allow", "rules": [{"effect": "deny", "tools": ["data_delete"]}]})
    assert policy.decide("x", frozenset(), "data_get").allowed
    assert not policy.decide("x", frozenset(), "data_delete").allowed


def test_forced_values_come_from_the_callers_identity_and_override_the_client(policy: Policy) -> None:
    shaped = policy.shape(caller("a", "reader", org="acme"), "gh__search", {"q": "bug", "org": "evil", "sort": "stars"})
    assert shaped == {"q": "bug", "org": "acme", "tenant": str(TENANT), "sort": "stars"}


def test_a_forced_value_the_client_also_set_is_refused_when_the_rule_says_so(policy: Policy) -> None:
    assert policy.shape(caller("bob"), "gh__create_issue", {"title": "t"}) == {"title": "t", "owner": "bob"}
    assert policy.shape(caller("bob"), "gh__create_issue", {"owner": "bob"}) == {"owner": "bob"}  # the same value
    with pytest.raises(TenantryError) as refused:
        policy.shape(caller("bob"), "gh__create_issue", {"owner": "alice"})
    assert (refused.value.code, refused.value.http_status) == ("argument_forbidden", 403)
    assert "arguments[1]" in refused.value.detail


def test_a_forced_claim_the_caller_lacks_refuses_the_call(policy: Policy) -> None:
    with pytest.raises(TenantryError) as refused:
        policy.shape(caller("a", "reader"), "gh__search", {"q": "x"})
    assert refused.value.code == "argument_forbidden"
    assert "claims.org" in refused.value.detail


@pytest.mark.parametrize(
    ("arguments", "code", "says"),
    [
        ({"key": "k1", "value": 3, "ttl": 5}, "argument_forbidden", "forbids the argument 'ttl'"),
        ({"key": "k123456789", "value": 3}, "argument_invalid", "'key' must be at most 8 long"),
        ({"key": "x1", "value": 3}, "argument_invalid", "'key' must match '^k'"),
        ({"key": "k1", "value": 11}, "argument_invalid", "'value' must be a number <= 10"),
        ({"key": "k1", "value": -1}, "argument_invalid", "'value' must be a number >= 0"),
        ({"key": "k1", "value": "3"}, "argument_invalid", "'value' must be a number >= 0"),
        ({"key": "k1", "value": True}, "argument_invalid", "'value' must be a number >= 0"),
    ],
)
def test_argument_restrictions(policy: Policy, arguments: dict[str, Any], code: str, says: str) -> None:
    with pytest.raises(TenantryError) as refused:
        policy.shape(caller("a", "writer"), "data_put", arguments)
    assert refused.value.code == code
    assert says in refused.value.detail
    assert refused.value.detail.startswith("arguments[2]")


def test_argument_rules_apply_only_to_the_callers_they_name(policy: Policy) -> None:
    with pytest.raises(TenantryError):
        policy.shape(caller("a", "reader", org="o"), "gh__search", {"sort": "name"})
    shaped = policy.shape(caller("a", "writer", org="o"), "gh__search", {"sort": "name"})
    assert shaped["sort"] == "name"
    assert policy.shape(caller("a", "writer"), "data_put", {"key": "k1", "value": 10}) == {"key": "k1", "value": 10}


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"rules": [{"effect": "allow", "tools": ["a"]}, {"effect": "permit", "tools": ["b"]}]}, "rules.1.effect"),
        ({"rules": [{"effect": "allow", "tools": []}]}, "rules.0.tools"),
        ({"rules": [{"effect": "allow", "tools": ["a b"]}]}, "rules.0.tools.0"),
        ({"rules": [{"effect": "allow", "tools": ["a"], "role": ["x"]}]}, "rules.0.role"),
        ({"arguments": [{"tools": ["a"], "forced": {"o": "${env.HOME}"}}]}, "arguments.0.forced"),
        ({"arguments": [{"tools": ["a"], "params": {"q": {"pattern": "(unclosed"}}}]}, "arguments.0.params.q.pattern"),
        ({"default": "maybe"}, "default"),
        ({"rules": "all"}, "rules"),
    ],
)
def test_a_bad_document_is_refused_with_the_path_of_the_bad_rule(document: dict[str, Any], where: str) -> None:
    with pytest.raises(TenantryError) as refused:
        compile_policy(document)
    assert refused.value.code == "invalid_policy"
    assert refused.value.detail.startswith(f"{where}:"), refused.value.detail
