"""The progress bar of a labeling run: rate, ETA, failures, tokens and cost."""

from __future__ import annotations

import time

from ._schema import Prediction

__all__ = ["Progress"]


class Progress:
    """A rich progress bar with rate, ETA, failures, tokens and cost; silent when not on a terminal."""

    def __init__(self, total: int, done: int, enabled: bool, title: str = "relabel") -> None:
        self.enabled = enabled
        self.failed = 0
        self.tokens = 0
        self.cost = 0.0
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f}/s"), TimeRemainingColumn(),
            TextColumn("failed {task.fields[failed]}  tokens {task.fields[tokens]:,}  ${task.fields[cost]:.4f}"),
            transient=False, stderr=True,
        )
        self.start = time.monotonic()
        self.done0 = done
        self.task = self.bar.add_task(title, total=total, completed=done, rate=0.0, failed=0, tokens=0, cost=0.0)
        self.bar.start()

    def update(self, pred: Prediction, cost: float | None) -> None:
        self.failed += pred.status == "failed"
        if not pred.cached:
            self.tokens += sum(pred.usage.values())
            self.cost += cost or 0.0
        if self.enabled:
            t = self.bar.tasks[0]
            rate = (t.completed + 1 - self.done0) / max(1e-6, time.monotonic() - self.start)
            self.bar.update(self.task, advance=1, rate=rate, failed=self.failed, tokens=self.tokens, cost=self.cost)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
