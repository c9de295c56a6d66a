"""Fault injection for ganctl's own tests and fault benchmark, off unless its variables are set.

GANCTL_TEST_SLOW_WRITE=S   atomic writes of more than 1 MB take about S seconds (kill -9 tests)
GANCTL_TEST_NAN_AT=N[,M..] the real batch of step N (and M ...) is NaN, once each (divergence tests)
GANCTL_TEST_NAN_FROM=N     ... of every step from N on
"""

from __future__ import annotations

import os

SLOW_WRITE_MIN_BYTES = 1 << 20


def slow_write_seconds(nbytes: int) -> float:
    value = os.environ.get("GANCTL_TEST_SLOW_WRITE")
    return float(value) if value and nbytes > SLOW_WRITE_MIN_BYTES else 0.0


_fired: set[int] = set()


def nan_at(step: int) -> bool:
    """True where the test asks step `step` to see a non-finite batch."""
    once, every = os.environ.get("GANCTL_TEST_NAN_AT"), os.environ.get("GANCTL_TEST_NAN_FROM")
    if every and step >= int(every):
        return True
    if once and step in {int(s) for s in once.split(",")} and step not in _fired:
        _fired.add(step)
        return True
    return False
