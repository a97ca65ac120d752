"""The personal-data guardrail: precision and recall on the labelled sample, and µs per kilobyte.

    .venv/bin/python bench/bench_guardrails.py

Three 64 KB outputs: prose (no digits, no '@': the common case of a text answer), JSON records (ids,
timestamps, names: a typical API result), and a dense one (the labelled sample repeated: every line
holds personal data or a look-alike, the worst case). `redact` is what a tool's output goes through
when the tenant's policy says so.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.governance.pii_corpus import SAMPLES

from tenantry.governance.pii import find, redact

KB = 1024


def outputs() -> dict[str, str]:
    prose = "The quarterly report lists the results by region, and the notes explain each change. " * 800
    records = json.dumps(
        [
            {"id": i, "name": f"Customer {i}", "status": "active", "created": "2024-06-01T10:00:00Z", "notes": "Renew."}
            for i in range(900)
        ]
    )
    dense = " ".join(text for text, _ in SAMPLES) * 40
    return {"prose": prose[: 64 * KB], "json records": records[: 64 * KB], "dense (worst case)": dense[: 64 * KB]}


def main() -> int:
    tp = fp = fn = 0
    for text, expected in SAMPLES:
        got = {(s.kind, text[s.start : s.end]) for s in find(text)}
        tp, fp, fn = tp + len(got & set(expected)), fp + len(got - set(expected)), fn + len(set(expected) - got)
    positives = sum(1 for _, expected in SAMPLES if expected)
    print(f"labelled sample: {len(SAMPLES)} texts ({positives} with personal data), {tp + fn} findings expected")
    print(f"precision {tp / max(1, tp + fp):.0%} ({fp} false), recall {tp / max(1, tp + fn):.0%} ({fn} missed)")
    print(f"{'64 KB output':<22}{'µs/KB':>8}{'MB/s':>8}")
    for name, text in outputs().items():
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            redact(text)
            runs.append(time.perf_counter() - t0)
        seconds = statistics.median(runs)
        print(f"{name:<22}{seconds * 1e6 / (len(text) / KB):>8.1f}{len(text) / seconds / 1e6:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
