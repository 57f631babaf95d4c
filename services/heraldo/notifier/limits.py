"""Send-rate limits: the replica's share of the cluster-wide rate, and a rate per recipient domain.

Both are token buckets that wait rather than refuse: a send waits for its token, so a limit slows
the stream (and, through the bounded in-flight window, the batch service) instead of failing mail.
A rate can be changed while senders wait; they pick the new rate up at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

logger = logging.getLogger(__name__)

#: A bucket holds this many seconds of its rate, so short pauses are made up without a burst
#: larger than a tenth of a second's worth of mail.
BURST_S = 0.1
#: Domains remembered for their own limit; the least recently used are forgotten beyond this.
MAX_DOMAINS = 10_000


class RateLimiter:
    """A token bucket of ``rate_per_s`` tokens a second; 0 means unlimited. Waiters are FIFO."""

    def __init__(self, rate_per_s: float = 0.0) -> None:
        self._rate_per_s = rate_per_s
        self._tokens = self._capacity()
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    @property
    def rate_per_s(self) -> float:
        return self._rate_per_s

    def _capacity(self) -> float:
        return max(1.0, self._rate_per_s * BURST_S)

    def _refill(self) -> None:
        now = time.monotonic()
        if self._rate_per_s > 0:
            self._tokens = min(self._capacity(),
                               self._tokens + (now - self._updated) * self._rate_per_s)
        self._updated = now

    def set_rate(self, rate_per_s: float) -> None:
        """Applies a new rate now, waking every waiter so it measures against the new rate."""
        if rate_per_s < 0:
            raise ValueError(f"rate_per_s must not be negative, got {rate_per_s}")
        self._refill()
        self._rate_per_s = rate_per_s
        self._tokens = min(self._tokens, self._capacity())
        self._changed.set()
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        """Waits until one more message may go out."""
        if self._rate_per_s <= 0 and not self._lock.locked():
            return
        # One waiter measures at a time, so waiters are served in arrival order.
        async with self._lock:
            while True:
                self._refill()
                if self._rate_per_s <= 0:
                    return
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                changed = self._changed
                wait_s = (1 - self._tokens) / self._rate_per_s
                try:
                    await asyncio.wait_for(changed.wait(), wait_s)
                except TimeoutError:
                    pass

    def idle(self) -> bool:
        """True when nobody waits and the bucket is full: forgetting it changes nothing."""
        self._refill()
        return not self._lock.locked() and self._tokens >= self._capacity()


class DomainLimiter:
    """A ``RateLimiter`` per recipient domain, all at the same rate; 0 means unlimited."""

    def __init__(self, rate_per_s: float = 0.0) -> None:
        self._rate_per_s = rate_per_s
        self._limiters: OrderedDict[str, RateLimiter] = OrderedDict()

    def set_rate(self, rate_per_s: float) -> None:
        self._rate_per_s = rate_per_s
        for limiter in self._limiters.values():
            limiter.set_rate(rate_per_s)

    async def acquire(self, address: str) -> None:
        if self._rate_per_s <= 0 and not self._limiters:
            return
        domain = address.rpartition("@")[2].lower()
        limiter = self._limiters.get(domain)
        if limiter is None:
            limiter = self._limiters[domain] = RateLimiter(self._rate_per_s)
            self._forget_idle()
        self._limiters.move_to_end(domain)
        await limiter.acquire()

    def _forget_idle(self) -> None:
        while len(self._limiters) > MAX_DOMAINS:
            domain, limiter = next(iter(self._limiters.items()))
            if not limiter.idle():
                # The oldest is busy: keep it, the map grows past the bound until it settles.
                return
            del self._limiters[domain]


def replica_share(rate_per_s: float, live_replicas: int) -> float:
    """This replica's part of a cluster-wide rate: an equal share of the passing replicas."""
    if rate_per_s <= 0:
        return 0.0
    return rate_per_s / max(1, live_replicas)
