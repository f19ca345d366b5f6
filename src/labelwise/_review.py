"""Human review in Label Studio: send a run's likeliest label errors as tasks, bring the reviewers' labels back,
and write the corrected dataset beside the original (never over it)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from ._corpus import LABEL_COLUMNS, TEXT_COLUMNS, decode_text, item_id, load_corpus
from ._exceptions import LabelStudioError, ReviewError
from ._io import atomic_write_bytes, atomic_write_json, atomic_write_text, write_jsonl
from ._redact import install_log_redaction, redact, register_secret
from ._taxonomy import Taxonomy, load_taxonomy

__all__ = [
    "ReviewItem", "ReviewRun", "load_review_run", "label_config", "make_tasks", "export_tasks", "push_tasks", "pull_corrections",
    "corrections_from_export", "import_corrections", "apply_corrections", "API_KEY_ENV",
]

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
FROM_NAME = "labels"  # the Choices control in our labeling config
TO_NAME = "text"
ISSUE_COLUMNS = ("id", "text", "existing_labels", "suggested_labels", "issue_score")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class ReviewItem:
    """One scored item of a run: exact text, existing and suggested labels, how likely its label is wrong."""

    id: str
    text: str
    existing: tuple[str, ...]
    suggested: tuple[str, ...]
    score: float


@dataclass
class ReviewRun:
    """What a finished run offers for review: items likeliest error first, the label set, who labeled."""

    path: Path
    items: list[ReviewItem]
    labels: tuple[str, ...]
    multi_label: bool
    model_version: str


# --------------------------------------------------------------------------- reading a run


def _unescape_cell(value: str) -> str:
    """Undo a spreadsheet formula escape (a leading `'` before = + - @)."""
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA_START) else value


def _cell(value: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading formula character gets a `'` (the contract's escape)."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _split(value: str) -> tuple[str, ...]:
    return tuple(s for s in (_unescape_cell(p.strip()) for p in _unescape_cell(value).split("|")) if s)


def _run_taxonomy(manifest: dict[str, Any], run_dir: Path, taxonomy: str | Path | None) -> Taxonomy:
    """The run's label set: a given taxonomy file, else the one the run used (a taxonomy file or the example corpus)."""
    if taxonomy is not None:
        return load_taxonomy(taxonomy)
    source = manifest.get("taxonomy")
    if not source or not Path(source).exists():
        raise ReviewError(f"the run's taxonomy source {source!r} is not there any more; pass --taxonomy",
                          path=run_dir / "manifest.json")
    suffix = Path(source).suffix.lower()
    if suffix in (".yaml", ".yml", ".json") or (suffix == ".txt" and "\t" not in Path(source).read_text(encoding="utf-8")):
        return load_taxonomy(source)
    return Taxonomy.from_labels(load_corpus(source).labels, source=source)


def _read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """predictions.jsonl by item id, read only (a run is never changed by reviewing it); a torn last line is left out."""
    data = path.read_text(encoding="utf-8")
    lines = data.splitlines()
    if lines and not data.endswith("\n"):
        lines.pop()  # a run killed mid-write; the relabel command repairs it on resume
    preds = {}
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReviewError(f"invalid JSON: {e.msg}", path=path, line=n, column=e.colno) from None
            preds[row.get("id")] = row
    return preds


def load_review_run(run_dir: str | Path, *, taxonomy: str | Path | None = None) -> ReviewRun:
    """Read RUN/manifest.json, predictions.jsonl (exact texts) and label_issues.csv (order, score, suggestion)."""
    run_dir = Path(run_dir)
    paths = {name: run_dir / name for name in ("manifest.json", "predictions.jsonl", "label_issues.csv")}
    for name, p in paths.items():
        if not p.exists():
            hint = "; score the run first (triage)" if name == "label_issues.csv" else "; is this a finished relabel run?"
            raise ReviewError(f"{name} not found{hint}", path=run_dir)
    try:
        manifest = json.loads(paths["manifest.json"].read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReviewError(f"invalid JSON: {e.msg}", path=paths["manifest.json"], line=e.lineno, column=e.colno) from None
    preds = _read_predictions(paths["predictions.jsonl"])
    tax = _run_taxonomy(manifest, run_dir, taxonomy)
    issues = paths["label_issues.csv"]
    text = issues.read_bytes().decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in ISSUE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ReviewError(f"missing columns {missing}; columns found: {reader.fieldnames}", path=issues)
    items: list[ReviewItem] = []
    seen: dict[str, int] = {}
    for n, rec in enumerate(reader, 2):
        iid = rec["id"].strip()
        if iid in seen:
            raise ReviewError(f"item listed twice (first on line {seen[iid]})", path=issues, line=n, item_id=iid)
        seen[iid] = n
        pred = preds.get(iid)
        if pred is None:
            raise ReviewError("item not in predictions.jsonl", path=issues, line=n, item_id=iid)
        try:
            score = float(rec["issue_score"])
        except ValueError:
            raise ReviewError(f"issue_score {rec['issue_score']!r} is not a number", path=issues, line=n,
                              column="issue_score", item_id=iid) from None
        if not 0.0 <= score <= 1.0:
            raise ReviewError(f"issue_score {score} is outside [0, 1]", path=issues, line=n, column="issue_score", item_id=iid)
        suggested = _split(rec["suggested_labels"])
        existing = tuple(pred.get("gold") or ()) or _split(rec["existing_labels"])
        unknown = sorted(set(suggested) - set(tax.labels))
        if unknown:
            raise ReviewError(f"suggested labels not in the taxonomy: {unknown}", path=issues, line=n,
                              column="suggested_labels", item_id=iid)
        items.append(ReviewItem(iid, pred["text"], existing, suggested, score))
    items.sort(key=lambda it: -it.score)  # stable: the file's order breaks ties
    return ReviewRun(run_dir, items, tax.labels, bool(manifest.get("multi_label", True)),
                     f"{manifest.get('model', '?')} {manifest.get('prompt', '?')}")


def select(items: list[ReviewItem], *, top: int | None = None, min_score: float | None = None) -> list[ReviewItem]:
    """The first `top` items, or those scoring at least `min_score` (not both)."""
    if top is not None and min_score is not None:
        raise ValueError("give --top or --min-score, not both")
    if min_score is not None:
        return [it for it in items if it.score >= min_score]
    return items[:top] if top is not None else list(items)


# --------------------------------------------------------------------------- Label Studio import file


def label_config(labels: tuple[str, ...] | list[str], multi_label: bool) -> str:
    """Labeling config XML: the text, the existing labels above it, one Choice per taxonomy label."""
    choices = "\n".join(f"    <Choice value={quoteattr(lab)}/>" for lab in labels)
    return (
        "<View>\n"
        '  <Header value="Existing labels: $existing_labels (issue score $issue_score)"/>\n'
        f'  <Text name="{TO_NAME}" value="$text"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="{"multiple" if multi_label else "single"}" '
        'showInline="false" required="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def _task(item: ReviewItem, model_version: str) -> dict[str, Any]:
    task: dict[str, Any] = {"data": {
        "text": item.text, "existing_labels": "|".join(item.existing), "item_id": item.id,
        "issue_score": item.score, "suggested_labels": "|".join(item.suggested),
    }}
    if item.suggested:
        task["predictions"] = [{
            "model_version": model_version, "score": item.score,
            "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                        "value": {"choices": list(item.suggested)}}],
        }]
    return task


def make_tasks(run: ReviewRun, items: list[ReviewItem] | None = None) -> list[dict[str, Any]]:
    """Label Studio tasks, likeliest error first; texts exactly as labeled."""
    return [_task(it, run.model_version) for it in (run.items if items is None else items)]


def export_tasks(run_dir: str | Path, out: str | Path, *, top: int | None = None, min_score: float | None = None,
                 taxonomy: str | Path | None = None) -> dict[str, Any]:
    """Write a Label Studio import file and, beside it, the matching labeling config (`<out stem>.xml`)."""
    out = Path(out)
    config_path = out.with_suffix(".xml")
    if config_path == out:
        raise ValueError(f"--out {out}: name the tasks file .json; the labeling config goes beside it as .xml")
    run = load_review_run(run_dir, taxonomy=taxonomy)
    tasks = make_tasks(run, select(run.items, top=top, min_score=min_score))
    atomic_write_json(out, tasks)
    atomic_write_text(config_path, label_config(run.labels, run.multi_label))
    return {"tasks": len(tasks), "out": str(out), "config": str(config_path), "scored": len(run.items)}


# --------------------------------------------------------------------------- talking to Label Studio


@contextlib.contextmanager
def _client(url: str) -> Iterator[Any]:
    """An SDK client with the key from the environment; closed on exit. The key is never logged or written."""
    key = os.environ.get(API_KEY_ENV)
    if not key:
        raise LabelStudioError(f"set {API_KEY_ENV} to your Label Studio access token (Account & Settings)")
    register_secret(key)  # redacted from every message and log line from now on
    install_log_redaction()
    try:
        import httpx
        from label_studio_sdk import LabelStudio
    except ImportError:
        raise LabelStudioError("label-studio-sdk is not installed: pip install 'labelwise[review]'") from None
    http = httpx.Client(timeout=120.0)
    try:
        with _api(url):
            client = LabelStudio(base_url=url.rstrip("/"), api_key=key, httpx_client=http)
        yield client
    finally:
        http.close()


@contextlib.contextmanager
def _api(url: str) -> Iterator[None]:
    """SDK and network failures as LabelStudioError: status and server detail, no headers (no secrets)."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as e:
        body = e.body if isinstance(e.body, dict) else {"detail": str(e.body)[:300]}
        detail = body.get("detail") or body
        errors = body.get("validation_errors")
        raise LabelStudioError(redact(f"Label Studio at {url} answered {e.status_code}: {detail}"
                                      + (f" {errors}" if errors else ""))) from None
    except httpx.HTTPError as e:
        raise LabelStudioError(redact(f"can't reach Label Studio at {url}: {type(e).__name__}: {e}")) from None


def _find_project(client: Any, title: str) -> Any | None:
    matches = [p for p in client.projects.list(title=title) if p.title == title]
    return min(matches, key=lambda p: p.id) if matches else None


def _config_choices(config: str | None) -> set[str]:
    """The Choice values of our Choices control in a project's labeling config (empty if it has none)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(config or "<View/>")
    except ET.ParseError:
        return set()
    return {c.get("value") for ch in root.iter("Choices") if ch.get("name") == FROM_NAME for c in ch.iter("Choice")}


def _pushed_ids(client: Any, project_id: int) -> set[str]:
    ids = set()
    for task in client.tasks.list(project=project_id, page_size=500):
        iid = (task.data or {}).get("item_id")
        if iid:
            ids.add(iid)
    return ids


def push_tasks(run_dir: str | Path, url: str, project: str | None = None, *, top: int | None = None,
         min_score: float | None = None, taxonomy: str | Path | None = None, chunk_size: int = 500) -> dict[str, Any]:
    """Create or reuse a project and import the run's tasks in chunks; items already there are skipped."""
    run = load_review_run(run_dir, taxonomy=taxonomy)
    items = select(run.items, top=top, min_score=min_score)
    title = project or f"labelwise {Path(run_dir).resolve().name}"
    with _client(url) as client, _api(url):
        proj = _find_project(client, title)
        created = proj is None
        if created:
            proj = client.projects.create(title=title, label_config=label_config(run.labels, run.multi_label),
                                          description=f"labelwise review: {run.model_version}")
        else:
            lacking = [lab for lab in run.labels if lab not in _config_choices(client.projects.get(id=proj.id).label_config)]
            if lacking:
                raise LabelStudioError(f"project {title!r} can't take this run's labels: its labeling config has no "
                                       f"<Choices name=\"{FROM_NAME}\"> choice for {lacking}; push to another --project")
        done = _pushed_ids(client, proj.id)
        todo = [it for it in items if it.id not in done]
        imported = 0
        for start in range(0, len(todo), chunk_size):
            chunk = make_tasks(run, todo[start:start + chunk_size])
            resp = client.projects.import_tasks(id=proj.id, request=chunk, return_task_ids=True)
            imported += resp.task_count or 0
    return {"project": title, "project_id": proj.id, "created": created, "selected": len(items),
            "imported": imported, "already_there": len(items) - len(todo), "url": f"{url.rstrip('/')}/projects/{proj.id}"}


def pull_corrections(url: str, project: str, out: str | Path) -> dict[str, Any]:
    """Read a project's tasks with their annotations and write the submitted labels as corrections.jsonl.

    Tasks are listed through the API in the shape of the UI's JSON export, so `pull` and `import` read the same way
    (and no export snapshot is left on the server)."""
    with _client(url) as client, _api(url):
        proj = _find_project(client, project)
        if proj is None:
            raise LabelStudioError(f"no project titled {project!r} at {url}")
        tasks = [{"id": t.id, "data": t.data, "annotations": t.annotations or []}
                 for t in client.tasks.list(project=proj.id, fields="all", page_size=500)]
        users = {u.id: u.email or u.username or str(u.id) for u in client.users.list()}
    rows = corrections_from_export(tasks, source=f"{url} project {project!r}", users=users)
    write_jsonl(out, rows)
    return {"tasks": len(tasks), "annotated": len(rows), "out": str(out)}


# --------------------------------------------------------------------------- corrections


def _annotator(value: Any, users: dict[int, str]) -> str:
    if isinstance(value, dict):
        return str(value.get("email") or value.get("username") or value.get("id"))
    return users.get(value, f"user {value}") if value is not None else ""


def corrections_from_export(tasks: Any, *, source: str, users: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """One correction per reviewed task: the latest submitted (not skipped) annotation's labels."""
    if not isinstance(tasks, list):
        raise ReviewError("expected a Label Studio JSON export (a list of tasks)", path=source)
    rows = []
    for n, task in enumerate(tasks):
        tid = task.get("id", f"#{n + 1}") if isinstance(task, dict) else f"#{n + 1}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise ReviewError(f"task {tid}: not a Label Studio task (no data)", path=source)
        iid = task["data"].get("item_id")
        anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not anns:
            continue
        if not iid:
            raise ReviewError(f"task {tid} has no item_id in its data; only tasks pushed by labelwise can be applied", path=source)
        ann = max(anns, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))
        labels: list[str] = []
        for res in ann.get("result") or []:
            if res.get("from_name") == FROM_NAME and res.get("type") == "choices":
                labels += [c for c in res.get("value", {}).get("choices", []) if c not in labels]
        rows.append({"id": iid, "task": task.get("id"), "annotation": ann.get("id"), "labels": labels,
                     "annotator": _annotator(ann.get("completed_by"), users or {}),
                     "time": ann.get("updated_at") or ann.get("created_at"), "text": task["data"].get("text")})
    return rows


def import_corrections(export_path: str | Path, out: str | Path) -> dict[str, Any]:
    """corrections.jsonl from a JSON export file downloaded from the Label Studio UI."""
    export_path = Path(export_path)
    try:
        tasks = json.loads(export_path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ReviewError(f"invalid JSON: {e.msg}", path=export_path, line=e.lineno, column=e.colno) from None
    except FileNotFoundError:
        raise ReviewError("file not found", path=export_path) from None
    rows = corrections_from_export(tasks, source=str(export_path))
    write_jsonl(out, rows)
    return {"tasks": len(tasks), "annotated": len(rows), "out": str(out)}


def _read_corrections(path: Path, tax: Taxonomy, known: set[str]) -> dict[str, dict[str, Any]]:
    """Corrections keyed by item id (the latest per item); every label checked against the taxonomy."""
    if not path.exists():
        raise ReviewError("file not found", path=path)
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReviewError(f"invalid JSON: {e.msg}", path=path, line=n, column=e.colno) from None
        task = f"task {r.get('task') if isinstance(r, dict) and r.get('task') is not None else '?'}"
        if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not isinstance(r.get("labels"), list):
            raise ReviewError(f"{task}: expected an object with id and labels", path=path, line=n)
        if not r["labels"]:
            raise ReviewError(f"{task}: the annotation chose no label", path=path, line=n, item_id=r["id"])
        unknown = [lab for lab in r["labels"] if lab not in tax]
        if unknown:
            raise ReviewError(f"{task}: labels not in the taxonomy: {unknown}; fix them in Label Studio and pull again",
                              path=path, line=n, item_id=r["id"])
        if r["id"] not in known:
            raise ReviewError(f"{task}: item is not in the corpus (another dataset's review?)", path=path, line=n,
                              item_id=r["id"])
        rows.append((n, r))
    rows.sort(key=lambda nr: (str(nr[1].get("time") or ""), nr[0]))
    return {r["id"]: r for _, r in rows}


def _apply_tsv(text: str, fixes: dict[str, list[str]]) -> str:
    """label<TAB>text lines: a corrected item's lines become one line per new label; every other line stays as is."""
    out, done = [], set()
    for raw in text.splitlines(keepends=True):
        line = raw.rstrip("\r\n")
        if "\t" in line and line.strip():
            body = line.split("\t", 1)[1]
            iid = item_id(body)
            if iid in fixes:
                if iid not in done:
                    end = raw[len(line):] or "\n"
                    out += [f"{lab}\t{body}{end}" for lab in fixes[iid]]
                    done.add(iid)
                continue
        out.append(raw)
    return "".join(out)


def _apply_jsonl(text: str, fixes: dict[str, list[str]], text_col: str | None, label_col: str | None) -> str:
    out, done = [], set()
    for raw in text.splitlines(keepends=True):
        line = raw.rstrip("\r\n")
        if not line.strip():
            out.append(raw)
            continue
        obj = json.loads(line)  # load_corpus already validated every line
        tkey = text_col or next(c for c in TEXT_COLUMNS if c in obj)
        iid = item_id(obj[tkey])
        if iid in fixes:
            if iid in done:
                continue
            lkey = label_col or next((c for c in LABEL_COLUMNS if c in obj), LABEL_COLUMNS[0])
            obj[lkey] = fixes[iid] if isinstance(obj.get(lkey), list) or obj.get(lkey) is None else "|".join(fixes[iid])
            done.add(iid)
            raw = json.dumps(obj, ensure_ascii=False) + (raw[len(line):] or "\n")
        out.append(raw)
    return "".join(out)


def _apply_table(path: Path, fmt: str, fixes: dict[str, list[str]], text_col: str | None, label_col: str | None,
                 encoding: str, given: str | None) -> bytes:
    import pandas as pd

    if fmt == "parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(io.StringIO(decode_text(path.read_bytes(), path, given)[0]), sep="\t" if fmt == "tsv" else ",",
                         dtype=str, keep_default_na=False)
    tcol = text_col or next(c for c in TEXT_COLUMNS if c in df.columns)
    lcol = label_col or next((c for c in LABEL_COLUMNS if c in df.columns), None)
    if lcol is None:
        raise ReviewError("the corpus has no label column to correct; name it with --label-col", path=path)
    keep, done = [], set()
    values = df[lcol].tolist()
    for n, text in enumerate(df[tcol].tolist()):
        iid = item_id(text)
        if iid in fixes:
            if iid in done:
                keep.append(False)
                continue
            values[n] = "|".join(fixes[iid]) if isinstance(values[n], str) else list(fixes[iid])
            done.add(iid)
        keep.append(True)
    df[lcol] = values
    df = df[keep]
    if fmt == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    return df.to_csv(index=False, sep="\t" if fmt == "tsv" else ",").encode(encoding)


def apply_corrections(corpus: str | Path, corrections: str | Path, out: str | Path, *, log: str | Path | None = None,
                      taxonomy: str | Path | None = None, text_col: str | None = None,
                      label_col: str | None = None, encoding: str | None = None) -> dict[str, Any]:
    """Write the corpus with reviewed labels applied, in the corpus's own format and encoding, plus a change log CSV."""
    corpus, corrections, out = Path(corpus), Path(corrections), Path(out)
    if out.resolve() == corpus.resolve() or (out.exists() and corpus.exists() and out.samefile(corpus)):
        raise ReviewError("--out is the corpus itself; the corpus is never modified in place: write elsewhere", path=out)
    loaded = load_corpus(corpus, text_col=text_col, label_col=label_col, encoding=encoding, require_labels=True)
    tax = load_taxonomy(taxonomy) if taxonomy else Taxonomy.from_labels(loaded.labels, source=str(corpus))
    by_id = loaded.by_id()
    fixes = _read_corrections(corrections, tax, set(by_id))
    new = {iid: list(dict.fromkeys(r["labels"])) for iid, r in fixes.items()}
    fmt = corpus.suffix.lstrip(".").lower()
    if fmt in ("tsv", "txt") and text_col is None:
        data = _apply_tsv(decode_text(corpus.read_bytes(), corpus, encoding)[0], new).encode(loaded.encoding)
    elif fmt == "jsonl":
        data = _apply_jsonl(decode_text(corpus.read_bytes(), corpus, encoding)[0], new, text_col, label_col).encode(loaded.encoding)
    else:
        data = _apply_table(corpus, fmt, new, text_col, label_col, loaded.encoding, encoding)
    changes = [{"id": iid, "text": _cell(by_id[iid].text), "old_labels": _cell("|".join(by_id[iid].labels)),
                "new_labels": _cell("|".join(labels)), "annotator": _cell(fixes[iid].get("annotator") or ""),
                "time": fixes[iid].get("time") or "", "task": fixes[iid].get("task")}
               for iid, labels in new.items() if set(labels) != set(by_id[iid].labels)]
    log = Path(log) if log else out.with_name(out.stem + ".changes.csv")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["id", "text", "old_labels", "new_labels", "annotator", "time", "task"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(changes)
    atomic_write_bytes(out, data)
    atomic_write_bytes(log, buf.getvalue().encode("utf-8-sig"))  # BOM so spreadsheet apps read the Chinese text right
    return {"reviewed": len(new), "changed": len(changes), "unchanged": len(new) - len(changes),
            "items": len(loaded), "out": str(out), "log": str(log)}
