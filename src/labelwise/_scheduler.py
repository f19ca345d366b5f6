"""Bounded concurrency over many requests: a producer that selects examples ahead, workers that ask."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._asking import Key
from ._schema import Prediction

__all__ = ["label_groups"]


async def label_groups(groups: Sequence[Sequence[Key]], label: Callable[[Sequence[Key]], Awaitable[list[Prediction]]],
                       done: Callable[[Prediction], Any], *, concurrency: int,
                       prefetch: Callable[[Sequence[Key]], None] | None, stop: Callable[[], bool]) -> None:
    """Label each group of items with at most `concurrency` in flight; `done` sees each prediction as it lands.

    Examples are selected a few hundred items ahead of the workers; once `stop()` is true no new group is sent,
    while answers already in flight still land. An unexpected error in one group does the same, then is raised:
    the answers other workers were waiting for are not lost with it."""
    size = max((len(g) for g in groups), default=1)
    queue: asyncio.Queue = asyncio.Queue(maxsize=2 * concurrency)
    n_workers = min(concurrency, max(1, len(groups)))

    async def produce() -> None:
        step = max(1, 256 // size)
        for start in range(0, len(groups), step):
            chunk = groups[start:start + step]
            if prefetch is not None:
                prefetch([q for g in chunk for q in g])
            for g in chunk:
                await queue.put(g)
        for _ in range(n_workers):
            await queue.put(None)

    crashed: list[BaseException] = []

    async def work() -> None:
        while (group := await queue.get()) is not None:
            if crashed or stop():
                continue
            try:
                preds = await label(group)
            except Exception as err:  # a bug, not a model's answer: stop sending, let in-flight work land, re-raise
                crashed.append(err)
                continue
            for pred in preds:
                done(pred)

    tasks = [asyncio.create_task(produce())] + [asyncio.create_task(work()) for _ in range(n_workers)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    if crashed:
        raise crashed[0]
