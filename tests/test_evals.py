"""The eval suite on a small spec with the real embedded model: split, leakage, leaderboard, cache, gates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labelwise import SpecError
from labelwise._evals import BASELINE, check_gates, load_spec, run_eval

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def small_spec(tmp_path: Path) -> Path:
    lines = (ROOT / "data" / "policy_labels.tsv").read_text(encoding="utf-8").splitlines()[:150]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "small.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "evals").mkdir()
    spec = tmp_path / "evals" / "small.yaml"
    spec.write_text(
        "name: small\n"
        "dataset: data/small.tsv\n"
        f"taxonomy: {ROOT / 'prompts' / 'policy_taxonomy.yaml'}\n"
        "split: {file: evals/small.split.json, size: 3, seed: 1}\n"
        "concurrency: 1\n"
        "n_boot: 200\n"
        "variants:\n"
        f"  - {{prompt: {ROOT / 'prompts' / 'fewshot.yaml'}, strategy: similar, shots: 2, model: local, name: fs2}}\n"
        "baseline: true\n",
        encoding="utf-8",
    )
    return spec


@pytest.mark.slow
def test_eval_small_spec_end_to_end(small_spec: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    out = tmp_path / "out"
    result = run_eval(small_spec, out=out, cache_dir=cache, progress=False)

    split = json.loads((tmp_path / "evals" / "small.split.json").read_text(encoding="utf-8"))
    assert len(split["ids"]) == 3
    assert result.split.held_out == 3
    assert result.split.pool + 3 <= 150
    names = [r.variant for r in result.rows]
    assert set(names) == {"fs2", BASELINE}

    preds = [json.loads(line) for line in (out / "fs2" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["id"] for p in preds] == split["ids"]
    for p in preds:
        assert not set(p["examples"]) & set(split["ids"]), "a held-out text was shown as an example"
        assert p["status"] == "failed" or p["labels"]
    for name in ("leaderboard.md", "leaderboard.html", "results.json", "agreement_vs_cost.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "fs2" in md and BASELINE in md and "Paired comparison" in md
    assert "| alpha | ECE |" in md
    fs2 = next(r for r in result.rows if r.variant == "fs2")
    assert fs2.calibration["items"] == sum(p["status"] == "ok" for p in preds)  # the embedded model gives label_probs
    assert 0.0 <= fs2.calibration["ece"] <= 1.0 and 0.0 <= fs2.calibration["ece_raw"] <= 1.0
    assert "calibration" not in next(r for r in result.to_json()["rows"] if r["variant"] == BASELINE)

    again = run_eval(small_spec, out=out, cache_dir=cache, progress=False)
    row = next(r for r in again.rows if r.variant == "fs2")
    assert row.cached == 3, "a rerun with nothing changed must come from the cache"
    assert json.loads((tmp_path / "evals" / "small.split.json").read_text(encoding="utf-8"))["ids"] == split["ids"]


@pytest.mark.slow
def test_fail_under_trips_above_the_achieved_value_and_passes_at_or_below_it(cli, small_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    first = cli("eval", small_spec, "--out", out)
    assert first.exit_code == 0, str(first)
    assert "| fs2 |" in first.stdout
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    achieved = next(r for r in results["rows"] if r["variant"] == "fs2")["metrics"]["top1_accuracy"]

    above = cli("eval", small_spec, "--out", out, "--fail-under", f"fs2:top1_accuracy={achieved + 0.001}")
    assert above.exit_code == 1, str(above)
    assert f"FAIL: fs2: top1_accuracy = {achieved} < {achieved + 0.001}" in above.stderr
    at = cli("eval", small_spec, "--out", out, "--fail-under", f"fs2:top1_accuracy={achieved}")
    assert at.exit_code == 0 and "FAIL" not in at.stderr, str(at)
    below = cli("eval", small_spec, "--out", out, "--fail-under", f"top1_accuracy={achieved - 0.001}")
    assert below.exit_code == 0 and "FAIL" not in below.stderr, str(below)


@pytest.mark.slow
def test_only_and_limit_choose_the_variants_and_the_texts(cli, small_spec: Path, tmp_path: Path) -> None:
    spec = small_spec.read_text(encoding="utf-8").replace(
        "baseline: true", f"  - {{prompt: {ROOT / 'prompts' / 'fewshot.yaml'}, strategy: random, shots: 1, model: local, "
                          "name: rnd1}\nbaseline: true")
    small_spec.write_text(spec, encoding="utf-8")
    out = tmp_path / "o"
    result = cli("eval", small_spec, "--out", out, "--only", "rnd1", "--limit", "2")
    assert result.exit_code == 0, str(result)
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
    assert [r["variant"] for r in rows] == ["rnd1"]  # neither fs2 nor the baseline ran
    split = json.loads((tmp_path / "evals" / "small.split.json").read_text(encoding="utf-8"))["ids"]
    preds = [json.loads(ln) for ln in (out / "rnd1" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["id"] for p in preds] == split[:2]  # the first two held-out texts, in split order
    assert all(len(p["examples"]) == 1 for p in preds if p["status"] == "ok")
    assert not (out / "fs2").exists()
    unknown = cli("eval", small_spec, "--out", out, "--only", "nope")
    assert unknown.exit_code == 2 and "nope" in unknown.stderr, str(unknown)


def test_gate_parsing_and_errors() -> None:
    result = {"rows": [{"variant": "a/openai:x", "metrics": {"top1_accuracy": 0.5}},
                       {"variant": BASELINE, "metrics": {"top1_accuracy": 0.9}}]}
    assert check_gates(result, ["top1_accuracy=0.4"]) == []
    assert check_gates(result, ["a/openai:x:top1_accuracy=0.6"]) == ["a/openai:x: top1_accuracy = 0.5 < 0.6"]
    with pytest.raises(SpecError, match="no such variant"):
        check_gates(result, ["nope:top1_accuracy=0.1"])
    with pytest.raises(SpecError, match="unknown metric"):
        check_gates(result, ["top2=0.1"])
    with pytest.raises(SpecError, match="METRIC=VALUE"):
        check_gates(result, ["top1_accuracy=high"])


def test_bad_spec_names_the_file(tmp_path: Path) -> None:
    spec = tmp_path / "evals" / "bad.yaml"
    spec.parent.mkdir()
    spec.write_text("name: bad\ndataset: x.tsv\nsplit: {file: s.json}\nvariants:\n  - {promt: fewshot}\n", encoding="utf-8")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    assert str(spec) in str(err.value) and "promt" in str(err.value)
    spec.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(SpecError, match="line"):
        load_spec(spec)


def test_shipped_policy_spec_is_valid() -> None:
    spec, root = load_spec(ROOT / "evals" / "policy.yaml")
    assert root == ROOT
    assert spec.split.size >= 200
    variants = spec.all_variants()
    assert len(variants) >= 3 and spec.baseline
    assert {v.prompt for v in variants.values()} >= {"zeroshot_defs", "fewshot", "fewshot_defs"}
    split = json.loads((ROOT / spec.split.file).read_text(encoding="utf-8"))
    assert len(split["ids"]) == spec.split.size
