"""Tool-poisoning screening: detection and false-alarm rates on the labelled corpus, and its cost.

    .venv/bin/python bench/bench_screening.py

The corpus (`tests/federation/poisoning_corpus.py`) holds poisoned definitions in the shapes of
published tool-poisoning and rug-pull attacks and ordinary clean ones, all written for this project.
Screening runs once per definition per discovery (not per call): its cost is shown per definition.
"""

from __future__ import annotations

import collections
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.federation.poisoning_corpus import CLEAN, POISONED, SIBLINGS

from tenantry.federation.screening import screen


def main() -> int:
    flagged = [d for d in POISONED if screen(d, SIBLINGS)]
    false_alarms = [d for d in CLEAN if screen(d, SIBLINGS)]
    kinds = collections.Counter(f.kind for d in POISONED for f in screen(d, SIBLINGS))
    recall = len(flagged) / len(POISONED)
    precision = len(flagged) / max(1, len(flagged) + len(false_alarms))
    print(f"corpus: {len(POISONED)} poisoned, {len(CLEAN)} clean definitions")
    print(f"detected {len(flagged)}/{len(POISONED)} poisoned ({recall:.0%})")
    print(f"false alarms {len(false_alarms)}/{len(CLEAN)} clean")
    print(f"precision {precision:.0%}, recall {recall:.0%}")
    print("findings by kind:", dict(sorted(kinds.items())))
    corpus = POISONED + CLEAN
    runs = []
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(20):
            for definition in corpus:
                screen(definition, SIBLINGS)
        runs.append((time.perf_counter_ns() - t0) / (20 * len(corpus)) / 1000)
    print(f"screening: {statistics.median(runs):.1f} µs per definition (median of 5 runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
