"""Hardening: a malformed answer never ends a run, fatal errors stop it fast with a non-zero exit, one process per run
directory, TSV headers, no stored secrets, spreadsheet-safe CSVs, `agree` on labels.csv, and the smaller cases.

Every misbehaving answer is a named mode of the fake server (`benchmarks.fake_openai.MISBEHAVIOURS`)."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.fake_openai import MISBEHAVIOURS
from labelwise import FatalTransportError, Labeler, OpenAIModel, load_corpus
from labelwise._corpus import EncodingGuessWarning
from labelwise._exceptions import CorpusError
from labelwise._io import spreadsheet_safe
from labelwise._labeler import run_sync
from labelwise._prompts import EXAMPLE_MAX_CHARS
from labelwise._redact import redact
from labelwise._schema import RAW_CAP

ROOT = Path(__file__).resolve().parents[1]
LINES = (ROOT / "data" / "policy_labels.tsv").read_text(encoding="utf-8").splitlines()
TEXT = "对科技型中小企业的研发投入给予财政补助。"
KEY = "sk-hardening-test-0123456789abcdef"


@pytest.fixture(scope="module")
def pool(corpus):
    """A small labeled pool (quick to index) standing in for the example corpus."""
    return corpus.subset([it.id for it in corpus.items[:200]])


def write_tsv(path: Path, n: int = 20, extra: tuple[str, ...] = ()) -> Path:
    path.write_text("\n".join(LINES[:n] + list(extra)) + "\n", encoding="utf-8")
    return path


def relabel(cli, server, inp: Path, out: Path, *args: str):
    return cli("relabel", inp, "--out", out, "--model", "openai:fake-model", "--base-url", server.base_url,
               "--shots", "2", "--no-cache", *args)


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


@contextmanager
def quick_labeler(server, pool, **options) -> Iterator[Labeler]:
    """A labeler on the fake server with 3 quick transport attempts; labeler and client closed after."""
    model = OpenAIModel("fake-model", base_url=server.base_url, max_attempts=3, max_wait=0.05)
    labeler = Labeler(model, examples=pool, shots=2, **options)
    try:
        yield labeler
    finally:
        labeler.close()
        run_sync(model.aclose())


# --------------------------------------------------------------------------- 1. malformed 200s


# each mode, and what of its body the failed prediction must keep
MALFORMED = {"empty_choices": "chat.completion", "html_200": "<h1>502 Bad Gateway</h1>", "not_completion": '"data"',
             "broken_logprobs": "not a token list"}


def test_every_misbehaviour_is_a_named_fake_server_mode():
    assert set(MALFORMED) | {"echo_key_401", "quota_429", "huge_answer", "context_length_400"} == set(MISBEHAVIOURS)


@pytest.mark.parametrize("mode", sorted(MALFORMED))
def test_malformed_200_is_retried_like_a_transport_fault(fake_server, pool, mode):
    server = fake_server(script=[mode, "ok"])
    with quick_labeler(server, pool) as labeler:
        pred = labeler.label(TEXT)
        assert labeler.model.stats["retries"] == 1
    assert pred.status == "ok", pred.error
    assert server.stats.completions == 2
    assert pred.attempts == 2  # both requests counted


@pytest.mark.parametrize("mode", sorted(MALFORMED))
def test_malformed_200_every_time_is_a_failed_prediction_with_the_raw_body(fake_server, pool, mode):
    server = fake_server(script=[mode] * 3)
    with quick_labeler(server, pool) as labeler:
        pred = labeler.label(TEXT)
    assert pred.status == "failed" and pred.labels == []
    assert "gave up after 3 attempts" in pred.error and "HTTP 200" in pred.error
    assert pred.attempts == 3
    assert MALFORMED[mode] in pred.raw
    assert server.stats.completions == 3


@pytest.mark.parametrize("per_request", ["1", "5"])
def test_relabel_goes_on_through_malformed_answers(fake_server, cli, tmp_path, per_request):
    inp = write_tsv(tmp_path / "in.tsv", 40)
    n = len(load_corpus(inp))
    script = []
    for mode in MALFORMED:
        script += ["ok", mode]
    server = fake_server(script=script)
    out = tmp_path / "run"
    res = relabel(cli, server, inp, out, "--concurrency", "4", "--items-per-request", per_request)
    assert res.exit_code == 0, res
    rows = predictions(out)
    assert len(rows) == n and len({r["id"] for r in rows}) == n  # every text, once; none lost
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    assert server.stats.completions >= len(script)  # every malformed answer was served (and survived)
    assert server.stats.by_status == {200: server.stats.completions}


# --------------------------------------------------------------------------- 2. fatal errors stop the run


@pytest.mark.parametrize("status, hint", [("401", "authentication failed: check OPENAI_API_KEY"),
                                          ("403", "permission denied"), ("404", "model or endpoint not found"),
                                          ("400", "the server rejected the request"),
                                          ("quota_429", "quota exhausted")])
def test_fatal_error_stops_new_requests_and_exits_3(fake_server, cli, tmp_path, status, hint):
    inp = write_tsv(tmp_path / "in.tsv", 20)
    server = fake_server(script=[status])
    out = tmp_path / "run"
    res = relabel(cli, server, inp, out, "--concurrency", "1")
    assert res.exit_code == 3, res
    assert hint in res.stderr and "run stopped" in res.stderr
    assert server.stats.completions == 1  # nothing was sent after the fatal answer
    rows = predictions(out)
    assert [r["status"] for r in rows] == ["failed"]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert hint in manifest["stopped_by"]


def test_answers_in_flight_at_a_fatal_error_are_still_written(fake_server, cli, tmp_path):
    inp = write_tsv(tmp_path / "in.tsv", 40)
    server = fake_server(script=["ok", "ok", "ok", "401"], latency_s=0.3)
    out = tmp_path / "run"
    res = relabel(cli, server, inp, out, "--concurrency", "4")
    assert res.exit_code == 3, res
    rows = predictions(out)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == server.stats.by_status.get(200, 0) >= 3  # every answer received was written
    assert server.stats.completions < len(load_corpus(inp))


def test_label_many_raises_the_fatal_error_after_one_request(fake_server, pool):
    server = fake_server(script=["401"])
    with quick_labeler(server, pool, concurrency=1) as labeler:
        with pytest.raises(FatalTransportError, match="OPENAI_API_KEY"):
            labeler.label_many([TEXT, "支持集成电路设计企业流片。", "设立风险补偿资金池。"])
    assert server.stats.completions == 1


def test_a_too_long_request_fails_that_item_only(fake_server, cli, tmp_path):
    inp = write_tsv(tmp_path / "in.tsv", 6)
    server = fake_server(script=["context_length_400"])
    out = tmp_path / "run"
    res = relabel(cli, server, inp, out, "--concurrency", "1")
    assert res.exit_code == 0, res
    rows = predictions(out)
    assert sum(r["status"] == "failed" for r in rows) == 1 and len(rows) == len(load_corpus(inp))


def test_a_run_where_every_text_failed_exits_4(fake_server, cli, tmp_path):
    inp = write_tsv(tmp_path / "in.tsv", 3)
    server = fake_server(off_taxonomy_rate=1.0)
    res = relabel(cli, server, inp, tmp_path / "run")
    assert res.exit_code == 4, res
    assert "every text failed" in res.stderr and "re-asks" in res.stderr


# --------------------------------------------------------------------------- 3. one process per run directory


def test_a_second_run_on_the_same_directory_is_refused_naming_the_first_pid(fake_server, cli, tmp_path):
    inp = write_tsv(tmp_path / "in.tsv", 30)
    server = fake_server(script=["hold"])  # the first run's first answer never comes: it is still running when asked
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "labelwise.cli", "relabel", str(inp), "--out", str(out), "--model", "openai:fake-model",
           "--base-url", server.base_url, "--shots", "2", "--no-cache", "--concurrency", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid_file = out / ".lock.pid"
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text().strip() == str(first.pid) and server.held == 1):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not take the lock"
            time.sleep(0.1)
        res = relabel(cli, server, inp, out, "--concurrency", "1")
        assert res.exit_code == 2, res
        assert f"PID {first.pid}" in res.stderr and "in use" in res.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()  # kill -9: the OS drops its lock
        first.wait(30)
    res = relabel(cli, server, inp, out, "--concurrency", "4")
    assert res.exit_code == 0, res
    rows = predictions(out)
    assert len(rows) == len({r["id"] for r in rows}) == len(load_corpus(inp))  # resumed: each text once


# --------------------------------------------------------------------------- 4. TSV header line


def test_tsv_header_line_is_recognized_and_can_be_overridden(tmp_path):
    p = write_tsv(tmp_path / "h.tsv", 5, ())
    p.write_text("label\ttext\n" + p.read_text(encoding="utf-8"), encoding="utf-8")
    c = load_corpus(p)
    assert "label" not in c.labels and all(it.text != "text" for it in c.items)
    assert c.header_skipped and c.rows == 5
    forced = load_corpus(p, header=False)
    assert "label" in forced.labels and forced.rows == 6
    plain = write_tsv(tmp_path / "plain.tsv", 5)
    assert load_corpus(plain, header=True).rows == 4 and not load_corpus(plain).header_skipped


def test_cli_no_header_flag(cli, tmp_path):
    p = tmp_path / "h.tsv"
    p.write_text("label\ttext\n" + "\n".join(LINES[:5]) + "\n", encoding="utf-8")
    n = len(load_corpus(p))
    assert f"unique texts: {n}," in cli("relabel", p, "--out", tmp_path / "r", "--dry-run", "--shots", "2").stdout
    res = cli("relabel", p, "--out", tmp_path / "r", "--dry-run", "--shots", "2", "--no-header")
    assert res.exit_code == 0 and f"unique texts: {n + 1}," in res.stdout


# --------------------------------------------------------------------------- 5. secrets


def test_redact_masks_the_key_sk_tokens_and_bearer_values(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "plain-secret-value-42")
    text = "key plain-secret-value-42, other sk-proj-AbC123xyz789_- and Authorization: Bearer abc.def-123 task-force"
    clean = redact(text)
    assert "plain-secret-value-42" not in clean and "sk-proj" not in clean and "abc.def-123" not in clean
    assert "task-force" in clean and clean.count("[REDACTED]") == 3


def test_a_key_echoed_by_the_server_is_stored_nowhere(fake_server, cli, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    inp = write_tsv(tmp_path / "in.tsv", 5)
    server = fake_server(script=["echo_key_401"])
    out = tmp_path / "run"
    with caplog.at_level(logging.DEBUG):
        res = relabel(cli, server, inp, out, "--concurrency", "1")
        logging.getLogger("openai._base_client").warning("echo %s", f"Bearer {KEY}")
    assert res.exit_code == 3, res
    assert "[REDACTED]" in res.stderr and KEY not in res.stderr + res.stdout
    stored = "".join(p.read_text(encoding="utf-8-sig") for p in out.iterdir() if p.suffix in (".jsonl", ".csv", ".json"))
    assert "[REDACTED]" in stored and KEY not in stored
    assert KEY not in caplog.text and KEY[5:] not in caplog.text


# --------------------------------------------------------------------------- 6. spreadsheet formula injection


def test_spreadsheet_safe():
    assert [spreadsheet_safe(v) for v in ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "ok", "", 3.5, None]] == \
        ["'=1+1", "'+1", "'-2", "'@SUM(A1)", "'\tx", "'\rx", "ok", "", 3.5, None]


def test_formula_texts_are_escaped_in_csvs_and_exact_in_jsonl(fake_server, cli, tmp_path):
    formulas = ['=HYPERLINK("http://evil.example","金融支持")', "+金融支持 一句", "-金融支持 两句", "@金融支持 三句"]
    inp = write_tsv(tmp_path / "in.tsv", 20, tuple(f"企业\t{t}" for t in formulas))
    server = fake_server()
    out = tmp_path / "run"
    res = relabel(cli, server, inp, out)
    assert res.exit_code == 0, res
    assert {r["text"] for r in predictions(out)} >= set(formulas)  # JSONL exact
    for name in ("labels.csv", "disagreements.csv"):
        with open(out / name, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows
        cells = [v for r in rows for v in r.values()]
        assert not [v for v in cells if v[:1] in ("=", "+", "-", "@", "\t", "\r")], name
        shown = {r["text"] for r in rows}
        assert {"'" + t for t in formulas} <= shown, name  # the model said 金融支持, gold says 企业: all disagree


# --------------------------------------------------------------------------- 7. agree on labels.csv


def test_agree_reads_labels_csv_or_refuses_naming_the_columns(fake_server, cli, tmp_path):
    inp = write_tsv(tmp_path / "in.tsv", 30)
    server = fake_server()
    out = tmp_path / "run"
    assert relabel(cli, server, inp, out).exit_code == 0
    via_csv = cli("agree", inp, out / "labels.csv", "--json")
    via_jsonl = cli("agree", inp, out / "predictions.jsonl", "--json")
    assert via_csv.exit_code == 0, via_csv
    a, b = json.loads(via_csv.stdout), json.loads(via_jsonl.stdout)
    assert a["n"] == b["n"] == len(load_corpus(inp))
    for key in ("micro_f1", "top1_accuracy", "exact_match", "hamming_loss"):  # the labels read are the predictions
        assert a[key] == b[key], key
    other = tmp_path / "other.csv"
    other.write_text("id,text,guess\n1,支持企业,企业\n", encoding="utf-8")
    res = cli("agree", inp, other)
    assert res.exit_code == 2
    assert "columns found" in res.stderr and "'guess'" in res.stderr and "--text-col" not in res.stderr


def test_labels_csv_cells_escaped_for_spreadsheets_are_read_back_as_written(tmp_path):
    from labelwise._io import write_spreadsheet_csv
    from labelwise._report import load_labels

    table = pd.DataFrame([{"id": "a1", "text": "=1+1 文本", "new_labels": "-neg|+pos", "status": "ok", "confidence": 0.5},
                          {"id": "b2", "text": "别的", "new_labels": "", "status": "failed", "confidence": None}])
    write_spreadsheet_csv(tmp_path / "labels.csv", table)
    assert "'-neg|+pos" in (tmp_path / "labels.csv").read_text(encoding="utf-8-sig")
    got = load_labels(tmp_path / "labels.csv")
    assert got["a1"] == {"text": "=1+1 文本", "labels": ["-neg", "+pos"], "status": "ok", "confidence": 0.5}
    assert got["b2"]["status"] == "failed" and got["b2"]["labels"] == []


# --------------------------------------------------------------------------- 8. smaller ones


def test_a_directory_as_input_is_a_clear_error(cli, tmp_path):
    d = tmp_path / "x.tsv"
    d.mkdir()
    for res in (cli("relabel", d, "--out", tmp_path / "r", "--dry-run"), cli("agree", d, d)):
        assert res.exit_code == 2 and res.exception is None, res
        assert "is a directory" in res.stderr


def test_bad_out_is_a_clear_error(fake_server, cli, tmp_path):
    inp = write_tsv(tmp_path / "in.tsv", 5)
    server = fake_server()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, says in ((a_file, "is a file"), (a_file / "sub", "can't be created")):
        res = relabel(cli, server, inp, out)
        assert res.exit_code == 2 and res.exception is None, res
        assert says in res.stderr
    assert server.stats.completions == 0


def test_empty_or_none_text_is_a_value_error_without_a_model_call(fake_server, pool):
    server = fake_server()
    with quick_labeler(server, pool) as labeler:
        for bad in ("", "   ", None):
            with pytest.raises(ValueError, match="empty|string"):
                labeler.label(bad)
        df = pd.DataFrame({"text": [TEXT, None, "", "支持集成电路设计企业流片。"]}, index=[10, 11, 12, 13])
        out = labeler.label_dataframe(df)
        na = labeler.label_dataframe(pd.DataFrame({"text": pd.array([TEXT, pd.NA], dtype="string")}))
    assert list(out["status"]) == ["ok", "failed", "failed", "ok"]
    assert "row 11" in out.loc[11, "error"] and "row 12" in out.loc[12, "error"]
    assert list(na["status"]) == ["ok", "failed"] and "missing" in na.loc[1, "error"]
    assert server.stats.completions == 2  # the second frame's text was answered from the cache


def test_guessed_encoding_warns_and_encoding_overrides(cli, tmp_path):
    texts = ["déjàvu crémeux", "bientôt fêtes", "Zoéaime Noëlle"]
    p = tmp_path / "latin.tsv"
    p.write_bytes("".join(f"finance\t{t}\n" for t in texts).encode("latin-1"))
    assert p.read_bytes().decode("gb18030") != "".join(f"finance\t{t}\n" for t in texts)  # the trap: it decodes
    with pytest.warns(EncodingGuessWarning, match="--encoding"):
        guessed = load_corpus(p)
    assert guessed.encoding == "gb18030" and guessed.encoding_guessed
    right = load_corpus(p, encoding="latin-1")
    assert [it.text for it in right.items] == texts and not right.encoding_guessed
    res = cli("relabel", p, "--out", tmp_path / "r", "--dry-run", "--shots", "0")
    assert "warning:" in res.stderr and "GB18030" in res.stderr
    res = cli("relabel", p, "--out", tmp_path / "r", "--dry-run", "--shots", "0", "--encoding", "latin-1")
    assert res.exit_code == 0 and "warning" not in res.stderr and texts[0] in res.stdout


def test_pipe_inside_a_tsv_label_is_refused_with_its_place(tmp_path):
    p = tmp_path / "pipe.tsv"
    p.write_text(LINES[0] + "\n金融|支持\t一句话。\n", encoding="utf-8")
    with pytest.raises(CorpusError) as err:
        load_corpus(p)
    assert err.value.line == 2 and err.value.column == "1" and "'|'" in str(err.value)


def test_a_huge_answer_is_cut_when_stored_and_when_re_asked(fake_server, pool):
    server = fake_server(script=["huge_answer:100000"] * 3)
    with quick_labeler(server, pool) as labeler:
        pred = labeler.label(TEXT)
    assert pred.status == "failed"
    assert len(pred.raw) < RAW_CAP + 100 and "[cut: 80000 more characters]" in pred.raw
    for req in server.received[1:]:
        assert all(len(m["content"]) <= RAW_CAP + 1 for m in req["messages"] if m["role"] == "assistant")


def test_a_huge_example_text_is_cut_in_prompts_and_the_manifest_says_so(fake_server, cli, tmp_path):
    huge = "金融支持" + "长" * 100_000
    inp = write_tsv(tmp_path / "in.tsv", 10, (f"金融支持\t{huge}",))
    server = fake_server()
    out = tmp_path / "run"
    res = relabel(cli, server, inp, out, "--strategy", "fixed", "--shots", "16")  # every other text is an example
    assert res.exit_code == 0, res
    prompts = [req["messages"][0]["content"] for req in server.received]
    assert len(prompts) == len(load_corpus(inp))
    assert sum(len(p) > 50_000 for p in prompts) == 1  # only the huge text's own prompt (as the item, not cut)
    assert sum(huge[:EXAMPLE_MAX_CHARS] + "…" in p for p in prompts) == len(prompts) - 1  # an example everywhere else
    examples = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["examples"]
    assert examples["max_chars"] == EXAMPLE_MAX_CHARS and examples["texts_cut_to_max_chars"] == 1


def test_cli_timeout(fake_server, cli, tmp_path):
    inp = write_tsv(tmp_path / "in.tsv", 3)
    server = fake_server(script=["hang:3600"])
    out = tmp_path / "run"
    # 2 s: far above a normal round trip even on a busy machine, so only the hanging request times out
    res = relabel(cli, server, inp, out, "--concurrency", "1", "--timeout", "2")
    assert res.exit_code == 0, res
    rows = predictions(out)
    assert all(r["status"] == "ok" for r in rows) and sorted(r["attempts"] for r in rows) == [1] * (len(rows) - 1) + [2]
    assert sorted(server.stats.log)[0][2] == 0  # the client gave up on the hanging answer (status 0: never sent)
    assert server.stats.completions == len(rows) + 1


def test_settings_differ_names_the_setting_and_values(fake_server, cli, tmp_path):
    inp = write_tsv(tmp_path / "in.tsv", 3)
    server = fake_server()
    out = tmp_path / "run"
    assert relabel(cli, server, inp, out).exit_code == 0
    res = relabel(cli, server, inp, out, "--shots", "3")
    assert res.exit_code == 2
    assert "settings.shots: 2 -> 3" in res.stderr


def test_attempts_count_every_request_sent(fake_server, pool):
    server = fake_server(script=["500", "500", "ok"])
    with quick_labeler(server, pool) as labeler:
        assert labeler.label(TEXT).attempts == 3
    server = fake_server(error_rate=1.0)
    with quick_labeler(server, pool) as labeler:
        pred = labeler.label(TEXT)
    assert pred.status == "failed" and "gave up after 3 attempts" in pred.error and pred.attempts == 3


# --------------------------------------------------------------------------- a bug in one worker


def test_a_crash_in_one_group_stops_sending_but_lets_in_flight_answers_land(fake_server, pool):
    """An unexpected error (a bug) in one worker is raised, but only after the answers other workers were already
    waiting for have landed: they were paid for. No group is sent after the crash."""
    server = fake_server(latency_s=2.0)
    items = [(it.id, it.text) for it in pool.items[:12]]
    seen = []
    with quick_labeler(server, pool, concurrency=4, cache=False) as labeler:
        real = labeler.asker.label_group

        async def label_group(group):
            if group[0][0] == items[0][0]:  # crash once the 3 other workers' requests are at the server
                while len(server.received) < 3:
                    await asyncio.sleep(0.005)
                raise RuntimeError("a bug")
            return await real(group)

        labeler.asker.label_group = label_group
        with pytest.raises(RuntimeError, match="a bug"):
            run_sync(labeler.alabel_items(items, on_result=seen.append))
    assert len(server.received) == 3  # nothing sent after the crash
    assert sorted(p.id for p in seen) == sorted(iid for iid, _ in items[1:4])
    assert all(p.status == "ok" for p in seen)
