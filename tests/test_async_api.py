"""The async API as the README shows it (`alabel`, `alabel_many`, `alabel_items`, `async with`, `close()`) and sync
calls made inside a running event loop (as in Jupyter), against the real `llama_cpp.server`."""

from __future__ import annotations

import asyncio

import pytest

from labelwise import Labeler

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texts(corpus):
    """Two short corpus texts, and the pool without them."""
    picked = [it for it in corpus.items[1500:] if 15 <= len(it.text) <= 40][:2]
    return [it.text for it in picked], corpus.without(it.id for it in picked)


@pytest.fixture(scope="module")
def policy_labels(corpus):
    return set(corpus.labels)


def make(llama_server, pool) -> Labeler:
    return Labeler("openai:gemma", base_url=llama_server.base_url, examples=pool, shots=1, structured="json_object")


async def test_async_api_and_async_with(llama_server, texts, policy_labels):
    (a, b), pool = texts
    seen = []
    async with make(llama_server, pool) as labeler:
        first = await labeler.alabel(a)
        assert first.status == "ok", first.error
        assert first.text == a and first.labels and set(first.labels) <= policy_labels
        calls = labeler.stats["model_calls"]

        many = await labeler.alabel_many([b, a, b])  # identical texts are labeled once; `a` is already known
        assert [p.text for p in many] == [b, a, b]
        assert many[0] == many[2] and many[1].labels == first.labels and many[1].cached
        assert labeler.stats["model_calls"] == calls + 1

        got = await labeler.alabel_items([(many[0].id, b), (first.id, a)], on_result=seen.append)
        assert [p.id for p in got] == [many[0].id, first.id]
        assert sorted(p.id for p in seen) == sorted(p.id for p in got)
        assert all(p.cached for p in got) and labeler.stats["model_calls"] == calls + 1
        client = labeler.model.client
        assert not client.is_closed()
    assert client.is_closed()  # `async with` closed the client


async def test_sync_calls_inside_a_running_loop(llama_server, texts, policy_labels):
    (a, b), pool = texts
    asyncio.get_running_loop()  # this test body runs inside an event loop, as a notebook cell does
    labeler = make(llama_server, pool)
    try:
        pred = labeler.label(b)  # sync: runs on labelwise's own loop thread, so it does not deadlock this loop
        assert pred.status == "ok", pred.error
        assert set(pred.labels) <= policy_labels
        both = labeler.label_many([a, b])  # a second sync call reuses the same client on the same loop thread
        assert [p.text for p in both] == [a, b] and both[1].labels == pred.labels and both[1].cached
        assert both[0].status == "ok", both[0].error
        assert labeler.stats["model_calls"] == 2
    finally:
        labeler.close()
    assert labeler.model.client.is_closed()
    labeler.close()  # closing twice is harmless


def test_close_releases_the_client(llama_server, texts):
    _, pool = texts
    labeler = make(llama_server, pool)
    assert not labeler.model.client.is_closed()
    labeler.close()
    assert labeler.model.client.is_closed()


def test_sync_and_async_calls_mix_on_one_labeler(llama_server, texts, policy_labels):
    """A sync call (labelwise's loop thread), then awaits on the caller's own loops, on one labeler: each event loop
    gets its own client, so none reads another loop's connections."""
    (a, b), pool = texts
    labeler = make(llama_server, pool)
    try:
        first = labeler.label(a)

        async def in_my_loop(text):
            return await labeler.alabel(text)

        second = asyncio.run(in_my_loop(b))
        third = asyncio.run(in_my_loop(a))  # a memo hit on a fresh loop
        again = labeler.label(b)
    finally:
        labeler.close()
    for p in (first, second, third, again):
        assert p.status == "ok", p.error
        assert p.labels and set(p.labels) <= policy_labels
    assert third.labels == first.labels and again.labels == second.labels
    assert labeler.stats["model_calls"] == 2  # the repeats were memo hits
