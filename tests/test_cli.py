"""`labelwise relabel` as the README shows it, on the real embedded model: the `make run` path (a seeded sample),
another file's columns and example pool, skipped bad lines, and resume refusal; and `local:PATH.gguf`.

Runs are kept small (a few texts, few shots); the embedded model is loaded once per process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from labelwise import Labeler, item_id, normalize_text
from labelwise._labeler import DEFAULT_CORPUS
from labelwise._runner import select_items

pytestmark = pytest.mark.slow


def read_rows(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))


def test_make_run_path_relabels_a_seeded_sample_leave_one_out(cli, corpus, local_model, tmp_path):
    """`make run` is `relabel data/policy_labels.tsv --sample 20 --seed 0`; here 2 texts per seed, 2 shots."""
    picked = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        result = cli("relabel", DEFAULT_CORPUS, "--sample", "2", "--seed", str(seed), "--shots", "2", "--out", out)
        assert result.exit_code == 0, str(result)
        assert "2 texts" in result.stdout and f"review: {out}/disagreements.csv" in result.stdout
        rows = read_rows(out)
        picked[seed] = [r["id"] for r in rows]
        assert sorted(picked[seed]) == sorted(it.id for it in select_items(corpus, None, 2, seed))
        texts = {it.id: normalize_text(it.text) for it in corpus.items}
        for r in rows:
            assert r["status"] == "ok", r
            assert r["gold"] == list(next(it.labels for it in corpus.items if it.id == r["id"]))
            assert len(r["examples"]) == 2 and r["id"] not in r["examples"]  # leave-one-out ...
            assert all(texts[e] != texts[r["id"]] for e in r["examples"])  # ... and no identical text
        m = manifest(out)
        assert m["counts"]["selected"] == 2 and m["model"] == "local" and m["examples"]["path"] == "input (leave-one-out)"
        for name in ("labels.csv", "disagreements.csv", "report.html", "report.json"):
            assert (out / name).exists(), name
    assert set(picked[0]) != set(picked[1])  # another seed, another sample


def test_relabel_another_files_columns_with_an_example_pool_skipping_bad_lines(cli, corpus, local_model, tmp_path):
    items = [it for it in corpus.items[500:] if len(it.text) < 60][:2]
    data = tmp_path / "mine.csv"
    with open(data, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "tags"])
        w.writerow([items[0].text, "|".join(items[0].labels)])
        w.writerow(["", "企业"])  # line 3: no text
        w.writerow([items[1].text, "|".join(items[1].labels)])
    out = tmp_path / "run"
    result = cli("relabel", data, "--text-col", "sentence", "--label-col", "tags", "--examples", DEFAULT_CORPUS,
                 "--skip-bad", "--shots", "1", "--out", out)
    assert result.exit_code == 0, str(result)
    assert "skipped 1 malformed input lines (--skip-bad): lines 3; see manifest.json" in result.stderr
    m = manifest(out)
    assert [s["line"] for s in m["input"]["skipped_lines"]] == [3] and m["input"]["skipped_lines"][0]["reason"]
    assert m["examples"]["path"] == str(DEFAULT_CORPUS) and m["examples"]["pool_size"] == len(corpus)
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [it.id for it in items]
    for r, it in zip(rows, items):
        assert r["status"] == "ok", r
        assert r["gold"] == list(it.labels)  # the `|`-delimited label column
        assert len(r["examples"]) == 1 and r["id"] not in r["examples"]  # the pool is the corpus, minus this text

    without = cli("relabel", data, "--text-col", "sentence", "--label-col", "tags", "--shots", "1", "--out", tmp_path / "x")
    assert without.exit_code == 2 and str(data) in without.stderr and "line 3" in without.stderr, str(without)


def test_resume_is_refused_when_the_model_or_the_input_changed(cli, corpus, gguf_path, local_model, tmp_path):
    data = tmp_path / "input.tsv"
    data.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in corpus.items[10:12]), encoding="utf-8")
    out = tmp_path / "run"
    args = ["relabel", data, "--shots", "0", "--out", out]
    assert cli(*args).exit_code == 0
    before = (out / "predictions.jsonl").read_bytes()

    other_model = cli(*args, "--model", f"local:{gguf_path}")
    assert other_model.exit_code == 2, str(other_model)
    assert "settings differ (" in other_model.stderr and "model: " in other_model.stderr, str(other_model)
    assert "input_sha256" not in other_model.stderr and "--force" in other_model.stderr

    data.write_text(data.read_text(encoding="utf-8") + f"{corpus.items[12].labels[0]}\t{corpus.items[12].text}\n",
                    encoding="utf-8")
    other_input = cli(*args)
    assert other_input.exit_code == 2, str(other_input)
    assert "settings differ (input_sha256: " in other_input.stderr, str(other_input)
    assert "model: " not in other_input.stderr
    assert (out / "predictions.jsonl").read_bytes() == before  # nothing was touched

    forced = cli(*args, "--force")
    assert forced.exit_code == 0, str(forced)
    assert [p.read_bytes() for p in out.glob("predictions.jsonl.replaced-*")] == [before]
    assert len(read_rows(out)) == 3


def test_local_gguf_path_is_the_same_model_as_local(gguf_path, corpus, local_model):
    text = corpus.items[20].text
    with Labeler("local", examples=corpus, shots=2) as bundled, Labeler(f"local:{gguf_path}", examples=corpus,
                                                                       shots=2) as by_path:
        a, b = bundled.label(text), by_path.label(text)
    assert b.model == f"local:{Path(gguf_path).name}" and a.model == "local"
    assert b.status == a.status == "ok", (a.error, b.error)
    assert b.labels == a.labels and b.examples == a.examples  # the same weights, greedy decoding
    assert b.confidence == pytest.approx(a.confidence)
    assert item_id(text) == a.id == b.id
