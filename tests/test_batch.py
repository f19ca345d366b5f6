"""Batch runs through the real `openai` SDK against the fake Batch API: a whole run, kill -9 and resume, splits,
expired / failed / cancelled batches, per-line errors and re-asks, export -> vLLM-format results -> import, and
the answer cache shared with online runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelwise import Labeler
from labelwise._batch import BatchConfig, _chunks
from labelwise._settings import LabelSettings
from labelwise._runner import RelabelConfig, relabel

POLL = "0.02"


@pytest.fixture
def data(tmp_path, corpus) -> Path:
    """12 corpus texts as a TSV."""
    path = tmp_path / "input.tsv"
    path.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in corpus.items[200:212]), encoding="utf-8")
    return path


@pytest.fixture
def prices(tmp_path) -> Path:
    """A price row for the fake model without a batch column (so the batch price is half)."""
    path = tmp_path / "prices.yaml"
    path.write_text("openai:x: {input: 2.0, output: 8.0}\n", encoding="utf-8")
    return path


def cfg(data: Path, out: Path, server, *, ipr: int = 1, prices: Path | None = None, **batch) -> RelabelConfig:
    batch.setdefault("poll_s", 0.02)
    return RelabelConfig(input=str(data), out=str(out), prices=str(prices) if prices else None,
                         settings=LabelSettings(model="openai:x", base_url=server.base_url, shots=2, items_per_request=ipr),
                         batch=BatchConfig(**batch))


def rows(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def state(out: Path) -> dict:
    return json.loads((out / "batch" / "state.json").read_text(encoding="utf-8"))


def cli_args(data: Path, out: Path, server, *extra: str) -> list[str]:
    return ["relabel", str(data), "--out", str(out), "--model", "openai:x", "--base-url", server.base_url,
            "--shots", "2", *extra]


def test_whole_run_same_request_same_cache_and_batch_prices(data, tmp_path, fake_server, prices):
    server = fake_server(batch={"seconds": 0.2})
    out = tmp_path / "run"
    result = relabel(cfg(data, out, server, prices=prices), progress=False)
    m = result.manifest
    got = rows(out)
    assert len(got) == 12 and all(r["status"] == "ok" for r in got)
    assert server.batch_stats["batches_created"] == 1 and server.batch_stats["files_uploaded"] == 1
    assert server.stats.completions == 0, "a batch run makes no online call"
    b = m["batch"]
    assert b["requests_submitted"] == 12 and b["batches"][0]["status"] == "completed"
    assert b["batches"][0]["counts"] == {"total": 12, "completed": 12, "failed": 0}
    tokens = b["tokens"]
    assert tokens["prompt_tokens"] > 0 and tokens == m["tokens_this_session"]
    assert b["cost_usd"] == pytest.approx((tokens["prompt_tokens"] * 1.0 + tokens["completion_tokens"] * 4.0) / 1e6)
    assert m["cost_usd_this_session"] == pytest.approx(b["cost_usd"])
    for name in ("labels.csv", "disagreements.csv", "report.json", "report.html"):
        assert (out / name).exists()

    # each uploaded line's body is exactly what the online path sends for that item
    uploaded = lines(out / "batch" / "0000-input.jsonl")
    assert [ln["custom_id"] for ln in uploaded] == [r["id"] for r in got]
    online = fake_server()
    with Labeler("openai:x", base_url=online.base_url, examples=data, shots=2, cache=False) as lab:
        lab.label(got[3]["text"])
    assert online.received == [uploaded[3]["body"]]

    # the answers sit under the online path's answer-cache keys ...
    with Labeler("openai:x", base_url=server.base_url, examples=data, shots=2) as lab:
        request, _ = lab.plan_request([(got[5]["id"], got[5]["text"])])
        cached = lab.asker.cache.get("answer", lab.asker.answer_key(request))
        output = {ln["custom_id"]: ln for ln in lines(out / "batch" / "0000-output.jsonl")}
        assert cached["text"] == output[got[5]["id"]]["response"]["body"]["choices"][0]["message"]["content"]
    # ... so an online run of the same settings afterwards is all cache hits, even with the prediction memo gone
    from labelwise import ResponseCache

    cache = ResponseCache()
    memo = [k for k in cache._cache.iterkeys() if k.startswith("prediction:")]
    assert len(memo) == 12
    for k in memo:
        del cache._cache[k]
    cache.close()
    again = relabel(RelabelConfig(input=str(data), out=str(tmp_path / "online"),
                                  settings=LabelSettings(model="openai:x", base_url=server.base_url, shots=2)), progress=False)
    assert server.stats.completions == 0
    assert [r["labels"] for r in rows(tmp_path / "online")] == [r["labels"] for r in got]
    assert again.manifest["counts"]["ok"] == 12


def signal_when(cmd: list[str], ready, log: Path, sig: int = signal.SIGKILL) -> int:
    """Start `cmd`, send it `sig` as soon as `ready()` holds (it must still be running then); its exit code."""
    # as from a terminal: SIGINT at its default even where this process was started with it ignored (`cmd &`)
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", reset, *cmd], stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, log.read_text(errors="replace")
        proc.send_signal(sig)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def recorded_and_polled(out: Path, server):
    """True once the run recorded its batch id and has polled a few times."""
    def ready() -> bool:
        path = out / "batch" / "state.json"
        return path.exists() and bool(state(out)["parts"][0]["batch_id"]) and server.stats.by_status.get(200, 0) >= 6
    return ready


def test_kill_9_while_waiting_then_resume_submits_once(data, tmp_path, fake_server, cli, labelwise_cmd):
    server = fake_server(batch={"seconds": 10_000})
    out = tmp_path / "run"
    args = cli_args(data, out, server, "--batch", "--batch-poll", POLL)
    assert signal_when(labelwise_cmd + args, recorded_and_polled(out, server), tmp_path / "killed.log") == -signal.SIGKILL
    assert server.batch_stats["batches_created"] == 1
    assert not (out / "predictions.jsonl").exists() or rows(out) == []

    server.scenario.batch.seconds = 0  # the batch finishes while nobody waits
    result = cli(*args)
    assert result.exit_code == 0, str(result)
    assert server.batch_stats["batches_created"] == 1 and server.batch_stats["files_uploaded"] == 1
    got = rows(out)
    assert len(got) == 12 == len({r["id"] for r in got}) and all(r["status"] == "ok" for r in got)
    assert cli(*args).exit_code == 0 and server.batch_stats["batches_created"] == 1  # a third run submits nothing


def test_kill_9_between_create_and_record_finds_the_batch(data, tmp_path, fake_server, cli, labelwise_cmd):
    server = fake_server(batch={"seconds": 0, "create_delay_s": 60})
    out = tmp_path / "run"
    args = cli_args(data, out, server, "--batch", "--batch-poll", POLL)
    code = signal_when(labelwise_cmd + args, lambda: server.batch_stats["batches_created"] >= 1, tmp_path / "killed.log")
    assert code == -signal.SIGKILL
    part = state(out)["parts"][0]
    assert part["file_id"] and part["batch_id"] is None, "killed after the server created it, before we recorded it"
    server.scenario.batch.create_delay_s = 0
    result = cli(*args)
    assert result.exit_code == 0, str(result)
    assert server.batch_stats["batches_created"] == 1
    assert state(out)["parts"][0]["batch_id"] == "batch_fake1"
    assert len(rows(out)) == 12


def test_ctrl_c_leaves_the_batch_running_and_says_how_to_collect(data, tmp_path, fake_server, cli, labelwise_cmd):
    server = fake_server(batch={"seconds": 10_000})
    out = tmp_path / "run"
    args = cli_args(data, out, server, "--batch", "--batch-poll", POLL)
    log = tmp_path / "interrupted.log"
    assert signal_when(labelwise_cmd + args, recorded_and_polled(out, server), log, signal.SIGINT) == 130
    assert "submitted batches keep running; run the same command again" in log.read_text(errors="replace")
    assert server.batch_stats["batches_cancelled"] == 0
    server.scenario.batch.seconds = 0
    assert cli(*args).exit_code == 0 and server.batch_stats["batches_created"] == 1 and len(rows(out)) == 12


@pytest.mark.parametrize("limit", [{"max_requests": 5}, {"max_bytes": "3 lines"}])
def test_split_at_the_configured_limit(data, tmp_path, fake_server, limit):
    server = fake_server(batch={"seconds": 0})
    out = tmp_path / "run"
    if limit.get("max_bytes") == "3 lines":
        probe = tmp_path / "probe.jsonl"
        relabel(cfg(data, tmp_path / "x", server, mode="export", path=str(probe)), progress=False)
        sizes = [len(ln) + 1 for ln in probe.read_bytes().splitlines()]
        limit = {"max_bytes": max(sum(sizes[i:i + 3]) for i in range(0, 12))}
    relabel(cfg(data, out, server, **limit), progress=False)
    parts = state(out)["parts"]
    uploaded = b"".join((out / "batch" / f"{p['n']:04d}-input.jsonl").read_bytes() for p in parts)
    if "max_requests" in limit:
        assert [p["requests"] for p in parts] == [5, 5, 2]
    else:
        assert uploaded == probe.read_bytes(), "the parts are the exported file, cut at line boundaries"
        assert len(parts) >= 2 and all(p["bytes"] <= limit["max_bytes"] for p in parts)
        assert all((out / "batch" / f"{p['n']:04d}-input.jsonl").stat().st_size == p["bytes"] for p in parts)
    assert server.batch_stats["batches_created"] == len(parts)
    assert sum(p["requests"] for p in parts) == 12 and len(rows(out)) == 12


def test_split_never_exceeds_either_limit():
    sizes = [10, 10, 10, 30, 5, 5, 5, 5, 50]
    parts = [[n for n, _ in c] for c in _chunks(((n, b"x" * k) for n, k in enumerate(sizes)), 3, 50)]
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7], [8]]
    assert all(len(p) <= 3 and sum(sizes[n] for n in p) <= 50 for p in parts)
    with pytest.raises(Exception, match="request line 2 is 51 bytes"):
        list(_chunks(((n, b"x" * k) for n, k in enumerate([5, 51])), 3, 50))


def test_expired_batch_items_are_resubmitted_by_the_next_run(data, tmp_path, fake_server, cli):
    server = fake_server(batch={"seconds": 0, "expire": 1})
    out = tmp_path / "run"
    args = cli_args(data, out, server, "--batch", "--batch-poll", POLL)
    first = cli(*args)
    assert first.exit_code == 0, str(first)
    assert "expired" in first.stderr and "6 of 12 requests unfinished" in first.stderr
    assert len(rows(out)) == 6
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["batch"]["items_left"] == 6 and "resubmitted on the next run" in m["batch"]["notes"][0]
    assert m["counts"]["labeled_now"] == 6
    second = cli(*args)
    assert second.exit_code == 0, str(second)
    parts = state(out)["parts"]
    assert server.batch_stats["batches_created"] == 2 and [p["requests"] for p in parts] == [12, 6]
    assert {r["id"] for r in rows(out)} == {ln["custom_id"] for ln in lines(out / "batch" / "0000-input.jsonl")}


def test_batch_failing_validation_is_reported_and_resubmitted(data, tmp_path, fake_server, cli):
    server = fake_server(batch={"seconds": 0, "fail_validation": 1})
    out = tmp_path / "run"
    args = cli_args(data, out, server, "--batch", "--batch-poll", POLL)
    first = cli(*args)
    assert "failed: line 1: injected validation failure" in first.stderr and not rows(out)
    assert cli(*args).exit_code == 0
    assert server.batch_stats["batches_created"] == 2 and len(rows(out)) == 12


@pytest.mark.parametrize("ipr", [1, 3])
def test_line_errors_and_invalid_answers_are_reasked_online(data, tmp_path, fake_server, ipr):
    server = fake_server(batch={"seconds": 0, "line_script": ["500", "error", "garbage", "off_taxonomy"]})
    out = tmp_path / "run"
    result = relabel(cfg(data, out, server, ipr=ipr), progress=False)
    got = rows(out)
    assert len(got) == 12 and all(r["status"] == "ok" for r in got)
    # one online request per failed line (ipr=1), or per item of a failed group (ipr=3)
    assert server.stats.completions == 4 * ipr
    assert server.batch_stats["batches_created"] == 1
    assert result.manifest["batch"]["online_reask_tokens"]["prompt_tokens"] > 0
    reasked = [r for r in server.received if len(r["messages"]) == 3]
    assert len(reasked) == (2 if ipr == 1 else 0), "an invalid single answer is re-asked with its validation error"


def test_batch_reask_goes_into_a_follow_up_batch(data, tmp_path, fake_server):
    server = fake_server(batch={"seconds": 0, "line_script": ["500", "error", "garbage", "off_taxonomy"]})
    out = tmp_path / "run"
    relabel(cfg(data, out, server, reask="batch"), progress=False)
    assert server.stats.completions == 0
    parts = state(out)["parts"]
    assert server.batch_stats["batches_created"] == 2 and [p["requests"] for p in parts] == [12, 4]
    follow = lines(out / "batch" / "0001-input.jsonl")
    assert sorted(len(ln["body"]["messages"]) for ln in follow) == [1, 1, 3, 3]
    assert sum("#2" in ln["custom_id"] for ln in follow) == 4
    got = rows(out)
    assert len(got) == 12 and all(r["status"] == "ok" for r in got)
    assert sorted(r["attempts"] for r in got)[-4:] == [2, 2, 2, 2]


def test_export_then_vllm_results_then_import(data, tmp_path, fake_server, cli, corpus):
    server = fake_server()
    out = tmp_path / "run"
    requests = tmp_path / "requests.jsonl"
    exported = cli(*cli_args(data, out, server, "--batch-export", str(requests)))
    assert exported.exit_code == 0, str(exported)
    assert server.stats.requests == 0 and "12 requests" in exported.stdout
    sent = lines(requests)
    assert all(ln["method"] == "POST" and ln["url"] == "/v1/chat/completions" and ln["body"]["model"] == "x" for ln in sent)

    # what `vllm run-batch -o` writes: BatchRequestOutput lines, one failed with a string error and no body
    results = tmp_path / "results.jsonl"
    script = tmp_path / "fake_vllm.py"
    script.write_text(
        "import json, sys\n"
        "out = open(sys.argv[2], 'w', encoding='utf-8')\n"
        "for n, line in enumerate(open(sys.argv[1], encoding='utf-8')):\n"
        "    req = json.loads(line)\n"
        "    schema = req['body']['response_format']['json_schema']['schema']\n"
        "    enum = schema['$defs'][next(iter(schema['$defs']))]['enum'] if '$defs' in schema else schema['properties']['labels']['items']['enum']\n"
        "    label = enum[n % len(enum)] if n != 7 else 'not a label'\n"
        "    content = json.dumps({'labels': [label]}, ensure_ascii=False)\n"
        "    body = {'id': f'chatcmpl-{n}', 'object': 'chat.completion', 'created': 0, 'model': req['body']['model'],\n"
        "            'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': content}, 'finish_reason': 'stop', 'logprobs': None}],\n"
        "            'usage': {'prompt_tokens': 100, 'completion_tokens': 10, 'total_tokens': 110}}\n"
        "    if n == 4:\n"
        "        row = {'id': f'vllm-{n}', 'custom_id': req['custom_id'], 'response': {'status_code': 400, 'request_id': f'vllm-batch-{n}'}, 'error': 'prompt too long'}\n"
        "    else:\n"
        "        row = {'id': f'vllm-{n}', 'custom_id': req['custom_id'], 'response': {'status_code': 200, 'request_id': f'vllm-batch-{n}', 'body': body}, 'error': None}\n"
        "    out.write(json.dumps(row, ensure_ascii=False) + '\\n')\n", encoding="utf-8")
    subprocess.run([sys.executable, str(script), str(requests), str(results)], check=True)
    with open(results, "a", encoding="utf-8") as f:  # a line of another input (a wrong file mixed in)
        f.write(json.dumps({"id": "x", "custom_id": "0123456789abcdef", "response": None, "error": "x"}) + "\n")

    imported = cli(*cli_args(data, out, server, "--batch-import", str(results)))
    assert imported.exit_code == 0, str(imported)
    got = {r["id"]: r for r in rows(out)}
    assert len(got) == 12 and all(r["status"] == "ok" for r in got.values())
    assert server.stats.completions == 2, "the failed line and the invalid answer are asked again online"
    written = {json.loads(ln)["custom_id"]: json.loads(ln) for ln in results.read_text(encoding="utf-8").splitlines()}
    for n, ln in enumerate(sent):
        if n not in (4, 7):
            content = json.loads(written[ln["custom_id"]]["response"]["body"]["choices"][0]["message"]["content"])
            assert got[ln["custom_id"]]["labels"] == content["labels"]
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert m["batch"]["mode"] == "import" and m["batch"]["tokens"] == {"prompt_tokens": 1100, "completion_tokens": 110}
    assert (m["batch"]["lines"], m["batch"]["lines_not_in_this_run"], m["batch"]["lines_never_executed"]) == (13, 1, 0)
    # importing the same file again finds everything done
    again = cli(*cli_args(data, out, server, "--batch-import", str(results)))
    assert again.exit_code == 0 and server.stats.completions == 2
    assert "13 result lines (12 already done, 1 not for this input)" in again.stderr


def test_import_names_the_bad_line(data, tmp_path, fake_server, cli):
    server = fake_server()
    bad = tmp_path / "results.jsonl"
    bad.write_text('{"custom_id": "a", "response": null, "error": "x"}\n{"custom_id": \n', encoding="utf-8")
    result = cli(*cli_args(data, tmp_path / "run", server, "--batch-import", str(bad)))
    assert result.exit_code == 2 and f"{bad}, line 2: not valid JSON" in result.stderr


def test_no_wait_status_cancel_then_rerun(data, tmp_path, fake_server, cli):
    server = fake_server(batch={"seconds": 10_000})
    out = tmp_path / "run"
    args = cli_args(data, out, server, "--batch", "--no-wait", "--batch-poll", POLL)
    first = cli(*args)
    assert first.exit_code == 0, str(first)
    assert "1 batches still running" in first.stderr and server.batch_stats["batches_created"] == 1
    status = cli("batch", "status", out)
    assert status.exit_code == 0, str(status)
    assert "batch_fake1" in status.stdout and ("validating" in status.stdout or "in_progress" in status.stdout)
    assert cli(*args).exit_code == 0 and server.batch_stats["batches_created"] == 1, "a rerun picks the batch up"
    cancel = cli("batch", "cancel", out)
    assert cancel.exit_code == 0 and "cancel requested" in cancel.stdout
    assert server.batch_stats["batches_cancelled"] == 1
    collect = cli(*cli_args(data, out, server, "--batch", "--batch-poll", POLL))
    assert "cancelled" in collect.stderr and "12 of 12 requests unfinished" in collect.stderr
    server.scenario.batch.seconds = 0
    assert cli(*args).exit_code == 0, "--no-wait still collects batches that have ended"
    assert server.batch_stats["batches_created"] == 2 and len(rows(out)) == 12


def test_force_with_other_settings_sets_the_old_batches_aside(data, tmp_path, fake_server, cli):
    server = fake_server(batch={"seconds": 10_000})
    out = tmp_path / "run"
    assert cli(*cli_args(data, out, server, "--batch", "--no-wait")).exit_code == 0
    server.scenario.batch.seconds = 0
    refused = cli(*cli_args(data, out, server, "--batch", "--shots", "1"))
    assert refused.exit_code == 2 and "--force" in refused.stderr
    forced = cli(*cli_args(data, out, server, "--batch", "--batch-poll", POLL, "--shots", "1", "--force"))
    assert forced.exit_code == 0, str(forced)
    assert len(list(out.glob("batch.replaced-*"))) == 1 and server.batch_stats["batches_created"] == 2
    assert [p["batch_id"] for p in state(out)["parts"]] == ["batch_fake2"]
    got = rows(out)
    assert len(got) == 12 and all(len(r["examples"]) == 1 for r in got), "answers come from the new settings' batch"


def test_dry_run_batch_estimates_at_batch_prices(data, tmp_path, fake_server, cli, prices):
    server = fake_server()
    result = cli(*cli_args(data, tmp_path / "run", server, "--dry-run", "--batch", "--prices", str(prices)))
    assert result.exit_code == 0, str(result)
    assert "at batch prices" in result.stdout and server.stats.requests == 0
    online, batch = (float(x.split("$")[1].rstrip(",")) for x in result.stdout.split("online: ")[1].split()[0:3:2])
    assert batch == pytest.approx(online / 2, abs=1e-4) and batch > 0


def test_fake_batch_api_validates_lines_like_openai(fake_server):
    import openai

    server = fake_server()
    client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    try:
        good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}
        body = (json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n").encode()
        f = client.files.create(file=("in.jsonl", body), purpose="batch")
        assert client.files.retrieve(f.id).bytes == len(body)
        b = client.batches.retrieve(client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                                          completion_window="24h").id)
        assert b.status == "failed" and [(e.line, e.code) for e in b.errors.data] == [(2, "invalid_json_line"),
                                                                                     (3, "duplicate_custom_id")]
        assert [x.id for x in client.batches.list()] == [b.id]
    finally:
        client.close()


def test_batch_with_a_model_that_cannot_take_batch_files_fails_before_touching_the_run(data, tmp_path, cli):
    out = tmp_path / "run"
    result = cli("relabel", data, "--out", out, "--model", "local", "--batch")
    assert result.exit_code == 2 and "batch files need an openai:MODEL" in result.stderr
    assert not out.exists()
