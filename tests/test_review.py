"""`labelwise review`: a relabel run's likeliest label errors out to Label Studio and the corrections back in.

The run is a real relabel run (the fake OpenAI server answers); `label_issues.csv` is written here per the triage
contract. Tests marked `labelstudio` start a real `label-studio start` on loopback with a preset user and token;
they skip (with the reason) where Label Studio or its SDK is not installed. `.ci/run` installs both.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from labelwise import item_id, label_config, load_corpus

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
MARKUP = "<b>加粗</b> & <i>斜体</i>  =SUM(A1)"  # markup, an ampersand, a formula-looking tail
LS_USER, LS_PASSWORD, LS_TOKEN = "reviewer@example.com", "review-pass-123", "labelwise-test-token-0123456789"
LS_START_TIMEOUT_S = 600.0


# --------------------------------------------------------------------------- a finished run with label_issues.csv


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, corpus) -> Path:
    """A TSV: 8 corpus texts, one of them with a second label (two lines), and a text with markup in it."""
    items = corpus.items[:8]
    other = next(lab for it in items for lab in it.labels if lab != items[0].labels[0])
    lines = [f"{it.labels[0]}\t{it.text}" for it in items]
    lines.append(f"{other}\t{items[0].text}")  # items[0] is multi-label
    lines.append(f"{items[1].labels[0]}\t{MARKUP}")
    path = tmp_path_factory.mktemp("review-data") / "corpus.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert len(load_corpus(path)) == 9
    return path


def write_label_issues(run: Path) -> list[dict]:
    """label_issues.csv per the triage contract: BOM, every item, likeliest error first, formula-escaped cells."""
    rows = [json.loads(ln) for ln in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    labels = sorted({lab for r in rows for lab in r["gold"]})
    out = []
    for n, r in enumerate(sorted(rows, key=lambda r: r["id"])):
        # suggest the model's labels, or another taxonomy label where the model agreed with the existing one
        suggested = r["labels"] if set(r["labels"]) != set(r["gold"]) else [next(x for x in labels if x not in r["gold"])]
        out.append({"id": r["id"], "text": r["text"], "existing_labels": "|".join(r["gold"]),
                    "suggested_labels": "|".join(suggested), "issue_score": round(0.9 - 0.1 * n, 2)})
    out[3]["issue_score"] = out[2]["issue_score"]  # a tie: the file's order decides
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(out[0]) + ["rank"], lineterminator="\n")
    w.writeheader()
    for rank, r in enumerate(out, 1):
        text = "'" + r["text"] if r["text"].startswith(("=", "+", "-", "@")) else r["text"]
        w.writerow({**r, "text": text.replace("=SUM", "'=SUM"), "rank": rank})  # cells are not the source of texts
    (run / "label_issues.csv").write_bytes(buf.getvalue().encode("utf-8-sig"))
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dataset) -> Iterator[tuple[Path, list[dict]]]:
    """A real relabel run on `dataset` against the fake OpenAI server, plus its label_issues.csv."""
    from benchmarks.fake_openai import FakeOpenAIServer, Scenario
    from labelwise import RelabelConfig, relabel
    from labelwise._settings import LabelSettings

    out = tmp_path_factory.mktemp("review-run") / "run"
    server = FakeOpenAIServer(Scenario()).start()
    try:
        relabel(RelabelConfig(input=str(dataset), out=str(out),
                              settings=LabelSettings(model="openai:x", base_url=server.base_url, shots=2)),
                progress=False)
    finally:
        server.close()
    yield out, write_label_issues(out)


def predictions(run: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines())}


# --------------------------------------------------------------------------- export


def test_export_writes_tasks_by_score_with_exact_texts_and_config(cli, run_dir, tmp_path):
    run, issues = run_dir
    preds = predictions(run)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    out = tmp_path / "tasks.json"
    before = {p.name: sha(p) for p in run.iterdir()}
    result = cli("review", "export", run, "--to", "label-studio", "--out", out)
    assert result.exit_code == 0, str(result)
    assert {p.name: sha(p) for p in run.iterdir()} == before  # reviewing a run never changes it
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert len(tasks) == 9
    assert [t["data"]["item_id"] for t in tasks] == [r["id"] for r in issues]  # score order, ties in file order
    assert [t["data"]["issue_score"] for t in tasks] == sorted((r["issue_score"] for r in issues), reverse=True)
    for task, issue in zip(tasks, issues):
        iid = task["data"]["item_id"]
        assert task["data"]["text"] == preds[iid]["text"]  # exact, from predictions.jsonl, not the CSV cell
        assert task["data"]["existing_labels"] == "|".join(preds[iid]["gold"])
        (pred,) = task["predictions"]
        assert pred["model_version"] == f"{manifest['model']} {manifest['prompt']}"
        assert pred["score"] == issue["issue_score"]
        (res,) = pred["result"]
        assert res == {"from_name": "labels", "to_name": "text", "type": "choices",
                       "value": {"choices": issue["suggested_labels"].split("|")}}
    assert MARKUP.replace("  ", " ") in [t["data"]["text"] for t in tasks]

    config = ET.fromstring((tmp_path / "tasks.xml").read_text(encoding="utf-8"))
    choices = config.find("Choices")
    assert choices.get("choice") == "multiple" and choices.get("toName") == "text"
    assert [c.get("value") for c in choices.findall("Choice")] == load_corpus(manifest["input"]["path"]).labels


def test_export_top_and_min_score(cli, run_dir, tmp_path):
    run, issues = run_dir
    assert cli("review", "export", run, "--out", tmp_path / "top.json", "--top", "3").exit_code == 0
    top = json.loads((tmp_path / "top.json").read_text(encoding="utf-8"))
    assert [t["data"]["item_id"] for t in top] == [r["id"] for r in issues[:3]]
    assert cli("review", "export", run, "--out", tmp_path / "min.json", "--min-score", "0.55").exit_code == 0
    kept = json.loads((tmp_path / "min.json").read_text(encoding="utf-8"))
    assert [t["data"]["item_id"] for t in kept] == [r["id"] for r in issues if r["issue_score"] >= 0.55]
    assert 0 < len(kept) < len(issues)
    both = cli("review", "export", run, "--out", tmp_path / "x.json", "--top", "3", "--min-score", "0.5")
    assert both.exit_code == 2 and "not both" in both.stderr


def test_export_single_label_config():
    root = ET.fromstring(label_config(("A & B", '"q"'), multi_label=False))
    choices = root.find("Choices")
    assert choices.get("choice") == "single"
    assert [c.get("value") for c in choices.findall("Choice")] == ["A & B", '"q"']


def test_export_refuses_bad_label_issues(cli, run_dir, tmp_path):
    run, _ = run_dir
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    lines = (bad / "label_issues.csv").read_text(encoding="utf-8-sig").splitlines()
    lines[2] = lines[2].replace(lines[2].split(",")[0], "0000000000000000", 1)
    (bad / "label_issues.csv").write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    result = cli("review", "export", bad, "--out", tmp_path / "t.json")
    assert result.exit_code == 2
    assert "label_issues.csv, line 3" in result.stderr and "item 0000000000000000" in result.stderr
    good = (run / "label_issues.csv").read_text(encoding="utf-8-sig").splitlines()
    (bad / "label_issues.csv").write_text("\n".join(good + [good[1]]) + "\n", encoding="utf-8-sig")
    result = cli("review", "export", bad, "--out", tmp_path / "t.json")
    assert result.exit_code == 2 and "line 11, item " in result.stderr and "listed twice (first on line 2)" in result.stderr
    (bad / "label_issues.csv").unlink()
    result = cli("review", "export", bad, "--out", tmp_path / "t.json")
    assert result.exit_code == 2 and "label_issues.csv not found" in result.stderr
    assert not (tmp_path / "t.json").exists()


# --------------------------------------------------------------------------- import (a UI export file) and apply


def ui_export(run: Path, issues: list[dict], choices: dict[str, list[str]]) -> list[dict]:
    """A Label Studio JSON export as the UI writes it: one task per issue; an annotation where `choices` says."""
    preds = predictions(run)
    tasks = []
    for n, r in enumerate(issues, 1):
        anns = []
        if r["id"] in choices:
            anns.append({"id": 100 + n, "completed_by": 1, "was_cancelled": False, "created_at": "2026-01-01T10:00:00Z",
                         "updated_at": "2026-01-01T10:00:00Z",
                         "result": [{"from_name": "labels", "to_name": "text", "type": "choices",
                                     "value": {"choices": choices[r["id"]]}}]})
        tasks.append({"id": n, "data": {"text": preds[r["id"]]["text"], "item_id": r["id"]}, "annotations": anns})
    return tasks


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_and_apply_write_corrected_tsv_and_change_log(cli, run_dir, dataset, tmp_path):
    run, issues = run_dir
    corpus = load_corpus(dataset)
    items = corpus.by_id()
    labels = corpus.labels
    multi = next(it for it in corpus if len(it.labels) == 2)
    single = [it for it in corpus if len(it.labels) == 1]
    a, b, c = single[0], single[1], single[2]
    new_a = [next(x for x in labels if x not in a.labels)]
    new_b = [b.labels[0], next(x for x in labels if x not in b.labels)]  # one label becomes two
    choices = {a.id: new_a, b.id: new_b, c.id: list(c.labels), multi.id: [multi.labels[1]]}
    export = ui_export(run, issues, choices)
    skipped = next(t for t in export if not t["annotations"])
    skipped["annotations"] = [{"id": 1, "completed_by": 1, "was_cancelled": True, "result": []}]  # skipped: unreviewed
    a_task = next(t for t in export if t["data"]["item_id"] == a.id)
    a_task["annotations"].insert(0, {**a_task["annotations"][0], "id": 1, "updated_at": "2025-12-31T00:00:00Z",
                                     "result": [{"from_name": "labels", "to_name": "text", "type": "choices",
                                                 "value": {"choices": list(a.labels)}}]})  # an older annotation
    (tmp_path / "export.json").write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")

    result = cli("review", "import", tmp_path / "export.json", "--out", tmp_path / "corrections.jsonl")
    assert result.exit_code == 0, str(result)
    assert "4 of 9 tasks reviewed" in result.stdout
    before = sha(dataset)
    out = tmp_path / "corrected.tsv"
    result = cli("review", "apply", dataset, tmp_path / "corrections.jsonl", "--out", out)
    assert result.exit_code == 0, str(result)
    assert "4 reviewed items: 3 changed, 1 confirmed" in result.stdout
    assert sha(dataset) == before  # the corpus is never touched

    corrected = load_corpus(out).by_id()
    assert set(corrected) == set(items)
    assert list(corrected[a.id].labels) == new_a
    assert list(corrected[b.id].labels) == new_b
    assert list(corrected[multi.id].labels) == [multi.labels[1]]
    for iid, it in items.items():
        if iid not in choices:
            assert corrected[iid].labels == it.labels
    # unreviewed lines are byte-identical; a two-label item is two lines
    src_lines = dataset.read_text(encoding="utf-8").splitlines()
    out_lines = out.read_text(encoding="utf-8").splitlines()
    changed_ids = {a.id, b.id, multi.id}
    assert [ln for ln in src_lines if item_id(ln.split("\t", 1)[1]) not in changed_ids] == \
           [ln for ln in out_lines if item_id(ln.split("\t", 1)[1]) not in changed_ids]
    assert sum(item_id(ln.split("\t", 1)[1]) == b.id for ln in out_lines) == 2
    assert len(out_lines) == len(src_lines) + 1 - 1  # b gained a line, multi lost one

    log = list(csv.DictReader(io.StringIO((tmp_path / "corrected.changes.csv").read_text(encoding="utf-8-sig"))))
    assert {r["id"] for r in log} == changed_ids
    row_a = next(r for r in log if r["id"] == a.id)
    assert row_a["text"] == a.text and row_a["old_labels"] == "|".join(a.labels)
    assert row_a["new_labels"] == "|".join(new_a)  # the latest annotation, not the older one
    assert row_a["annotator"] == "user 1" and row_a["time"] == "2026-01-01T10:00:00Z"

    agree = cli("agree", dataset, out, "--json")  # `agree` reads the corrected file: how far the corrections moved
    assert agree.exit_code == 0, str(agree)
    m = json.loads(agree.stdout)
    assert m["n"] == 9 and m["counts"]["scored"] == 9
    assert m["exact_match"] == pytest.approx(6 / 9)


def test_apply_refuses_out_of_taxonomy_label_naming_the_task(cli, run_dir, dataset, tmp_path):
    run, issues = run_dir
    export = ui_export(run, issues, {issues[0]["id"]: ["不存在的标签"]})
    (tmp_path / "export.json").write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    assert cli("review", "import", tmp_path / "export.json", "--out", tmp_path / "c.jsonl").exit_code == 0
    result = cli("review", "apply", dataset, tmp_path / "c.jsonl", "--out", tmp_path / "corrected.tsv")
    assert result.exit_code == 2
    assert "c.jsonl, line 1, item " + issues[0]["id"] in result.stderr
    assert "task 1: labels not in the taxonomy: ['不存在的标签']" in result.stderr
    assert not (tmp_path / "corrected.tsv").exists()


def test_apply_never_writes_over_the_corpus(cli, run_dir, dataset, tmp_path):
    run, issues = run_dir
    copy = tmp_path / "corpus.tsv"
    shutil.copy(dataset, copy)
    export = ui_export(run, issues, {})
    (tmp_path / "export.json").write_text(json.dumps(export), encoding="utf-8")
    assert cli("review", "import", tmp_path / "export.json", "--out", tmp_path / "c.jsonl").exit_code == 0
    before = sha(copy)
    result = cli("review", "apply", copy, tmp_path / "c.jsonl", "--out", tmp_path / "." / "corpus.tsv")
    assert result.exit_code == 2 and "never modified in place" in result.stderr
    assert sha(copy) == before


def test_apply_jsonl_corpus_keeps_its_format(cli, tmp_path):
    src = tmp_path / "data.jsonl"
    rows = [{"text": "甲文本", "labels": ["A"], "source": 1}, {"text": "乙文本", "labels": ["B"], "source": 2},
            {"text": "甲文本", "labels": ["A"], "source": 3}]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": item_id("甲文本"), "task": 5, "labels": ["B", "A"],
                                                  "annotator": "r@x", "time": "t"}) + "\n", encoding="utf-8")
    result = cli("review", "apply", src, tmp_path / "c.jsonl", "--out", tmp_path / "fixed.jsonl")
    assert result.exit_code == 0, str(result)
    out = [json.loads(ln) for ln in (tmp_path / "fixed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert out == [{"text": "甲文本", "labels": ["B", "A"], "source": 1}, rows[1]]


def test_apply_csv_corpus_keeps_its_format(cli, tmp_path):
    src = tmp_path / "data.csv"
    src.write_text("id,text,labels\n1,甲文本,A|B\n2,乙文本,B\n3,甲文本,A|B\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": item_id("甲文本"), "task": 5, "labels": ["B"]}) + "\n",
                                      encoding="utf-8")
    result = cli("review", "apply", src, tmp_path / "c.jsonl", "--out", tmp_path / "fixed.csv")
    assert result.exit_code == 0, str(result)
    assert (tmp_path / "fixed.csv").read_text(encoding="utf-8") == "id,text,labels\n1,甲文本,B\n2,乙文本,B\n"


def test_apply_keeps_a_gb18030_corpus_in_gb18030(cli, tmp_path):
    src = tmp_path / "gb.tsv"
    src.write_bytes("甲\t对新认定的国家级科技企业孵化器给予奖励。\n乙\t支持集成电路设计企业流片。\n".encode("gb18030"))
    assert load_corpus(src, encoding="gb18030").encoding == "gb18030"
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": item_id("支持集成电路设计企业流片。"), "labels": ["甲"]}) + "\n",
                                      encoding="utf-8")
    result = cli("review", "apply", src, tmp_path / "c.jsonl", "--out", tmp_path / "fixed.tsv", "--encoding", "gb18030")
    assert result.exit_code == 0, str(result)
    assert (tmp_path / "fixed.tsv").read_bytes() == \
        "甲\t对新认定的国家级科技企业孵化器给予奖励。\n甲\t支持集成电路设计企业流片。\n".encode("gb18030")


def test_push_without_key_fails_clearly(cli, run_dir, monkeypatch):
    run, _ = run_dir
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    result = cli("review", "push", run, "--url", "http://127.0.0.1:9")
    assert result.exit_code == 2 and "set LABEL_STUDIO_API_KEY" in result.stderr


# --------------------------------------------------------------------------- a real Label Studio


def label_studio_bin() -> str | None:
    """`label-studio` from $LABEL_STUDIO_BIN, the repo's server venv (.venv-ls), or PATH."""
    for cand in (os.environ.get("LABEL_STUDIO_BIN"), str(ROOT / ".venv-ls" / "bin" / "label-studio"),
                 shutil.which("label-studio")):
        if cand and Path(cand).exists():
            return cand
    return None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory) -> Iterator[str]:
    """A real Label Studio on loopback: temp data dir, a preset user and API token; its URL. Stopped at the end."""
    exe = label_studio_bin()
    try:
        import label_studio_sdk  # noqa: F401
    except ImportError:
        exe = None
    if exe is None:
        reason = "label-studio (server, .venv-ls) or label-studio-sdk (the review extra) is not installed: make review-env"
        if os.environ.get("LABELWISE_REQUIRE_LABEL_STUDIO"):  # CI installs both: a skip there would hide a broken install
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    data = tmp_path_factory.mktemp("label-studio")
    env = {**os.environ, "LABEL_STUDIO_USERNAME": LS_USER, "LABEL_STUDIO_PASSWORD": LS_PASSWORD,
           "LABEL_STUDIO_USER_TOKEN": LS_TOKEN, "LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false",
           "LABEL_STUDIO_BASE_DATA_DIR": str(data)}
    cmd = [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
           "--enable-legacy-api-token"]
    log = data / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=data, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + LS_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                req = urllib.request.Request(url + "/api/projects", headers={"Authorization": f"Token {LS_TOKEN}"})
                with opener.open(req, timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"label-studio did not answer within {LS_START_TIMEOUT_S}s")
            time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(30)


@pytest.mark.labelstudio
def test_push_annotate_pull_apply_and_push_again(cli, run_dir, dataset, label_studio, tmp_path, monkeypatch):
    from label_studio_sdk import LabelStudio

    run, issues = run_dir
    preds = predictions(run)
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", LS_TOKEN)
    result = cli("review", "push", run, "--url", label_studio, "--project", "policy review", "--chunk-size", "4")
    assert result.exit_code == 0, str(result)
    assert "(created): 9 tasks imported, 0 already there" in result.stdout
    assert LS_TOKEN not in result.stdout + result.stderr

    ls = LabelStudio(base_url=label_studio, api_key=LS_TOKEN)
    (project,) = [p for p in ls.projects.list() if p.title == "policy review"]
    tasks = sorted(ls.tasks.list(project=project.id, fields="all"), key=lambda t: t.id)
    assert [t.data["item_id"] for t in tasks] == [r["id"] for r in issues]  # imported likeliest error first
    for t, issue in zip(tasks, issues):
        assert t.data["text"] == preds[issue["id"]]["text"]
        (pred,) = t.predictions
        assert pred.model_version == f"{manifest['model']} {manifest['prompt']}"
        assert pred.score == pytest.approx(issue["issue_score"])
        assert pred.result[0]["value"]["choices"] == issue["suggested_labels"].split("|")
    assert MARKUP.replace("  ", " ") in [t.data["text"] for t in tasks]

    # a reviewer accepts the suggestion on two tasks, keeps the existing labels on one, skips one
    by_item = {t.data["item_id"]: t for t in tasks}
    accepted = [issues[0]["id"], issues[1]["id"]]
    for iid in accepted:
        ls.annotations.create(id=by_item[iid].id, result=by_item[iid].predictions[0].result, was_cancelled=False)
    kept = issues[2]["id"]
    ls.annotations.create(id=by_item[kept].id, was_cancelled=False, result=[
        {"from_name": "labels", "to_name": "text", "type": "choices", "value": {"choices": preds[kept]["gold"]}}])
    ls.annotations.create(id=by_item[issues[3]["id"]].id, was_cancelled=True, result=[])

    result = cli("review", "pull", "--url", label_studio, "--project", "policy review",
                 "--out", tmp_path / "corrections.jsonl")
    assert result.exit_code == 0, str(result)
    assert "3 of 9 tasks reviewed" in result.stdout
    rows = [json.loads(ln) for ln in (tmp_path / "corrections.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["id"]: r["labels"] for r in rows} == {
        accepted[0]: issues[0]["suggested_labels"].split("|"), accepted[1]: issues[1]["suggested_labels"].split("|"),
        kept: preds[kept]["gold"]}
    assert {r["annotator"] for r in rows} == {LS_USER}

    # the JSON export a user downloads in the UI reads the same through `review import`
    (tmp_path / "export.json").write_text(json.dumps(ls.projects.exports.as_json(project.id)), encoding="utf-8")
    result = cli("review", "import", tmp_path / "export.json", "--out", tmp_path / "imported.jsonl")
    assert result.exit_code == 0, str(result)
    imported = [json.loads(ln) for ln in (tmp_path / "imported.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["id"]: (r["labels"], r["task"], r["time"]) for r in imported} == \
           {r["id"]: (r["labels"], r["task"], r["time"]) for r in rows}

    out = tmp_path / "corrected.tsv"
    result = cli("review", "apply", dataset, tmp_path / "corrections.jsonl", "--out", out)
    assert result.exit_code == 0, str(result)
    assert "3 reviewed items: 2 changed, 1 confirmed" in result.stdout
    corrected = load_corpus(out).by_id()
    for iid in accepted:
        assert list(corrected[iid].labels) == next(r for r in issues if r["id"] == iid)["suggested_labels"].split("|")
    original = load_corpus(dataset).by_id()
    assert all(corrected[i].labels == original[i].labels for i in original if i not in accepted)
    log = list(csv.DictReader(io.StringIO((tmp_path / "corrected.changes.csv").read_text(encoding="utf-8-sig"))))
    assert sorted(r["id"] for r in log) == sorted(accepted)
    assert {r["annotator"] for r in log} == {LS_USER} and all(r["time"] for r in log)

    # push again: nothing is imported twice; a widened selection imports only what is new
    again = cli("review", "push", run, "--url", label_studio, "--project", "policy review", "--top", "5")
    assert again.exit_code == 0, str(again)
    assert "(reused): 0 tasks imported, 5 already there" in again.stdout
    assert len(list(ls.tasks.list(project=project.id))) == 9
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert LS_TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.labelstudio
def test_label_studio_errors_are_clear(cli, run_dir, label_studio, monkeypatch, tmp_path):
    run, _ = run_dir
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-the-token-123")
    result = cli("review", "push", run, "--url", label_studio)
    assert result.exit_code == 2
    assert f"Label Studio at {label_studio} answered 401" in result.stderr
    assert "not-the-token-123" not in result.stderr + result.stdout
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", LS_TOKEN)
    result = cli("review", "pull", "--url", label_studio, "--project", "no such project", "--out", tmp_path / "c.jsonl")
    assert result.exit_code == 2 and "no project titled 'no such project'" in result.stderr
    assert not (tmp_path / "c.jsonl").exists()

    # a project someone made for other labels is not filled with tasks it can't show
    from label_studio_sdk import LabelStudio

    ls = LabelStudio(base_url=label_studio, api_key=LS_TOKEN)
    other = ls.projects.create(title="other labels", label_config=label_config(("甲", "乙"), multi_label=True))
    result = cli("review", "push", run, "--url", label_studio, "--project", "other labels")
    assert result.exit_code == 2 and "project 'other labels' can't take this run's labels" in result.stderr
    assert list(ls.tasks.list(project=other.id)) == []


@pytest.mark.labelstudio
def test_personal_access_token_works(cli, run_dir, label_studio, monkeypatch):
    """New Label Studio accounts hand out personal access tokens (JWT refresh tokens), not legacy tokens."""
    from label_studio_sdk import LabelStudio

    run, issues = run_dir
    pat = LabelStudio(base_url=label_studio, api_key=LS_TOKEN).tokens.create().token
    assert pat and pat.count(".") == 2  # a JWT
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    result = cli("review", "push", run, "--url", label_studio, "--project", "pat review", "--top", "2")
    assert result.exit_code == 0, str(result)
    assert "(created): 2 tasks imported" in result.stdout
    assert pat not in result.stdout + result.stderr
