"""The OpenAI provider against a REAL OpenAI-compatible server: `python -m llama_cpp.server` on loopback serving
the bundled Gemma 3 270M GGUF (started once per session by the `llama_server` fixture)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from labelwise import Labeler, OpenAIModel, load_prompt, load_taxonomy
from labelwise._prompts import PROMPTS_DIR

pytestmark = pytest.mark.slow

FAKE_KEY = "sk-labelwise-test-DO-NOT-PERSIST-7f3a9c41e2"


@pytest.fixture(scope="module")
def policy_labels():
    return set(load_taxonomy(PROMPTS_DIR / "policy_taxonomy.yaml").labels)


@pytest.fixture(scope="module")
def held_out(corpus):
    """Two short corpus texts, held out of the example pool."""
    picked = [it for it in corpus.items[2000:] if 15 <= len(it.text) <= 40][:2]
    assert len(picked) == 2
    return picked


@pytest.fixture(scope="module")
def served(llama_server, corpus, held_out, tmp_path_factory):
    """With a recognisable OPENAI_API_KEY set: one labeled text (json_object mode) and one relabel run, both
    against the real server, each writing to directories the tests then inspect."""
    from typer.testing import CliRunner

    from labelwise.cli import app

    cache_dir = tmp_path_factory.mktemp("server-cache")
    work = tmp_path_factory.mktemp("server-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", FAKE_KEY)
        mp.setenv("LABELWISE_CACHE_DIR", str(cache_dir))
        labeler = Labeler("openai:gemma", base_url=llama_server.base_url, examples=corpus,
                          exclude_ids=[it.id for it in held_out], shots=2, structured="json_object",
                          cache_dir=str(cache_dir))
        pred = labeler.label(held_out[0].text)

        tsv = work / "input.tsv"
        tsv.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in corpus.items[3000:3003]), encoding="utf-8")
        out = work / "run"
        result = CliRunner().invoke(app, ["relabel", str(tsv), "--out", str(out), "--model", "openai:gemma",
                                          "--base-url", llama_server.base_url, "--shots", "1", "--limit", "1",
                                          "--structured", "json_object", "--concurrency", "1"])
    return SimpleNamespace(labeler=labeler, pred=pred, cache_dir=cache_dir, run_dir=out, relabel=result)


def test_openai_provider_returns_a_valid_prediction(served, held_out, policy_labels):
    pred, labeler = served.pred, served.labeler
    assert pred.status == "ok", (pred.error, pred.raw)
    assert pred.id == held_out[0].id
    assert pred.labels and set(pred.labels) <= policy_labels
    assert len(pred.labels) == len(set(pred.labels)) <= 3
    assert len(pred.examples) == 2 and pred.id not in pred.examples
    assert held_out[1].id not in pred.examples
    assert pred.prompt == load_prompt("fewshot").ref
    assert pred.model == "openai:gemma"
    assert pred.confidence is None or 0.0 <= pred.confidence <= 1.0
    assert not pred.cached
    assert labeler.model.mode == "json_object"
    assert labeler.model.stats["requests"] >= 1


def test_label_probs_come_from_the_servers_top_logprobs(served):
    """llama_cpp.server returns token log-probs only when `top_logprobs` is asked for; labelwise asks for 20 and maps
    the alternatives at the answer's first label onto the taxonomy (README: label probabilities)."""
    pred, labeler = served.pred, served.labeler
    assert labeler.model.logprobs  # the server answered with logprobs (labelwise stops asking a server that does not)
    probs = pred.label_probs
    assert probs is not None and list(probs) == list(labeler.taxonomy.labels)
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-9)
    assert pred.confidence == probs[pred.labels[0]] > 0.0


def test_usage_tokens_are_recorded(served):
    usage = served.pred.usage
    assert usage["prompt_tokens"] > 50  # a few-shot prompt, counted by the server
    assert usage["completion_tokens"] > 0
    assert served.labeler.stats["prompt_tokens"] >= usage["prompt_tokens"]


def test_relabel_against_the_server(served, policy_labels):
    assert served.relabel.exit_code == 0, (served.relabel.stdout, served.relabel.stderr, served.relabel.exception)
    rows = [json.loads(ln) for ln in (served.run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1
    assert rows[0]["status"] == "ok", rows[0]
    assert set(rows[0]["labels"]) <= policy_labels
    manifest = json.loads((served.run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["structured_mode"] == "json_object"
    assert manifest["tokens_this_session"]["prompt_tokens"] > 0
    assert manifest["tokens_this_session"]["completion_tokens"] > 0


def test_api_key_is_never_written_to_disk(served):
    assert served.labeler.model.client.api_key == FAKE_KEY  # the key really was in use
    files = [p for d in (served.cache_dir, served.run_dir) for p in Path(d).rglob("*") if p.is_file()]
    assert any(p.name == "predictions.jsonl" for p in files) and any(p.name == "manifest.json" for p in files)
    assert any(p.parent == served.cache_dir for p in files)  # the cache was written
    needle = FAKE_KEY.encode()
    leaked = [str(p) for p in files if needle in p.read_bytes() or FAKE_KEY[-12:].encode() in p.read_bytes()]
    assert not leaked


def test_prompt_mode_gives_a_validated_prediction_or_a_recorded_failure(llama_server, corpus, held_out, policy_labels):
    labeler = Labeler("openai:gemma", base_url=llama_server.base_url, examples=corpus,
                      exclude_ids=[it.id for it in held_out], shots=2, structured="prompt")
    pred = labeler.label(held_out[1].text)
    assert labeler.model.mode == "prompt"
    if pred.status == "ok":
        assert pred.labels and set(pred.labels) <= policy_labels
        assert pred.error is None
    else:
        assert pred.labels == []  # never an invented label
        assert pred.raw  # what the model said is kept for review
        assert pred.error and "re-ask" in pred.error
        assert pred.attempts == 3
        assert labeler.stats["model_calls"] == 3


def test_auto_mode_steps_down_to_json_object_on_llama_cpp_server(llama_server, corpus, held_out, policy_labels):
    # the same model `Labeler("openai:gemma", base_url=...)` builds, with short backoff so the bug costs little
    model = OpenAIModel("gemma", base_url=llama_server.base_url, max_wait=0.2)
    labeler = Labeler(model, examples=corpus, exclude_ids=[it.id for it in held_out], shots=2)
    pred = labeler.label(held_out[0].text)
    assert labeler.model.mode == "json_object"
    assert pred.status == "ok", pred.error
    assert set(pred.labels) <= policy_labels
