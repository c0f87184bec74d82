"""A log line that a flood cannot turn into a flood of log lines (e.g. forged notices from a bot).

At most `burst` lines per `interval_s`; the lines dropped meanwhile are counted and reported as
`suppressed` on the next line that gets through. One instance per app (no module state).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval_s <= 0:
            raise ValueError("burst must be >= 1 and interval_s > 0")
        self._logger = logger
        self._burst = burst
        self._interval_s = interval_s
        self._clock = clock
        self._window_start = -float("inf")
        self._logged = 0
        self.suppressed = 0  # dropped since the last line that got through

    def warning(self, message: str, *args: object, extra: dict[str, Any] | None = None) -> bool:
        """Logs unless this window's burst is spent; True when the line was written."""
        now = self._clock()
        if now - self._window_start >= self._interval_s:
            self._window_start, self._logged = now, 0
        if self._logged >= self._burst:
            self.suppressed += 1
            return False
        self._logged += 1
        fields = {**(extra or {}), "suppressed": self.suppressed}
        self.suppressed = 0
        self._logger.warning(message, *args, extra=fields)
        return True
