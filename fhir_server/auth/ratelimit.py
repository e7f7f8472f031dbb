"""Sliding-window rate limits (per process) for the authorization endpoints and logins.

Limits are per API process: behind a load balancer with N processes a client gets at
most N times the limit, which still stops brute force; a shared limiter (MongoDB TTL
counters or a proxy) can replace :class:`RateLimiter` with the same ``hit`` method.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from fhir_server.fhir.errors import TooManyRequests

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, per_minute: int, window: float = 60.0, max_keys: int = 100_000) -> None:
        self.limit = per_minute
        self.window = window
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> None:
        """Count one request for ``key``; raise 429 with ``Retry-After`` past the limit."""
        if self.limit <= 0:
            return
        now = time.monotonic()
        with self._lock:
            q = self._hits.get(key)
            if q is None:
                if len(self._hits) >= self.max_keys:
                    self._evict(now)
                q = self._hits[key] = deque()
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) >= self.limit:
                retry = max(1, math.ceil(q[0] + self.window - now))
                raise TooManyRequests("Too many requests; try again later",
                                      headers={"Retry-After": str(retry)})
            q.append(now)

    def _evict(self, now: float) -> None:
        for k in [k for k, q in self._hits.items() if not q or q[-1] <= now - self.window]:
            del self._hits[k]
