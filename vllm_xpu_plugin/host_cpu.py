"""The host CPU's feature flags, without torch: CPU mode picks kernel settings by them
(through ``device``) and the doctor reports them, including when torch itself is broken."""

from __future__ import annotations

import functools


@functools.cache
def cpu_flags() -> frozenset:
    """The feature flags of the host's first CPU (/proc/cpuinfo; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()
