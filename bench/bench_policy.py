"""What a tenant's policy costs a call: compiling it, and deciding and shaping each call, in-process.

    .venv/bin/python bench/bench_policy.py

A 100-rule policy (99 rules for other roles' tools, the last allowing `data_*` to everyone, and an
argument rule on `data_get`) next to no policy, for the calls the gateway benchmark makes (`data_get`
with one key). `decide` is memoised per (subject, roles, tool), so a call pays a dictionary lookup;
the cold figure is the first call of a caller and tool after the policy changed. For the whole
gateway, `bench_gateway.py --variants policy100` drives the same policy over HTTP next to none.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from tenantry.governance.policy import compile_policy
from tenantry.plans import Limits
from tenantry.tenancy import Principal


def hundred_rules() -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {"effect": "allow", "tools": [f"tool_{n}", f"up{n}__*"], "roles": [f"role-{n}"]} for n in range(99)
    ]
    rules.append({"effect": "allow", "tools": ["data_*", "health_check"]})
    arguments = [{"tools": ["data_get"], "params": {"key": {"max_length": 256, "pattern": "^[^\\x00]*$"}}}]
    return {"rules": rules, "arguments": arguments}


def timed(fn: Any, n: int) -> float:
    """Median µs per call over 5 runs of n."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(runs)


def main() -> int:
    document = hundred_rules()
    caller = Principal(uuid.uuid4(), uuid.uuid4(), "pro", "api_key", Limits(), "bench", frozenset({"reader"}))
    arguments = {"key": "bench-key"}
    compile_us = timed(lambda: compile_policy(document), 50)
    policy = compile_policy(document)

    names = iter(f"data_{n}" for n in range(10**7))  # a new tool name each time: never memoised

    def cold() -> None:
        policy.decide(caller.subject, caller.roles, next(names))

    cold_us = timed(cold, 2000)
    warm_us = timed(lambda: policy.may_call(caller, "data_get"), 100_000)
    shape_us = timed(lambda: policy.shape(caller, "data_get", arguments), 100_000)
    baseline_us = timed(lambda: dict(arguments), 100_000)  # what a call without a policy does instead
    print("policy: 100 rules (the matching one last) + 1 argument rule; call: data_get {key}")
    print(f"{'compile the document':<44}{compile_us:>10.1f} µs (once per change)")
    print(f"{'decide, first call of a caller and tool':<44}{cold_us:>10.1f} µs (once per caller and tool)")
    print(f"{'decide, memoised (every call)':<44}{warm_us:>10.2f} µs")
    print(f"{'shape the arguments (every call)':<44}{shape_us:>10.2f} µs")
    print(f"{'per call with the policy, vs without':<44}{warm_us + shape_us:>10.2f} µs vs {baseline_us:.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
