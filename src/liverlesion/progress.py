"""Progress lines for long loops (cohort generation, ingestion, patch extraction)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def progress_printer(label: str, every_percent: int = 10, stream=None) -> Callable[[int, int, str], None]:
    """A ``progress(i, n, item)`` callable printing about every ``every_percent`` % and at the end."""
    start = time.perf_counter()
    last = {"pct": -every_percent}

    def report(i: int, n: int, item: str) -> None:
        pct = int(100 * i / max(n, 1))
        if pct - last["pct"] >= every_percent or i == n:
            last["pct"] = pct
            elapsed = time.perf_counter() - start
            eta = elapsed / i * (n - i) if i else 0.0
            print(
                f"[{label}] {i}/{n} ({pct}%) {item}  {elapsed:.0f}s elapsed, ~{eta:.0f}s left",
                file=stream or sys.stdout,
                flush=True,
            )

    return report
