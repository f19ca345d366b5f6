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
from ._io import atomic_write_bytes, atomic_write_json, atomic_write_text, spreadsheet_value, write_spreadsheet_csv

__all__ = ["Joined", "load_labels", "join", "agree", "write_run_outputs", "agreement_table", "HEADLINE"]

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


def agree(gold_path: str | Path, pred_path: str | Path, vs: str | Path | None = None, *, plot: str | Path | None = None,
          n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Score predictions (and optionally a second set, paired) against gold; the `labelwise agree` result."""
    from ._metrics import compare, confusion, score, scored_labels

    gold = load_labels(gold_path)
    pred = load_labels(pred_path)
    j = join(gold, pred)
    if not j.ids:
        raise CorpusError("no item is both in the gold file and (not failed) in the predictions", path=pred_path)
    labels = scored_labels(j.gold, j.pred)
    result: dict[str, Any] = {"counts": j.counts(), **score(j.gold, j.pred, labels, n_boot=n_boot, seed=seed).model_dump()}
    if vs is not None:
        other = load_labels(vs)
        both = [i for i, iid in enumerate(j.ids) if iid in other and other[iid]["status"] == "ok"]
        if not both:
            raise CorpusError("no scored item of the first predictions is (not failed) in the second", path=vs)
        g = [j.gold[i] for i in both]
        labels2 = scored_labels(j.gold, j.pred, [other[j.ids[i]]["labels"] for i in both])
        cmp = compare(g, [j.pred[i] for i in both], [other[j.ids[i]]["labels"] for i in both], labels2, n_boot=n_boot, seed=seed)
        result["vs"] = {"path": str(vs), "items_compared": len(both), **cmp.model_dump()}
    if plot is not None:
        from ._plots import plot_confusion

        plot_confusion(confusion(j.gold, j.pred, labels), plot)
        result["plot"] = str(plot)
    return result


def agreement_table(result: dict[str, Any]) -> str:
    """A readable plain-text table of the headline figures with their 95% CIs."""
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


def write_run_outputs(run_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """labels.csv, disagreements.csv, report.json and report.html for a finished run."""
    import pandas as pd

    from ._metrics import confusion, score, scored_labels

    table = pd.DataFrame([{
        "id": r["id"], "text": r["text"],
        "existing_labels": "|".join(r["gold"]) if r.get("gold") is not None else "",
        "new_labels": "|".join(r["labels"]), "confidence": r.get("confidence"), "status": r["status"],
        "agrees": (bool(r["labels"]) and r["labels"][0] in r["gold"]) if r.get("gold") is not None and r["status"] == "ok" else None,
        "exact": set(r["labels"]) == set(r["gold"]) if r.get("gold") is not None and r["status"] == "ok" else None,
        "error": r.get("error") or "",
    } for r in rows], columns=["id", "text", "existing_labels", "new_labels", "confidence", "status", "agrees", "exact", "error"])
    write_spreadsheet_csv(run_dir / "labels.csv", table)
    # surest first; a stable sort keeps ties (equal or no confidence) in input order, so the file is reproducible
    dis = table[table["agrees"] == False].sort_values(  # noqa: E712
        "confidence", ascending=False, na_position="last", kind="stable")
    write_spreadsheet_csv(run_dir / "disagreements.csv", dis)

    scored = [r for r in rows if r["status"] == "ok" and r.get("gold")]
    counts = {"predictions": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
              "failed": sum(r["status"] == "failed" for r in rows), "scored": len(scored),
              "disagreements": int(len(dis))}
    metrics = None
    png = None
    if scored:
        gold = [r["gold"] for r in scored]
        pred = [r["labels"] for r in scored]
        all_labels = scored_labels(gold, pred)
        metrics = score(gold, pred, all_labels).model_dump()
        from ._plots import plot_confusion

        with tempfile.TemporaryDirectory() as tmp:
            plot_confusion(confusion(gold, pred, all_labels), Path(tmp) / "confusion.png")
            png = (Path(tmp) / "confusion.png").read_bytes()
        atomic_write_bytes(run_dir / "confusion.png", png)
    atomic_write_json(run_dir / "report.json", {"counts": counts, "metrics": metrics})
    atomic_write_text(run_dir / "report.html", _html(counts, metrics, png, dis.head(100)))
    return {"counts": counts, "metrics": metrics}


def _html(counts: dict[str, int], metrics: dict[str, Any] | None, png: bytes | None, dis) -> str:
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
    parts.append("<h2>Top disagreements (model surest first)</h2><table><tr><th>id</th><th>text</th><th>existing</th>"
                 "<th>model</th><th>confidence</th></tr>")
    for _, r in dis.iterrows():
        conf = "" if r["confidence"] is None or r["confidence"] != r["confidence"] else f"{r['confidence']:.3f}"
        parts.append(f"<tr><td>{e(str(r['id']))}</td><td>{e(str(r['text']))}</td><td>{e(str(r['existing_labels']))}</td>"
                     f"<td>{e(str(r['new_labels']))}</td><td class=num>{conf}</td></tr>")
    parts.append("</table></html>")
    return "\n".join(parts)
