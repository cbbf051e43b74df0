"""Per-caller rate limits: a token bucket per key, in process memory.

Two budgets, both checked in `services.common.auth.authenticate` (the one place every authenticated route
passes through, once per request):
- an authenticated caller (its principal's subject) gets `RATE_LIMIT_PER_MINUTE` requests a minute;
- a failed authentication (wrong or missing token) is counted against the client address, with the much
  smaller `RATE_LIMIT_FAILED_AUTH_PER_MINUTE`: past it, a guesser gets 429 instead of 401.
Beyond a budget: **429** problem with `Retry-After` (whole seconds until a request is allowed again).
`/health`, `/ready` and the docs take no token and are not limited (an orchestrator polls them).
State is per process: N instances behind a balancer allow N times the budget; a restart forgets it.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from services.common import problems
from services.common.problems import ProblemError

MAX_KEYS = 10_000
"""Buckets kept at most; the least recently used goes first (a full bucket is no loss to forget)."""


class RateLimiter:
    """`per_minute` requests a minute per key, in bursts of up to `per_minute`, refilled continuously."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.per_second = per_minute / 60.0
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float | None:
        """Spend one request of `key`'s budget: None if allowed, else the seconds until one is."""
        now = self.clock()
        tokens, then = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.per_second)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = None
        else:
            wait = (1.0 - tokens) / self.per_second
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > MAX_KEYS:
            self._buckets.popitem(last=False)
        return wait

    def check(self, key: str, detail: str) -> None:
        """429 (with `Retry-After`) when `key` is over its budget."""
        wait = self.take(key)
        if wait is not None:
            raise too_many_requests(wait, detail)


class RateLimits:
    """An app's two budgets (`app.state.rate_limits`)."""

    def __init__(self, per_minute: int, failed_auth_per_minute: int) -> None:
        self.callers = RateLimiter(per_minute)
        self.failed_auth = RateLimiter(failed_auth_per_minute)


def too_many_requests(wait: float, detail: str) -> ProblemError:
    seconds = max(1, math.ceil(wait))
    return ProblemError(
        429,
        f"{detail}; retry in {seconds} s",
        type=problems.TOO_MANY_REQUESTS,
        title="Too many requests",
        headers={"Retry-After": str(seconds)},
    )
