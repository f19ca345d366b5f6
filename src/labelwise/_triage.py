"""Label-error triage: cross-fitted calibration, a corpus classifier's second opinion, their ensemble, cleanlab's ranking.

Every item with existing labels gets `issue_score = 1 - label quality`, the label quality being cleanlab's
self-confidence score of its existing labels under the probabilities of the ranking source:

- `llm`: the model's `label_probs`, calibrated (cross-fitted, below);
- `corpus`: a character n-gram TF-IDF + logistic regression classifier trained on the example pool and the
  scored items, out of fold;
- `ensemble`: `w * llm + (1 - w) * corpus`, `w` chosen on the other folds (below); items without `label_probs`
  fall back to `corpus`, and the row says so.

Two modes, decided by the existing labels. `single`: every scored item has exactly one label; probabilities
are a distribution over the taxonomy (rows sum to 1; the corpus classifier's one-vs-rest probabilities are
normalised), the calibrator is temperature scaling, and the ranking is `cleanlab.rank.get_label_quality_scores`.
`multi`: some item has several labels; each label gets its own probability of applying (rows need not sum to 1),
the calibrator is Platt scaling of each label's log-odds (one slope and intercept for each item's top label, one
for all its other labels), and the ranking is `cleanlab.multilabel_classification.rank.get_label_quality_scores`
(aggregated by softmin, see MULTI_AGGREGATOR).

No item is scored by a model that saw its label. Items are split into K folds by a seeded hash of their id (never of
their labels). For an item in fold f, the calibrator and the corpus classifier are fitted on the other folds only.
The ensemble weight for fold f is the one (of 0, 0.1, ..., 1) with the lowest log loss on the other folds' items;
their corpus probabilities come from classifiers that did train on fold f, so an item's label reaches its own weight
only through that one scalar choice, never through a probability.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._cache import ResponseCache, stable_hash_rows
from ._corpus import Corpus
from ._metrics import expected_calibration_error, top_label_confidence

__all__ = ["Triage", "TriageRow", "Calibrator", "SOURCES", "fold_ids", "calibrate_cross_fitted", "corpus_probabilities",
           "ensemble_cross_fitted", "label_quality", "calibrate_llm", "calibration_of", "ece_noise_floor", "triage",
           "triage_run", "CorpusAhead"]

Source = Literal["llm", "corpus", "ensemble"]
Mode = Literal["single", "multi"]
SOURCES: tuple[str, ...] = ("llm", "corpus", "ensemble")
FOLDS = 5
WEIGHTS = tuple(i / 10 for i in range(11))
# Fewer labeled items than this and a fitted calibrator is worse than none (on a 20-item run, cross-fitted Platt
# scaling raised the ECE from 0.24 to 0.40); the probabilities are then used as the model gave them.
MIN_CALIBRATION_ITEMS = 50
MAX_TRAIN = 10_000  # training items per corpus-classifier fold (a seeded sample by id beyond that): bounded memory
# How cleanlab's multi-label score combines an item's per-label scores: softmin at a low temperature, i.e. close to
# its worst label. Chosen on 10% noise injected into three 200-item samples of the bundled pool (never the eval
# split), corpus classifier: the default (exponential moving average, alpha 0.8) found the corrupted items at mean
# AUROC 0.909 and precision@N 0.38; softmin at 0.05, 0.957 and 0.68. The default also counts every label the
# model finds likely but nobody assigned as evidence of an error, and this corpus' label sets are often incomplete.
MULTI_AGGREGATOR: dict[str, Any] = {"method": "softmin", "temperature": 0.05}
_EPS = 1e-6


def mode_of(label_sets: Sequence[Sequence[str]]) -> Mode:
    """`single` when every item has exactly one label, else `multi`."""
    return "single" if all(len(s) == 1 for s in label_sets) else "multi"


def fold_ids(ids: Sequence[str], k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Fold of each id: ids ordered by a seeded hash, dealt round-robin; independent of labels and of input order."""
    order = sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{seed}:{ids[i]}".encode()).hexdigest())
    folds = np.empty(len(ids), dtype=np.int64)
    for n, i in enumerate(order):
        folds[i] = n % k
    return folds


def binarize(label_sets: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """Item x label 0/1 matrix."""
    index = {lab: j for j, lab in enumerate(labels)}
    Y = np.zeros((len(label_sets), len(labels)))
    for i, s in enumerate(label_sets):
        Y[i, [index[x] for x in s]] = 1.0
    return Y


def _log_loss(P: np.ndarray, Y: np.ndarray, mode: Mode) -> float:
    """Mean negative log-likelihood of the existing labels (per item; binary per label in multi mode)."""
    P = np.clip(P, _EPS, 1 - _EPS)
    if mode == "single":
        return float(-(Y * np.log(P)).sum(1).mean())
    return float(-(Y * np.log(P) + (1 - Y) * np.log(1 - P)).sum(1).mean())


class Calibrator:
    """Temperature scaling (single) or Platt scaling of per-label log-odds, top label apart (multi), on labeled items."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.temperature = 1.0
        self.platt = {"top": (1.0, 0.0), "rest": (1.0, 0.0)}  # (slope, intercept) of the log-odds

    def fit(self, P: np.ndarray, Y: np.ndarray) -> Calibrator:
        """Fit on probabilities P and the 0/1 existing labels Y (items x labels)."""
        from scipy.optimize import minimize, minimize_scalar

        if self.mode == "single":
            def nll(log_t: float) -> float:
                return _log_loss(self._softmax(P, math.exp(log_t)), Y, "single")

            self.temperature = float(math.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))
        else:
            z, top = self._logit(P).ravel(), self._top(P).ravel()
            y = Y.ravel()
            for which, mask in (("top", top == 1), ("rest", top == 0)):
                zz, yy = z[mask], y[mask]

                def nll2(ab: np.ndarray) -> float:
                    s = ab[0] * zz + ab[1]
                    return float(np.mean(np.logaddexp(0, s) - yy * s))

                res = minimize(nll2, np.array([1.0, 0.0]), method="L-BFGS-B", bounds=[(0.01, 20.0), (-20.0, 20.0)])
                self.platt[which] = (float(res.x[0]), float(res.x[1]))
        return self

    def transform(self, P: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, same shape."""
        if self.mode == "single":
            return self._softmax(P, self.temperature)
        top = self._top(P)
        (a1, b1), (a0, b0) = self.platt["top"], self.platt["rest"]
        z = self._logit(P)
        return 1 / (1 + np.exp(-np.where(top == 1, a1 * z + b1, a0 * z + b0)))

    def params(self) -> dict[str, float]:
        """The fitted parameters, for the report."""
        return {"temperature": self.temperature} if self.mode == "single" else {
            f"{which}_{name}": v for which, ab in self.platt.items() for name, v in zip(("slope", "intercept"), ab)}

    @staticmethod
    def _softmax(P: np.ndarray, t: float) -> np.ndarray:
        z = np.log(np.clip(P, 1e-12, 1.0)) / t
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    @staticmethod
    def _top(P: np.ndarray) -> np.ndarray:
        """1 for each item's most probable label: every item has at least one label, so its top label's odds differ."""
        T = np.zeros_like(P, dtype=np.float64)
        T[np.arange(len(P)), P.argmax(1)] = 1.0
        return T

    @staticmethod
    def _logit(P: np.ndarray) -> np.ndarray:
        P = np.clip(P, _EPS, 1 - _EPS)
        return np.log(P) - np.log1p(-P)


def calibrate_cross_fitted(P: np.ndarray, Y: np.ndarray, folds: np.ndarray, mode: Mode) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Each item's probabilities calibrated by a calibrator fitted on the other folds only; and each fold's parameters."""
    Q = np.empty_like(P, dtype=np.float64)
    params = []
    for f in np.unique(folds):
        test = folds == f
        cal = Calibrator(mode)
        if (~test).sum() >= 2:
            cal.fit(P[~test], Y[~test])
        Q[test] = cal.transform(P[test])
        params.append(cal.params())
    return Q, params


CHUNK = 2000  # texts per predict_proba call, so a huge run never holds one huge TF-IDF matrix


def _classifier(seed: int):
    """Logistic regression by log-loss SGD (10 passes reach the log loss lbfgs/liblinear reach, about 10x faster on
    this corpus), one-vs-rest: in single mode scikit-learn normalises rows to sum 1."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.multiclass import OneVsRestClassifier

    return OneVsRestClassifier(SGDClassifier(loss="log_loss", alpha=3e-5, max_iter=10, tol=None, random_state=seed))


def _threads() -> Any:
    """The labels' binary fits on threads: SGD releases the GIL, and each fit is seeded, so the result is the same."""
    import os

    from joblib import parallel_config

    return parallel_config(backend="threading", n_jobs=max(1, min(8, os.cpu_count() or 1)))


def corpus_probabilities(scored: Sequence[tuple[str, str, Sequence[str]]], pool: Iterable[tuple[str, str, Sequence[str]]],
                         labels: Sequence[str], mode: Mode, *, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities of each scored (id, text, labels) item from character 1-2-gram TF-IDF + logistic
    regression.

    The training data is the pool and the scored items together (an item in both counts once, with its scored
    labels); they are split into folds by id, and a scored item's probabilities come from the classifier trained on
    the other folds, so neither its label nor its text (nor an identical text: ids are content hashes) is in training.
    Beyond MAX_TRAIN training items per fold, a sample chosen by a seeded hash of the id (never the labels) trains.

    Each fold's TF-IDF is exactly a `TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True,
    min_df=2)` fitted on that fold's training texts (min_df=1 below 100 of them), but the texts are split into n-grams
    and counted once for all folds: a fold keeps the n-grams its own training rows use often enough.
    """
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    data: dict[str, tuple[str, Sequence[str]]] = {i: (t, labs) for i, t, labs in pool if labs}
    for i, t, labs in scored:
        data[i] = (t, labs)
    ids = list(data)
    fold = dict(zip(ids, fold_ids(ids, folds, seed)))
    index = {lab: j for j, lab in enumerate(labels)}
    out = np.zeros((len(scored), len(labels)))
    by_fold: dict[int, list[int]] = {}
    for n, (i, _, _) in enumerate(scored):
        by_fold.setdefault(int(fold[i]), []).append(n)
    trains = {}
    for f in sorted(by_fold):
        train = [i for i in ids if fold[i] != f]
        if len(train) > MAX_TRAIN:  # bounded memory and time on a huge corpus: a seeded sample, chosen by id
            train = sorted(train, key=lambda i: hashlib.sha256(f"{seed}:train:{i}".encode()).hexdigest())[:MAX_TRAIN]
        trains[f] = train
    used = list(dict.fromkeys(i for train in trains.values() for i in train))  # every text some fold trains on
    row_of = {i: r for r, i in enumerate(used)}
    counter = CountVectorizer(analyzer="char", ngram_range=(1, 2), dtype=np.float64)
    counts = counter.fit_transform([data[i][0] for i in used])
    for f, rows in sorted(by_fold.items()):
        train = trains[f]
        test_texts = [scored[n][1] for n in rows]
        if mode == "single":
            at = [row_of[i] for i in train for _ in data[i][1]]  # a multi-labeled pool item: one row per label
            y = [index[lab] for i in train for lab in data[i][1]]
            if len(set(y)) < 2:
                out[rows] = np.bincount(y, minlength=len(labels)) / len(y)
                continue
        else:
            at = [row_of[i] for i in train]
            y = binarize([data[i][1] for i in train], labels)
        C = counts[at]
        df = np.bincount(C.indices, minlength=C.shape[1])  # rows of a count matrix name each n-gram once
        keep = np.flatnonzero(df >= (2 if len(train) >= 100 else 1))
        tfidf = TfidfTransformer(sublinear_tf=True)
        X = tfidf.fit_transform(C[:, keep])
        del C
        model = _classifier(seed)
        with warnings.catch_warnings(), _threads():
            warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
            warnings.filterwarnings("ignore", message="Maximum number of iteration")
            model.fit(X, y)
        del X
        P = np.vstack([model.predict_proba(tfidf.transform(counter.transform(test_texts[a:a + CHUNK])[:, keep]))
                       for a in range(0, len(test_texts), CHUNK)])
        if mode == "single":
            out[np.ix_(rows, model.classes_)] = P  # a label absent keeps probability 0
        else:
            out[rows] = P
        del model  # before the next fold's fit: two fitted models at once doubled the peak on a 100k-row run
    return out


def ensemble_cross_fitted(P_llm: np.ndarray, P_corpus: np.ndarray, Y: np.ndarray, folds: np.ndarray,
                          mode: Mode) -> tuple[np.ndarray, list[float]]:
    """`w * llm + (1 - w) * corpus` per item, w chosen by log loss on the other folds; and each fold's w."""
    Q = np.empty_like(P_llm)
    weights = []
    for f in np.unique(folds):
        test = folds == f
        train = ~test
        if train.sum():
            w = min(WEIGHTS, key=lambda w: _log_loss(w * P_llm[train] + (1 - w) * P_corpus[train], Y[train], mode))
        else:
            w = 0.5
        Q[test] = w * P_llm[test] + (1 - w) * P_corpus[test]
        weights.append(w)
    return Q, weights


def label_quality(P: np.ndarray, label_sets: Sequence[Sequence[str]], labels: Sequence[str], mode: Mode, *,
                  chunk: int = 10_000) -> np.ndarray:
    """cleanlab's label-quality score of each item's existing labels (lower: likelier an error)."""
    index = {lab: j for j, lab in enumerate(labels)}
    out = np.empty(len(label_sets))
    for a in range(0, len(label_sets), chunk):  # each item's score depends on its own row only: chunks bound memory
        sets, rows = label_sets[a:a + chunk], np.clip(P[a:a + chunk], 0.0, 1.0)
        if mode == "single":
            from cleanlab.rank import get_label_quality_scores

            out[a:a + chunk] = get_label_quality_scores(np.array([index[s[0]] for s in sets]), rows / rows.sum(1, keepdims=True))
        else:
            from cleanlab.multilabel_classification.rank import get_label_quality_scores as multi_scores

            out[a:a + chunk] = multi_scores([[index[x] for x in s] for s in sets], rows, aggregator_kwargs=MULTI_AGGREGATOR)
    return out


def suggest(P: np.ndarray, labels: Sequence[str], mode: Mode, max_labels: int = 3) -> list[list[str]]:
    """Suggested labels: the most probable; in multi mode also the others with probability >= 0.5 (at most 3)."""
    out = []
    for row in P:
        order = np.argsort(-row, kind="stable")
        pick = [labels[order[0]]]
        if mode == "multi":
            pick += [labels[j] for j in order[1:max_labels] if row[j] >= 0.5]
        out.append(pick)
    return out


def calibrate_llm(label_probs: Sequence[dict[str, float] | None], Y: np.ndarray, folds: np.ndarray, labels: Sequence[str],
                  mode: Mode) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """Cross-fitted calibrated probabilities (rows without label_probs left 0) and the calibration report, or Nones."""
    has = np.array([p is not None for p in label_probs])
    if not has.any():
        return None, None
    P = np.array([[p.get(lab, 0.0) for lab in labels] if p is not None else [0.0] * len(labels) for p in label_probs])
    if mode == "single":
        sums = P.sum(1, keepdims=True)
        P = np.divide(P, sums, out=P.copy(), where=sums > 0)
    Q = P.copy()
    method = "temperature scaling" if mode == "single" else "Platt scaling of per-label log-odds (top label / other labels)"
    params: list[dict[str, float]] = []
    if has.sum() >= MIN_CALIBRATION_ITEMS:
        Q[has], params = calibrate_cross_fitted(P[has], Y[has], folds[has], mode)
    else:
        method = f"none: fewer than {MIN_CALIBRATION_ITEMS} labeled items with label_probs, probabilities used as given"
    raw = expected_calibration_error(*top_label_confidence(P[has], Y[has]))
    conf, correct = top_label_confidence(Q[has], Y[has])
    cal = expected_calibration_error(conf, correct)
    return Q, {"method": method,
               "cross_fitted_folds": FOLDS, "items": int(has.sum()), "ece_raw": raw[0], "ece": cal[0],
               "ece_if_perfectly_calibrated": ece_noise_floor(conf), "reliability_raw": raw[1], "reliability": cal[1],
               "params_per_fold": params}


def ece_noise_floor(conf: np.ndarray, draws: int = 200, seed: int = 0) -> float:
    """Mean ECE of a perfectly calibrated model with these confidences on this many items (outcomes drawn at random).

    ECE over few items is biased upwards by sampling noise alone: on 200 items a perfectly calibrated model
    scores around 0.07. A measured ECE near this floor is as good as calibration can be shown to be.
    """
    rng = np.random.default_rng(seed)
    return float(np.mean([expected_calibration_error(conf, rng.random(len(conf)) < conf)[0] for _ in range(draws)]))


def calibration_of(label_probs: Sequence[dict[str, float] | None], gold: Sequence[Sequence[str]], labels: Sequence[str],
                   ids: Sequence[str], *, seed: int = 0) -> dict[str, Any] | None:
    """The cross-fitted calibration report (ECE before/after, reliability bins) of labeled predictions, or None."""
    if not gold:
        return None
    mode = mode_of(gold)
    return calibrate_llm(label_probs, binarize(gold, labels), fold_ids(ids, FOLDS, seed), labels, mode)[1]


@dataclass(slots=True)
class TriageRow:
    """One scored item of label_issues.csv."""

    id: str
    text: str
    existing_labels: list[str]
    suggested_labels: list[str]
    issue_score: float
    existing_label_probs: dict[str, float]
    source: str


@dataclass
class Triage:
    """The ranked items (likeliest error first), which source ranked, and the calibration figures."""

    rows: list[TriageRow]
    source: str
    requested: str
    mode: Mode
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    ensemble_weights: list[float] | None = None

    def summary(self) -> dict[str, Any]:
        """What report.json records about the triage."""
        return {"source": self.source, "requested": self.requested, "mode": self.mode, "items": len(self.rows),
                "folds": FOLDS, "notes": self.notes, "calibration": self.calibration,
                "ensemble_llm_weight_per_fold": self.ensemble_weights}


def triage(items: Sequence[dict[str, Any]], labels: Sequence[str], pool: Iterable[tuple[str, str, Sequence[str]]] = (),
           source: Source = "ensemble", *, seed: int = 0, ahead: CorpusAhead | None = None) -> Triage:
    """Rank labeled items by how likely their existing labels are wrong.

    `items`: dicts with `id`, `text`, `gold` (existing labels, non-empty), `label_probs` (dict or None) and optionally
    `status` (a failed prediction's label_probs are not used).
    `pool`: (id, text, labels) of the example pool, training data for the corpus classifier.
    `ahead`: the corpus classifier's probabilities, started before the model answered (used if for these items).
    """
    if source not in SOURCES:
        raise ValueError(f"triage source must be one of {SOURCES}, got {source!r}")
    labels = list(labels)
    items = [r for r in items if r.get("gold")]
    if not items:
        return Triage([], source, source, "single", ["no item has existing labels: nothing to rank"])
    gold = [list(r["gold"]) for r in items]
    mode = mode_of(gold)
    Y = binarize(gold, labels)
    ids = [r["id"] for r in items]
    folds = fold_ids(ids, FOLDS, seed)
    llm_probs = [r.get("label_probs") if r.get("status", "ok") == "ok" else None for r in items]
    has_llm = np.array([p is not None for p in llm_probs])
    notes: list[str] = []
    used = source
    if source in ("llm", "ensemble") and not has_llm.any():
        notes.append(f"no prediction has label_probs (the model gave no per-label probabilities): ranked by corpus, not {source}")
        used = "corpus"
    Q_llm, calibration = calibrate_llm(llm_probs, Y, folds, labels, mode)
    P_corpus = None
    if used in ("corpus", "ensemble"):
        scored = [(r["id"], r["text"], list(r["gold"])) for r in items]
        P_corpus = ahead.result_for(scored, labels, seed) if ahead is not None else None
        if P_corpus is None:
            P_corpus = corpus_probabilities(scored, pool, labels, mode, seed=seed)
    weights = None
    per_row_source = [used] * len(items)
    if used == "llm":
        P = Q_llm.copy()
        missing = ~has_llm
        if missing.any():
            P[missing] = corpus_probabilities([(ids[i], items[i]["text"], gold[i]) for i in np.flatnonzero(missing)], pool,
                                              labels, mode, seed=seed)
            notes.append(f"{int(missing.sum())} item(s) without label_probs ranked by corpus")
            for i in np.flatnonzero(missing):
                per_row_source[i] = "corpus"
    elif used == "corpus":
        P = P_corpus
    else:
        P = P_corpus.copy()
        P[has_llm], weights = ensemble_cross_fitted(Q_llm[has_llm], P_corpus[has_llm], Y[has_llm], folds[has_llm], mode)
        if (~has_llm).any():
            notes.append(f"{int((~has_llm).sum())} item(s) without label_probs ranked by corpus alone")
            for i in np.flatnonzero(~has_llm):
                per_row_source[i] = "corpus"
    quality = label_quality(P, gold, labels, mode)
    suggested = suggest(P, labels, mode)
    index = {lab: j for j, lab in enumerate(labels)}
    rows = [TriageRow(ids[i], items[i]["text"], gold[i], suggested[i], float(min(1.0, max(0.0, 1.0 - quality[i]))),
                      {lab: float(P[i, index[lab]]) for lab in gold[i]}, per_row_source[i]) for i in range(len(items))]
    order = sorted(range(len(rows)), key=lambda i: (-rows[i].issue_score, rows[i].id))
    return Triage([rows[i] for i in order], used, source, mode, notes, calibration, weights)


class CorpusAhead:
    """The corpus classifier's out-of-fold probabilities for a run's labeled items, fitted on a daemon thread while
    the run is still labeling (they depend on the existing labels and the pool, never on the model's answers), or
    read from the cache where an earlier run kept them. Fitting releases the GIL for most of its time."""

    def __init__(self, scored: Sequence[tuple[str, str, Sequence[str]]], pool: Corpus | None, labels: Sequence[str], *,
                 seed: int = 0, cache_dir: str | None = None, cache: bool = True) -> None:
        import threading
        from concurrent.futures import Future

        scored = [(i, t, list(g)) for i, t, g in scored]
        self.labels, self.seed = list(labels), seed
        self.digest = _digest(scored)  # not the items themselves: a long run's rows are not held twice
        pool_items = _pool_items(pool)
        self.future: Future[np.ndarray] = Future()
        key = stable_hash_rows({"code": _code_version(), "labels": self.labels, "seed": seed, "scored": self.digest},
                               pool_items) if cache else None
        hit = _memo(cache_dir, key)
        if hit is not None or not scored:
            self.future.set_result(hit)
            return

        def fit() -> None:
            try:
                P = corpus_probabilities(scored, pool_items, self.labels, mode_of([g for _, _, g in scored]), seed=seed)
                if key is not None:
                    _memo(cache_dir, key, P)
                self.future.set_result(P)
            except BaseException as err:  # noqa: BLE001 - handed to whoever asks for the result
                self.future.set_exception(err)

        threading.Thread(target=fit, name="labelwise-triage", daemon=True).start()

    def result_for(self, scored: Sequence[tuple[str, str, Sequence[str]]], labels: Sequence[str], seed: int
                   ) -> np.ndarray | None:
        """The probabilities, waiting for them, if they were started for exactly these items; else None."""
        if list(labels) != self.labels or seed != self.seed or _digest(scored) != self.digest:
            return None
        return self.future.result()


def _memo(cache_dir: str | None, key: str | None, value: Any = None) -> Any:
    """Read (or, given a value, write) one entry of the corpus-probabilities memo in its own cache connection."""
    if key is None:
        return None
    cache = ResponseCache(cache_dir)
    try:
        if value is None:
            return cache.get("triage-corpus", key)
        cache.set("triage-corpus", key, value)
    finally:
        cache.close()
    return None


def _digest(scored: Iterable[tuple[str, str, Sequence[str]]]) -> str:
    """A stable key of (id, text, existing labels) items, in order."""
    return stable_hash_rows("items", ((i, t, list(g)) for i, t, g in scored))


def _pool_items(pool: Corpus | None) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(it.id, it.text, it.labels) for it in pool.items] if pool is not None else []


def triage_run(rows: Sequence[dict[str, Any]], labels: Sequence[str], pool: Corpus | None, source: Source = "ensemble",
               *, seed: int = 0, cache: ResponseCache | None = None, ahead: CorpusAhead | None = None) -> Triage:
    """Triage of a relabel run's prediction rows (every row with existing labels; failed ones have no label_probs).

    With a `cache`, the result is kept under a hash of everything it depends on (the rows' ids, texts, existing labels
    and label_probs, the pool, the labels, source, seed, and this code and its libraries' versions), so a rerun
    whose predictions all came from the cache does not fit the same classifiers again.
    """
    items = [r for r in rows if r.get("gold")]  # triage reads label_probs of ok rows only
    pool_items = _pool_items(pool)
    key = None
    if cache is not None:
        answers = stable_hash_rows("answers", ((r["id"], r["text"], r["gold"], r.get("status", "ok"), r.get("label_probs"))
                                               for r in items))
        key = stable_hash_rows({"code": _code_version(), "labels": list(labels), "source": source, "seed": seed,
                                "items": answers}, pool_items)
        if (hit := cache.get("triage", key)) is not None:
            return hit
    result = triage(items, labels, pool_items, source, seed=seed, ahead=ahead)
    if cache is not None:
        cache.set("triage", key, result)
    return result


def _code_version() -> list[str]:
    """What else decides a triage result: this module's and the metrics' code, and the libraries doing the work."""
    from importlib.metadata import version
    from pathlib import Path

    from . import _metrics

    code = hashlib.sha256(Path(__file__).read_bytes() + Path(_metrics.__file__).read_bytes()).hexdigest()
    return [code, *(f"{lib} {version(lib)}" for lib in ("numpy", "scipy", "scikit-learn", "cleanlab"))]
