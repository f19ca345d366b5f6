"""The labeler end to end on the real embedded model (llama.cpp + Gemma 3 270M GGUF): held-out texts, caching,
DataFrames and the `labelwise label` command."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from labelwise import Labeler, item_id, load_prompt, load_taxonomy
from labelwise._prompts import PROMPTS_DIR

pytestmark = pytest.mark.slow

SHOTS = 4
PREDICTION_KEYS = {"id", "text", "labels", "confidence", "label_probs", "status", "error", "examples", "prompt", "model",
                   "attempts", "usage", "cached"}


@pytest.fixture(scope="module")
def policy_labels():
    return set(load_taxonomy(PROMPTS_DIR / "policy_taxonomy.yaml").labels)


@pytest.fixture(scope="module")
def held_out(corpus):
    """Three short corpus texts, held out of the example pool."""
    picked = [it for it in corpus.items[1000:] if 20 <= len(it.text) <= 60][:3]
    assert len(picked) == 3
    return picked


@pytest.fixture(scope="module")
def run(corpus, held_out, local_model, tmp_path_factory):
    """One labeler over the held-out texts, with its own cache directory; everything else reuses it."""
    cache_dir = tmp_path_factory.mktemp("local-cache")
    labeler = Labeler("local", examples=corpus, exclude_ids=[it.id for it in held_out], shots=SHOTS,
                      cache_dir=str(cache_dir))
    assert labeler.model is local_model  # one model load per process
    preds = labeler.label_many([it.text for it in held_out])
    return SimpleNamespace(labeler=labeler, preds=preds, calls=labeler.stats["model_calls"], cache_dir=cache_dir)


def test_labels_held_out_texts(run, held_out, corpus, policy_labels):
    labeler = run.labeler
    held_ids = {it.id for it in held_out}
    pool_ids = {it.id for it in labeler.pool}
    assert not held_ids & pool_ids
    assert len(pool_ids) == len(corpus) - 3
    assert run.calls >= 3
    prompt_ref = load_prompt("fewshot").ref
    for item, pred in zip(held_out, run.preds):
        assert pred.id == item.id
        assert pred.status == "ok", (pred.error, pred.raw)
        assert pred.error is None
        assert pred.labels and set(pred.labels) <= policy_labels
        assert len(pred.labels) == len(set(pred.labels)) <= 3
        assert pred.confidence is not None and 0.0 <= pred.confidence <= 1.0
        assert len(pred.examples) == SHOTS
        assert pred.id not in pred.examples
        assert not held_ids & set(pred.examples)
        assert set(pred.examples) <= pool_ids
        assert pred.prompt == prompt_ref
        assert pred.model == "local"
        assert pred.usage["prompt_tokens"] > 0 and pred.usage["completion_tokens"] > 0
        assert not pred.cached
        assert pred.attempts >= 1


def test_second_identical_call_is_cached_without_a_model_call(run, held_out):
    labeler = run.labeler
    before = labeler.stats["model_calls"]
    again = labeler.label(held_out[0].text)
    assert again.cached
    assert again.labels == run.preds[0].labels
    assert again.examples == run.preds[0].examples
    assert labeler.stats["model_calls"] == before

    # a new labeler with the same settings and cache directory (a new session) also calls no model
    fresh = Labeler("local", examples=run.labeler.pool, shots=SHOTS, cache_dir=str(run.cache_dir))
    hit = fresh.label(held_out[1].text)
    assert hit.cached and hit.labels == run.preds[1].labels
    assert fresh.stats["model_calls"] == 0


def test_no_cache_calls_the_model(run, held_out, tmp_path):
    unused = tmp_path / "never-created"
    labeler = Labeler("local", examples=run.labeler.pool, shots=SHOTS, cache=False, cache_dir=str(unused))
    pred = labeler.label(held_out[0].text)
    assert not pred.cached
    assert labeler.stats["model_calls"] == 1
    assert pred.status == "ok" and pred.labels
    assert not unused.exists()


def test_label_dataframe_adds_prediction_columns(run, held_out):
    df = pd.DataFrame({"text": [held_out[0].text, held_out[1].text, held_out[0].text], "labels": ["a", "b", "c"]},
                      index=[10, 20, 30])
    out = run.labeler.label_dataframe(df)
    assert list(out.index) == [10, 20, 30]
    assert list(out["text"]) == list(df["text"]) and list(out["labels"]) == ["a", "b", "c"]  # input kept as is
    for col in ("pred_labels", "confidence", "status", "error", "id", "examples", "prompt", "model", "attempts",
                "usage", "cached"):
        assert col in out.columns, col
    assert list(out["id"]) == [held_out[0].id, held_out[1].id, held_out[0].id]
    assert list(out["status"]) == ["ok"] * 3
    assert out.loc[10, "pred_labels"] == run.preds[0].labels == out.loc[30, "pred_labels"]
    assert out.loc[20, "pred_labels"] == run.preds[1].labels
    with pytest.raises(KeyError, match="columns found"):
        run.labeler.label_dataframe(df.rename(columns={"text": "body"}))


def test_cli_label_prints_one_json_object_per_text(cli, policy_labels, local_model):
    texts = ["对科技型中小企业的研发投入给予财政补助。", "建设国家高新技术产业开发区，推动园区高质量发展。"]
    result = cli("label", *texts, "--shots", "2")
    assert result.exit_code == 0, str(result)
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2
    for text, line in zip(texts, lines):
        obj = json.loads(line)
        assert set(obj) == PREDICTION_KEYS
        assert obj["text"] == text
        assert obj["id"] == item_id(text)
        assert obj["status"] == "ok" and obj["error"] is None
        assert obj["labels"] and set(obj["labels"]) <= policy_labels
        assert len(obj["examples"]) == 2
        assert obj["prompt"] == load_prompt("fewshot").ref
        assert obj["model"] == "local"
        assert obj["cached"] is False
        assert obj["usage"]["prompt_tokens"] > 0
        assert 0.0 <= obj["confidence"] <= 1.0
        assert set(obj["label_probs"]) == policy_labels
        assert obj["confidence"] == obj["label_probs"][obj["labels"][0]] == max(obj["label_probs"].values())


def test_cli_label_uses_the_cache_unless_told_not_to(cli, local_model, corpus, tmp_path):
    pool = tmp_path / "pool.tsv"  # a small example pool keeps the three runs quick
    pool.write_text("".join(f"{lab}\t{it.text}\n" for it in corpus.items[:300] for lab in it.labels), encoding="utf-8")
    text = "对科技型中小企业的研发投入给予财政补助。"
    args = ("label", text, "--shots", "2", "--examples", pool)
    runs = [cli(*args, *flag) for flag in ((), (), ("--no-cache",))]
    assert all(r.exit_code == 0 for r in runs), [str(r) for r in runs]
    first, second, uncached = (json.loads(r.stdout.strip()) for r in runs)
    assert first["cached"] is False
    assert second["cached"] is True and second["labels"] == first["labels"]
    assert uncached["cached"] is False and uncached["status"] == "ok"


def test_same_prompt_twice_gives_the_same_answer(local_model, corpus):
    pool = corpus.subset([it.id for it in corpus.items[:300]])
    labeler = Labeler("local", examples=pool, shots=2, cache=False)
    text = "对科技型中小企业的研发投入给予财政补助。"
    labeler.label("建设国家高新技术产业开发区，推动园区高质量发展。")  # whatever ran before, start from another text
    first = labeler.label(text)
    second = labeler.label(text)  # e.g. a --no-cache rerun, or an eval variant repeated
    assert labeler.stats["model_calls"] == 3
    assert (second.labels, second.confidence) == (first.labels, first.confidence)
