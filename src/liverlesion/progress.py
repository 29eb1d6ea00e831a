"""Progress lines for long loops (cohort generation, ingestion, patch extraction), as log records.

Nothing here configures logging: the command line sends the ``liverlesion`` loggers' lines to the terminal
(``liverlesion_ops.logs``); a bare use of the domain package sees them once it configures logging itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: ``progress(i, n, item)``: item ``i`` of ``n`` is done; None: nothing to report to
Progress = Callable[[int, int, str], None] | None


def report_progress(progress: Progress, i: int, n: int, item: str) -> None:
    if progress is not None:
        progress(i, n, item)


def progress_printer(label: str, every_percent: int = 10) -> Callable[[int, int, str], None]:
    """A ``progress(i, n, item)`` callable logging (logger ``liverlesion.<label>``) about every ``every_percent``
    % and at the end."""
    log = logging.getLogger(f"liverlesion.{label}")
    start = time.perf_counter()
    last = {"pct": -every_percent}

    def report(i: int, n: int, item: str) -> None:
        pct = int(100 * i / max(n, 1))
        if pct - last["pct"] >= every_percent or i == n:
            last["pct"] = pct
            elapsed = time.perf_counter() - start
            eta = elapsed / i * (n - i) if i else 0.0
            log.info("%d/%d (%d%%) %s  %.0fs elapsed, ~%.0fs left", i, n, pct, item, elapsed, eta)

    return report
