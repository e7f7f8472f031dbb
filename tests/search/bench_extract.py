"""Extraction speed: ``.venv/bin/python -m tests.search.bench_extract`` prints µs per resource."""

from __future__ import annotations

import time

from tests.search.test_extract import DOCREF, OBS, PATIENT, X


def main() -> None:
    for res in (PATIENT, OBS, DOCREF):
        X.index(res)
        n = 5000
        start = time.perf_counter()
        for _ in range(n):
            X.index(res)
        idx = (time.perf_counter() - start) / n * 1e6
        start = time.perf_counter()
        for _ in range(n):
            X.owner(res)
        own = (time.perf_counter() - start) / n * 1e6
        print(f"{res['resourceType']:<18} index {idx:6.1f} µs   owner {own:5.1f} µs   ({len(X.index(res))} ix keys)")
    start = time.perf_counter()
    X.warm_up()
    print(f"compile every type: {(time.perf_counter() - start) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
