"""`labelwise relabel` end to end against the fake OpenAI server: outputs, resume, repair, refusal, dry run,
bad input, and a kill -9 in the middle of a run."""

from __future__ import annotations

import html
import json
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from labelwise import item_id, load_corpus, load_prompt

N_CORPUS_LINES = 11  # + one <script> line = 12 unique texts; + an exact duplicate row and a whitespace variant


@pytest.fixture(scope="module")
def script_text(corpus):
    """Markup in a text, naming a label (so the fake model answers it) other than the line's existing label."""
    items = corpus.items[:N_CORPUS_LINES]
    other = next(lab for it in items for lab in it.labels if lab != items[0].labels[0])
    return f"<script>alert('x')</script> 关于{other}的试点 & 评估"


@pytest.fixture
def dataset(tmp_path, corpus, script_text):
    """A small TSV: 11 corpus lines, a text with markup in it, a duplicate row and a whitespace variant."""
    items = corpus.items[:N_CORPUS_LINES]
    gold = items[0].labels[0]
    lines = [f"{it.labels[0]}\t{it.text}" for it in items]
    lines.append(f"{gold}\t{script_text}")
    lines.append(lines[0])  # exact duplicate row
    lines.append(f"{items[1].labels[0]}\t  {items[1].text}   ")  # the same text with stray whitespace
    path = tmp_path / "input.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loaded = load_corpus(path)
    assert loaded.rows == 14 and len(loaded) == 12
    return path


def read_rows(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))


def relabel(cli, dataset: Path, out: Path, server, *extra: str):
    return cli("relabel", dataset, "--out", out, "--model", "openai:x", "--base-url", server.base_url,
               "--shots", "2", *extra)


def assert_one_line_per_item(run_dir: Path, dataset: Path) -> list[dict]:
    rows = read_rows(run_dir)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a text has more than one line"
    assert set(ids) == {it.id for it in load_corpus(dataset)}
    return rows


# --------------------------------------------------------------------------- a run and its outputs


def test_relabel_writes_every_output(cli, dataset, script_text, tmp_path, fake_server):
    server = fake_server()
    out = tmp_path / "run"
    result = relabel(cli, dataset, out, server)
    assert result.exit_code == 0, str(result)
    assert "12 texts" in result.stdout

    rows = assert_one_line_per_item(out, dataset)
    assert len(rows) == 12
    assert server.stats.completions == 12
    gold = {it.id: list(it.labels) for it in load_corpus(dataset)}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["gold"] == gold[r["id"]]
        assert r["prompt"] == load_prompt("fewshot").ref
        assert r["id"] not in r["examples"]

    labels_csv = pd.read_csv(out / "labels.csv", encoding="utf-8-sig")
    assert len(labels_csv) == 12
    assert set(labels_csv["id"]) == set(gold)
    assert {"text", "existing_labels", "new_labels", "confidence", "status", "agrees"} <= set(labels_csv.columns)

    dis = pd.read_csv(out / "disagreements.csv", encoding="utf-8-sig")
    script_id = item_id(script_text)
    assert script_id in set(dis["id"])  # the model put the label named in the text, not the existing one
    assert not dis["agrees"].astype(bool).any()

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["counts"]["predictions"] == 12 and report["counts"]["ok"] == 12

    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in page
    assert html.escape(script_text) in page

    m = manifest(out)
    assert m["counts"]["selected"] == 12 and m["counts"]["labeled_now"] == 12 and m["counts"]["resumed"] == 0
    assert m["input"]["rows"] == 14 and m["input"]["unique_texts"] == 12
    assert m["model"] == "openai:x" and m["base_url"] == server.base_url
    assert m["prompt"] == load_prompt("fewshot").ref
    assert m["model_calls"] == 12


def test_rerun_is_all_resume_and_sends_nothing(cli, dataset, tmp_path, fake_server):
    server = fake_server()
    out = tmp_path / "run"
    assert relabel(cli, dataset, out, server).exit_code == 0
    first = read_rows(out)
    sent = server.stats.completions
    result = relabel(cli, dataset, out, server)
    assert result.exit_code == 0, str(result)
    assert server.stats.completions == sent
    assert read_rows(out) == first
    m = manifest(out)
    assert m["counts"]["resumed"] == 12 and m["counts"]["labeled_now"] == 0
    assert m["model_calls"] == 0


def test_torn_last_line_is_repaired_on_resume(cli, dataset, tmp_path, fake_server):
    server = fake_server()
    out = tmp_path / "run"
    assert relabel(cli, dataset, out, server).exit_code == 0
    path = out / "predictions.jsonl"
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    torn_id = json.loads(data[last_start:])["id"]
    path.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # half a line, no newline
    sent = server.stats.completions

    result = relabel(cli, dataset, out, server)
    assert result.exit_code == 0, str(result)
    rows = assert_one_line_per_item(out, dataset)
    assert len(rows) == 12
    assert path.read_bytes().endswith(b"\n")
    m = manifest(out)
    assert m["counts"]["torn_bytes_repaired"] > 0
    assert m["counts"]["resumed"] == 11 and m["counts"]["labeled_now"] == 1
    redone = next(r for r in rows if r["id"] == torn_id)
    assert redone["status"] == "ok" and redone["cached"]  # answered from the cache ...
    assert server.stats.completions == sent  # ... so no new request


def test_failed_item_is_retried_by_the_next_run(cli, dataset, tmp_path, fake_server):
    server = fake_server(script=["off_taxonomy"] * 3)  # the first text fails its answer and both re-asks
    out = tmp_path / "run"
    result = relabel(cli, dataset, out, server, "--concurrency", "1")
    assert result.exit_code == 0, str(result)
    assert "failed" in result.stderr
    rows = read_rows(out)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["labels"] == [] and failed[0]["raw"]
    assert manifest(out)["counts"]["failed"] == 1
    sent = server.stats.completions
    assert sent == 12 + 2

    result = relabel(cli, dataset, out, server, "--concurrency", "1")
    assert result.exit_code == 0, str(result)
    assert server.stats.completions == sent + 1  # only the failed text is asked again
    rows = assert_one_line_per_item(out, dataset)
    assert all(r["status"] == "ok" for r in rows)
    m = manifest(out)
    assert m["counts"]["resumed"] == 11 and m["counts"]["labeled_now"] == 1 and m["counts"]["failed"] == 0


def test_resume_with_another_prompt_is_refused_and_force_starts_over(cli, dataset, tmp_path, fake_server):
    server = fake_server()
    out = tmp_path / "run"
    assert relabel(cli, dataset, out, server).exit_code == 0
    before = (out / "predictions.jsonl").read_bytes()
    sent = server.stats.completions

    result = relabel(cli, dataset, out, server, "--prompt", "fewshot_defs")
    assert result.exit_code == 2
    assert "prompt" in result.stderr and "differ" in result.stderr and "--force" in result.stderr
    assert server.stats.completions == sent
    assert (out / "predictions.jsonl").read_bytes() == before

    result = relabel(cli, dataset, out, server, "--prompt", "fewshot_defs", "--force")
    assert result.exit_code == 0, str(result)
    kept = list(out.glob("predictions.jsonl.replaced-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == before
    rows = assert_one_line_per_item(out, dataset)
    assert {r["prompt"] for r in rows} == {load_prompt("fewshot_defs").ref}
    assert server.stats.completions == sent + 12


def test_dry_run_sends_nothing_and_estimates(cli, dataset, tmp_path, fake_server):
    server = fake_server()
    out = tmp_path / "run"
    result = relabel(cli, dataset, out, server, "--dry-run")
    assert result.exit_code == 0, str(result)
    assert "unique texts: 12, to label: 12, requests: 12" in result.stdout
    assert "estimated tokens: prompt" in result.stdout
    assert "cost: unknown" in result.stdout  # openai:x has no price
    assert "句子：" in result.stdout  # one rendered prompt is shown
    assert server.stats.requests == 0 and server.stats.connections == 0
    assert not (out / "predictions.jsonl").exists()

    priced = cli("relabel", dataset, "--out", out, "--model", "openai:gpt-4o-mini", "--base-url", server.base_url,
                 "--shots", "2", "--dry-run")
    assert priced.exit_code == 0, str(priced)
    assert "cost: $" in priced.stdout
    assert server.stats.requests == 0


def test_bad_input_fails_before_any_request(cli, tmp_path, fake_server):
    server = fake_server()
    bad = tmp_path / "input.csv"
    bad.write_text("body,tag\n支持企业研发,企业\n", encoding="utf-8")
    out = tmp_path / "run"
    result = cli("relabel", bad, "--out", out, "--model", "openai:x", "--base-url", server.base_url)
    assert result.exit_code == 2
    assert "columns found" in result.stderr and "'body'" in result.stderr and "'tag'" in result.stderr
    assert str(bad) in result.stderr
    assert server.stats.connections == 0
    assert not (out / "predictions.jsonl").exists()


# --------------------------------------------------------------------------- kill -9


def test_kill_9_then_resume_leaves_one_line_per_text(cli, corpus, tmp_path, fake_server, labelwise_cmd):
    items = corpus.items[100:130]
    data = tmp_path / "input.tsv"
    data.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in items), encoding="utf-8")
    server = fake_server(script=["ok"] * 6 + ["hold"] * 2)  # 6 answers, then 2 that never come: the kill lands there
    out = tmp_path / "run"
    args = ["relabel", str(data), "--out", str(out), "--model", "openai:x", "--base-url", server.base_url,
            "--shots", "2", "--concurrency", "2"]
    pred_path = out / "predictions.jsonl"
    log = tmp_path / "killed.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(labelwise_cmd + args, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if server.held == 2 and pred_path.exists() and pred_path.read_bytes().count(b"\n") >= 6:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{log.read_text(errors='replace')}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert pred_path.read_bytes().count(b"\n") == 6, "the kill lands mid-run: 6 answered, 2 in flight"

    result = cli(*args)
    assert result.exit_code == 0, str(result)
    rows = assert_one_line_per_item(out, data)
    assert len(rows) == 30
    assert all(r["status"] == "ok" for r in rows)
    m = manifest(out)
    assert (m["counts"]["resumed"], m["counts"]["labeled_now"]) == (6, 24)


def test_items_per_request_batches_texts_and_keeps_one_line_per_text(cli, dataset, tmp_path, fake_server):
    server = fake_server()
    out = tmp_path / "run"
    result = relabel(cli, dataset, out, server, "--items-per-request", "4")
    assert result.exit_code == 0, str(result)
    rows = assert_one_line_per_item(out, dataset)
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert server.stats.completions == 3  # 12 texts, 4 per request
    for req in server.received:
        prompt = req["messages"][0]["content"]
        batch = [ln.split("] ", 1)[1] for ln in prompt.splitlines() if ln.startswith("[")]
        shown = [ln.removeprefix("句子：") for ln in prompt.splitlines() if ln.startswith("句子：")]
        assert len(batch) == 4 and len(shown) == 2
        assert not set(batch) & set(shown)  # no text is an example in its own request
