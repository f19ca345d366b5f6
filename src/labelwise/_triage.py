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
from array import array
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._corpus import Corpus
from ._metrics import expected_calibration_error, top_label_confidence

__all__ = ["Triage", "TriageRow", "Calibrator", "SOURCES", "fold_ids", "calibrate_cross_fitted", "corpus_probabilities",
           "ensemble_cross_fitted", "label_quality", "calibrate_llm", "calibration_of", "ece_noise_floor", "triage",
           "triage_arrays", "triage_run", "calibration_matrix"]

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
    # the hash's first 8 bytes order ids as its hex digest does (ties: never in practice); 8 bytes an id, no strings
    keys = np.fromiter((int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") for i in ids),
                       dtype=np.uint64, count=len(ids))
    folds = np.empty(len(ids), dtype=np.int64)
    folds[np.argsort(keys, kind="stable")] = np.arange(len(ids)) % k
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


def _corpus_model(seed: int, n_train: int):
    """Character 1-2-gram TF-IDF + logistic regression (log-loss SGD: 10 passes reach the log loss lbfgs/liblinear
    reach, about 10x faster on this corpus); one-vs-rest, so in single mode scikit-learn normalises rows to sum 1."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True,
                                         min_df=2 if n_train >= 100 else 1),
                         OneVsRestClassifier(SGDClassifier(loss="log_loss", alpha=3e-5, max_iter=10, tol=None,
                                                           random_state=seed)))


def _predict(model, texts: list[str], chunk: int = 2000) -> np.ndarray:
    """predict_proba in chunks, so a huge run never holds one huge TF-IDF matrix."""
    return np.vstack([model.predict_proba(texts[i:i + chunk]) for i in range(0, len(texts), chunk)])


def corpus_probabilities(scored: Sequence[tuple[str, str, Sequence[str]]], pool: Iterable[tuple[str, str, Sequence[str]]],
                         labels: Sequence[str], mode: Mode, *, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities of each scored (id, text, labels) item from TF-IDF + logistic regression.

    The training data is the pool and the scored items together (an item in both counts once, with its scored
    labels); they are split into folds by id, and a scored item's probabilities come from the classifier trained on
    the other folds, so neither its label nor its text (nor an identical text: ids are content hashes) is in training.
    Beyond MAX_TRAIN training items per fold, a sample chosen by a seeded hash of the id (never the labels) trains.
    """
    # The training items in first-seen order (pool, then scored items not in it), each by reference: >= 0 a scored
    # item's index, < 0 an extra pool item; no tuple or text copy per item, so a 100k-row run stays small here.
    n_scored = len(scored)
    where = {scored[n][0]: n for n in range(n_scored)}
    ids: list[str] = []
    src = array("q")
    extra: list[tuple[str, Sequence[str]]] = []
    for i, t, labs in pool:
        if not labs or i in where and where[i] < 0:
            continue
        n = where.get(i)
        if n is None:
            extra.append((t, labs))
            where[i] = -len(extra)
            ids.append(i)
            src.append(-len(extra))
        else:
            where[i] = -(1 << 62)  # taken (the scored item's labels win)
            ids.append(i)
            src.append(n)
    for n in range(n_scored):
        i = scored[n][0]
        if where.get(i) == n:  # a scored item not in the pool
            ids.append(i)
            src.append(n)
    del where
    source = np.frombuffer(src, dtype=np.int64) if len(src) else np.zeros(0, np.int64)
    fold = fold_ids(ids, folds, seed)
    at = np.empty(n_scored, dtype=np.int64)  # each scored item's place among the training items
    at[source[source >= 0]] = np.flatnonzero(source >= 0)

    def text_labels(k: int) -> tuple[str, Sequence[str]]:
        s = int(source[k])
        if s >= 0:
            _, t, labs = scored[s]
            return t, labs
        return extra[-s - 1]

    rank = None
    if len(ids) - len(ids) // folds > MAX_TRAIN:  # a fold may train on a sample: rank every item by a seeded hash once
        rank = np.array([int.from_bytes(hashlib.sha256(f"{seed}:train:{i}".encode()).digest()[:8], "big") for i in ids],
                        dtype=np.uint64)
    index = {lab: j for j, lab in enumerate(labels)}
    out = np.zeros((n_scored, len(labels)))
    scored_fold = fold[at]
    for f in sorted({int(x) for x in scored_fold}):
        rows = np.flatnonzero(scored_fold == f)
        train_k = np.flatnonzero(fold != f)
        if len(train_k) > MAX_TRAIN:  # bounded memory and time on a huge corpus: a seeded sample, chosen by id
            train_k = train_k[np.argsort(rank[train_k], kind="stable")[:MAX_TRAIN]]  # type: ignore[index]
        pairs = [text_labels(int(k)) for k in train_k]
        texts = [t for t, _ in pairs]
        train_labels = [labs for _, labs in pairs]
        del pairs
        test_texts = [scored[int(n)][1] for n in rows]
        model = _corpus_model(seed, len(train_k))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
            warnings.filterwarnings("ignore", message="Maximum number of iteration")
            if mode == "single":
                X = [t for t, labs in zip(texts, train_labels) for _ in labs]
                y = [index[lab] for labs in train_labels for lab in labs]  # a multi-labeled pool item: one row per label
                if len(set(y)) < 2:
                    out[rows] = np.bincount(y, minlength=len(labels)) / len(y)
                    continue
                model.fit(X, y)
                model.steps[0][1].stop_words_ = None  # the n-grams min_df dropped: large, and never used again
                out[np.ix_(rows, model.classes_)] = _predict(model, test_texts)  # a label absent keeps probability 0
            else:
                model.fit(texts, binarize(train_labels, labels))
                model.steps[0][1].stop_words_ = None
                out[rows] = _predict(model, test_texts)
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
    return _label_quality_matrix(P, binarize(label_sets, labels), mode, chunk=chunk)


def _label_quality_matrix(P: np.ndarray, Y: np.ndarray, mode: Mode, *, chunk: int = 10_000) -> np.ndarray:
    """`label_quality` with the existing labels as a 0/1 matrix."""
    out = np.empty(len(Y))
    for a in range(0, len(Y), chunk):  # each item's score depends on its own row only: chunks bound memory
        sets, rows = Y[a:a + chunk], np.clip(P[a:a + chunk], 0.0, 1.0)
        if mode == "single":
            from cleanlab.rank import get_label_quality_scores

            out[a:a + chunk] = get_label_quality_scores(sets.argmax(1), rows / rows.sum(1, keepdims=True))
        else:
            from cleanlab.multilabel_classification.rank import get_label_quality_scores as multi_scores

            out[a:a + chunk] = multi_scores([list(np.flatnonzero(s)) for s in sets], rows, aggregator_kwargs=MULTI_AGGREGATOR)
    return out


def suggest(P: np.ndarray, labels: Sequence[str], mode: Mode, max_labels: int = 3) -> list[list[str]]:
    """Suggested labels: the most probable; in multi mode also the others with probability >= 0.5 (at most 3)."""
    return [_suggest_row(row, labels, mode, max_labels) for row in P]


def calibrate_llm(label_probs: Sequence[dict[str, float] | None], Y: np.ndarray, folds: np.ndarray, labels: Sequence[str],
                  mode: Mode) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """Cross-fitted calibrated probabilities (rows without label_probs left 0) and the calibration report, or Nones."""
    has = np.array([p is not None for p in label_probs], dtype=bool)
    P = np.array([[p.get(lab, 0.0) for lab in labels] if p is not None else [0.0] * len(labels) for p in label_probs])
    return _calibrate_matrix(P.reshape(len(has), len(labels)), has, Y, folds, mode)


def _calibrate_matrix(P: np.ndarray, has: np.ndarray, Y: np.ndarray, folds: np.ndarray,
                      mode: Mode) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """`calibrate_llm` on a probability matrix (rows without label_probs are 0 and `has` False); P is not kept."""
    if not has.any():
        return None, None
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


def calibration_matrix(P: np.ndarray, Y: np.ndarray, ids: Sequence[str], *, seed: int = 0) -> dict[str, Any] | None:
    """`calibration_of` on arrays: label_probs P (a NaN row where absent) and existing labels Y (items x labels)."""
    if not len(Y):
        return None
    mode: Mode = "single" if bool((Y.sum(1) == 1).all()) else "multi"
    has = ~np.isnan(P).any(1)
    return _calibrate_matrix(np.nan_to_num(P, nan=0.0), has, Y.astype(np.float64), fold_ids(ids, FOLDS, seed), mode)[1]


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


class _Scored(Sequence):
    """(id, text, existing labels) of item i, built when asked: the triage of a huge run holds no tuple per item."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str], gold_of: Callable[[int], list[str]]) -> None:
        self.ids, self.texts, self.gold_of = ids, texts, gold_of

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        return (self.ids[i], self.texts[i], self.gold_of(i))


@dataclass
class Triage:
    """The ranked items (likeliest error first), which source ranked, and the calibration figures.

    Held as arrays over the scored items (`order`: likeliest error first); `rows` / `iter_rows` build TriageRows.
    """

    source: str
    requested: str
    mode: Mode
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    ensemble_weights: list[float] | None = None
    labels: list[str] = field(default_factory=list)
    items: _Scored | None = None
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    P: np.ndarray | None = None
    by_corpus: np.ndarray | None = None  # items ranked by the corpus although another source was asked for

    def __len__(self) -> int:
        return len(self.order)

    def iter_rows(self, top: int | None = None) -> Iterator[TriageRow]:
        """The ranked rows, likeliest error first (the `top` first), built one at a time."""
        assert self.items is not None or not len(self.order)
        index = {lab: j for j, lab in enumerate(self.labels)}
        for i in self.order[:top]:
            iid, text, gold = self.items[i]  # type: ignore[index]
            row = self.P[i]  # type: ignore[index]
            yield TriageRow(iid, text, gold, _suggest_row(row, self.labels, self.mode), float(self.scores[i]),
                            {lab: float(row[index[lab]]) for lab in gold},
                            "corpus" if self.by_corpus is not None and self.by_corpus[i] else self.source)

    @property
    def rows(self) -> list[TriageRow]:
        """Every ranked row (small runs and tests; a report streams `iter_rows`)."""
        return list(self.iter_rows())

    def summary(self) -> dict[str, Any]:
        """What report.json records about the triage."""
        return {"source": self.source, "requested": self.requested, "mode": self.mode, "items": len(self.order),
                "folds": FOLDS, "notes": self.notes, "calibration": self.calibration,
                "ensemble_llm_weight_per_fold": self.ensemble_weights}


def _suggest_row(row: np.ndarray, labels: Sequence[str], mode: Mode, max_labels: int = 3) -> list[str]:
    order = np.argsort(-row, kind="stable")
    pick = [labels[order[0]]]
    if mode == "multi":
        pick += [labels[j] for j in order[1:max_labels] if row[j] >= 0.5]
    return pick


def triage(items: Sequence[dict[str, Any]], labels: Sequence[str], pool: Iterable[tuple[str, str, Sequence[str]]] = (),
           source: Source = "ensemble", *, seed: int = 0) -> Triage:
    """Rank labeled items by how likely their existing labels are wrong.

    `items`: dicts with `id`, `text`, `gold` (existing labels, non-empty), `label_probs` (dict or None) and optionally
    `status` (a failed prediction's label_probs are not used).
    `pool`: (id, text, labels) of the example pool, training data for the corpus classifier.
    """
    if source not in SOURCES:
        raise ValueError(f"triage source must be one of {SOURCES}, got {source!r}")
    labels = list(labels)
    items = [r for r in items if r.get("gold")]
    gold = [list(r["gold"]) for r in items]
    probs = [r.get("label_probs") if r.get("status", "ok") == "ok" else None for r in items]
    P = np.array([[p.get(lab, 0.0) for lab in labels] if p is not None else [np.nan] * len(labels) for p in probs])
    return triage_arrays([r["id"] for r in items], [r["text"] for r in items], gold.__getitem__,
                         binarize(gold, labels), P.reshape(len(items), len(labels)), labels, pool, source, seed=seed)


def triage_arrays(ids: Sequence[str], texts: Sequence[str], gold_of: Callable[[int], list[str]], Y: np.ndarray,
                  P_llm: np.ndarray | None, labels: Sequence[str], pool: Iterable[tuple[str, str, Sequence[str]]] = (),
                  source: Source = "ensemble", *, seed: int = 0) -> Triage:
    """`triage` on arrays: Y the 0/1 existing labels (items x labels, every item has one), P_llm the model's label_probs
    (a NaN row where it gave none; None: no item has them); texts and existing labels are looked up when needed,
    never copied per item."""
    if source not in SOURCES:
        raise ValueError(f"triage source must be one of {SOURCES}, got {source!r}")
    labels = list(labels)
    if not len(ids):
        return Triage(source, source, "single", ["no item has existing labels: nothing to rank"], labels=labels)
    Y = np.asarray(Y)
    if Y.dtype == bool:
        Y = Y.astype(np.uint8)  # 0/1 as numbers: one byte an entry, not eight (the figures are the same)
    mode: Mode = "single" if bool((Y.sum(1) == 1).all()) else "multi"
    folds = fold_ids(ids, FOLDS, seed)
    has_llm = ~np.isnan(P_llm).any(1) if P_llm is not None else np.zeros(len(ids), dtype=bool)
    notes: list[str] = []
    used = source
    if source in ("llm", "ensemble") and not has_llm.any():
        notes.append(f"no prediction has label_probs (the model gave no per-label probabilities): ranked by corpus, not {source}")
        used = "corpus"
    Q_llm, calibration = _calibrate_matrix(np.nan_to_num(P_llm, nan=0.0), has_llm, Y, folds, mode) if has_llm.any() \
        else (None, None)
    scored = _Scored(ids, texts, gold_of)
    P_corpus = None
    if used in ("corpus", "ensemble"):
        P_corpus = corpus_probabilities(scored, pool, labels, mode, seed=seed)
    weights = None
    by_corpus = None
    if used == "llm":
        P = Q_llm
        missing = ~has_llm
        if missing.any():
            rows = np.flatnonzero(missing)
            P[missing] = corpus_probabilities([scored[i] for i in rows], pool, labels, mode, seed=seed)
            notes.append(f"{int(missing.sum())} item(s) without label_probs ranked by corpus")
            by_corpus = missing
    elif used == "corpus":
        P = P_corpus
    else:
        P = P_corpus
        P[has_llm], weights = ensemble_cross_fitted(Q_llm[has_llm], P_corpus[has_llm], Y[has_llm], folds[has_llm], mode)
        if (~has_llm).any():
            notes.append(f"{int((~has_llm).sum())} item(s) without label_probs ranked by corpus alone")
            by_corpus = ~has_llm
    del Q_llm
    quality = _label_quality_matrix(P, Y, mode)
    scores = np.clip(1.0 - quality, 0.0, 1.0)
    order = np.lexsort((np.asarray(ids), -scores)).astype(np.int64)  # likeliest error first, ties by id
    return Triage(used, source, mode, notes, calibration, weights, labels, scored, order, scores, P, by_corpus)


def triage_run(rows: Sequence[dict[str, Any]], labels: Sequence[str], pool: Corpus | None, source: Source = "ensemble",
               *, seed: int = 0) -> Triage:
    """Triage of a relabel run's prediction rows (every row with existing labels; failed ones have no label_probs)."""
    items = [r for r in rows if r.get("gold")]  # triage reads label_probs of ok rows only
    pool_items = [(it.id, it.text, it.labels) for it in pool.items] if pool is not None else []
    return triage(items, labels, pool_items, source, seed=seed)
