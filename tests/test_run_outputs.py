"""A relabel run's review files from given predictions: `disagreements.csv` lists the model's surest first."""

from __future__ import annotations

import random

import pandas as pd

from labelwise._report import write_run_outputs


def row(n: int, labels: list[str], gold: list[str], confidence: float | None, status: str = "ok") -> dict:
    return {"id": f"id{n:03d}", "text": f"文本{n}", "labels": labels, "gold": gold, "confidence": confidence,
            "status": status, "error": None if status == "ok" else "invalid answer"}


def test_disagreements_are_the_surest_first_ties_in_input_order(tmp_path):
    rng = random.Random(7)
    rows = []
    for n in range(120):
        kind = rng.choice(["agree", "disagree", "disagree", "failed"])
        conf = rng.choice([0.9, 0.5, 0.2, None])  # many ties, and predictions without a confidence
        if kind == "agree":
            rows.append(row(n, ["企业"], ["企业", "园区"], conf))
        elif kind == "disagree":
            rows.append(row(n, ["金融支持", "企业"], ["企业"], conf))  # top-1 not among the existing labels
        else:
            rows.append(row(n, [], ["企业"], None, status="failed"))
    summary = write_run_outputs(tmp_path, rows)

    dis = pd.read_csv(tmp_path / "disagreements.csv", encoding="utf-8-sig", keep_default_na=False)
    disagreeing = [r for r in rows if r["status"] == "ok" and r["labels"][0] not in r["gold"]]
    rank = {0.9: 0, 0.5: 1, 0.2: 2, None: 3}  # surest first, no confidence last; ties keep the input order
    expected = sorted(disagreeing, key=lambda r: rank[r["confidence"]])
    assert list(dis["id"]) == [r["id"] for r in expected]
    assert summary["counts"]["disagreements"] == len(expected) > 30
    assert all(ids.startswith("id") for ids in dis["id"])

    labels_csv = pd.read_csv(tmp_path / "labels.csv", encoding="utf-8-sig")
    assert list(labels_csv["id"]) == [r["id"] for r in rows]  # every row, in input order
