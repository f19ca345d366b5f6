"""Fault injection against the fake OpenAI-compatible server: rate limits, server errors, garbage, off-taxonomy
answers, hangs, dropped connections, auth failures; what is retried, re-asked, recorded and (never) cached.

Every labeler and model a test opens is closed after it (`opened`); faults come from explicit per-request scripts.
"""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from benchmarks.fake_openai import OFF_LABEL
from labelwise import Labeler, OpenAIModel
from labelwise._answer import parse_answer, short_error
from labelwise._labeler import run_sync

TEXT = "对科技型中小企业的研发投入给予财政补助。"
TEXT_LABELS = ["企业"]  # the only taxonomy label written in TEXT: what the fake server answers when it answers validly
HANG_TIMEOUT_S = 2.0  # a hung request times out after this; a normal round trip is far shorter even on a busy machine


@pytest.fixture(scope="module")
def pool(corpus):
    """A small labeled pool (quick to index) standing in for the example corpus."""
    return corpus.subset([it.id for it in corpus.items[:400]])


_OPENED: list = []


@pytest.fixture(autouse=True)
def opened():
    """Close every labeler and model a test opened (an unclosed client can stall others on the shared loop)."""
    yield _OPENED
    while _OPENED:
        thing = _OPENED.pop()
        if isinstance(thing, Labeler):
            thing.close()
        else:
            run_sync(thing.aclose())


def labeler_for(server, pool, **options) -> Labeler:
    _OPENED.append(Labeler("openai:fake-model", base_url=server.base_url, examples=pool, shots=2, **options))
    return _OPENED[-1]


def model_for(server, **options) -> OpenAIModel:
    _OPENED.append(OpenAIModel("fake-model", base_url=server.base_url, **options))
    return _OPENED[-1]


def statuses(server) -> list[int]:
    """Status of every chat request in arrival order (0: never answered, the client gave up or was cut off)."""
    return [status for _, _, status in sorted(server.stats.log)]


# --------------------------------------------------------------------------- transport faults


def test_429_with_retry_after_then_ok(fake_server, pool):
    server = fake_server(script=["429:1.5", "off_taxonomy", "ok"])
    labeler = labeler_for(server, pool)
    t0 = time.monotonic()
    pred = labeler.label(TEXT)
    took = time.monotonic() - t0
    assert pred.status == "ok", pred.error
    # the invented label was re-asked, not kept (the re-asked answer is a taxonomy label, not necessarily TEXT's)
    assert OFF_LABEL not in pred.labels and pred.labels and set(pred.labels) <= set(labeler.taxonomy.labels)
    # attempts counts every request sent for the item: the 429, the invalid answer, the valid one
    assert pred.attempts == 3 and labeler.stats["reasks"] == 1
    assert took >= 1.5  # a lower bound: true however slow the machine
    assert server.stats.completions == 3
    assert statuses(server) == [429, 200, 200]
    (_, refused_at, _), (retried_at, _, _), _ = sorted(server.stats.log)
    assert retried_at - refused_at >= 1.5 - 0.01  # waited what Retry-After said, not a default backoff
    assert labeler.model.stats["rate_limited"] == 1 and labeler.model.stats["retries"] == 1


@pytest.mark.parametrize("status", ["408", "409", "502", "503"])
def test_retryable_statuses_are_retried(fake_server, pool, status):
    server = fake_server(script=[status, status, "ok"])
    labeler = Labeler(model_for(server, max_wait=0.05), examples=pool, shots=2)
    _OPENED.append(labeler)
    pred = labeler.label(TEXT)
    assert pred.status == "ok", pred.error
    assert pred.labels == TEXT_LABELS
    assert statuses(server) == [int(status), int(status), 200]
    assert labeler.model.stats == {"requests": 3, "retries": 2, "rate_limited": 0}


def test_dropped_connections_are_retried(fake_server, pool):
    server = fake_server(script=["drop", "drop", "ok"])
    labeler = Labeler(model_for(server, max_wait=0.05), examples=pool, shots=2)
    _OPENED.append(labeler)
    pred = labeler.label(TEXT)
    assert pred.status == "ok", pred.error
    assert pred.labels == TEXT_LABELS
    assert statuses(server) == [0, 0, 200]  # two connections cut with no answer, then one answered
    assert labeler.model.stats["retries"] == 2


def test_connection_refused_fails_saying_how_many_attempts(pool):
    from conftest import free_port

    model = OpenAIModel("fake-model", base_url=f"http://127.0.0.1:{free_port()}/v1", max_attempts=3, max_wait=0.05)
    _OPENED.append(model)
    labeler = Labeler(model, examples=pool, shots=2)
    _OPENED.append(labeler)
    pred = labeler.label(TEXT)
    assert pred.status == "failed" and pred.labels == []
    assert "connection failed after 3 attempts" in pred.error
    assert model.stats == {"requests": 3, "retries": 2, "rate_limited": 0}


def test_retry_after_as_an_http_date_is_honoured(fake_server, pool):
    # Retry-After: <HTTP date> 3 s ahead (rounded up to whole seconds); the first backoff would be at most 1 s
    server = fake_server(script=["429:3", "ok"], retry_after_date=True)
    labeler = labeler_for(server, pool)
    pred = labeler.label(TEXT)
    assert pred.status == "ok", pred.error
    assert statuses(server) == [429, 200]
    (refused_arrival, _, _), (retried_at, _, _) = sorted(server.stats.log)
    assert retried_at - refused_arrival >= 3 - 0.01  # the date was read: it is at least 3 s after the refusal
    assert labeler.model.stats["rate_limited"] == 1


def test_500_then_ok_is_retried(fake_server, pool):
    server = fake_server(script=["500", "500", "ok"])
    labeler = labeler_for(server, pool)
    pred = labeler.label(TEXT)
    assert pred.status == "ok", pred.error
    assert server.stats.completions == 3
    assert labeler.model.stats["retries"] == 2


def test_500_every_time_fails_saying_how_many_attempts(fake_server, pool):
    server = fake_server(error_rate=1.0)
    model = model_for(server, max_attempts=3, max_wait=0.05)
    labeler = Labeler(model, examples=pool, shots=2)
    _OPENED.append(labeler)
    pred = labeler.label(TEXT)
    assert pred.status == "failed"
    assert pred.labels == []
    assert "3 attempts" in pred.error and "500" in pred.error
    assert server.stats.completions == 3


def test_hang_beyond_timeout_is_retried_then_fails_clearly(fake_server, pool):
    server = fake_server(script=["hang:3600", "hang:3600"])
    labeler = Labeler(model_for(server, timeout=HANG_TIMEOUT_S, max_attempts=2, max_wait=0.05), examples=pool, shots=2)
    _OPENED.append(labeler)
    pred = labeler.label(TEXT)
    assert pred.status == "failed"
    assert pred.labels == []
    assert "timed out" in pred.error and "2 attempts" in pred.error
    assert server.stats.completions == 2 and server.stats.hangs == 2  # the timeout was retried once
    assert server.stats.requests == 0  # no answer was ever sent: the client gave up instead of waiting an hour


def test_hang_then_ok_succeeds_after_the_timeout(fake_server, pool):
    server = fake_server(script=["hang:3600", "ok"])
    labeler = Labeler(model_for(server, timeout=HANG_TIMEOUT_S, max_attempts=3, max_wait=0.05), examples=pool, shots=2)
    _OPENED.append(labeler)
    pred = labeler.label(TEXT)
    assert pred.status == "ok", pred.error
    assert pred.labels == TEXT_LABELS
    assert server.stats.completions == 2 and server.stats.by_status == {200: 1}
    assert labeler.model.stats["retries"] == 1


def test_401_fails_fast_with_a_hint_about_the_key(fake_server, pool, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key")
    server = fake_server(require_api_key="sk-right-key")
    labeler = labeler_for(server, pool)
    pred = labeler.label(TEXT)
    assert pred.status == "failed"
    assert "OPENAI_API_KEY" in pred.error and "401" in pred.error
    assert server.stats.by_status == {401: 1}  # one request, no retry ...
    assert labeler.model.stats == {"requests": 1, "retries": 0, "rate_limited": 0}  # ... and no backoff slept


def test_right_key_is_sent(fake_server, pool, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-right-key")
    server = fake_server(require_api_key="sk-right-key")
    pred = labeler_for(server, pool).label(TEXT)
    assert pred.status == "ok", pred.error
    assert server.stats.by_status == {200: 1}


# --------------------------------------------------------------------------- invalid answers


def test_garbage_then_valid_is_reasked_with_the_validation_error(fake_server, pool):
    server = fake_server(script=["garbage", "ok"])
    labeler = labeler_for(server, pool)
    pred = labeler.label(TEXT)
    assert pred.status == "ok", pred.error
    assert pred.attempts == 2
    assert labeler.stats["reasks"] == 1
    assert server.stats.completions == 2
    first, second = server.received
    assert len(first["messages"]) == 1
    user, assistant, correction = second["messages"]
    assert user == first["messages"][0]
    assert assistant["role"] == "assistant"
    garbage = assistant["content"]
    with pytest.raises((ValueError, ValidationError)) as exc:
        parse_answer(garbage, "json", labeler.taxonomy.labels, True, 3)
    assert correction["role"] == "user"
    assert short_error(exc.value) in correction["content"]


def test_off_taxonomy_every_time_fails_and_keeps_the_raw_output(fake_server, pool):
    server = fake_server(off_taxonomy_rate=1.0)
    labeler = labeler_for(server, pool)
    pred = labeler.label(TEXT)
    assert pred.status == "failed"
    assert pred.labels == []  # never a guessed label
    assert pred.raw is not None and OFF_LABEL in pred.raw
    assert pred.attempts == 3  # the first answer and two re-asks
    assert server.stats.completions == 3
    assert OFF_LABEL in pred.error and "re-ask" in pred.error
    # each re-ask told the model what was wrong
    assert all(OFF_LABEL in req["messages"][-1]["content"] for req in server.received[1:])


def test_failures_are_not_cached(fake_server, pool):
    server = fake_server(script=["off_taxonomy"] * 3)  # then valid answers
    first = labeler_for(server, pool).label(TEXT)
    assert first.status == "failed"
    assert server.stats.completions == 3

    rerun = labeler_for(server, pool)  # same settings, same cache directory
    second = rerun.label(TEXT)
    assert second.status == "ok", second.error
    assert not second.cached
    assert rerun.stats["model_calls"] == 1
    assert server.stats.completions == 4

    third = labeler_for(server, pool)
    again = third.label(TEXT)
    assert again.cached and again.labels == second.labels
    assert third.stats["model_calls"] == 0
    assert server.stats.completions == 4


def test_cache_is_per_directory(fake_server, pool, tmp_path):
    server = fake_server()
    labeler_for(server, pool, cache_dir=str(tmp_path / "a")).label(TEXT)
    other = labeler_for(server, pool, cache_dir=str(tmp_path / "b")).label(TEXT)
    assert not other.cached
    assert server.stats.completions == 2
    assert not list(tmp_path.glob("labelwise-cache/*")), "cache_dir= must win over LABELWISE_CACHE_DIR"


# --------------------------------------------------------------------------- structured-output step-down


def test_server_without_json_schema_steps_down_to_json_object(fake_server, pool):
    server = fake_server(reject_json_schema=True)
    labeler = labeler_for(server, pool)
    pred = labeler.label(TEXT)
    assert pred.status == "ok", pred.error
    assert labeler.model.structured_mode == "json_object"
    assert [r["response_format"]["type"] for r in server.received] == ["json_schema", "json_object"]
    assert server.stats.completions == 1  # the rejected request is not a completion


def test_server_without_response_format_steps_down_to_prompt(fake_server, pool):
    # the two refused formats are not completions; the first prompt-mode answer invents a label
    server = fake_server(reject_response_format=True, script=["off_taxonomy", "ok"])
    labeler = labeler_for(server, pool)
    pred = labeler.label(TEXT)
    assert pred.status == "ok", pred.error
    assert OFF_LABEL not in pred.labels and pred.labels and set(pred.labels) <= set(labeler.taxonomy.labels)
    assert pred.attempts == 2 and labeler.stats["reasks"] == 1
    assert labeler.model.structured_mode == "prompt"
    assert [r.get("response_format", {}).get("type") for r in server.received] == ["json_schema", "json_object", None, None]
    assert OFF_LABEL in server.received[-1]["messages"][-1]["content"]  # the re-ask named the invented label


# --------------------------------------------------------------------------- bugs found here


def test_sync_label_can_be_called_twice_with_an_openai_model(fake_server, pool):
    server = fake_server()
    labeler = labeler_for(server, pool)
    assert labeler.label(TEXT).status == "ok"
    assert labeler.label("设立风险补偿资金池，支持科技型企业融资。").status == "ok"


def test_structured_mode_is_part_of_the_cache_key(fake_server, pool):
    server = fake_server()
    assert labeler_for(server, pool, structured="json_schema").label(TEXT).status == "ok"
    pred = labeler_for(server, pool, structured="prompt").label(TEXT)
    assert not pred.cached
    assert server.stats.completions == 2
