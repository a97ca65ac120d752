"""Rank where a py-spy profile spends its samples.

    .venv/bin/python bench/profile_summary.py /tmp/prof/gateway.folded [--top 30] [--match SUBSTRING ...]

Reads py-spy's collapsed-stack output (`py-spy record --format raw`, as `bench_gateway.py --profile`
writes it) and prints: self time by package (the leaf frame's file), the functions with the most
inclusive and the most self time, and for each `--match` substring the share of samples whose stack
contains a frame matching it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_PACKAGES = (
    "tenantry",
    "mcp_types",
    "mcp",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "asyncpg",
    "pydantic_core",
    "pydantic",
    "anyio",
    "uvicorn",
    "prometheus_client",
    "httptools",
    "uvloop",
    "jwt",
    "opentelemetry",
)


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def function_of(frame: str) -> str:
    """`func (file:line)` -> `func (file)`: one entry per function, whatever line was sampled."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    return f"{m['func']} ({short_file(m['file'])})"


def short_file(file: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def package_of(frame: str) -> str:
    m = _FRAME.match(frame)
    file = short_file(m["file"]) if m else frame
    top = file.split("/", 1)[0].removesuffix(".py")
    for name in _PACKAGES:
        if top == name:
            return name
    if "/lib/python3" in (m["file"] if m else "") or top.startswith(".") or "/" not in file:
        return f"stdlib:{top}" if m else top
    return top


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Rank the samples of a py-spy collapsed-stack profile.")
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", action="append", default=[], help="report the inclusive share of this frame substring")
    args = p.parse_args(argv)
    stacks = parse(args.profile)
    total = sum(c for _, c in stacks)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    by_package: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        by_package[package_of(frames[-1])] += count
        self_time[function_of(frames[-1])] += count
        for fn in {function_of(f) for f in frames}:
            inclusive[fn] += count

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    print(f"{total} samples in {args.profile}\n\nself time by package (leaf frame):")
    for name, n in by_package.most_common(args.top):
        print(f"  {pct(n)}  {name}")
    print("\ninclusive time by function:")
    for name, n in inclusive.most_common(args.top):
        print(f"  {pct(n)}  {name}")
    print("\nself time by function:")
    for name, n in self_time.most_common(args.top):
        print(f"  {pct(n)}  {name}")
    if args.match:
        print("\nstacks containing:")
        for needle in args.match:
            n = sum(c for frames, c in stacks if any(needle in f for f in frames))
            print(f"  {pct(n)}  {needle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
