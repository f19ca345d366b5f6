"""Agreement between existing multi-label annotations (gold) and ranked predictions.

An item's gold is a set of labels; a prediction is a list of labels, most confident first, possibly
empty. All figures are computed on the item x label binary matrices with numpy, so the bootstrap is
one vectorised pass over resampling weights, and they equal scikit-learn / NLTK on the same data:

- F1, precision, recall, samples Jaccard use scikit-learn's `zero_division=0`: a 0/0 ratio counts as
  0 (a label never predicted has precision 0; a label absent on both sides has F1 0 and still counts
  in `macro_f1`; an item with no gold and no prediction scores 0 in `samples_f1`/`samples_jaccard`).
- `cohen_kappa` is the mean of per-label binary kappas over the labels where kappa is defined. It is
  undefined (None per label) only when gold and prediction are both constant and equal for that
  label, e.g. a label nobody used: such a label says nothing about agreement, so it is left out of
  the mean rather than counted as 0 or 1. None if no label has a defined kappa.
- `krippendorff_alpha` treats gold and prediction as two coders whose values are label sets, with
  MASI distance (NLTK's `masi_distance`; an empty set is at distance 0 from itself and 1 from any
  other set). When every item has exactly one label on both sides MASI is the nominal distance, so
  the figure is nominal alpha. None when all values are one and the same set (NLTK returns 1 there).
- A figure that is undefined is None, never NaN; the same holds for both ends of a CI.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

__all__ = [
    "HEADLINE",
    "NO_PREDICTION",
    "LabelScore",
    "Agreement",
    "Difference",
    "McNemar",
    "Comparison",
    "scored_labels",
    "score",
    "compare",
    "confusion",
    "score_matrix",
    "compare_matrix",
    "scored_columns",
    "confusion_matrix",
    "expected_calibration_error",
    "top_label_confidence",
]

HEADLINE = (
    "exact_match",
    "top1_accuracy",
    "micro_f1",
    "macro_f1",
    "samples_jaccard",
    "cohen_kappa",
    "krippendorff_alpha",
)
NO_PREDICTION = "(no prediction)"
_CELLS = 4_000_000


class LabelScore(BaseModel):
    """One label's scores against gold; kappa is None when undefined (see module doc)."""

    model_config = ConfigDict(extra="forbid")

    precision: float
    recall: float
    f1: float
    support: int
    kappa: float | None


class Agreement(BaseModel):
    """Agreement of one prediction with gold, with percentile-bootstrap CIs for the headline figures."""

    model_config = ConfigDict(extra="forbid")

    n: int
    exact_match: float
    top1_accuracy: float
    micro_f1: float
    macro_f1: float
    weighted_f1: float
    samples_f1: float
    samples_jaccard: float
    hamming_loss: float
    cohen_kappa: float | None
    cohen_kappa_multiclass: float | None
    krippendorff_alpha: float | None
    per_label: dict[str, LabelScore]
    ci: dict[str, tuple[float, float] | None]


class Difference(BaseModel):
    """One headline metric for a and b, b - a, its paired-bootstrap CI and two-sided p-value."""

    model_config = ConfigDict(extra="forbid")

    a: float | None
    b: float | None
    diff: float | None
    ci: tuple[float, float] | None
    p_value: float | None


class McNemar(BaseModel):
    """McNemar's test on top-1 correctness; b01 = items only b gets right, b10 = only a gets right."""

    model_config = ConfigDict(extra="forbid")

    b01: int
    b10: int
    method: Literal["exact", "chi2", "none"]
    statistic: float | None
    p_value: float


class Comparison(BaseModel):
    """Paired comparison of predictions a and b against the same gold."""

    model_config = ConfigDict(extra="forbid")

    n: int
    metrics: dict[str, Difference]
    mcnemar: McNemar


@dataclass
class _Side:
    """One prediction as per-item arrays: scalar columns, per-label tp|fp|fn, value-set code, top-1 hit."""

    P: np.ndarray
    scalars: np.ndarray
    counts: np.ndarray
    code: np.ndarray
    hit: np.ndarray


@dataclass
class _Data:
    labels: list[str]
    G: np.ndarray
    gcode: np.ndarray
    D: np.ndarray
    sides: list[_Side]


def _items(rows: Sequence[Collection[str]] | Sequence[Sequence[str]]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in rows]


def _binarize(rows: list[list[str]], index: dict[str, int]) -> np.ndarray:
    M = np.zeros((len(rows), len(index)), dtype=bool)
    for i, row in enumerate(rows):
        M[i, [index[x] for x in row]] = True
    return M


def _masi(U: np.ndarray) -> np.ndarray:
    """Pairwise MASI distance between the label sets given as rows of U, as NLTK's masi_distance."""
    U = U.astype(np.float64)
    inter = U @ U.T
    size = U.sum(1)
    sa, sb = size[:, None], size[None, :]
    union = sa + sb - inter
    m = np.where(
        (inter == sa) & (inter == sb), 1.0, np.where(inter == np.minimum(sa, sb), 2 / 3, np.where(inter > 0, 1 / 3, 0.0))
    )
    jac = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    return 1 - jac * m


def _prepare(gold: Sequence[Collection[str]], preds: list[Sequence[Sequence[str]]], labels: Sequence[str] | None) -> _Data:
    g = _items(gold)
    ps = [_items(p) for p in preds]
    if not g:
        raise ValueError("no items to score")
    if any(len(p) != len(g) for p in ps):
        raise ValueError(f"gold has {len(g)} items but a prediction has {[len(p) for p in ps]}")
    seen = {x for rows in [g, *ps] for row in rows for x in row}
    if labels is None:
        labels = sorted(seen)
    else:
        labels = list(labels)
        if len(set(labels)) != len(labels):
            raise ValueError("labels has duplicates")
        unknown = seen - set(labels)
        if unknown:
            raise ValueError(f"labels not in the label set: {sorted(unknown)}")
    if not labels:
        raise ValueError("no labels: gold and predictions are all empty and no label set was given")
    index = {x: j for j, x in enumerate(labels)}
    G = _binarize(g, index)
    Ps = [_binarize(p, index) for p in ps]
    hits = [np.array([bool(r) and r[0] in set(gr) for r, gr in zip(rows, g)], dtype=bool) for rows in ps]
    return _from_matrices(labels, G, Ps, hits)


def _hit(G: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Whether each item's top predicted label (a column; -1 = no prediction) is among its gold labels."""
    return (top >= 0) & G[np.arange(len(G)), np.maximum(top, 0)]


def _from_matrices(labels: list[str], G: np.ndarray, Ps: list[np.ndarray], hits: list[np.ndarray]) -> _Data:
    """The scoring data from item x label boolean matrices and each prediction's top-1 hits."""
    U, codes = np.unique(np.vstack([G, *Ps]), axis=0, return_inverse=True)
    codes = codes.reshape(len(Ps) + 1, -1)
    D = _masi(U)
    n_gold = G.sum(1)
    n = len(G)
    sides = []
    for k, (P, hit) in enumerate(zip(Ps, hits)):
        tp, fp, fn = G & P, ~G & P, G & ~P
        inter, n_pred = tp.sum(1), P.sum(1)
        scalars = np.column_stack(
            [
                (fp | fn).sum(1) == 0,
                hit,
                np.divide(2 * inter, n_gold + n_pred, out=np.zeros(n), where=n_gold + n_pred > 0),
                np.divide(inter, (G | P).sum(1), out=np.zeros(n), where=(G | P).sum(1) > 0),
                D[codes[0], codes[k + 1]],
            ]
        ).astype(np.float64)
        sides.append(_Side(P, scalars, np.hstack([tp, fp, fn]).astype(np.float32), codes[k + 1], hit))
    return _Data(labels, G, codes[0], D, sides)


def _div(a: np.ndarray, b: np.ndarray, fill: float = 0.0) -> np.ndarray:
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    return np.divide(a, b, out=np.full(a.shape, fill), where=b != 0)


def _metrics(W: np.ndarray, C: np.ndarray, side: _Side, D: np.ndarray) -> dict[str, np.ndarray]:
    """All figures for each row of item weights W (resamples x items); C counts each value set per row."""
    n = W.sum(1)
    L = side.counts.shape[1] // 3
    s = (side.scalars.T @ W.T).T  # not W @ X: OpenBLAS is ~100x slower on (few x huge) @ (huge x few)
    # counts are 0/1 in float32 (half the memory of a run's rows); the sums are whole numbers below 2**24, so exact
    tp, fp, fn = np.split((side.counts.T @ W.T.astype(np.float32)).T.astype(np.float64), 3, axis=1)
    g1, p1 = tp + fn, tp + fp
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    nn = n[:, None]
    kappa = 1 - _div((fp + fn) * nn, g1 * (nn - p1) + (nn - g1) * p1, np.nan)
    defined = ~np.isnan(kappa)
    N = 2 * n
    de = np.einsum("bk,bk->b", C @ D, C) / (N * (N - 1))
    return {
        "exact_match": s[:, 0] / n,
        "top1_accuracy": s[:, 1] / n,
        "micro_f1": _div(2 * tp.sum(1), (2 * tp + fp + fn).sum(1)),
        "macro_f1": f1.mean(1),
        "weighted_f1": _div((f1 * g1).sum(1), g1.sum(1)),
        "samples_f1": s[:, 2] / n,
        "samples_jaccard": s[:, 3] / n,
        "hamming_loss": (fp + fn).sum(1) / (n * L),
        "cohen_kappa": _div(np.where(defined, kappa, 0).sum(1), defined.sum(1), np.nan),
        "krippendorff_alpha": 1 - _div(s[:, 4] / n, de, np.nan),
        "_label_kappa": kappa,
        "_label_f1": f1,
        "_tp": tp,
        "_fp": fp,
        "_fn": fn,
    }


def _point(data: _Data, side: _Side) -> dict[str, np.ndarray]:
    K = len(data.D)
    C = np.bincount(data.gcode, minlength=K) + np.bincount(side.code, minlength=K)
    return _metrics(np.ones((1, len(data.G))), C[None].astype(np.float64), side, data.D)


def _bootstrap(data: _Data, n_boot: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Headline figures for each side over the same n_boot item resamples (paired across sides).

    Items are grouped by what the figures see of them (gold set, each side's predicted set and top-1 hit): a
    resample is a count per group, so the weight matrices are resamples x groups, not resamples x items.
    """
    n, K = len(data.G), len(data.D)
    keys = np.column_stack([data.gcode, *(s.code for s in data.sides), *(s.hit for s in data.sides)])
    _, first, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    group, U = group.reshape(-1), len(first)
    sides = [_Side(s.P, s.scalars[first], s.counts[first], s.code[first], s.hit[first]) for s in data.sides]
    onehot = np.zeros((U, K))  # group -> value-set counts, gold's and each side's
    np.add.at(onehot, (np.arange(U), data.gcode[first]), 1.0)
    side_sets = []
    for s in sides:
        m = onehot.copy()
        np.add.at(m, (np.arange(U), s.code), 1.0)
        side_sets.append(m)
    rng = np.random.default_rng(seed)
    step = max(1, _CELLS // max(n, K))
    out: list[dict[str, list[np.ndarray]]] = [{m: [] for m in HEADLINE} for _ in sides]
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        W = np.bincount((np.arange(b)[:, None] * U + group[idx]).ravel(), minlength=b * U).reshape(b, U).astype(np.float64)
        for side, sets, acc in zip(sides, side_sets, out):
            vals = _metrics(W, W @ sets, side, data.D)
            for m in HEADLINE:
                acc[m].append(vals[m])
    return [{m: np.concatenate(v) for m, v in acc.items()} for acc in out]


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _interval(values: np.ndarray, ci: float) -> tuple[float, float] | None:
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    low, high = np.percentile(values, [50 * (1 - ci), 50 * (1 + ci)])
    return float(low), float(high)


def _multiclass_kappa(G: np.ndarray, P: np.ndarray) -> float | None:
    """Plain Cohen's kappa when every item has exactly one label on both sides, else None."""
    if not ((G.sum(1) == 1).all() and (P.sum(1) == 1).all()):
        return None
    n = len(G)
    exp = n * n - float(G.sum(0) @ P.sum(0))
    return None if exp == 0 else float(1 - (G != P).any(1).sum() * n / exp)


def scored_labels(*sides: Sequence[Collection[str]]) -> list[str]:
    """The one rule for which labels a figure covers: every label that gold or a compared prediction uses.

    `agree`, a run's report and an eval all score with it, so the same predictions give the same figures
    everywhere; a taxonomy label that no side uses says nothing about agreement and would only add a 0 to macro-F1.
    """
    return sorted({lab for side in sides for row in side if row is not None for lab in row})


def score(
    gold: Sequence[Collection[str]],
    pred: Sequence[Sequence[str]],
    labels: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> Agreement:
    """Score predictions against gold; CIs resample items with replacement (n_boot=0 skips them).

    `labels` is the full label set (taxonomy), default the sorted union of both sides; a label outside
    it raises ValueError rather than being silently dropped. A bare string item counts as one label.
    """
    return _score(_prepare(gold, [pred], labels), n_boot, seed, ci)


def score_matrix(
    G: np.ndarray, P: np.ndarray, top: np.ndarray, labels: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
    ci: float = 0.95,
) -> Agreement:
    """`score` from item x label boolean matrices (gold, predicted) and each item's top predicted column (-1: none).

    Equal to `score` on the same items; a run's report uses it to score 100,000s of rows without a list per row.
    """
    if not len(G):
        raise ValueError("no items to score")
    if not len(labels):
        raise ValueError("no labels: gold and predictions are all empty and no label set was given")
    return _score(_from_matrices(list(labels), G, [P], [_hit(G, top)]), n_boot, seed, ci)


def scored_columns(*matrices: np.ndarray) -> np.ndarray:
    """`scored_labels` on matrices: the columns (in order) that some row of some matrix uses."""
    return np.flatnonzero(np.logical_or.reduce([M.any(0) for M in matrices]))


def _score(data: _Data, n_boot: int, seed: int, ci: float) -> Agreement:
    side = data.sides[0]
    p = _point(data, side)
    boot = _bootstrap(data, n_boot, seed)[0] if n_boot > 0 else {}
    support = data.G.sum(0)
    per_label = {
        name: LabelScore(
            precision=float(_div(p["_tp"][0, j], p["_tp"][0, j] + p["_fp"][0, j])),
            recall=float(_div(p["_tp"][0, j], p["_tp"][0, j] + p["_fn"][0, j])),
            f1=float(p["_label_f1"][0, j]),
            support=int(support[j]),
            kappa=_num(p["_label_kappa"][0, j]),
        )
        for j, name in enumerate(data.labels)
    }
    figures = {m: v[0] for m, v in p.items() if not m.startswith("_")}
    return Agreement(
        n=len(data.G),
        **{m: _num(v) for m, v in figures.items()},
        cohen_kappa_multiclass=_multiclass_kappa(data.G, side.P),
        per_label=per_label,
        ci={m: _interval(v, ci) for m, v in boot.items()},
    )


def _mcnemar(b01: int, b10: int) -> McNemar:
    """Exact binomial test below 25 discordant pairs, else chi-square with continuity correction."""
    d = b01 + b10
    if d == 0:
        return McNemar(b01=b01, b10=b10, method="none", statistic=None, p_value=1.0)
    if d < 25:
        try:
            from scipy.stats import binom

            tail = float(binom.cdf(min(b01, b10), d, 0.5))
        except ImportError:
            tail = sum(math.comb(d, k) for k in range(min(b01, b10) + 1)) / 2**d
        return McNemar(b01=b01, b10=b10, method="exact", statistic=float(min(b01, b10)), p_value=min(1.0, 2 * tail))
    stat = (abs(b01 - b10) - 1) ** 2 / d
    try:
        from scipy.stats import chi2

        pv = float(chi2.sf(stat, 1))
    except ImportError:
        pv = math.erfc(math.sqrt(stat / 2))
    return McNemar(b01=b01, b10=b10, method="chi2", statistic=float(stat), p_value=pv)


def compare(
    gold: Sequence[Collection[str]],
    pred_a: Sequence[Sequence[str]],
    pred_b: Sequence[Sequence[str]],
    labels: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> Comparison:
    """Paired comparison of b against a on the same items: b - a per headline metric, plus McNemar on top-1.

    The p-value is two-sided from the paired bootstrap: twice the smaller share of resampled differences
    on either side of 0, with a +1 correction so it is never 0 from a finite number of resamples.
    """
    return _compare(_prepare(gold, [pred_a, pred_b], labels), n_boot, seed, ci)


def compare_matrix(
    G: np.ndarray, Pa: np.ndarray, top_a: np.ndarray, Pb: np.ndarray, top_b: np.ndarray, labels: Sequence[str], *,
    n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
) -> Comparison:
    """`compare` from item x label boolean matrices and top predicted columns (-1: none), as `score_matrix`."""
    if not len(G):
        raise ValueError("no items to score")
    return _compare(_from_matrices(list(labels), G, [Pa, Pb], [_hit(G, top_a), _hit(G, top_b)]), n_boot, seed, ci)


def _compare(data: _Data, n_boot: int, seed: int, ci: float) -> Comparison:
    pa, pb = (_point(data, s) for s in data.sides)
    ba, bb = _bootstrap(data, n_boot, seed) if n_boot > 0 else ({}, {})
    metrics = {}
    for m in HEADLINE:
        a, b = _num(pa[m][0]), _num(pb[m][0])
        diff = None if a is None or b is None else b - a
        p_value = None
        interval = None
        if diff is not None and n_boot > 0:
            d = bb[m] - ba[m]
            d = d[~np.isnan(d)]
            interval = _interval(d, ci)
            if len(d):
                tails = min((d <= 0).sum(), (d >= 0).sum())
                p_value = float(min(1.0, 2 * (tails + 1) / (len(d) + 1)))
        metrics[m] = Difference(a=a, b=b, diff=diff, ci=interval, p_value=p_value)
    ha, hb = data.sides[0].hit, data.sides[1].hit
    return Comparison(
        n=len(data.G),
        metrics=metrics,
        mcnemar=_mcnemar(int((~ha & hb).sum()), int((ha & ~hb).sum())),
    )


def confusion(
    gold: Sequence[Collection[str]],
    pred: Sequence[Sequence[str]],
    labels: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Counts of gold label (rows) against top-1 predicted label (columns, plus NO_PREDICTION).

    An item with several gold labels adds one count to each of its gold rows, so row sums are supports.
    """
    data = _prepare(gold, [pred], labels)
    index = {x: j for j, x in enumerate(data.labels)}
    top = np.array([index[r[0]] if r else -1 for r in _items(pred)], dtype=np.int64)
    return confusion_matrix(data.G, top, data.labels)


def confusion_matrix(G: np.ndarray, top: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """`confusion` from a gold item x label boolean matrix and each item's top predicted column (-1: none)."""
    labels = list(labels)
    cols = [*labels, NO_PREDICTION]
    top = np.where(top < 0, len(labels), top)
    onehot = np.zeros((len(top), len(cols)), dtype=np.int64)
    onehot[np.arange(len(top)), top] = 1
    counts = G.astype(np.int64).T @ onehot
    return pd.DataFrame(counts, index=pd.Index(labels, name="gold"), columns=pd.Index(cols, name="predicted"))


def top_label_confidence(P: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability of each item's top label, and whether that label is among its existing labels."""
    top = P.argmax(1)
    rows = np.arange(len(P))
    return P[rows, top], Y[rows, top] > 0


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> tuple[float, list[dict[str, Any]]]:
    """ECE over equal-width confidence bins (weighted |accuracy - confidence|), and the reliability diagram's bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    ece, out = 0.0, []
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        if n:
            acc, mean_conf = float(correct[m].mean()), float(conf[m].mean())
            ece += n / len(conf) * abs(acc - mean_conf)
        else:
            acc = mean_conf = None
        out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n, "confidence": mean_conf, "accuracy": acc})
    return float(ece), out
