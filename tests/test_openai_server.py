"""The OpenAI provider against a REAL OpenAI-compatible server: `python -m llama_cpp.server` on loopback serving
the bundled Gemma 3 270M GGUF (started once per session by the `llama_server` fixture)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest

from labelwise import Labeler, OpenAIModel, load_corpus, load_prompt, load_taxonomy
from labelwise._examples import make_selector
from labelwise._prompts import PROMPTS_DIR

pytestmark = pytest.mark.slow

FAKE_KEY = "sk-labelwise-test-DO-NOT-PERSIST-7f3a9c41e2"
PRICE = {"input": 2.0, "output": 8.0}  # USD per 1M tokens, given to the relabel run with --prices


def spy_on_requests(model: OpenAIModel, mp: pytest.MonkeyPatch) -> list[dict]:
    """The keyword arguments of every chat-completions call the model makes through the SDK, in order."""
    completions = model.client.chat.completions
    create = completions.create
    sent: list[dict] = []

    async def recording(**kwargs):
        sent.append(kwargs)
        return await create(**kwargs)

    mp.setattr(completions, "create", recording)
    return sent


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
        sent = spy_on_requests(labeler.model, mp)
        asked_logprobs = labeler.model.logprobs
        pred = labeler.label(held_out[0].text)

        tsv = work / "input.tsv"
        tsv.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in corpus.items[3000:3003]), encoding="utf-8")
        prices = work / "prices.yaml"
        prices.write_text(f"openai:gemma: {json.dumps(PRICE)}\n", encoding="utf-8")
        out = work / "run"
        result = CliRunner().invoke(app, ["relabel", str(tsv), "--out", str(out), "--model", "openai:gemma",
                                          "--base-url", llama_server.base_url, "--shots", "1", "--limit", "1",
                                          "--structured", "json_object", "--concurrency", "1", "--prices", str(prices)])
    labeler.close()
    return SimpleNamespace(labeler=labeler, pred=pred, cache_dir=cache_dir, run_dir=out, relabel=result, sent=sent,
                           asked_logprobs=asked_logprobs)


def test_what_the_real_server_returns_for_logprobs(llama_server):
    """llama_cpp.server's contract, through the openai SDK, for the kind of request labelwise sends (json_object with
    a schema): `logprobs=true` alone returns none; with `top_logprobs` as well, one entry per generated token."""
    schema = {"type": "object", "properties": {"labels": {"type": "array", "items": {"enum": ["税收激励", "金融支持"]},
                                                          "minItems": 1, "maxItems": 1}}, "required": ["labels"]}
    prompt = "任务：为句子标注类别。可选类别：税收激励、金融支持。\n句子：设立科技信贷风险补偿资金池。\n类别："
    with openai.OpenAI(base_url=llama_server.base_url, api_key="no-key", max_retries=0, timeout=300) as client:
        def ask(**kw):
            return client.chat.completions.create(
                model="gemma", messages=[{"role": "user", "content": prompt}], temperature=0.0, max_tokens=40,
                response_format={"type": "json_object", "schema": schema}, **kw).choices[0]

        alone = ask(logprobs=True)
        assert json.loads(alone.message.content)["labels"][0] in ("税收激励", "金融支持")
        assert alone.logprobs is None
        choice = ask(logprobs=True, top_logprobs=1)
        tokens = choice.logprobs.content
        assert tokens and "".join(t.token for t in tokens) == choice.message.content
        assert all(t.logprob <= 0 and t.top_logprobs for t in tokens)


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
    assert not pred.cached
    assert labeler.model.structured_mode == "json_object"
    assert labeler.model.stats["requests"] == len(served.sent) == pred.attempts


def test_confidence_follows_what_the_real_server_returns(served):
    pred, first = served.pred, served.sent[0]
    assert served.asked_logprobs and first["logprobs"] is True  # log-probabilities were asked for
    if first.get("top_logprobs") is None:
        # llama_cpp.server returns none for `logprobs` alone (see the contract test above): confidence is null, and
        # the model stops asking (a server that returns none may be much slower when asked)
        assert pred.confidence is None
        assert served.labeler.model.logprobs is False
        assert all("logprobs" not in req for req in served.sent[1:])
    else:
        assert pred.confidence is not None and 0.0 < pred.confidence <= 1.0  # from the server's token log-probs


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
    tokens = manifest["tokens_this_session"]
    assert tokens["prompt_tokens"] > 0 and tokens["completion_tokens"] > 0
    assert tokens == rows[0]["usage"]  # one text, counted by the server
    # the cost is priced from --prices: USD per 1M tokens, input and output
    assert manifest["cost_usd_this_session"] == pytest.approx(
        tokens["prompt_tokens"] / 1e6 * PRICE["input"] + tokens["completion_tokens"] / 1e6 * PRICE["output"])


def test_api_key_is_never_written_to_disk(served):
    assert served.labeler.model.client.api_key == FAKE_KEY  # the key really was in use
    files = [p for d in (served.cache_dir, served.run_dir) for p in Path(d).rglob("*") if p.is_file()]
    assert any(p.name == "predictions.jsonl" for p in files) and any(p.name == "manifest.json" for p in files)
    assert any(p.parent == served.cache_dir for p in files)  # the cache was written
    needle = FAKE_KEY.encode()
    leaked = [str(p) for p in files if needle in p.read_bytes() or FAKE_KEY[-12:].encode() in p.read_bytes()]
    assert not leaked


def test_prompt_mode_fails_explicitly_with_this_model(llama_server, corpus, held_out):
    """Without a response_format the 270M model continues the few-shot pattern (`句子：…` / `类别：…`) instead of
    answering the JSON the prompt asks for: the result is a recorded failure, never a label parsed out of prose."""
    labeler = Labeler("openai:gemma", base_url=llama_server.base_url, examples=corpus,
                      exclude_ids=[it.id for it in held_out], shots=2, structured="prompt")
    with pytest.MonkeyPatch.context() as mp, labeler:
        sent = spy_on_requests(labeler.model, mp)
        pred = labeler.label(held_out[1].text)
    assert labeler.model.structured_mode == "prompt"
    assert len(sent) == 3 and all("response_format" not in req for req in sent)  # the answer and two re-asks
    assert [len(req["messages"]) for req in sent] == [1, 3, 5]  # each re-ask carries the answer and what was wrong
    assert pred.status == "failed" and pred.labels == []
    assert pred.error.startswith("invalid answer after 2 re-asks: not a JSON object: ")
    assert pred.raw  # what the model said is kept for review
    assert "not a JSON object" in sent[1]["messages"][2]["content"]  # the re-ask said what was wrong
    assert pred.attempts == 3 and labeler.stats["model_calls"] == 3 and labeler.stats["reasks"] == 2


def test_auto_mode_with_default_backoff_steps_down_to_json_object(llama_server, corpus, held_out, policy_labels):
    # exactly what `Labeler("openai:gemma", base_url=...)` builds: structured="auto", default timeouts and backoff
    with Labeler("openai:gemma", base_url=llama_server.base_url, examples=corpus,
                 exclude_ids=[it.id for it in held_out], shots=2) as labeler, pytest.MonkeyPatch.context() as mp:
        sent = spy_on_requests(labeler.model, mp)
        pred = labeler.label(held_out[0].text)
        assert labeler.model.structured == "auto" and labeler.model.max_wait == 60.0
    assert pred.status == "ok", pred.error
    assert set(pred.labels) <= policy_labels
    assert labeler.model.structured_mode == "json_object"
    assert [r["response_format"]["type"] for r in sent] == ["json_schema", "json_object"]
    assert labeler.model.stats == {"requests": 2, "retries": 0, "rate_limited": 0}  # the refusal cost no backoff


def test_cli_label_from_stdin_with_every_labeling_option(cli, llama_server, corpus, tmp_path):
    """`label - --model openai:... --taxonomy --examples --strategy --prompt --single-label` on the real server."""
    chosen = ["税收激励", "金融支持", "人才队伍"]
    pool = [it for it in corpus.items if len(it.labels) == 1 and it.labels[0] in chosen][:12]
    examples = tmp_path / "pool.tsv"
    examples.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in pool), encoding="utf-8")
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text("税收激励: 减免税费\n金融支持: 贷款、担保、基金等\n人才队伍: 引进和培养人才\n", encoding="utf-8")
    texts = ["对引进的高层次人才给予安家补贴。", "设立科技信贷风险补偿资金池。"]
    result = cli("label", "-", "--model", "openai:gemma", "--base-url", llama_server.base_url, "--examples", examples,
                 "--taxonomy", taxonomy, "--strategy", "fixed", "--prompt", "fewshot_defs", "--single-label",
                 "--shots", "2", input=f"{texts[0]}\n\n{texts[1]}\n")
    assert result.exit_code == 0, str(result)
    preds = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["text"] for p in preds] == texts  # one JSON object per stdin line, blank lines skipped, in order
    fixed = [ex["id"] for ex in make_selector("fixed", load_corpus(examples), 2).select_many(texts, 2)[0]]
    for p in preds:
        assert p["status"] == "ok", p
        assert len(p["labels"]) == 1 and p["labels"][0] in chosen  # single-label, from the taxonomy file
        assert p["model"] == "openai:gemma" and p["prompt"] == load_prompt("fewshot_defs").ref
        assert p["examples"] == fixed  # the fixed strategy: the same examples for every text
