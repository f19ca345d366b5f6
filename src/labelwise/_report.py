"""Agreement reports: join predictions to gold, write the review files, render tables and HTML (escaped)."""

from __future__ import annotations

import base64
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._corpus import item_id, load_corpus
from ._exceptions import CorpusError
from pydantic import BaseModel

from ._io import atomic_write_bytes, atomic_write_json, atomic_write_text, spreadsheet_value, write_spreadsheet_csv_rows
from ._metrics import Agreement, Comparison

__all__ = ["Joined", "AgreeResult", "PairedResult", "RunCounts", "RunReport", "load_labels", "join", "agree",
           "write_run_outputs", "write_run_report",
           "agreement_table", "HEADLINE"]

HEADLINE = ("n", "exact_match", "top1_accuracy", "micro_f1", "macro_f1", "weighted_f1", "samples_jaccard",
            "hamming_loss", "cohen_kappa", "cohen_kappa_multiclass", "krippendorff_alpha")


@dataclass
class Joined:
    """Gold and predictions aligned by item id, and what could not be aligned."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    gold: list[list[str]] = field(default_factory=list)
    pred: list[list[str]] = field(default_factory=list)
    confidence: list[float | None] = field(default_factory=list)
    only_gold: list[str] = field(default_factory=list)
    only_pred: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"scored": len(self.ids), "failed": len(self.failed), "only_in_gold": len(self.only_gold),
                "only_in_predictions": len(self.only_pred)}


def load_labels(path: str | Path) -> dict[str, dict[str, Any]]:
    """Labels per item id from a predictions.jsonl (ordered, with status) or any corpus file the core reads."""
    path = Path(path)
    if path.is_dir():
        raise CorpusError("is a directory, not a labels file", path=path)
    if path.suffix == ".csv" and _csv_columns(path) >= _OWN_LABELS_CSV:
        return _read_own_labels_csv(path)
    if path.suffix == ".jsonl" and path.exists():
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise CorpusError(f"invalid JSON: {e.msg}", path=path, line=n, column=e.colno) from None
        if rows and "status" in rows[0]:
            out = {}
            for n, r in enumerate(rows, 1):
                if "labels" not in r or "text" not in r:
                    raise CorpusError("prediction line without labels/text", path=path, line=n)
                iid = r.get("id") or item_id(r["text"])
                out.setdefault(iid, {"text": r["text"], "labels": list(r["labels"]), "status": r.get("status", "ok"),
                                     "confidence": r.get("confidence")})
            return out
    corpus = load_corpus(path, require_labels=True)  # a file without labels must not be scored as all-empty
    return {it.id: {"text": it.text, "labels": list(it.labels), "status": "ok", "confidence": None} for it in corpus}


_OWN_LABELS_CSV = {"id", "text", "new_labels", "status"}  # the columns that make a CSV labelwise's labels.csv


def _csv_columns(path: Path) -> set[str]:
    """The header fields of a CSV file (empty when it can't be read as one)."""
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return set(next(csv.reader(f), []))
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()


def _read_own_labels_csv(path: Path) -> dict[str, dict[str, Any]]:
    """A run's labels.csv: the model's labels are its `new_labels` column (`|`-joined); failed rows stay failed."""
    import pandas as pd

    from ._corpus import LABEL_SEP

    df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig").map(spreadsheet_value)
    out: dict[str, dict[str, Any]] = {}
    for n, r in enumerate(df.to_dict("records"), 2):
        text = r["text"]
        iid = r["id"] or item_id(text)
        labels = [x for x in r["new_labels"].split(LABEL_SEP) if x]
        if r["status"] == "ok" and not labels:
            raise CorpusError("an ok row without new_labels", path=path, line=n, column="new_labels")
        conf = r.get("confidence")
        out.setdefault(iid, {"text": text, "labels": labels, "status": r["status"] or "ok",
                             "confidence": float(conf) if conf else None})
    return out


def join(gold: dict[str, dict[str, Any]], pred: dict[str, dict[str, Any]]) -> Joined:
    """Align by item id (a content hash, so joining by id is joining by normalized text)."""
    j = Joined()
    for iid, g in gold.items():
        p = pred.get(iid)
        if p is None:
            j.only_gold.append(iid)
        elif p["status"] != "ok":
            j.failed.append(iid)
        else:
            j.ids.append(iid)
            j.texts.append(g["text"])
            j.gold.append(g["labels"])
            j.pred.append(p["labels"])
            j.confidence.append(p.get("confidence"))
    j.only_pred = [iid for iid in pred if iid not in gold]
    return j


class PairedResult(Comparison):
    """`agree --vs`: the second predictions' path, how many items both scored, and the paired comparison."""

    path: str
    items_compared: int


class AgreeResult(BaseModel):
    """What `labelwise agree` found: the join's counts, the agreement, and the paired comparison (with --vs)."""

    counts: dict[str, int]
    agreement: Agreement
    vs: PairedResult | None = None
    plot: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The flat object `agree --json` prints: counts, the agreement's fields, then `vs` and `plot` when present."""
        out: dict[str, Any] = {"counts": self.counts, **self.agreement.model_dump()}
        if self.vs is not None:
            vs = self.vs.model_dump()
            out["vs"] = {"path": vs.pop("path"), "items_compared": vs.pop("items_compared"), **vs}
        if self.plot is not None:
            out["plot"] = self.plot
        return out


def agree(gold_path: str | Path, pred_path: str | Path, vs: str | Path | None = None, *, plot: str | Path | None = None,
          n_boot: int = 1000, seed: int = 0) -> AgreeResult:
    """Score predictions (and optionally a second set, paired) against gold; the `labelwise agree` result."""
    from ._metrics import compare, confusion, score, scored_labels

    gold = load_labels(gold_path)
    pred = load_labels(pred_path)
    j = join(gold, pred)
    if not j.ids:
        raise CorpusError("no item is both in the gold file and (not failed) in the predictions", path=pred_path)
    labels = scored_labels(j.gold, j.pred)
    result = AgreeResult(counts=j.counts(), agreement=score(j.gold, j.pred, labels, n_boot=n_boot, seed=seed))
    if vs is not None:
        other = load_labels(vs)
        both = [i for i, iid in enumerate(j.ids) if iid in other and other[iid]["status"] == "ok"]
        if not both:
            raise CorpusError("no scored item of the first predictions is (not failed) in the second", path=vs)
        g = [j.gold[i] for i in both]
        labels2 = scored_labels(j.gold, j.pred, [other[j.ids[i]]["labels"] for i in both])
        cmp = compare(g, [j.pred[i] for i in both], [other[j.ids[i]]["labels"] for i in both], labels2, n_boot=n_boot, seed=seed)
        result.vs = PairedResult(path=str(vs), items_compared=len(both), **cmp.model_dump())
    if plot is not None:
        from ._plots import plot_confusion

        plot_confusion(confusion(j.gold, j.pred, labels), plot)
        result.plot = str(plot)
    return result


def agreement_table(result: Agreement | AgreeResult | dict[str, Any]) -> str:
    """A readable plain-text table of the headline figures with their 95% CIs (and the join's counts, if given)."""
    if isinstance(result, AgreeResult):
        result = result.to_json()
    elif isinstance(result, Agreement):
        result = result.model_dump()
    lines = [f"{'metric':<24}{'value':>9}   95% CI"]
    ci = result.get("ci") or {}
    for key in HEADLINE:
        value = result.get(key)
        if value is None:
            lines.append(f"{key:<24}{'n/a':>9}")
            continue
        band = ci.get(key)
        shown = f"{value:>9}" if key == "n" else f"{value:>9.4f}"
        lines.append(f"{key:<24}{shown}" + (f"   [{band[0]:.4f}, {band[1]:.4f}]" if band else ""))
    counts = result.get("counts")
    if counts:
        lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return "\n".join(lines)


LABEL_ISSUE_COLUMNS = ("id", "text", "existing_labels", "suggested_labels", "issue_score", "existing_label_probs", "source")
LABELS_COLUMNS = ("id", "text", "existing_labels", "new_labels", "confidence", "status", "agrees", "exact", "error")


class RunCounts(BaseModel):
    """How many prediction rows a run has, how many were ok, failed, scored against gold, and disagree."""

    predictions: int
    ok: int
    failed: int
    scored: int
    disagreements: int


class RunReport(BaseModel):
    """What report.json holds: the counts, the agreement with the existing labels, the triage summary."""

    counts: RunCounts
    metrics: Agreement | None = None
    triage: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """report.json's object (no `triage` key for a run without a triage, as before)."""
        out = self.model_dump()
        if self.triage is None:
            out.pop("triage")
        return out


def _issue_cells(r) -> list[Any]:
    """One TriageRow as the cells of label_issues.csv."""
    return [r.id, r.text, "|".join(r.existing_labels), "|".join(r.suggested_labels), round(r.issue_score, 6),
            "|".join(f"{lab}={p:.3f}" for lab, p in r.existing_label_probs.items()), r.source]


def label_issues_table(triage, top: int | None = None):
    """label_issues.csv as a DataFrame: every scored item (or the `top` first), likeliest error first; labels `|`-joined."""
    import pandas as pd

    return pd.DataFrame([_issue_cells(r) for r in triage.rows[:top]], columns=list(LABEL_ISSUE_COLUMNS))


def _label_cells(r: dict[str, Any]) -> list[Any]:
    """One prediction row (with its gold) as the cells of labels.csv."""
    gold, ok = r.get("gold"), r["status"] == "ok"
    return [r["id"], r["text"], "|".join(gold) if gold is not None else "", "|".join(r["labels"]), r.get("confidence"),
            r["status"], (bool(r["labels"]) and r["labels"][0] in gold) if gold is not None and ok else None,
            set(r["labels"]) == set(gold) if gold is not None and ok else None, r.get("error") or ""]


def write_run_outputs(run_dir: Path, rows: list[dict[str, Any]], triage=None) -> dict[str, Any]:
    """`write_run_report` for prediction rows given in memory (in input order); returns report.json's object."""
    from ._io import write_jsonl
    from ._runs import read_predictions

    with tempfile.TemporaryDirectory() as tmp:
        write_jsonl(Path(tmp) / "predictions.jsonl", rows)
        return write_run_report(run_dir, read_predictions(Path(tmp)), triage).to_json()


def write_run_report(run_dir: Path, table, triage=None) -> RunReport:
    """labels.csv, disagreements.csv, label_issues.csv (given a triage), report.json and report.html for a run.

    `table` is the run's predictions read back as arrays (rows in input order); every CSV row is streamed from the
    predictions file as it is written, so the files cost no memory per row.
    """
    import numpy as np

    from ._metrics import confusion_matrix, score_matrix, scored_columns

    if triage is not None:
        write_spreadsheet_csv_rows(run_dir / "label_issues.csv", LABEL_ISSUE_COLUMNS, map(_issue_cells, triage.rows))
    write_spreadsheet_csv_rows(run_dir / "labels.csv", LABELS_COLUMNS, map(_label_cells, table.rows()))
    hit = (table.top >= 0) & table.G[np.arange(len(table)), np.maximum(table.top, 0)]
    dis_rows = np.flatnonzero(table.has_gold & table.ok & ~hit)
    conf = table.confidence[dis_rows]
    # surest first; a stable sort keeps ties (equal or no confidence) in input order, so the file is reproducible
    dis_rows = dis_rows[np.lexsort((np.arange(len(dis_rows)), np.where(np.isnan(conf), np.inf, -conf)))]
    write_spreadsheet_csv_rows(run_dir / "disagreements.csv", LABELS_COLUMNS, map(_label_cells, table.rows(dis_rows)))

    scored = table.ok & table.G.any(1)
    counts = RunCounts(predictions=len(table), ok=int(table.ok.sum()), failed=int((~table.ok).sum()),
                       scored=int(scored.sum()), disagreements=len(dis_rows))
    metrics = None
    png = None
    if scored.any():
        G, P = table.G[scored], table.P[scored]
        cols = scored_columns(G, P)
        remap = np.full(len(table.labels) + 1, -1, dtype=np.int64)
        remap[cols] = np.arange(len(cols))
        top = remap[table.top[scored]]  # -1 stays -1 (the extra last slot)
        labels = [table.labels[j] for j in cols]
        G, P = G[:, cols], P[:, cols]
        metrics = score_matrix(G, P, top, labels)
        from ._plots import plot_confusion

        with tempfile.TemporaryDirectory() as tmp:
            plot_confusion(confusion_matrix(G, top, labels), Path(tmp) / "confusion.png")
            png = (Path(tmp) / "confusion.png").read_bytes()
        atomic_write_bytes(run_dir / "confusion.png", png)
    report = RunReport(counts=counts, metrics=metrics, triage=triage.summary() if triage is not None else None)
    atomic_write_json(run_dir / "report.json", report.to_json())
    top_dis = [dict(zip(LABELS_COLUMNS, _label_cells(r))) for r in table.rows(dis_rows[:100])]
    atomic_write_text(run_dir / "report.html", _html(counts.model_dump(), report.to_json()["metrics"], png, top_dis,
                                                     _triage_html(triage) if triage else ""))
    return report


def _reliability_svg(bins: list[dict[str, Any]]) -> str:
    """A reliability diagram: accuracy per confidence bin (bars) against the diagonal of perfect calibration."""
    w = h = 200
    bars = []
    for b in bins:
        if b["n"]:
            x, bw, bh = b["low"] * w, (b["high"] - b["low"]) * w, b["accuracy"] * h
            bars.append(f"<rect x='{x:.1f}' y='{h - bh:.1f}' width='{bw - 1:.1f}' height='{bh:.1f}' fill='#4a7ebb'/>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' role='img' aria-label='reliability diagram'>"
            f"<rect width='{w}' height='{h}' fill='#fff' stroke='#999'/>{''.join(bars)}"
            f"<line x1='0' y1='{h}' x2='{w}' y2='0' stroke='#c33' stroke-dasharray='4'/></svg>")


def _triage_html(triage, top: int = 50) -> str:
    """The label-issue section: which source ranked, calibration (ECE, reliability diagram), the top rows."""
    e = html.escape
    parts = [f"<h2>Likeliest label errors (ranked by {e(triage.source)}, cleanlab label quality; {len(triage.rows)} items)</h2>"]
    parts += [f"<p>{e(note)}</p>" for note in triage.notes]
    cal = triage.calibration
    if cal:
        parts.append(f"<h3>Calibration of the model's label probabilities ({e(cal['method'])}, cross-fitted over "
                     f"{cal['cross_fitted_folds']} folds, {cal['items']} items)</h3><p>ECE {cal['ece']:.4f} after calibration, "
                     f"{cal['ece_raw']:.4f} before (top label's probability vs whether it is an existing label); a perfectly "
                     f"calibrated model would score about {cal['ece_if_perfectly_calibrated']:.4f} on this many items.</p>")
        parts.append(_reliability_svg(cal["reliability"]))
        parts.append("<table><tr><th>confidence bin</th><th>items</th><th>mean confidence</th><th>accuracy</th></tr>")
        for b in cal["reliability"]:
            if b["n"]:
                parts.append(f"<tr><td>{b['low']:.1f}–{b['high']:.1f}</td><td class=num>{b['n']}</td>"
                             f"<td class=num>{b['confidence']:.3f}</td><td class=num>{b['accuracy']:.3f}</td></tr>")
        parts.append("</table>")
    parts.append("<table><tr><th>issue score</th><th>id</th><th>text</th><th>existing</th><th>suggested</th>"
                 "<th>p(existing)</th><th>source</th></tr>")
    for cells in map(_issue_cells, triage.rows[:top]):
        r = dict(zip(LABEL_ISSUE_COLUMNS, cells))
        parts.append(f"<tr><td class=num>{r['issue_score']:.3f}</td><td>{e(str(r['id']))}</td><td>{e(str(r['text']))}</td>"
                     f"<td>{e(str(r['existing_labels']))}</td><td>{e(str(r['suggested_labels']))}</td>"
                     f"<td>{e(str(r['existing_label_probs']))}</td><td>{e(str(r['source']))}</td></tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _html(counts: dict[str, int], metrics: dict[str, Any] | None, png: bytes | None, dis: list[dict[str, Any]],
          triage_html: str = "") -> str:
    e = html.escape
    parts = ["<!doctype html><html lang='zh'><meta charset='utf-8'><title>labelwise relabel report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:left;vertical-align:top}td.num{text-align:right}</style>",
             "<h1>Relabel report</h1><h2>Counts</h2><table>"]
    parts += [f"<tr><th>{e(k)}</th><td class=num>{v}</td></tr>" for k, v in counts.items()]
    parts.append("</table>")
    if metrics:
        parts.append("<h2>Agreement with the existing labels</h2><table><tr><th>metric</th><th>value</th><th>95% CI</th></tr>")
        for key in HEADLINE:
            v = metrics.get(key)
            band = (metrics.get("ci") or {}).get(key)
            shown = "n/a" if v is None else (str(v) if key == "n" else f"{v:.4f}")
            parts.append(f"<tr><td>{e(key)}</td><td class=num>{shown}</td><td>{f'[{band[0]:.4f}, {band[1]:.4f}]' if band else ''}</td></tr>")
        parts.append("</table><h2>Per label</h2><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th><th>kappa</th></tr>")
        for lab, s in metrics["per_label"].items():
            kappa = "n/a" if s["kappa"] is None else f"{s['kappa']:.3f}"
            parts.append(f"<tr><td>{e(lab)}</td><td class=num>{s['precision']:.3f}</td><td class=num>{s['recall']:.3f}</td>"
                         f"<td class=num>{s['f1']:.3f}</td><td class=num>{s['support']}</td><td class=num>{kappa}</td></tr>")
        parts.append("</table>")
    if png:
        parts.append("<h2>Confusion (existing label × predicted top-1)</h2>"
                     f"<img alt='confusion heatmap' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append(triage_html)
    parts.append("<h2>Top disagreements (model surest first)</h2><table><tr><th>id</th><th>text</th><th>existing</th>"
                 "<th>model</th><th>confidence</th></tr>")
    for r in dis:
        conf = "" if r["confidence"] is None or r["confidence"] != r["confidence"] else f"{r['confidence']:.3f}"
        parts.append(f"<tr><td>{e(str(r['id']))}</td><td>{e(str(r['text']))}</td><td>{e(str(r['existing_labels']))}</td>"
                     f"<td>{e(str(r['new_labels']))}</td><td class=num>{conf}</td></tr>")
    parts.append("</table></html>")
    return "\n".join(parts)
