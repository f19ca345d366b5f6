"""One rule for which labels a figure covers, so `agree` on a run's predictions reproduces the run's own report."""

from __future__ import annotations

import json

from labelwise._metrics import score, scored_labels


def test_rule_is_the_labels_any_side_uses():
    gold = [["a"], ["b", "c"]]
    pred = [["a"], []]
    other = [["d"], None]
    assert scored_labels(gold, pred) == ["a", "b", "c"]
    assert scored_labels(gold, pred, other) == ["a", "b", "c", "d"]


def test_unused_taxonomy_label_would_change_macro_f1():
    """Why the rule matters: a label nobody used adds an F1 of 0 to the macro mean."""
    gold, pred = [["a"], ["b"]], [["a"], ["a"]]
    assert score(gold, pred, scored_labels(gold, pred), n_boot=0).macro_f1 != score(gold, pred, ["a", "b", "z"],
                                                                                    n_boot=0).macro_f1


def test_agree_on_a_run_matches_its_report(cli, tmp_path, corpus, fake_server):
    """A 12-text run uses few of the 27 taxonomy labels; its report and `agree` must still give the same figures."""
    items = corpus.items[:12]
    data = tmp_path / "in.tsv"
    data.write_text("".join(f"{lab}\t{it.text}\n" for it in items for lab in it.labels), encoding="utf-8")
    server = fake_server()
    out = tmp_path / "run"
    result = cli("relabel", data, "--out", out, "--model", "openai:x", "--base-url", server.base_url, "--shots", "2",
                 "--examples", corpus.path)
    assert result.exit_code == 0, str(result)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))["metrics"]
    agreed = cli("agree", data, out / "predictions.jsonl", "--json")
    assert agreed.exit_code == 0, str(agreed)
    figures = json.loads(agreed.stdout)
    used = {lab for it in items for lab in it.labels}
    assert len(used) < 27  # the case where the old rules differed
    for key in ("macro_f1", "micro_f1", "weighted_f1", "cohen_kappa", "top1_accuracy", "krippendorff_alpha"):
        assert figures[key] == report[key], key
    assert set(figures["per_label"]) == set(report["per_label"])
