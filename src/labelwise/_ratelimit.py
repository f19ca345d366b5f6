"""Client-side request and token budgets shared by every request of a run, with a global pause on 429."""

from __future__ import annotations

import asyncio
import time
from asyncio import CancelledError, Future, get_running_loop
from collections import deque

__all__ = ["RateLimiter"]


class RateLimiter:
    """Requests-per-minute and tokens-per-minute token buckets; a 429 slows all callers, not just one.

    On a 429 every caller pauses for the server's Retry-After, and the number of requests allowed in
    flight is halved (then grows back by one per window of successes): additive-increase,
    multiplicative-decrease, so a run without `--rpm` settles near what the server admits. A caller held by
    the window waits on a future that a finishing request resolves: no polling.
    """

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
        self.in_flight = 0
        self.window: float | None = None  # no cap on requests in flight until the first 429
        self._last_cut = 0.0
        self._waiters: deque[Future[None]] = deque()  # callers held by the window, first come first served

    def pause(self, seconds: float) -> None:
        """Hold every caller for `seconds` (the server said Retry-After) and halve the requests in flight."""
        self.pauses += 1
        now = time.monotonic()
        self._paused_until = max(self._paused_until, now + max(0.0, seconds))
        if now - self._last_cut > max(0.05, seconds):  # one cut per burst of 429s, not one per request
            self.window = max(1.0, (self.in_flight if self.window is None else min(self.window, self.in_flight)) / 2)
            self._last_cut = now

    def release(self, ok: bool) -> None:
        """A request finished; successes let the in-flight window grow back."""
        self.in_flight -= 1
        if ok and self.window is not None:
            self.window += 1.0 / self.window
        self._wake()

    def _room(self) -> bool:
        return self.window is None or self.in_flight < self.window

    def _wake(self) -> None:
        """Let the first held caller re-check the window, if a request could start now."""
        while self._waiters and self._room():
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def _wait_for_room(self) -> None:
        """Wait until fewer requests than the window are in flight (woken by `release`, never by a timer)."""
        first = True
        while not self._room():
            fut: Future[None] = get_running_loop().create_future()
            if first:
                self._waiters.append(fut)
            else:  # woken but beaten to the slot: keep its place at the front
                self._waiters.appendleft(fut)
            first = False
            try:
                await fut
            except CancelledError:
                if fut.done() and not fut.cancelled():  # woken, then cancelled: pass the wake-up on
                    self._wake()
                raise

    def _refill(self, now: float) -> None:
        dt = now - self._last
        self._last = now
        if self.rpm:
            self._req_level = min(self._req[1], self._req_level + dt * self._req[0])
        if self.tpm:
            self._tok_level = min(self._tok[1], self._tok_level + dt * self._tok[0])

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of about `tokens` tokens fits the budgets and no pause is in force."""
        if not self._room():
            await self._wait_for_room()
        self.in_flight += 1
        self._wake()  # a window that grew may have room for the next held caller too
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
