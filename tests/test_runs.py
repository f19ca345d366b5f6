"""Shared run plumbing: `label_into` streams and resumes (torn tail, failed rows), eval variants resume with no model
call, the TF-IDF baseline is one more predictor, and the leaderboard HTML escapes what it shows."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from labelwise._baseline import TfidfBaseline
from labelwise._evals import BASELINE, _slug, run_eval
from labelwise._runs import label_into, lock_run_dir, read_predictions

ROOT = Path(__file__).resolve().parents[1]


def lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def labeler_on(server, corpus):
    from labelwise import Labeler

    return Labeler("openai:x", base_url=server.base_url, examples=corpus, shots=0, cache=False, concurrency=2)


def test_label_into_resumes_cutting_a_torn_tail_and_redoing_a_failed_row(tmp_path, corpus, fake_server):
    server = fake_server()
    items = corpus.items[:6]
    gold = [it.labels for it in items]
    path = tmp_path / "run" / "predictions.jsonl"
    path.parent.mkdir()
    ok = {"id": items[0].id, "text": items[0].text, "labels": [items[0].labels[0]], "status": "ok", "prompt": "p",
          "model": "m", "gold": list(items[0].labels)}
    failed = {**ok, "id": items[1].id, "text": items[1].text, "labels": [], "status": "failed", "error": "invalid answer"}
    torn = json.dumps({**ok, "id": items[2].id, "text": items[2].text}, ensure_ascii=False)[:40]
    path.write_text(json.dumps(ok, ensure_ascii=False) + "\n" + json.dumps(failed, ensure_ascii=False) + "\n" + torn,
                    encoding="utf-8")

    async def run():
        labeler = labeler_on(server, corpus)
        try:
            return await label_into(path.parent, labeler, items, gold)
        finally:
            await labeler.aclose()

    stats = asyncio.run(run())

    assert stats.resumed == 1 and stats.redone_or_deduplicated_lines == 1 and stats.torn_bytes_repaired == len(torn.encode())
    assert stats.labeled_now == 5 and server.stats.completions == 5  # the failed row and the torn one are asked again
    rows = lines(path)
    assert sorted(r["id"] for r in rows) == sorted(it.id for it in items)  # one line per item
    assert rows[0] == ok  # the kept line is kept as it was
    assert all(r["status"] == "ok" for r in rows)
    by_id = {r["id"]: r for r in rows}
    assert all(by_id[it.id]["gold"] == list(it.labels) for it in items)

    table = read_predictions(path, [it.id for it in reversed(items)])
    assert [str(i) for i in table.ids] == [it.id for it in reversed(items)]  # read back in the order asked for
    assert table.ok.all() and int(table.G.sum()) == sum(len(set(it.labels)) for it in items)


def test_baseline_is_a_predictor_and_resumes_without_refitting(tmp_path, corpus):
    pool, test = corpus.without(it.id for it in corpus.items[:20]), corpus.items[:20]
    labels = sorted(corpus.labels)
    base = TfidfBaseline(pool, labels)
    seen = []
    preds = asyncio.run(base.alabel_items([(it.id, it.text) for it in test], on_result=seen.append))
    assert [p.id for p in preds] == [p.id for p in seen] == [it.id for it in test]
    assert [p.labels for p in preds] == base.predict([it.text for it in test])
    assert all(p.labels and set(p.labels) <= set(labels) and p.status == "ok" for p in preds)

    stats = asyncio.run(label_into(tmp_path / "b.jsonl", base, test, [it.labels for it in test]))
    assert stats.labeled_now == 20 and [r["labels"] for r in lines(tmp_path / "b.jsonl")] == [p.labels for p in preds]
    fresh = TfidfBaseline(pool, labels)
    again = asyncio.run(label_into(tmp_path / "b.jsonl", fresh, test, [it.labels for it in test]))
    assert again.resumed == 20 and again.labeled_now == 0
    assert not fresh.fitted  # nothing left to predict, so it never trained


HOSTILE = "<img src=x onerror=alert(1)>|pwn"


@pytest.fixture
def fake_spec(tmp_path, fake_server):
    server = fake_server()
    spec = tmp_path / "evals" / "fake.yaml"
    spec.parent.mkdir()
    spec.write_text(
        "name: fake\n"
        f"dataset: {ROOT / 'data' / 'policy_labels.tsv'}\n"
        "split: {file: evals/fake.split.json, size: 12, seed: 3}\n"
        "concurrency: 2\n"
        "n_boot: 50\n"
        "variants:\n"
        f"  - {{prompt: zeroshot_defs, shots: 0, model: 'openai:x', base_url: '{server.base_url}', name: '{HOSTILE}'}}\n"
        "baseline: true\n",
        encoding="utf-8",
    )
    return spec, server


def test_eval_variant_resumes_with_no_model_call(fake_spec, tmp_path):
    spec, server = fake_spec
    out = tmp_path / "out"
    first = run_eval(spec, out=out, cache_dir=str(tmp_path / "c1"), progress=False)
    calls = server.stats.completions
    assert calls == 12
    pred = out / _slug(HOSTILE) / "predictions.jsonl"
    rows = lines(pred)
    pred.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:-1]), encoding="utf-8")  # cut short

    again = run_eval(spec, out=out, cache_dir=str(tmp_path / "c2"), progress=False)  # an empty cache: only resume helps
    assert server.stats.completions == calls + 1  # only the missing row was asked for
    assert [r["id"] for r in lines(pred)] == [r["id"] for r in rows]  # held-out order again
    third = run_eval(spec, out=out, cache_dir=str(tmp_path / "c3"), progress=False)
    assert server.stats.completions == calls + 1
    row = next(r for r in third.rows if r.variant == HOSTILE)
    assert row.cached == 12 and row.n == 12
    assert [r.variant for r in first.rows] == [r.variant for r in again.rows] == [r.variant for r in third.rows]
    assert {r.variant for r in third.rows} == {HOSTILE, BASELINE}
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results == json.loads(json.dumps(third.to_json())) and "out" not in results
    assert "calibration" not in next(r for r in results["rows"] if r["variant"] == BASELINE)


def test_leaderboard_html_escapes_a_hostile_variant_name(fake_spec, tmp_path):
    spec, _ = fake_spec
    out = tmp_path / "out"
    run_eval(spec, out=out, cache_dir=str(tmp_path / "c"), progress=False)
    page = (out / "leaderboard.html").read_text(encoding="utf-8")
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;|pwn" in page
    hostile_row = next(r for r in re.findall(r"<tr>.*?</tr>", page) if "onerror" in r and "<td>" in r)
    assert hostile_row.count("<td>") == 12  # the name's `|` stays inside its cell: the page is built from the data
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    md_row = next(ln for ln in md.splitlines() if "onerror" in ln and ln.startswith("|") and "items" not in ln)
    assert "<img src=x onerror=alert(1)>\\|pwn" in md_row
    assert len(re.findall(r"(?<!\\)\|", md_row)) == 13  # 12 cells: the escaped `|` splits nothing


def test_streamed_csv_is_byte_for_byte_the_dataframe_csv(tmp_path):
    import pandas as pd

    from labelwise._io import write_spreadsheet_csv, write_spreadsheet_csv_rows

    header = ["id", "text", "confidence", "agrees", "error"]
    rows = [["a", "=HYPERLINK(\"x\")", 0.9, True, ""], ["b", "多行\n文本, \"引号\"", None, None, "-1 failed"],
            ["c", "@cmd", 1.0, False, "\ttab"], ["d", "+1", 0.30000000000000004, None, ""]]
    write_spreadsheet_csv(tmp_path / "df.csv", pd.DataFrame(rows, columns=header))
    assert write_spreadsheet_csv_rows(tmp_path / "rows.csv", header, iter(rows)) == 4
    assert (tmp_path / "rows.csv").read_bytes() == (tmp_path / "df.csv").read_bytes()


def test_a_second_eval_on_the_same_directory_is_refused_and_sends_nothing(fake_spec, tmp_path):
    """Variants append to their predictions as they go, so two evals in one directory would interleave lines."""
    from labelwise import RunError

    spec, server = fake_spec
    out = tmp_path / "out"
    held = lock_run_dir(out)  # another process's eval, as far as this one can tell
    try:
        with pytest.raises(RunError, match="in use by another labelwise run"):
            run_eval(spec, out=out, cache_dir=str(tmp_path / "c"), progress=False)
    finally:
        held.release()
    assert server.stats.completions == 0 and not list(out.glob("*/predictions.jsonl"))
    run_eval(spec, out=out, cache_dir=str(tmp_path / "c"), progress=False)  # released: it runs
    assert server.stats.completions == 12
