"""`labelwise agree`: joining by item id, counting what can't be joined, failed predictions, --vs, --plot."""

from __future__ import annotations

import json
import random
from pathlib import Path

from typer.testing import CliRunner

from labelwise._corpus import item_id
from labelwise._metrics import score
from labelwise._report import agree
from labelwise.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"{lab}\t{text}\n" for lab, text in rows), encoding="utf-8")


def _gold_rows() -> list[tuple[str, str]]:
    lines = (ROOT / "data" / "policy_labels.tsv").read_text(encoding="utf-8").splitlines()[:400]
    return [tuple(ln.split("\t", 1)) for ln in lines]  # type: ignore[misc]


def test_agree_joins_by_id_and_counts_unjoined_and_failed(tmp_path: Path) -> None:
    gold_rows = _gold_rows()
    gold = tmp_path / "gold.tsv"
    _write_tsv(gold, gold_rows)
    by_text: dict[str, list[str]] = {}
    for lab, text in gold_rows:
        by_text.setdefault(text, []).append(lab)
    texts = list(by_text)
    preds = []
    for n, text in enumerate(texts[:-5]):  # the last 5 texts have no prediction
        labels = list(reversed(by_text[text])) if n % 3 else ["金融支持"]
        status = "failed" if n < 4 else "ok"
        preds.append({"id": item_id(text), "text": text, "labels": [] if status == "failed" else labels, "status": status})
    preds.append({"id": item_id("只在预测里"), "text": "只在预测里", "labels": ["企业"], "status": "ok"})
    pred = tmp_path / "predictions.jsonl"
    pred.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")

    result = agree(gold, pred, n_boot=50)
    assert result.counts == {"scored": len(texts) - 5 - 4, "failed": 4, "only_in_gold": 5, "only_in_predictions": 1}
    ok = [p for p in preds[4:-1]]
    expected = score([by_text[p["text"]] for p in ok], [p["labels"] for p in ok],
                     sorted({lab for p in ok for lab in p["labels"] + by_text[p["text"]]}), n_boot=0)
    assert result.agreement.n == expected.n
    assert abs(result.agreement.top1_accuracy - expected.top1_accuracy) < 1e-12
    assert abs(result.agreement.micro_f1 - expected.micro_f1) < 1e-12


def test_agree_cli_perturbed_copy_vs_and_plot(tmp_path: Path) -> None:
    gold_rows = _gold_rows()
    labels = sorted({lab for lab, _ in gold_rows})
    rng = random.Random(0)
    perturbed = [(rng.choice([x for x in labels if x != lab]) if rng.random() < 0.2 else lab, text) for lab, text in gold_rows]
    worse = [(rng.choice([x for x in labels if x != lab]) if rng.random() < 0.5 else lab, text) for lab, text in gold_rows]
    gold, a, b = tmp_path / "gold.tsv", tmp_path / "a.tsv", tmp_path / "b.tsv"
    _write_tsv(gold, gold_rows)
    _write_tsv(a, perturbed)
    _write_tsv(b, worse)
    runner = CliRunner()
    res = runner.invoke(app, ["agree", str(gold), str(gold), "--json"])
    assert res.exit_code == 0, res.output
    same = json.loads(res.output)
    assert same["exact_match"] == 1.0 and same["micro_f1"] == 1.0 and same["counts"]["only_in_gold"] == 0

    png = tmp_path / "confusion.png"
    res = runner.invoke(app, ["agree", str(gold), str(a), "--vs", str(b), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "top1_accuracy" in res.output and "McNemar" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["agree", str(gold), str(a), "--vs", str(b), "--json"])
    data = json.loads(res.output)
    assert 0.6 < data["micro_f1"] < 0.95
    assert data["vs"]["metrics"]["micro_f1"]["diff"] < 0  # b is the worse copy
    assert data["vs"]["mcnemar"]["p_value"] < 0.05


def test_agree_bad_input_says_where(tmp_path: Path) -> None:
    gold = tmp_path / "gold.tsv"
    gold.write_text("金融支持\t一句话。\n没有制表符的一行\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["agree", str(gold), str(gold)])
    assert res.exit_code == 2
    assert "line 2" in res.output and "no tab" in res.output
