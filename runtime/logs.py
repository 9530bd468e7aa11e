"""Logging helpers shared by the robot side and the serving side (stdlib only)."""

from __future__ import annotations

import logging
import math
import time


class RateLimitedLog:
    """A warning logged at most every ``every_s`` seconds, with how many were skipped: what a
    flood of bad input (or a stream of clamped actions) leaves in the log."""

    def __init__(self, logger: logging.Logger, every_s: float) -> None:
        self.logger = logger
        self.every_s = every_s
        self._skipped = 0
        self._last = -math.inf

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._skipped += 1
            return
        if self._skipped:
            msg += f" (and {self._skipped} more since the last report)"
        self.logger.warning(msg, *args)
        self._skipped, self._last = 0, now
