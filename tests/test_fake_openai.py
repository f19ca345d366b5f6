"""The fake OpenAI server, exercised through the real `openai` SDK. Every test asserts counts and order, never speed
(the server's throughput is measured in `benchmarks/`, scenario 9)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from benchmarks.fake_openai import OFF_LABEL, FakeOpenAIServer, Scenario

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("spam", "ham", "not spam", "eggs")


class Answer(BaseModel):
    """`{"labels": [...]}` with taxonomy labels only."""

    model_config = ConfigDict(extra="forbid")
    labels: Annotated[list[Literal[LABELS]], Field(min_length=1, max_length=2)]  # type: ignore[valid-type]


class Item(BaseModel):
    """One entry of a batch answer."""

    model_config = ConfigDict(extra="forbid")
    id: Literal["a1", "b2", "c3"]
    labels: Annotated[list[Literal[LABELS]], Field(min_length=1, max_length=2)]  # type: ignore[valid-type]


class Batch(BaseModel):
    """`{"items": [{"id", "labels"}, ...]}` (pydantic puts Item under `$defs`)."""

    model_config = ConfigDict(extra="forbid")
    items: list[Item]


def schema_format(model: type[BaseModel]) -> dict[str, Any]:
    """A `json_schema` response_format for a pydantic model."""
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": model.model_json_schema(), "strict": True}}


_CLIENTS: list[openai.AsyncOpenAI] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """Close every client a test made: a dropped AsyncOpenAI, once collected, can stall other clients' requests."""
    yield
    while _CLIENTS:
        await _CLIENTS.pop().close()


def client(server: FakeOpenAIServer, **kw: Any) -> openai.AsyncOpenAI:
    """An SDK client (no retries unless asked) against the server; closed after the test."""
    kw.setdefault("max_retries", 0)
    _CLIENTS.append(openai.AsyncOpenAI(base_url=server.base_url, api_key=kw.pop("api_key", "test"), **kw))
    return _CLIENTS[-1]


async def ask(c: openai.AsyncOpenAI, text: str = "label this", **kw: Any) -> Any:
    """One chat completion with a single user message."""
    return await c.chat.completions.create(model="fake", messages=[{"role": "user", "content": text}], **kw)


async def test_json_schema_answer_has_labels_from_the_enum() -> None:
    with FakeOpenAIServer(Scenario(seed=1)) as server:
        c = client(server)
        seen = set()
        for _ in range(20):
            r = await ask(c, response_format=schema_format(Answer))
            seen.update(Answer.model_validate_json(r.choices[0].message.content).labels)
            assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0 and r.id and r.model == "fake"
            assert r.choices[0].finish_reason == "stop"
        assert seen <= set(LABELS) and len(seen) > 1
        r = await ask(c, "Sentence: this is not spam at all", response_format=schema_format(Answer))
        assert Answer.model_validate_json(r.choices[0].message.content).labels == ["not spam"]  # preferred: in the text


async def test_429_script_carries_retry_after_then_succeeds() -> None:
    with FakeOpenAIServer(Scenario(script=["429", "ok", "429:0.25"])) as server:
        c = client(server)
        with pytest.raises(openai.RateLimitError) as err:
            await ask(c)
        assert err.value.response.headers["retry-after"] == "1"
        assert err.value.response.headers["retry-after-ms"] == "1000"
        assert json.loads((await ask(c)).choices[0].message.content) == {"labels": []}
        with pytest.raises(openai.RateLimitError) as err:
            await ask(c)
        assert err.value.response.headers["retry-after"] == "0.25"
        assert server.stats.rate_limited == 2 and server.stats.by_status == {429: 2, 200: 1}


async def test_sdk_retries_honour_retry_after() -> None:
    with FakeOpenAIServer(Scenario(script=["429:0.2", "500"])) as server:
        start = time.monotonic()
        r = await ask(client(server, max_retries=2))
        assert r.choices[0].message.content and time.monotonic() - start >= 0.2
        assert [status for _, _, status in server.stats.log] == [429, 500, 200]


async def test_500_and_other_statuses() -> None:
    with FakeOpenAIServer(Scenario(error_rate=1.0, script=["503"])) as server:
        c = client(server)
        with pytest.raises(openai.InternalServerError) as err:
            await ask(c)
        assert err.value.status_code == 503
        with pytest.raises(openai.InternalServerError):
            await ask(c)
        assert server.stats.errors == 2


async def test_garbage_is_not_json() -> None:
    with FakeOpenAIServer(Scenario(garbage_rate=1.0)) as server:
        c = client(server)
        for _ in range(10):
            r = await ask(c, response_format=schema_format(Answer))
            with pytest.raises(ValueError):
                json.loads(r.choices[0].message.content)
        assert server.stats.garbage == 10


async def test_off_taxonomy_answers_are_valid_json_with_a_foreign_label() -> None:
    with FakeOpenAIServer(Scenario(off_taxonomy_rate=1.0)) as server:
        r = await ask(client(server), response_format=schema_format(Answer))
        data = json.loads(r.choices[0].message.content)
        assert data == {"labels": [OFF_LABEL]}
        with pytest.raises(ValidationError):
            Answer.model_validate(data)


async def test_hang_times_out_and_close_does_not_wait() -> None:
    server = FakeOpenAIServer(Scenario(hang_rate=1.0, hang_s=3600)).start()
    with pytest.raises(openai.APITimeoutError):
        await ask(client(server, timeout=0.3))
    thread = server._thread
    assert thread is not None
    server.close()  # joins the thread for at most 10 s: far less than the hour the answer hangs
    assert not thread.is_alive(), "close() gave up waiting: the hanging answer kept the server alive"
    assert server.stats.hangs == 1 and server.stats.requests == 0  # the hung answer was never sent


async def test_keep_alive_reuses_one_connection() -> None:
    with FakeOpenAIServer(Scenario()) as server:
        c = client(server)
        for _ in range(200):
            await ask(c, response_format=schema_format(Answer))
        assert server.stats.completions == 200 and server.stats.connections == 1


async def test_concurrent_requests_overlap(until) -> None:
    # every answer is held until all 64 requests are in the server at once: they can only finish if they overlap
    async with FakeOpenAIServer(Scenario(script=["hold"] * 64)) as server:
        c = client(server, timeout=120)
        calls = asyncio.gather(*(ask(c) for _ in range(64)))
        await until(lambda: server.held == 64, "64 requests in flight together")
        assert server.stats.in_flight == 64 and server.stats.by_status == {}
        server.release()
        replies = await calls
        assert all(json.loads(r.choices[0].message.content) == {"labels": []} for r in replies)
        assert server.stats.max_in_flight == 64 and server.stats.by_status == {200: 64}
        assert server.stats.in_flight == 0 and server.held == 0


async def test_max_in_flight_answers_429(until) -> None:
    with FakeOpenAIServer(Scenario(max_in_flight=4, retry_after_s=0.05, script=["hold"] * 4)) as server:
        held = asyncio.gather(*(ask(client(server, timeout=120)) for _ in range(4)))  # 4 clients, 4 connections
        await until(lambda: server.held == 4, "4 requests in flight")
        for _ in range(6):  # while the 4 are in flight, every further request is refused
            with pytest.raises(openai.RateLimitError) as err:
                await ask(client(server))
            assert err.value.response.headers["retry-after"] == "0.05"
        server.release()
        assert len(await held) == 4
        assert (await ask(client(server))).choices[0].message.content  # room again once they are answered
        assert server.stats.max_in_flight == 4 and server.stats.rate_limited == 6
        assert [status for _, _, status in server.stats.log] == [429] * 6 + [200] * 5


class ManualClock:
    """A clock that moves only when told to: the rpm bucket's refills become exact."""

    def __init__(self) -> None:
        self.now = 1024.0  # steps below are binary fractions: exact arithmetic

    def __call__(self) -> float:
        return self.now


async def test_rpm_limit_answers_429_beyond_the_limit() -> None:
    with FakeOpenAIServer(Scenario(rpm=60)) as server:  # 1 request/s, bucket of 1
        server.clock = clock = ManualClock()
        c = client(server)
        await ask(c)
        for _ in range(4):
            with pytest.raises(openai.RateLimitError) as err:
                await ask(c)
            assert err.value.response.headers["retry-after"] == "1"
            assert err.value.response.headers["retry-after-ms"] == "1000"
        clock.now += 0.25
        with pytest.raises(openai.RateLimitError) as err:
            await ask(c)
        assert err.value.response.headers["retry-after-ms"] == "750"  # the bucket refills at 1/s
        clock.now += 0.75
        await ask(c)
        assert [status for _, _, status in server.stats.log] == [200, 429, 429, 429, 429, 429, 200]
    with FakeOpenAIServer(Scenario(rpm=6000, rpm_burst=10)) as server:  # 100/s after a burst of 10
        server.clock = clock = ManualClock()
        c = client(server)
        results = await asyncio.gather(*(ask(c) for _ in range(40)), return_exceptions=True)
        assert sum(not isinstance(r, Exception) for r in results) == 10  # the burst, no time for any refill
        assert server.stats.rate_limited == 30
        clock.now += 0.0625  # 6.25 tokens at 100/s
        results = await asyncio.gather(*(ask(c) for _ in range(8)), return_exceptions=True)
        assert sum(not isinstance(r, Exception) for r in results) == 6 and server.stats.rate_limited == 32


async def test_batch_schema_answers_every_id_from_the_prompt() -> None:
    prompt = "Label each line.\n[a1] buy cheap eggs\n[b2] hello friend, ham sandwich\n[c3] nothing here\nAnswer in JSON."
    with FakeOpenAIServer(Scenario()) as server:
        r = await ask(client(server), prompt, response_format=schema_format(Batch))
        batch = Batch.model_validate_json(r.choices[0].message.content)
        assert [i.id for i in batch.items] == ["a1", "b2", "c3"]
        assert batch.items[0].labels == ["eggs"] and batch.items[1].labels == ["ham"]


async def test_json_object_with_schema_and_integer_ids() -> None:
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {
        "type": "object", "properties": {"id": {"type": "integer"}, "label": {"enum": ["x", "y"]},
                                         "confidence": {"type": "number", "minimum": 0, "maximum": 1}}}}}}
    with FakeOpenAIServer(Scenario()) as server:
        r = await ask(client(server), "[7] y is here\n[9] and x", response_format={"type": "json_object", "schema": schema})
        assert json.loads(r.choices[0].message.content) == {"items": [
            {"id": 7, "label": "y", "confidence": 0.5}, {"id": 9, "label": "x", "confidence": 0.5}]}


async def test_labels_from_the_prompt_without_schema() -> None:
    listing = "任务：为句子标注类别。可选类别：税收激励、金融支持、企业。\n句子：银行贷款等金融支持\n类别："
    defs = "类别及其定义如下：\n- 税收激励：减税\n- 金融支持：贷款\n\n句子：减免税收\n类别："
    with FakeOpenAIServer(Scenario()) as server:
        c = client(server)
        assert json.loads((await ask(c, listing)).choices[0].message.content) == {"labels": ["金融支持"]}
        assert json.loads((await ask(c, defs)).choices[0].message.content)["labels"][0] in ("税收激励", "金融支持")
        r = await ask(c, "Labels: spam, ham\n[1] spam spam\n[2] ham", response_format={"type": "json_object"})
        assert json.loads(r.choices[0].message.content) == {"items": [{"id": "1", "labels": ["spam"]}, {"id": "2", "labels": ["ham"]}]}
        assert json.loads((await ask(c, "no taxonomy here")).choices[0].message.content) == {"labels": []}


async def test_logprobs_cover_the_content() -> None:
    with FakeOpenAIServer(Scenario()) as server:
        r = await ask(client(server), response_format=schema_format(Answer), logprobs=True, top_logprobs=2)
        tokens = r.choices[0].logprobs.content
        assert "".join(t.token for t in tokens) == r.choices[0].message.content
        assert all(t.logprob < 0 and len(t.top_logprobs) == 2 and bytes(t.bytes).decode() == t.token for t in tokens)


async def test_api_key_models_and_unsupported_response_formats() -> None:
    with FakeOpenAIServer(Scenario(require_api_key="sekrit", reject_json_schema=True, model="m1")) as server:
        with pytest.raises(openai.AuthenticationError):
            await ask(client(server))
        c = client(server, api_key="sekrit")
        assert [m.id for m in (await c.models.list()).data] == ["m1"]
        with pytest.raises(openai.BadRequestError):
            await ask(c, response_format=schema_format(Answer))
        assert (await ask(c, response_format={"type": "json_object"})).choices[0].message.content
    with FakeOpenAIServer(Scenario(reject_response_format=True)) as server:
        with pytest.raises(openai.BadRequestError):
            await ask(client(server), response_format={"type": "json_object"})
        assert (await ask(client(server))).choices[0].message.content


def test_scenario_validation_and_seeded_determinism() -> None:
    with pytest.raises(ValidationError):
        Scenario(latency=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Scenario(script=["teapot"])
    with pytest.raises(ValidationError):
        Scenario(error_rate=0.6, garbage_rate=0.6)

    def run(server: FakeOpenAIServer) -> list[str]:
        with openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0) as sync:
            return [sync.chat.completions.create(model="f", messages=[{"role": "user", "content": "x"}],
                                                 response_format=schema_format(Answer)).choices[0].message.content
                    for _ in range(10)]

    outs = []
    for seed in (3, 3, 4):
        with FakeOpenAIServer(Scenario(seed=seed)) as server:
            outs.append(run(server))
    assert outs[0] == outs[1] != outs[2]


# ---- served from its own process ------------------------------------------------------------------------------
async def test_server_process_answers_every_request_on_kept_alive_connections() -> None:
    """`python -m benchmarks.fake_openai` (what the benchmarks run): every request answered, one connection per
    concurrent worker, counters visible on `/_stats`. Its speed is measured in `benchmarks/` (scenario 9)."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fake_openai", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[-1]  # type: ignore[union-attr]
        rf = schema_format(Answer)
        async with openai.AsyncOpenAI(base_url=url, api_key="t", max_retries=0, timeout=120) as c:
            async def worker(k: int) -> list[Any]:
                return [Answer.model_validate_json((await ask(c, f"Sentence: spam {k}", response_format=rf))
                                                   .choices[0].message.content) for _ in range(25)]

            answers = await asyncio.gather(*(worker(k) for k in range(8)))
        assert all(a.labels == ["spam"] for batch in answers for a in batch)  # the label named in the text
        with urllib.request.urlopen(url.removesuffix("/v1") + "/_stats", timeout=30) as r:
            stats = json.load(r)
        assert stats["completions"] == 200 and stats["by_status"] == {"200": 200}
        assert 1 <= stats["connections"] <= 8 + 1  # kept alive: at most one per concurrent worker, + this /_stats
        assert stats["cpu_s"] >= 0
    finally:
        proc.terminate()
        proc.wait(30)


async def test_drop_closes_the_connection_and_http_date_retry_after() -> None:
    with FakeOpenAIServer(Scenario(script=["drop", "ok", "429:3"], retry_after_date=True)) as server:
        c = client(server)
        with pytest.raises(openai.APIConnectionError):
            await ask(c)
        assert (await ask(c)).choices[0].message.content
        before = time.time()
        with pytest.raises(openai.RateLimitError) as err:
            await ask(c)
        after = time.time()
        headers = err.value.response.headers
        assert "retry-after-ms" not in headers
        when = email.utils.parsedate_to_datetime(headers["retry-after"]).timestamp()
        assert before + 3 <= when <= after + 4  # 3 s after the server's answer, rounded up to a whole second
        assert [status for _, _, status in server.stats.log] == [0, 200, 429]  # 0: dropped, never answered
        assert server.stats.in_flight == 0
