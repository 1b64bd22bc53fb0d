"""Retry intent: a policy on the step, and an exception users raise to say "never retry this"."""

from __future__ import annotations

import random
from dataclasses import dataclass


class NonRetryableError(Exception):
    """Raise (or subclass) this in step code for an error that another attempt cannot fix."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a step is retried: attempts include the first; delays grow by `backoff`."""

    max_attempts: int = 3
    initial_interval_s: float = 1.0
    backoff: float = 2.0
    max_interval_s: float = 60.0
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_interval_s < 0 or self.max_interval_s < 0 or self.backoff < 1:
            raise ValueError("RetryPolicy intervals must be >= 0 and backoff >= 1")

    def is_retryable(self, error: BaseException) -> bool:
        if isinstance(error, (NonRetryableError, *self.non_retryable)):
            return False
        return not getattr(error, "non_retryable", False)

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.initial_interval_s * self.backoff ** (attempt - 1), self.max_interval_s)
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))


NO_RETRY = RetryPolicy(max_attempts=1)
DEFAULT_RETRY = RetryPolicy()
