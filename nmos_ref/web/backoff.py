"""Randomised exponential backoff, shared by every client that retries (the Node's registration client, OCSP)."""

from __future__ import annotations

import random

from attrs import frozen


@frozen
class Backoff:
    """Randomised exponential backoff: the n-th wait (from 0) is drawn from [max(minimum, c/2), c] with
    c = min(maximum, minimum * factor**n): 1 s, then up to 1.5 s, 2.25 s, ... at most 30 s."""

    minimum: float = 1.0
    factor: float = 1.5
    maximum: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.maximum, self.minimum * self.factor ** attempt)
        return rng.uniform(max(self.minimum, ceiling / 2), ceiling)
