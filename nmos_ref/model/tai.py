"""TAI timestamps: what IS-04 uses for `version` and for the registry's paging cursors.

IS-04 "APIs - Common Keys": a version is a TAI timestamp written "<seconds>:<nanoseconds>". TAI runs ahead of UTC by
the leap seconds inserted since 1972 (37 s since 2017-01-01), so a Unix time is turned into TAI with this table.
Stamps are held as integer nanoseconds so that they compare, sort and bisect cheaply.
"""

from __future__ import annotations

import re
from bisect import bisect_right

from twisted.internet.interfaces import IReactorTime

NS = 1_000_000_000

# (Unix time at which the offset starts, TAI - UTC in seconds) from the IERS leap second list.
_LEAPS: tuple[tuple[int, int], ...] = (
    (63072000, 10), (78796800, 11), (94694400, 12), (126230400, 13), (157766400, 14), (189302400, 15),
    (220924800, 16), (252460800, 17), (283996800, 18), (315532800, 19), (362793600, 20), (394329600, 21),
    (425865600, 22), (489024000, 23), (567993600, 24), (631152000, 25), (662688000, 26), (709862400, 27),
    (741484800, 28), (773020800, 29), (820454400, 30), (867715200, 31), (915148800, 32), (1136073600, 33),
    (1230768000, 34), (1341100800, 35), (1435708800, 36), (1483228800, 37),
)
_LEAP_STARTS = [start for start, _ in _LEAPS]

# Every TAI timestamp read from a client: seconds fit 64 bits, nanoseconds are below 10^9. Bounded, so no digit run
# reaches int() (which is slow on long ones and refuses more than 4,300 digits).
TAI_TEXT = re.compile(r"([0-9]{1,20}):([0-9]{1,9})")


def leap_offset(unix_seconds: float) -> int:
    """TAI - UTC, in whole seconds, at a Unix time."""
    i = bisect_right(_LEAP_STARTS, unix_seconds)
    return _LEAPS[i - 1][1] if i else 0


def unix_to_tai_ns(unix_seconds: float) -> int:
    return int(round(unix_seconds * NS)) + leap_offset(unix_seconds) * NS


def format_tai(stamp: int) -> str:
    """Integer nanoseconds to "<seconds>:<nanoseconds>" (10 ns is "0:10", never "0.00000001")."""
    return f"{stamp // NS}:{stamp % NS}"


def parse_tai(text: str) -> int:
    """"<seconds>:<nanoseconds>" to integer nanoseconds; ValueError when it is not one."""
    match = TAI_TEXT.fullmatch(text)
    if match is None:
        raise ValueError(f"not a TAI timestamp <seconds>:<nanoseconds>: {text!r}")
    return int(match.group(1)) * NS + int(match.group(2))


class TAIStamps:
    """Hands out TAI stamps that never repeat and never go backwards, even if the wall clock does. Pure: the Unix
    time is passed in (`now`), read once by whoever handles the request or the tick."""

    def __init__(self) -> None:
        self._last = 0

    def now(self, now: float) -> int:
        """The TAI time at Unix time `now`, without reserving it (never before a stamp already handed out)."""
        return max(unix_to_tai_ns(now), self._last)

    def stamp(self, now: float) -> int:
        """A fresh stamp for Unix time `now`, strictly greater than every stamp handed out before."""
        stamp = unix_to_tai_ns(now)
        if stamp <= self._last:
            stamp = self._last + 1
        self._last = stamp
        return stamp


class TAIClock:
    """`TAIStamps` read from a clock, for the Node, whose versions are stamped when its state changes."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.stamps = TAIStamps()

    def now(self) -> int:
        return self.stamps.now(self.clock.seconds())

    def stamp(self) -> int:
        return self.stamps.stamp(self.clock.seconds())
