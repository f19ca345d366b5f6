"""Client-side request and token budgets shared by every request of a run, with a global pause on 429."""

from __future__ import annotations

import asyncio
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """Requests-per-minute and tokens-per-minute token buckets; a 429 pauses all callers, not just one."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        now = time.monotonic()
        self._req = (float(rpm or 0) / 60.0, 1.0, now)
        self._tok = (float(tpm or 0) / 60.0, float(tpm or 0) / 60.0 * 5, now)
        self._req_level = self._req[1]
        self._tok_level = self._tok[1]
        self._last = now
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        """Hold every caller for `seconds` (the server said Retry-After)."""
        self.pauses += 1
        self._paused_until = max(self._paused_until, time.monotonic() + max(0.0, seconds))

    def _refill(self, now: float) -> None:
        dt = now - self._last
        self._last = now
        if self.rpm:
            self._req_level = min(self._req[1], self._req_level + dt * self._req[0])
        if self.tpm:
            self._tok_level = min(self._tok[1], self._tok_level + dt * self._tok[0])

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of about `tokens` tokens fits the budgets and no pause is in force."""
        if not (self.rpm or self.tpm) and self._paused_until <= time.monotonic():
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                self._refill(now)
                need_tok = min(tokens, self._tok[1]) if self.tpm else 0
                wait = 0.0
                if self.rpm and self._req_level < 1:
                    wait = max(wait, (1 - self._req_level) / self._req[0])
                if self.tpm and self._tok_level < need_tok:
                    wait = max(wait, (need_tok - self._tok_level) / self._tok[0])
                if wait <= 0:
                    if self.rpm:
                        self._req_level -= 1
                    if self.tpm:
                        self._tok_level -= need_tok
                    return
                await asyncio.sleep(wait)
