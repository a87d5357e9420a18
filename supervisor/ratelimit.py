"""Token buckets for ``rate_limit`` constraints.

A capability with a ``rate_limit`` owns a bucket; a use spends one token from
its own bucket and from every rate-limited ancestor's, all or none, so that
delegating a capability can never multiply the rate its root allows.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TokenBucket", "spend_all"]


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``capacity / per_seconds``."""

    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, capacity: int, per_seconds: float, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / per_seconds
        self.tokens = float(capacity)
        self.updated = now

    def available(self, now: float) -> float:
        """Refill up to ``now`` and return the tokens there are."""
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        return self.tokens


def spend_all(buckets: Sequence[TokenBucket], now: float) -> bool:
    """Spend one token from each bucket if every one has it; else spend none."""
    for bucket in buckets:
        if bucket.available(now) < 1.0:
            return False
    for bucket in buckets:
        bucket.tokens -= 1.0
    return True
