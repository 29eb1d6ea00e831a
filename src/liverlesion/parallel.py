"""How many cores this process may use, for the steps that read or write cases in parallel."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores this process may run on (its CPU affinity: a container's or ``taskset``'s limit, not the host's,
    which ``os.cpu_count()`` gives)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
