"""Label-error triage: no item is scored by a model that saw its label, cleanlab's own ranking, probabilities in
[0,1], calibration that lowers ECE, the ensemble weight, label_issues.csv, and an out-of-taxonomy existing label."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from labelwise._metrics import expected_calibration_error, top_label_confidence
from labelwise._report import LABEL_ISSUE_COLUMNS
from labelwise._triage import (
    FOLDS,
    MULTI_AGGREGATOR,
    binarize,
    calibrate_cross_fitted,
    corpus_probabilities,
    ensemble_cross_fitted,
    fold_ids,
    triage,
)

LABELS = ["a", "b", "c", "d"]


def synthetic(n: int, mode: str, seed: int = 0, sharpness: float = 3.0):
    """Overconfident model probabilities (true logits x sharpness) and labels drawn from the true distribution."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, len(LABELS))) * 1.5
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if mode == "single":
        y = [rng.choice(len(LABELS), p=p) for p in true]
        gold = [[LABELS[k]] for k in y]
    else:
        presence = 1 / (1 + np.exp(-(logits - 1)))
        gold = [[LABELS[k] for k in range(len(LABELS)) if rng.random() < presence[i, k]] or [LABELS[int(np.argmax(presence[i]))]]
                for i in range(n)]
        true = presence
    sharp = np.exp(logits * sharpness)
    P = sharp / sharp.sum(1, keepdims=True) if mode == "single" else 1 / (1 + np.exp(-(logits - 1) * sharpness))
    return P, gold, [f"item{i:03d}" for i in range(n)]


# --------------------------------------------------------------------------- folds and leakage


def test_folds_depend_on_ids_only_and_are_balanced():
    ids = [f"x{i}" for i in range(23)]
    f = fold_ids(ids)
    assert sorted(np.bincount(f, minlength=FOLDS).tolist()) == [4, 4, 5, 5, 5]
    back = dict(zip(ids, f))
    shuffled = ids[::-1]
    assert [back[i] for i in shuffled] == fold_ids(shuffled).tolist()  # input order does not move an item


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_calibrator_never_sees_the_item_it_calibrates(mode):
    P, gold, ids = synthetic(80, mode)
    folds = fold_ids(ids)
    Y = binarize(gold, LABELS)
    Q, _ = calibrate_cross_fitted(P, Y, folds, mode)
    i = 7
    other_label = [lab for lab in LABELS if lab not in gold[i]][0]
    Y_own = binarize([[other_label] if n == i else g for n, g in enumerate(gold)], LABELS)
    Q_own, _ = calibrate_cross_fitted(P, Y_own, folds, mode)
    assert np.array_equal(Q_own[i], Q[i])  # its own label changed: its calibrated probabilities did not
    # The same change on an item of another fold does move item i's probabilities: the check above could fail.
    j = next(n for n in range(len(ids)) if folds[n] != folds[i])
    Y_other = Y.copy()
    Y_other[j] = 1 - Y[j] if mode == "multi" else binarize([[lab for lab in LABELS if lab not in gold[j]][:1]], LABELS)[0]
    Q_other, _ = calibrate_cross_fitted(P, Y_other, folds, mode)
    assert not np.allclose(Q_other[i], Q[i])


def pool_fixture(corpus, n_per_label: int = 40, labels=("金融支持", "人才队伍", "集成电路产业", "税收激励")):
    """Single-labeled corpus items of four labels: (id, text, labels)."""
    out = []
    for lab in labels:
        out += [(it.id, it.text, it.labels) for it in corpus.items if it.labels == (lab,)][:n_per_label]
    return out, list(labels)


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_corpus_classifier_never_sees_the_item_it_scores(corpus, mode):
    pool, labels = pool_fixture(corpus)
    scored = pool[::8]  # the default run: the input IS the pool, so every scored item is also in the training data
    P = corpus_probabilities(scored, pool, labels, mode)
    assert P.shape == (len(scored), len(labels))
    assert ((P >= 0) & (P <= 1)).all()
    if mode == "single":
        assert np.allclose(P.sum(1), 1.0, atol=1e-9)
    k = 3
    sid, text, labs = scored[k]
    wrong = tuple(lab for lab in labels if lab not in labs)[:1]
    # Its own label changed, in the scored set and in the pool copy of it: its probabilities do not move.
    scored2 = [(i, t, wrong if i == sid else ls) for i, t, ls in scored]
    pool2 = [(i, t, wrong if i == sid else ls) for i, t, ls in pool]
    assert np.array_equal(corpus_probabilities(scored2, pool2, labels, mode)[k], P[k])
    # The same kind of change to items in other folds does move them: the check above could fail.
    ids = list(dict.fromkeys([i for i, _, _ in pool] + [i for i, _, _ in scored]))
    fold = dict(zip(ids, fold_ids(ids)))
    others = {i for i, _, _ in pool if fold[i] != fold[sid]}
    pool3 = [(i, t, (labels[(labels.index(ls[0]) + 1) % len(labels)],) if i in others else ls) for i, t, ls in pool]
    assert not np.allclose(corpus_probabilities(scored, pool3, labels, mode)[k], P[k])


# --------------------------------------------------------------------------- calibration, ECE, ensemble


def test_ece_on_a_worked_example():
    ece, bins = expected_calibration_error(np.array([0.95, 0.95, 0.15, 0.15]), np.array([True, False, False, False]))
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.15)
    assert [b["n"] for b in bins] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_cross_fitted_calibration_lowers_ece_of_an_overconfident_model(mode):
    P, gold, ids = synthetic(600, mode, seed=1)
    Y = binarize(gold, LABELS)
    Q, params = calibrate_cross_fitted(P, Y, fold_ids(ids), mode)
    before = expected_calibration_error(*top_label_confidence(P, Y))[0]
    after = expected_calibration_error(*top_label_confidence(Q, Y))[0]
    assert len(params) == FOLDS
    assert ((Q >= 0) & (Q <= 1)).all()
    if mode == "single":
        assert np.allclose(Q.sum(1), 1.0)
        assert all(p["temperature"] > 1.5 for p in params)  # it found the model overconfident
    assert before > 0.1 and after < 0.06, (before, after)


def test_ensemble_weight_follows_the_better_source():
    P, gold, ids = synthetic(200, "single", seed=2, sharpness=1.0)
    Y = binarize(gold, LABELS)
    noise = np.full_like(P, 1 / len(LABELS))
    folds = fold_ids(ids)
    _, w_llm = ensemble_cross_fitted(P, noise, Y, folds, "single")
    _, w_corpus = ensemble_cross_fitted(noise, P, Y, folds, "single")
    assert min(w_llm) >= 0.8 and max(w_corpus) <= 0.2


# --------------------------------------------------------------------------- the ranking


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_ranking_is_cleanlabs_own_on_the_calibrated_probabilities(mode):
    P, gold, ids = synthetic(60, mode, seed=3)
    items = [{"id": i, "text": f"t{i}", "gold": g, "label_probs": dict(zip(LABELS, p))} for i, g, p in zip(ids, gold, P)]
    result = triage(items, LABELS, source="llm")
    Q, _ = calibrate_cross_fitted(P, binarize(gold, LABELS), fold_ids(ids), mode)
    index = {lab: j for j, lab in enumerate(LABELS)}
    if mode == "single":
        from cleanlab.rank import get_label_quality_scores

        quality = get_label_quality_scores(np.array([index[g[0]] for g in gold]), Q)
    else:
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        quality = get_label_quality_scores([[index[x] for x in g] for g in gold], Q, aggregator_kwargs=MULTI_AGGREGATOR)
    expected = sorted(range(len(ids)), key=lambda i: (quality[i], ids[i]))
    assert result.mode == mode and result.source == "llm"
    assert [r.id for r in result.rows] == [ids[i] for i in expected]
    assert [r.issue_score for r in result.rows] == pytest.approx([1 - quality[i] for i in expected])
    for r in result.rows:
        assert 0.0 <= r.issue_score <= 1.0
        assert set(r.existing_label_probs) == set(r.existing_labels)
        assert all(0.0 <= p <= 1.0 for p in r.existing_label_probs.values())


def test_no_label_probs_falls_back_to_corpus_and_says_so(corpus):
    pool, labels = pool_fixture(corpus, n_per_label=15)
    items = [{"id": i, "text": t, "gold": list(ls), "label_probs": None} for i, t, ls in pool[::5]]
    result = triage(items, labels, pool, source="ensemble")
    assert result.source == "corpus" and result.requested == "ensemble"
    assert result.calibration is None
    assert any("label_probs" in n for n in result.notes)
    assert {r.source for r in result.rows} == {"corpus"}
    scores = [r.issue_score for r in result.rows]
    assert scores == sorted(scores, reverse=True)


# --------------------------------------------------------------------------- the run's files and messages


def test_relabel_writes_label_issues_csv(cli, corpus, tmp_path, fake_server):
    pool, labels = pool_fixture(corpus, n_per_label=6)
    path = tmp_path / "input.tsv"
    path.write_text("".join(f"{ls[0]}\t{t}\n" for _, t, ls in pool), encoding="utf-8")
    server = fake_server(no_logprobs=True)  # a server that returns no log-probabilities: label_probs is null
    out = tmp_path / "run"
    result = cli("relabel", path, "--out", out, "--model", "openai:x", "--base-url", server.base_url, "--shots", "2",
                 "--triage", "llm")
    assert result.exit_code == 0, str(result)
    assert f"{out}/label_issues.csv (ranked by corpus)" in result.stdout, result.stdout + result.stderr
    assert "no prediction has label_probs" in result.stderr
    raw = (out / "label_issues.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    table = pd.read_csv(out / "label_issues.csv", encoding="utf-8-sig")
    assert tuple(table.columns) == LABEL_ISSUE_COLUMNS
    assert len(table) == len(pool)
    assert table["issue_score"].is_monotonic_decreasing
    assert table["issue_score"].between(0, 1).all()
    assert set(table["source"]) == {"corpus"}
    for _, r in table.iterrows():
        probs = dict(kv.split("=") for kv in r["existing_label_probs"].split("|"))
        assert list(probs) == r["existing_labels"].split("|")
        assert all(0 <= float(v) <= 1 for v in probs.values())
        assert r["suggested_labels"].split("|")[0] in labels
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["triage"]["source"] == "corpus" and report["triage"]["requested"] == "llm"
    assert report["triage"]["items"] == len(pool)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Likeliest label errors (ranked by corpus" in page
    assert (out / "disagreements.csv").exists()


def test_existing_label_outside_the_taxonomy_names_the_line(cli, corpus, tmp_path, fake_server):
    pool, labels = pool_fixture(corpus, n_per_label=3)
    lines = [f"{ls[0]}\t{t}" for _, t, ls in pool]
    lines.insert(4, f"不存在的标签\t{pool[0][1]}补充")  # line 5
    path = tmp_path / "input.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text("".join(f"{lab}: ''\n" for lab in labels), encoding="utf-8")
    server = fake_server()
    result = cli("relabel", path, "--out", tmp_path / "run", "--model", "openai:x", "--base-url", server.base_url,
                 "--taxonomy", taxonomy, "--examples", path)
    assert result.exit_code == 2
    assert f"{path}, line 5" in result.stderr
    assert "existing label '不存在的标签' is not in the taxonomy" in result.stderr
    assert server.stats.completions == 0


@pytest.mark.slow
def test_relabel_with_the_embedded_model_ranks_by_the_ensemble(cli, corpus, tmp_path):
    pool, labels = pool_fixture(corpus, n_per_label=10)
    path = tmp_path / "input.tsv"
    path.write_text("".join(f"{ls[0]}\t{t}\n" for _, t, ls in pool), encoding="utf-8")
    out = tmp_path / "run"
    result = cli("relabel", path, "--out", out, "--sample", "6", "--shots", "2", "--concurrency", "1")
    assert result.exit_code == 0, str(result)
    assert "(ranked by ensemble)" in result.stdout
    table = pd.read_csv(out / "label_issues.csv", encoding="utf-8-sig")
    assert tuple(table.columns) == LABEL_ISSUE_COLUMNS and len(table) == 6
    assert set(table["source"]) == {"ensemble"}
    assert table["issue_score"].is_monotonic_decreasing and table["issue_score"].between(0, 1).all()
    t = json.loads((out / "report.json").read_text(encoding="utf-8"))["triage"]
    assert t["source"] == "ensemble" and t["calibration"]["items"] == 6
    assert all(w in (i / 10 for i in range(11)) for w in t["ensemble_llm_weight_per_fold"])
    assert 0.0 <= t["calibration"]["ece"] <= 1.0
    assert sum(b["n"] for b in t["calibration"]["reliability"]) == 6
    assert "ECE" in (out / "report.html").read_text(encoding="utf-8")


def test_ece_noise_floor_shrinks_with_more_items():
    from labelwise._triage import ece_noise_floor

    rng = np.random.default_rng(0)
    small, large = ece_noise_floor(rng.random(200)), ece_noise_floor(rng.random(20000), draws=20)
    assert 0.03 < small < 0.12 and large < 0.01
