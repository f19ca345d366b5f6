"""The corpus classifier of triage counts n-grams once for all folds and fits labels on threads; its probabilities
are those of a TF-IDF + logistic regression pipeline fitted per fold from scratch (the way it was first written)."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest

from labelwise._triage import MAX_TRAIN, binarize, corpus_probabilities, fold_ids


def reference(scored, pool, labels, mode, folds=5, seed=0):
    """Per fold: `TfidfVectorizer(char 1-2-grams, sublinear tf, min_df 2)` + one-vs-rest log-loss SGD, fitted anew."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    data = {i: (t, labs) for i, t, labs in pool if labs}
    for i, t, labs in scored:
        data[i] = (t, labs)
    ids = list(data)
    fold = dict(zip(ids, fold_ids(ids, folds, seed)))
    index = {lab: j for j, lab in enumerate(labels)}
    out = np.zeros((len(scored), len(labels)))
    for f in sorted({int(fold[i]) for i, _, _ in scored}):
        rows = [n for n, (i, _, _) in enumerate(scored) if fold[i] == f]
        train = [i for i in ids if fold[i] != f]
        if len(train) > MAX_TRAIN:
            train = sorted(train, key=lambda i: hashlib.sha256(f"{seed}:train:{i}".encode()).hexdigest())[:MAX_TRAIN]
        model = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True,
                                              min_df=2 if len(train) >= 100 else 1),
                              OneVsRestClassifier(SGDClassifier(loss="log_loss", alpha=3e-5, max_iter=10, tol=None,
                                                                random_state=seed)))
        test = [scored[n][1] for n in rows]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "single":
                model.fit([data[i][0] for i in train for _ in data[i][1]], [index[lab] for i in train for lab in data[i][1]])
                out[np.ix_(rows, model.classes_)] = model.predict_proba(test)
            else:
                model.fit([data[i][0] for i in train], binarize([data[i][1] for i in train], labels))
                out[rows] = model.predict_proba(test)
    return out


@pytest.mark.parametrize("mode, n_pool", [("multi", 240), ("single", 240), ("multi", 40)])
def test_corpus_probabilities_match_a_per_fold_pipeline(corpus, mode, n_pool):
    items = [(it.id, it.text, it.labels) for it in corpus.items if mode == "multi" or len(it.labels) == 1]
    scored, pool = items[:n_pool // 2], items[n_pool // 3:n_pool]  # overlapping: an item in both counts once
    labels = corpus.labels
    got = corpus_probabilities(scored, pool, labels, mode)
    want = reference(scored, pool, labels, mode)
    assert got.shape == want.shape == (len(scored), len(labels))
    assert np.abs(got - want).max() < 1e-12  # the same model; only the order of float sums may differ
    assert (got.argmax(1) == want.argmax(1)).all()


def test_a_rerun_from_the_cache_reuses_its_triage_and_a_changed_label_does_not(corpus, tmp_path, fake_server, monkeypatch):
    from labelwise import RelabelConfig, relabel
    from labelwise import _triage
    from labelwise._settings import LabelSettings

    items = [it for it in corpus.items if len(it.labels) == 1][:60]
    data = tmp_path / "input.tsv"
    data.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in items), encoding="utf-8")
    server = fake_server(seed=2)

    def run(out: str):
        cfg = RelabelConfig(input=str(data), out=str(tmp_path / out), settings=LabelSettings(
            model="openai:x", base_url=server.base_url, shots=0, examples=str(data)))
        relabel(cfg, progress=False)
        return (tmp_path / out / "label_issues.csv").read_bytes()

    first = run("a")
    fitted = []
    real = _triage.triage
    monkeypatch.setattr(_triage, "triage", lambda *a, **k: fitted.append(1) or real(*a, **k))
    assert run("b") == first and fitted == []  # every prediction cached: the same triage, not fitted again
    assert server.stats.completions == len(items)

    other = next(lab for lab in corpus.labels if lab != items[0].labels[0])
    data.write_text(data.read_text(encoding="utf-8").replace(f"{items[0].labels[0]}\t", f"{other}\t", 1), encoding="utf-8")
    changed = run("c")
    assert fitted == [1] and changed != first  # one existing label changed: triage runs again


def test_corpus_ahead_fits_on_its_thread_once_and_is_read_back_from_the_cache(corpus, tmp_path, monkeypatch):
    import threading

    from labelwise import _triage
    from labelwise._triage import CorpusAhead

    items = [(it.id, it.text, it.labels) for it in corpus.items[:90]]
    pool = corpus.without(i for i, _, _ in items[:60])
    calls = []
    real = _triage.corpus_probabilities

    def recording(*a, **k):
        calls.append(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(_triage, "corpus_probabilities", recording)
    ahead = CorpusAhead(items, pool, corpus.labels, seed=1, cache_dir=str(tmp_path / "c"))
    got = ahead.result_for(items, corpus.labels, 1)
    assert calls == ["labelwise-triage"]
    want = real(items, [(it.id, it.text, it.labels) for it in pool.items], corpus.labels, "multi", seed=1)
    assert np.array_equal(got, want)
    assert ahead.result_for(items[1:], corpus.labels, 1) is None  # other items: not for them
    assert ahead.result_for(items, corpus.labels, 2) is None

    again = CorpusAhead(items, pool, corpus.labels, seed=1, cache_dir=str(tmp_path / "c"))
    assert np.array_equal(again.result_for(items, corpus.labels, 1), want) and calls == ["labelwise-triage"]
    uncached = CorpusAhead(items, pool, corpus.labels, seed=1, cache_dir=str(tmp_path / "c"), cache=False)
    assert np.array_equal(uncached.result_for(items, corpus.labels, 1), want) and len(calls) == 2


def test_a_relabel_run_fits_the_corpus_classifier_while_labeling(corpus, tmp_path, fake_server, monkeypatch):
    import threading

    from labelwise import RelabelConfig, relabel
    from labelwise import _triage
    from labelwise._settings import LabelSettings, RunOptions

    items = [it for it in corpus.items if len(it.labels) == 1][:60]
    data = tmp_path / "input.tsv"
    data.write_text("".join(f"{it.labels[0]}\t{it.text}\n" for it in items), encoding="utf-8")
    server = fake_server(seed=3)
    threads = []
    real = _triage.corpus_probabilities
    monkeypatch.setattr(_triage, "corpus_probabilities",
                        lambda *a, **k: threads.append(threading.current_thread().name) or real(*a, **k))
    relabel(RelabelConfig(input=str(data), out=str(tmp_path / "run"), options=RunOptions(cache=False),
                          settings=LabelSettings(model="openai:x", base_url=server.base_url, shots=0, examples=str(data))),
            progress=False)
    assert threads == ["labelwise-triage"]  # fitted once, on the thread started before labeling
    report = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    assert report["triage"]["items"] == len(items) and report["triage"]["source"] in ("corpus", "ensemble")
