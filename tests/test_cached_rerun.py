"""A rerun answered from the cache: the memo is read in bulk with the same result as item by item, and the OpenAI
client is built on the first request only, so an all-cached run never builds one; every client built is closed."""

from __future__ import annotations

import pytest

from labelwise import Labeler, ModelConfigError, ResponseCache
from labelwise._cache import stable_hash_rows


def test_get_many_returns_values_in_order_with_none_for_missing(tmp_path) -> None:
    cache = ResponseCache(tmp_path / "c")
    try:
        cache.set("ns", "a", {"x": 1})
        cache.set("ns", "c", [3])
        cache.set("other", "b", "not this namespace")
        assert cache.get_many("ns", ["c", "b", "a", "a"]) == [[3], None, {"x": 1}, {"x": 1}]
        assert (cache.hits, cache.misses) == (3, 1)
        assert cache.get_many("ns", []) == []
    finally:
        cache.close()


def test_stable_hash_rows_is_stable_and_sees_every_row_and_boundary() -> None:
    rows = [("id1", "文本\n一", ["a"]), ("id2", "b", ["b", "c"])]
    key = stable_hash_rows({"seed": 0}, iter(rows))
    assert key == stable_hash_rows({"seed": 0}, rows)  # an iterator or a list, the same key
    assert key != stable_hash_rows({"seed": 1}, rows)
    assert key != stable_hash_rows({"seed": 0}, [rows[0], ("id2", "b", ["c", "b"])])
    assert key != stable_hash_rows({"seed": 0}, rows[:1])
    assert stable_hash_rows("h", ["a\nb"]) != stable_hash_rows("h", ["a", "b"])


def _labeler(server, corpus) -> Labeler:
    return Labeler("openai:x", base_url=server.base_url, examples=corpus, shots=0, concurrency=4)


async def test_rerun_reads_the_memo_in_bulk_and_never_builds_a_client(corpus, fake_server) -> None:
    server = fake_server(seed=5)
    items = [(it.id, it.text) for it in corpus.items[:12]]
    async with _labeler(server, corpus) as first:
        cold = await first.alabel_items(items)
        assert first.stats["model_calls"] == 12 and first.model.clients
    assert first.model.client.is_closed()  # the client the first run built was closed with the labeler
    assert all(p.status == "ok" and not p.cached for p in cold)

    extra = ("not-labeled-id", "一个从未标注过的句子")
    async with _labeler(server, corpus) as again:
        bulk = again.cached([*items, extra])  # one pass over the cache
        one_by_one = {}
        for item in [*items, extra]:
            one_by_one.update(again.cached([item]))
        assert bulk == one_by_one and list(bulk) == [iid for iid, _ in items]  # the unlabeled one is absent
        assert [p.model_dump(exclude={"cached"}) for p in bulk.values()] == [p.model_dump(exclude={"cached"}) for p in cold]
        assert again.stats["cache_hits"] == 24
        warm = await again.alabel_items(items)
        assert warm == list(bulk.values()) and all(p.cached for p in warm)
        assert again.stats["model_calls"] == 0 and again.model.clients == ()  # no request: no client built
    assert again.model.clients == ()  # closing did not build one either
    with pytest.raises(ModelConfigError, match="closed"):
        again.model.client  # noqa: B018 - a closed model hands out no new client
    assert len(server.received) == 12
