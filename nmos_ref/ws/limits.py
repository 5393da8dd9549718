"""The numbers that bound what subscriptions cost (docs/subscriptions.md explains each)."""

from __future__ import annotations

from attrs import frozen


@frozen
class SubscriptionLimits:
    """The numbers that bound what subscriptions cost (docs/subscriptions.md explains each)."""

    grace: float = 30.0  # seconds a non-persistent subscription outlives its last socket (or its creation)
    sync_slice: int = 256  # most resources encoded per reactor turn while building an initial state ...
    slice_seconds: float = 0.02  # ... and most seconds spent on it per turn
    grain_events: int = 1000  # most events in one grain of the initial state ...
    grain_bytes: int = 512 << 10  # ... and about the most bytes (what a socket holds in its buffers at a time)
    backlog_bytes: int = 8 << 20  # live events held for a socket whose client stopped reading; beyond, it is closed
