"""The one event loop that sync calls run on: async inside, a thin sync wrapper outside."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


class _LoopThread:
    """One event loop on a daemon thread that every sync call runs on, so async clients outlive a call."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="labelwise-loop", daemon=True).start()
            return self._loop

    def run(self, coro: Awaitable[T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise


_LOOP = _LoopThread()


def run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine from sync code (also from inside a running loop, e.g. Jupyter) on labelwise's loop thread."""
    return _LOOP.run(coro)
