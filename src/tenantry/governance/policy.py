"""A tenant's policy document: who may call which tool with which arguments, compiled once.

A document (JSON, validated by `PolicyDocument`):

    {
      "default": "deny",                       # what a tool no rule allows gets ("allow": deny-list style)
      "rules": [                               # deny wins over allow
        {"effect": "allow", "tools": ["data_get", "data_list", "github__get_*"], "roles": ["reader"]},
        {"effect": "deny", "tools": ["*__delete_*"], "subjects": ["agent-7"]}
      ],
      "arguments": [                           # every rule whose tools and caller match applies
        {"tools": ["github__search"],
         "forced": {"org": "${claims.org_id}", "tenant": "${tenant.id}"},
         "on_client_value": "override",        # or "refuse": a client's own value for a forced key
         "forbidden": ["include_private"],
         "params": {"query": {"max_length": 200, "pattern": "^[^:]*$"},
                    "limit": {"minimum": 1, "maximum": 50}, "sort": {"enum": ["stars", "updated"]}}}
      ],
      "triggers": {                            # per replica, in memory; each fires flag, throttle or kill
        "loop": {"count": 20, "seconds": 60, "action": "kill"},        # same tool + arguments, one session
        "probing": {"count": 10, "seconds": 60, "action": "throttle"}  # refused calls, one subject
      }
    }

Tool patterns are globs (`*`, `?`) over the full tool name, built-ins and `<upstream>__<tool>` alike.
A rule with neither `roles` nor `subjects` applies to every caller; otherwise to a caller holding one
of its roles or being one of its subjects. Templates in forced values: `${tenant.id}`, `${subject}`,
`${claims.<name>}` (a claim of the caller's token).

`compile_policy` turns a document into a `Policy` whose verdicts are memoised per (subject, roles,
tool): evaluating it on a call is a dictionary lookup, and the argument rules that can apply to a
tool are found once per tool name.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tenantry.errors import BadRequest, Forbidden, TenantryError
from tenantry.plans import Limits
from tenantry.tenancy import Principal

_MAX_MEMO: Final = 20_000
_TEMPLATE: Final = re.compile(r"\$\{([^}]*)\}")
_CLAIM: Final = re.compile(r"^claims\.[A-Za-z0-9_.:-]{1,64}$")

Pattern = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_*?.:+/%=&~@#,;!$-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Callers(_Strict):
    roles: list[Name] = Field(default_factory=list, max_length=100)
    subjects: list[Name] = Field(default_factory=list, max_length=1000)

    def matches(self, subject: str, roles: frozenset[str]) -> bool:
        if not self.roles and not self.subjects:
            return True
        return subject in self.subjects or not roles.isdisjoint(self.roles)


class Rule(Callers):
    effect: Literal["allow", "deny"]
    tools: list[Pattern] = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=500)


class ParamRule(_Strict):
    enum: list[Any] | None = Field(None, max_length=1000)
    pattern: str | None = Field(None, max_length=1000)
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = Field(None, ge=0)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


class ArgumentRule(Callers):
    tools: list[Pattern] = Field(min_length=1, max_length=200)
    forced: dict[Name, Any] = Field(default_factory=dict, max_length=100)
    on_client_value: Literal["override", "refuse"] = "override"
    forbidden: list[Name] = Field(default_factory=list, max_length=100)
    params: dict[Name, ParamRule] = Field(default_factory=dict, max_length=100)
    description: str = Field("", max_length=500)

    @field_validator("forced")
    @classmethod
    def _templates(cls, forced: dict[str, Any]) -> dict[str, Any]:
        for key, value in forced.items():
            if isinstance(value, str):
                for name in _TEMPLATE.findall(value):
                    if name not in ("tenant.id", "subject") and not _CLAIM.match(name):
                        known = "${tenant.id}, ${subject} or ${claims.<name>}"
                        raise ValueError(f"{key}: unknown template ${{{name}}} (use {known})")
        return forced


class Trigger(_Strict):
    count: int = Field(ge=1, le=100_000, description="fires on the call after this many within `seconds`")
    seconds: float = Field(gt=0, le=86_400)
    action: Literal["flag", "throttle", "kill"]


class Triggers(_Strict):
    loop: Trigger | None = None  # the same tool with the same arguments, from one session (or subject)
    probing: Trigger | None = None  # calls this policy refused, from one subject


GuardMode = Literal["off", "redact", "block"]
PiiKind = Literal["email", "phone", "card", "iban", "ssn", "ip", "secret"]


class Guardrails(_Strict):
    pii: GuardMode = "off"  # what personal data in a tool's output gets: nothing, a placeholder, or the call refused
    kinds: list[PiiKind] | None = None  # which kinds are looked for (default: every kind)
    tools: dict[Pattern, GuardMode] = Field(default_factory=dict, max_length=200)  # per tool (glob), overriding


class AuditOptions(_Strict):
    # What a call's audit record keeps of its arguments: their HMAC digest only, or also the arguments
    # themselves with every kind of personal data redacted (the tenant opts in).
    arguments: Literal["digest", "redacted"] = "digest"


class PolicyDocument(_Strict):
    default: Literal["allow", "deny"] = "deny"
    rules: list[Rule] = Field(default_factory=list, max_length=1000)
    arguments: list[ArgumentRule] = Field(default_factory=list, max_length=1000)
    triggers: Triggers = Field(default_factory=Triggers)
    guardrails: Guardrails = Field(default_factory=Guardrails)
    audit: AuditOptions = Field(default_factory=AuditOptions)


def parse_document(raw: Any) -> PolicyDocument:
    """A validated document, or a 400 `invalid_policy` naming each bad rule by its path."""
    try:
        return PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False)[:10]:
            where = ".".join(str(part) for part in error["loc"]) or "document"
            problems.append(f"{where}: {error['msg']}")
        raise BadRequest("; ".join(problems), code="invalid_policy") from None


def _glob(patterns: Sequence[str]) -> re.Pattern[str]:
    parts = [re.escape(p).replace(r"\*", ".*").replace(r"\?", ".") for p in patterns]
    return re.compile("(?:" + "|".join(parts) + r")\Z")


class ArgumentRefused(Forbidden):
    pass


class ArgumentInvalid(BadRequest):
    pass


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    rule: str  # "rules[3]" or "default"


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    index: int
    allow: bool
    tools: re.Pattern[str]
    callers: Callers


@dataclass(frozen=True, slots=True)
class _CompiledArguments:
    index: int
    rule: ArgumentRule
    patterns: dict[str, re.Pattern[str]]


class Policy:
    """A compiled document. `decide` and `shape` are what a call runs."""

    def __init__(self, document: PolicyDocument, version: int = 0) -> None:
        self.document = document
        self.version = version
        self.triggers = document.triggers
        self.audits_arguments = document.audit.arguments == "redacted"
        self._guard_kinds = None if document.guardrails.kinds is None else frozenset(document.guardrails.kinds)
        self._guard_tools = [(_glob([p]), mode) for p, mode in document.guardrails.tools.items()]
        self._guards: dict[str, tuple[str, frozenset[str] | None]] = {}
        self._default = Verdict(document.default == "allow", "default")
        self._rules = [_CompiledRule(i, r.effect == "allow", _glob(r.tools), r) for i, r in enumerate(document.rules)]
        self._arguments = [
            (
                _glob(a.tools),
                _CompiledArguments(
                    i, a, {k: re.compile(p.pattern) for k, p in a.params.items() if p.pattern is not None}
                ),
            )
            for i, a in enumerate(document.arguments)
        ]
        self._verdicts: dict[tuple[str, frozenset[str], str], Verdict] = {}
        self._argument_rules: dict[str, list[_CompiledArguments]] = {}

    def decide(self, subject: str, roles: frozenset[str], tool: str) -> Verdict:
        key = (subject, roles, tool)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._evaluate(subject, roles, tool)
            if len(self._verdicts) >= _MAX_MEMO:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def _evaluate(self, subject: str, roles: frozenset[str], tool: str) -> Verdict:
        allowed_by: Verdict | None = None
        for rule in self._rules:
            if rule.tools.match(tool) and rule.callers.matches(subject, roles):
                if not rule.allow:
                    return Verdict(False, f"rules[{rule.index}]")
                allowed_by = allowed_by or Verdict(True, f"rules[{rule.index}]")
        return allowed_by or self._default

    def output_guard(self, tool: str) -> tuple[str, frozenset[str] | None]:
        """(mode, kinds) of the personal-data guardrail on `tool`'s output: the first tool pattern that
        matches, else the tenant-wide mode."""
        found = self._guards.get(tool)
        if found is None:
            mode = next((m for pattern, m in self._guard_tools if pattern.match(tool)), self.document.guardrails.pii)
            found = (mode, self._guard_kinds)
            if len(self._guards) >= _MAX_MEMO:
                self._guards.clear()
            self._guards[tool] = found
        return found

    def may_call(self, principal: Principal, tool: str) -> bool:
        return self.decide(principal.subject, principal.roles, tool).allowed

    def shape(self, principal: Principal, tool: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments to run `tool` with: forced values put in, then every restriction checked.
        Raises `ArgumentRefused` (403 `argument_forbidden`) or `ArgumentInvalid` (400 `argument_invalid`)."""
        rules = self._argument_rules.get(tool)
        if rules is None:
            rules = [compiled for tools, compiled in self._arguments if tools.match(tool)]
            if len(self._argument_rules) >= _MAX_MEMO:
                self._argument_rules.clear()
            self._argument_rules[tool] = rules
        if not rules:
            return dict(arguments)
        shaped = dict(arguments)
        for compiled in rules:
            if compiled.rule.matches(principal.subject, principal.roles):
                _apply(compiled, principal, shaped)
        return shaped


def _apply(compiled: _CompiledArguments, principal: Principal, args: dict[str, Any]) -> None:
    rule, where = compiled.rule, f"arguments[{compiled.index}]"
    for key, template in rule.forced.items():
        value = _render(template, principal, where, key)
        if key in args and args[key] != value and rule.on_client_value == "refuse":
            raise ArgumentRefused(f"{where} sets {key!r} itself; the call may not", code="argument_forbidden")
        args[key] = value
    for key in rule.forbidden:
        if key in args:
            raise ArgumentRefused(f"{where} forbids the argument {key!r}", code="argument_forbidden")
    for key, check in rule.params.items():
        if key in args:
            problem = _violates(check, compiled.patterns.get(key), args[key])
            if problem:
                raise ArgumentInvalid(f"{where}: {key!r} {problem}", code="argument_invalid")


def _render(template: Any, principal: Principal, where: str, key: str) -> Any:
    if not isinstance(template, str) or "${" not in template:
        return template

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "tenant.id":
            return str(principal.tenant_id)
        if name == "subject":
            return principal.subject
        claim = principal.claims.get(name.removeprefix("claims."))
        if claim is None:
            raise ArgumentRefused(
                f"{where} forces {key!r} from the claim {name!r}, which the caller's credential lacks",
                code="argument_forbidden",
            )
        return claim

    return _TEMPLATE.sub(value, template)


def _violates(check: ParamRule, pattern: re.Pattern[str] | None, value: Any) -> str | None:
    if check.enum is not None and value not in check.enum:
        return f"must be one of {check.enum[:10]}"
    if isinstance(value, bool):
        numeric = None
    elif isinstance(value, int | float):
        numeric = float(value)
    else:
        numeric = None
    if check.minimum is not None and (numeric is None or numeric < check.minimum):
        return f"must be a number >= {check.minimum:g}"
    if check.maximum is not None and (numeric is None or numeric > check.maximum):
        return f"must be a number <= {check.maximum:g}"
    if check.max_length is not None and isinstance(value, str | list | dict) and len(value) > check.max_length:
        return f"must be at most {check.max_length} long"
    if pattern is not None and (not isinstance(value, str) or pattern.search(value) is None):
        return f"must match {check.pattern!r}"
    return None


def compile_policy(raw: Any, version: int = 0) -> Policy:
    return Policy(parse_document(raw), version)


def dry_run(
    raw: Any,
    tenant_id: uuid.UUID,
    subject: str,
    roles: frozenset[str],
    claims: Mapping[str, str],
    tool: str,
    arguments: Mapping[str, Any],
) -> dict[str, Any]:
    """What the policy document `raw` (None: no policy) decides for this caller, tool and arguments, and
    what the tool would be given: the answer of the admin API's and the CLI's dry-run."""
    answer: dict[str, Any] = {"tool": tool, "subject": subject, "roles": sorted(roles)}
    if raw is None:
        return {**answer, "allowed": True, "rule": "no policy", "arguments": dict(arguments)}
    policy = compile_policy(raw)
    verdict = policy.decide(subject, roles, tool)
    answer.update(allowed=verdict.allowed, rule=verdict.rule)
    if not verdict.allowed:
        return {**answer, "error": "tool_forbidden", "detail": "callers are told it is an unknown tool"}
    caller = Principal(tenant_id, uuid.UUID(int=0), "", "dry_run", Limits(), subject, roles, dict(claims))
    try:
        return {**answer, "arguments": policy.shape(caller, tool, arguments)}
    except TenantryError as exc:
        return {**answer, "allowed": False, "error": exc.code, "detail": exc.detail}
