"""Client-side rate limits: `RateLimiter`'s request and token buckets, the run-wide pause on a 429 and the AIMD
window of requests in flight; `--rpm`/`--tpm` reaching it from the CLI.

The limiter's clock is replaced by a manual one whose `sleep` moves time forward at once, so every wait is exact
and the tests take no real time; the run-wide pause is shown against the fake server's 429 with real time, by lower
bounds only (true however slow the machine).
"""

from __future__ import annotations

import asyncio
import json
import types

import pytest

from labelwise import Labeler
from labelwise._ratelimit import RateLimiter

REAL_SLEEP = asyncio.sleep


class ManualClock:
    """`monotonic()` that only moves when a limiter sleeps; `sleep` yields to the loop once, then moves it."""

    START = 1024.0  # a process's monotonic clock is far from 0; times below are relative to this

    def __init__(self) -> None:
        self.now = self.START
        self.slept: list[float] = []

    @property
    def t(self) -> float:
        """Seconds since the start."""
        return self.now - self.START

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        await REAL_SLEEP(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """The limiter module's `time.monotonic` and `asyncio.sleep`, replaced by a manual clock."""
    from labelwise import _ratelimit

    c = ManualClock()
    monkeypatch.setattr(_ratelimit, "time", types.SimpleNamespace(monotonic=c.monotonic))
    monkeypatch.setattr(_ratelimit, "asyncio", types.SimpleNamespace(sleep=c.sleep, Lock=asyncio.Lock))
    return c


async def acquire_times(limiter: RateLimiter, clock: ManualClock, n: int, tokens: int = 0) -> list[float]:
    """When each of n sequential acquisitions was granted (on the manual clock)."""
    out = []
    for _ in range(n):
        await limiter.acquire(tokens)
        out.append(clock.t)
        limiter.release(True)
    return out


async def test_rpm_spaces_requests_by_the_rate(clock: ManualClock) -> None:
    assert await acquire_times(RateLimiter(rpm=60), clock, 4) == [0.0, 1.0, 2.0, 3.0]  # a bucket of one request
    limiter = RateLimiter(rpm=120)
    clock.now = clock.START + 10.0  # idle time refills the bucket, but never beyond one request
    assert await acquire_times(limiter, clock, 3) == [10.0, 10.5, 11.0]


async def test_tpm_spaces_requests_by_their_tokens(clock: ManualClock) -> None:
    limiter = RateLimiter(tpm=600)  # 10 tokens/s; the bucket holds 5 s worth (50 tokens)
    assert await acquire_times(limiter, clock, 1, tokens=50) == [0.0]
    assert await acquire_times(limiter, clock, 1, tokens=20) == [2.0]
    assert await acquire_times(limiter, clock, 1, tokens=500) == [7.0]  # a request larger than the bucket waits for a full one


async def test_rpm_and_tpm_together_wait_for_the_scarcer(clock: ManualClock) -> None:
    limiter = RateLimiter(rpm=600, tpm=600)  # 10 requests/s but 10 tokens/s
    assert await acquire_times(limiter, clock, 3, tokens=50) == [0.0, 5.0, 10.0]


async def test_pause_holds_every_caller_for_the_retry_after(clock: ManualClock) -> None:
    limiter = RateLimiter()  # no budgets: without a pause nobody waits
    assert await acquire_times(limiter, clock, 2) == [0.0, 0.0]
    limiter.pause(3.0)
    granted = []

    async def caller() -> None:
        await limiter.acquire()
        granted.append(clock.t)
        limiter.release(True)

    await asyncio.gather(*(caller() for _ in range(5)))
    assert len(granted) == 5 and min(granted) >= 3.0 and limiter.pauses == 1  # nobody before the pause ends
    assert limiter.window is not None  # the 429 also capped the requests in flight (see the AIMD test)
    now = clock.t
    limiter.pause(1.0)
    limiter.pause(0.5)  # a shorter pause never shortens a longer one
    assert await acquire_times(limiter, clock, 1) == [pytest.approx(now + 1.0)] and limiter.pauses == 3


async def test_aimd_window_halves_once_per_burst_of_429s_and_grows_back(clock: ManualClock) -> None:
    limiter = RateLimiter()
    for _ in range(8):
        await limiter.acquire()
    assert limiter.in_flight == 8 and limiter.window is None  # no cap until the first 429
    limiter.pause(0.0)
    assert limiter.window == 4.0  # multiplicative decrease: half of what was in flight
    limiter.pause(0.0)  # the same burst (same instant): no second cut
    assert limiter.window == 4.0
    for _ in range(4):
        limiter.release(False)
    assert limiter.in_flight == 4

    waiting = asyncio.ensure_future(limiter.acquire())
    for _ in range(20):
        await REAL_SLEEP(0)
    assert not waiting.done(), "a fifth request must wait while four are in flight under a window of 4"
    limiter.release(True)  # a success: additive increase, 1/window
    await waiting
    assert limiter.in_flight == 4 and limiter.window == pytest.approx(4.25)

    clock.now += 1.0  # a later burst cuts again, from what is in flight then
    limiter.pause(0.0)
    assert limiter.window == 2.0
    for _ in range(10):
        limiter.release(True)
    assert limiter.window > 4.0  # grows back with successes


def test_labeler_gives_its_model_the_run_wide_limiter(corpus) -> None:
    with Labeler("openai:x", base_url="http://127.0.0.1:9/v1", examples=corpus, shots=0, rpm=120, tpm=9000) as labeler:
        assert labeler.model.limiter is labeler.limiter
        assert (labeler.limiter.rpm, labeler.limiter.tpm) == (120, 9000)


@pytest.mark.parametrize("flags, waited", [(["--rpm", "60"], 2.0), (["--tpm", "600"], 10.0), ([], 0.0)])
def test_cli_rpm_and_tpm_limit_a_relabel_run(cli, corpus, tmp_path, fake_server, clock, flags, waited) -> None:
    data = tmp_path / "input.tsv"
    data.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in corpus.items[:3]), encoding="utf-8")
    server = fake_server()
    out = tmp_path / "run"
    result = cli("relabel", data, "--out", out, "--model", "openai:x", "--base-url", server.base_url, "--shots", "0",
                 "--concurrency", "3", *flags)
    assert result.exit_code == 0, str(result)
    assert server.stats.by_status == {200: 3}
    # three requests: at 60 rpm one a second after the first; at 600 tpm (a 50-token bucket, every prompt larger)
    # five seconds apart; with no limit nobody waits
    assert clock.t == pytest.approx(waited)
    rows = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)


async def test_a_429_pauses_the_whole_run_not_just_its_request(corpus, fake_server, until) -> None:
    server = fake_server(script=["429:2"])
    async with Labeler("openai:x", base_url=server.base_url, examples=corpus, shots=0, concurrency=2) as labeler:
        first = asyncio.ensure_future(labeler.alabel(corpus.items[0].text))
        await until(lambda: labeler.limiter.pauses == 1, "the 429 paused the run")
        second = asyncio.ensure_future(labeler.alabel(corpus.items[1].text))  # another text, asked during the pause
        preds = await asyncio.gather(first, second)
    assert [p.status for p in preds] == ["ok", "ok"]
    (refused, _, s0), (a, _, s1), (b, _, s2) = sorted(server.stats.log)
    assert (s0, s1, s2) == (429, 200, 200)
    # both the retried request and the other text's first request waited out the 2 s Retry-After
    assert a - refused >= 2 - 0.01 and b - refused >= 2 - 0.01
    assert labeler.model.stats["rate_limited"] == 1 and labeler.model.client.is_closed()


async def test_callers_held_by_the_window_are_woken_by_releases_in_order_without_polling(clock: ManualClock) -> None:
    limiter = RateLimiter()
    for _ in range(4):
        await limiter.acquire()
    limiter.pause(0.0)  # a 429 with 4 in flight: a window of 2
    limiter.release(False)
    limiter.release(False)
    assert limiter.in_flight == 2 and limiter.window == 2.0
    granted: list[int] = []

    async def caller(n: int) -> None:
        await limiter.acquire()
        granted.append(n)

    held = [asyncio.ensure_future(caller(n)) for n in range(3)]
    for _ in range(20):
        await REAL_SLEEP(0)
    assert granted == [], "the window is full: nobody may start"
    limiter.release(False)  # a failure frees one slot and does not grow the window
    for _ in range(20):
        await REAL_SLEEP(0)
    assert granted == [0]
    limiter.release(False)
    limiter.release(False)  # two slots free: both remaining callers start, first come first served
    await asyncio.gather(*held)
    assert granted == [0, 1, 2] and limiter.in_flight == 2
    assert clock.slept == [] and clock.t == 0.0  # woken by the releases, not by a timer


async def test_a_cancelled_held_caller_passes_its_wake_up_on(clock: ManualClock) -> None:
    limiter = RateLimiter()
    await limiter.acquire()
    await limiter.acquire()
    limiter.pause(0.0)  # window 1, 2 in flight
    limiter.release(False)
    first = asyncio.ensure_future(limiter.acquire())
    second = asyncio.ensure_future(limiter.acquire())
    await REAL_SLEEP(0)
    limiter.release(False)  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs: `second` must get the slot
    await second
    assert first.cancelled() and limiter.in_flight == 1 and clock.slept == []
