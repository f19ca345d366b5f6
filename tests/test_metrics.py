"""Agreement metrics checked against scikit-learn and NLTK; plots checked for output and CJK glyphs."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
from nltk.metrics.agreement import AnnotationTask
from nltk.metrics.distance import binary_distance, masi_distance
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    hamming_loss,
    jaccard_score,
    precision_recall_fscore_support,
)
from sklearn.preprocessing import MultiLabelBinarizer

from labelwise._metrics import HEADLINE, NO_PREDICTION, Agreement, _masi, _mcnemar, compare, confusion, score

LABELS = [f"类别{i:02d}" for i in range(27)]
TAXONOMY = [*LABELS, "从未使用"]


def make_data(seed: int, n: int = 200, skill: float = 0.5, empty: float = 0.1):
    """Random gold (1-3 labels) and predictions that hit gold with probability `skill`, sometimes empty."""
    rng = np.random.default_rng(seed)
    gold = [set(rng.choice(LABELS, rng.integers(1, 4), replace=False).tolist()) for _ in range(n)]
    pred = []
    for g in gold:
        if rng.random() < empty:
            pred.append([])
            continue
        k = int(rng.integers(1, 4))
        guess = list(rng.choice(LABELS, k, replace=False))
        if rng.random() < skill:
            guess = [*sorted(g)[: rng.integers(1, len(g) + 1)], *guess]
        pred.append(list(dict.fromkeys(guess))[:k])
    return gold, pred


def improve(gold, pred, seed: int, share: float):
    """Copy of pred where a share of items is replaced by the exact gold set."""
    rng = np.random.default_rng(seed)
    return [sorted(g) if rng.random() < share else list(p) for g, p in zip(gold, pred)]


def kappas(G, P):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([cohen_kappa_score(G[:, j], P[:, j]) for j in range(G.shape[1])])


def masi0(a, b):
    """NLTK's MASI, with two empty sets at distance 0 (NLTK divides 0 by 0 there)."""
    return 0.0 if not a and not b else masi_distance(a, b)


def nltk_alpha(gold, pred, distance=masi0, value=frozenset):
    data = [(c, i, value(v)) for i, (g, p) in enumerate(zip(gold, pred)) for c, v in (("gold", g), ("pred", p))]
    return AnnotationTask(data=data, distance=distance).alpha()


def floats(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from floats(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from floats(v)
    elif isinstance(x, float):
        yield x


def assert_no_nan(model) -> None:
    assert all(math.isfinite(v) for v in floats(model.model_dump()))
    assert "NaN" not in model.model_dump_json() and "Infinity" not in model.model_dump_json()


def check_against_references(gold, pred, labels, a: Agreement) -> None:
    mlb = MultiLabelBinarizer(classes=labels)
    G, P = mlb.fit_transform(gold), mlb.transform(pred)
    approx = lambda x: pytest.approx(x, rel=1e-9, abs=1e-12)  # noqa: E731
    assert a.n == len(gold)
    assert a.exact_match == approx(accuracy_score(G, P))
    assert a.top1_accuracy == approx(np.mean([bool(p) and p[0] in g for g, p in zip(gold, pred)]))
    for avg in ("micro", "macro", "weighted", "samples"):
        assert getattr(a, f"{avg}_f1") == approx(f1_score(G, P, average=avg, zero_division=0)), avg
    assert a.samples_jaccard == approx(jaccard_score(G, P, average="samples", zero_division=0))
    assert a.hamming_loss == approx(hamming_loss(G, P))
    prec, rec, f1, sup = precision_recall_fscore_support(G, P, average=None, zero_division=0)
    ks = kappas(G, P)
    assert list(a.per_label) == list(labels)
    for j, name in enumerate(labels):
        s = a.per_label[name]
        assert (s.precision, s.recall, s.f1, s.support) == (approx(prec[j]), approx(rec[j]), approx(f1[j]), sup[j])
        assert (s.kappa is None) == bool(np.isnan(ks[j]))
        if s.kappa is not None:
            assert s.kappa == approx(ks[j])
    if np.isnan(ks).all():
        assert a.cohen_kappa is None
    else:
        assert a.cohen_kappa == approx(np.nanmean(ks))
    if len({frozenset(v) for v in [*gold, *pred]}) == 1:
        assert a.krippendorff_alpha is None and nltk_alpha(gold, pred) == 1
    else:
        assert a.krippendorff_alpha == approx(nltk_alpha(gold, pred))
    assert_no_nan(a)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_multilabel_matches_sklearn_and_nltk(seed):
    gold, pred = make_data(seed)
    assert any(not p for p in pred) and any(len(g) == 3 for g in gold)
    a = score(gold, pred, TAXONOMY, n_boot=0)
    check_against_references(gold, pred, TAXONOMY, a)
    assert a.per_label["从未使用"].kappa is None and a.per_label["从未使用"].f1 == 0.0
    assert a.cohen_kappa_multiclass is None
    assert 0.05 < a.micro_f1 < 0.95


def test_default_labels_are_sorted_union():
    gold, pred = make_data(7, n=40)
    a = score(gold, pred, n_boot=0)
    used = sorted({x for rows in (gold, pred) for r in rows for x in r})
    assert list(a.per_label) == used
    check_against_references(gold, pred, used, a)


def test_masi_matrix_equals_nltk():
    sets = [frozenset(), frozenset("a"), frozenset("b"), frozenset("ab"), frozenset("abc"), frozenset("cd"), frozenset("bcd")]
    U = np.array([[x in s for x in "abcd"] for s in sets])
    D = _masi(U)
    for i, s in enumerate(sets):
        for j, t in enumerate(sets):
            assert D[i, j] == pytest.approx(masi0(s, t), abs=1e-15), (s, t)


def test_label_never_predicted():
    gold = [{"甲"}, {"乙"}, {"甲", "乙"}, {"丙"}]
    pred = [["甲"], ["甲"], ["甲"], ["甲"]]
    a = score(gold, pred, ["甲", "乙", "丙"], n_boot=50)
    check_against_references(gold, pred, ["甲", "乙", "丙"], a)
    assert a.per_label["乙"].precision == 0.0 and a.per_label["乙"].support == 2
    assert a.per_label["丙"].kappa == 0.0


def test_empty_predictions():
    gold = [{"a"}, {"b"}, {"a", "c"}, {"c"}, {"b"}]
    pred = [[], ["b"], [], ["c", "a"], ["a"]]
    a = score(gold, pred, n_boot=50)
    check_against_references(gold, pred, ["a", "b", "c"], a)
    assert a.top1_accuracy == pytest.approx(2 / 5)
    assert score(gold, [[]] * 5, n_boot=50).top1_accuracy == 0.0


@pytest.mark.parametrize(
    ("gold", "pred"),
    [([{"a"}], [["a"]]), ([{"a"}], [[]]), ([{"a", "b"}], [["b", "c"]]), ([{"a"}], [["b"]])],
)
def test_one_item(gold, pred):
    a = score(gold, pred, ["a", "b", "c"], n_boot=100)
    check_against_references(gold, pred, ["a", "b", "c"], a)
    for m in HEADLINE:
        value = getattr(a, m)
        assert a.ci[m] == (None if value is None else (value, value))


def test_one_item_one_label():
    a = score(["a"], [[]], n_boot=10)
    assert (a.exact_match, a.top1_accuracy, a.micro_f1, a.hamming_loss, a.cohen_kappa) == (0.0, 0.0, 0.0, 1.0, 0.0)
    assert a.krippendorff_alpha == pytest.approx(nltk_alpha(["a"], [[]]))
    assert_no_nan(a)


def test_all_single_label_multiclass_kappa_and_nominal_alpha():
    rng = np.random.default_rng(11)
    labels = LABELS[:6]
    g = rng.choice(labels, 150).tolist()
    p = [x if rng.random() < 0.6 else str(rng.choice(labels)) for x in g]
    a = score([{x} for x in g], [[x] for x in p], n_boot=0)
    assert a.cohen_kappa_multiclass == pytest.approx(cohen_kappa_score(g, p), rel=1e-12)
    nominal = nltk_alpha(g, p, distance=binary_distance, value=str)
    assert a.krippendorff_alpha == pytest.approx(nominal, rel=1e-9)
    assert a.krippendorff_alpha == pytest.approx(nltk_alpha([{x} for x in g], [[x] for x in p]), rel=1e-9)
    assert score(g, p, n_boot=0) == a
    assert 0.3 < a.cohen_kappa_multiclass < 0.9


def test_multiclass_kappa_only_when_single_label_everywhere():
    assert score([{"a"}, {"b"}], [["a"], []], n_boot=0).cohen_kappa_multiclass is None
    assert score([{"a"}, {"a", "b"}], [["a"], ["b"]], n_boot=0).cohen_kappa_multiclass is None
    assert score([{"a"}, {"b"}], [["a"], ["a", "b"]], n_boot=0).cohen_kappa_multiclass is None
    assert score([{"a"}, {"b"}], [["a"], ["a"]], n_boot=0).cohen_kappa_multiclass == pytest.approx(0.0)


def test_undefined_figures_are_none():
    a = score([{"a"}] * 4, [["a"]] * 4, n_boot=50)
    assert a.cohen_kappa is None and a.cohen_kappa_multiclass is None and a.krippendorff_alpha is None
    assert a.ci["cohen_kappa"] is None and a.ci["krippendorff_alpha"] is None
    assert a.exact_match == 1.0 and a.micro_f1 == 1.0
    assert_no_nan(a)


def test_input_errors():
    with pytest.raises(ValueError, match="not in the label set"):
        score([{"a"}], [["x"]], ["a"])
    with pytest.raises(ValueError, match="items"):
        score([{"a"}, {"b"}], [["a"]])
    with pytest.raises(ValueError, match="no items"):
        score([], [])
    with pytest.raises(ValueError, match="duplicates"):
        score([{"a"}], [["a"]], ["a", "a"])


def test_bootstrap_ci_contains_point_and_is_reproducible():
    for seed in range(3):
        gold, pred = make_data(seed, n=300)
        a = score(gold, pred, TAXONOMY, n_boot=400, seed=5)
        assert set(a.ci) == set(HEADLINE)
        for m in HEADLINE:
            low, high = a.ci[m]
            assert low <= getattr(a, m) <= high, m
            assert high - low > 0.005, m
        assert score(gold, pred, TAXONOMY, n_boot=400, seed=5).ci == a.ci
        assert score(gold, pred, TAXONOMY, n_boot=400, seed=6).ci != a.ci
    assert score(gold, pred, n_boot=0).ci == {}


def test_bootstrap_ci_matches_binomial_interval():
    gold, pred = make_data(8, n=600)
    for level, z in [(0.95, 1.959964), (0.5, 0.674490)]:
        a = score(gold, pred, n_boot=4000, seed=1, ci=level)
        p = a.top1_accuracy
        half = z * math.sqrt(p * (1 - p) / len(gold))
        low, high = a.ci["top1_accuracy"]
        assert low == pytest.approx(p - half, abs=0.1 * half) and high == pytest.approx(p + half, abs=0.1 * half)


def test_bootstrap_ci_width_shrinks_with_n():
    small = score(*make_data(0, n=100), n_boot=300)
    large = score(*make_data(0, n=1600), n_boot=300)
    for m in ("micro_f1", "krippendorff_alpha"):
        assert large.ci[m][1] - large.ci[m][0] < 0.5 * (small.ci[m][1] - small.ci[m][0])


def test_bootstrap_at_benchmark_size_gives_tight_intervals():
    """The size `benchmarks/` times (scenario 10): 6,000 items, 1,000 resamples; here only what it returns."""
    gold, pred = make_data(0, n=6000)
    a = score(gold, pred, TAXONOMY, n_boot=1000)
    p = a.top1_accuracy
    for m in HEADLINE:
        low, high = a.ci[m]
        assert low <= getattr(a, m) <= high and 0 < high - low < 0.06, m
    assert a.ci["top1_accuracy"][1] - a.ci["top1_accuracy"][0] == pytest.approx(
        2 * 1.959964 * math.sqrt(p * (1 - p) / len(gold)), rel=0.25)


def test_compare_b_clearly_better():
    gold, a = make_data(3, n=300, skill=0.3)
    b = improve(gold, a, 9, share=0.4)
    c = compare(gold, a, b, TAXONOMY, n_boot=500)
    sa, sb = score(gold, a, TAXONOMY, n_boot=0), score(gold, b, TAXONOMY, n_boot=0)
    for m in HEADLINE:
        d = c.metrics[m]
        assert (d.a, d.b) == (pytest.approx(getattr(sa, m)), pytest.approx(getattr(sb, m)))
        assert d.diff == pytest.approx(getattr(sb, m) - getattr(sa, m))
        assert d.diff > 0 and d.p_value < 0.05 and d.ci[0] > 0, m
    assert c.mcnemar.b01 > c.mcnemar.b10 and c.mcnemar.p_value < 0.05
    assert c.metrics["top1_accuracy"].p_value == pytest.approx(2 / 501)
    reverse = compare(gold, b, a, TAXONOMY, n_boot=500)
    assert reverse.metrics["micro_f1"].diff == pytest.approx(-c.metrics["micro_f1"].diff)
    assert (reverse.mcnemar.b01, reverse.mcnemar.b10) == (c.mcnemar.b10, c.mcnemar.b01)


def test_compare_identical_predictions():
    gold, a = make_data(4, n=200)
    c = compare(gold, a, list(a), n_boot=200)
    for d in c.metrics.values():
        assert d.diff == 0.0 and d.ci == (0.0, 0.0) and d.p_value == 1.0
    assert (c.mcnemar.b01, c.mcnemar.b10, c.mcnemar.p_value, c.mcnemar.method) == (0, 0, 1.0, "none")
    assert_no_nan(c)


def test_compare_p_value_agrees_with_normal_approximation():
    from scipy.stats import norm

    gold, a = make_data(6, n=800)
    rng = np.random.default_rng(3)
    b = [[] if rng.random() < 0.07 else p for p in improve(gold, a, 2, share=0.15)]
    c = compare(gold, a, b, n_boot=4000).metrics["top1_accuracy"]
    sd = (c.ci[1] - c.ci[0]) / (2 * 1.959964)
    expected = 2 * norm.sf(c.diff / sd)
    assert 0.005 < expected < 0.2
    assert c.p_value == pytest.approx(expected, rel=0.5)


def test_compare_small_difference_not_significant():
    gold, a = make_data(5, n=200)
    b = improve(gold, a, 1, share=0.02)
    c = compare(gold, a, b, n_boot=500)
    assert c.metrics["top1_accuracy"].p_value > 0.05 and c.mcnemar.p_value > 0.05


def test_mcnemar_matches_scipy(monkeypatch):
    from scipy.stats import binomtest, chi2

    for b01, b10 in [(0, 5), (3, 9), (12, 12), (1, 23)]:
        r = _mcnemar(b01, b10)
        assert r.method == "exact"
        assert r.p_value == pytest.approx(binomtest(b01, b01 + b10, 0.5).pvalue, rel=1e-12)
    for b01, b10 in [(20, 5), (40, 38), (100, 60)]:
        r = _mcnemar(b01, b10)
        stat = (abs(b01 - b10) - 1) ** 2 / (b01 + b10)
        assert r.method == "chi2" and r.statistic == pytest.approx(stat)
        assert r.p_value == pytest.approx(chi2.sf(stat, 1), rel=1e-12)
    with_scipy = [_mcnemar(*x).p_value for x in [(3, 9), (100, 60)]]
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    assert [_mcnemar(*x).p_value for x in [(3, 9), (100, 60)]] == pytest.approx(with_scipy, rel=1e-12)


def test_confusion_counts_each_gold_row():
    gold = [{"甲"}, {"甲", "乙"}, {"乙"}, {"丙"}, {"甲"}]
    pred = [["甲", "乙"], ["乙"], [], ["甲"], ["甲"]]
    df = confusion(gold, pred, ["甲", "乙", "丙"])
    assert list(df.index) == ["甲", "乙", "丙"] and list(df.columns) == ["甲", "乙", "丙", NO_PREDICTION]
    assert df.loc["甲"].tolist() == [2, 1, 0, 0]
    assert df.loc["乙"].tolist() == [0, 1, 0, 1]
    assert df.loc["丙"].tolist() == [1, 0, 0, 0]


def test_confusion_rows_sum_to_support():
    gold, pred = make_data(2)
    df = confusion(gold, pred, TAXONOMY)
    a = score(gold, pred, TAXONOMY, n_boot=0)
    assert df.sum(axis=1).to_dict() == {k: v.support for k, v in a.per_label.items()}
    assert df[NO_PREDICTION].sum() == sum(len(g) for g, p in zip(gold, pred) if not p)
    assert int(np.trace(df[TAXONOMY].to_numpy())) == sum(p[0] in g for g, p in zip(gold, pred) if p)


def test_models_forbid_extra_fields():
    a = score([{"a"}], [["a"]], n_boot=0)
    with pytest.raises(ValueError):
        Agreement(**a.model_dump(), extra=1)
    assert Agreement.model_validate_json(a.model_dump_json()) == a


def _png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_confusion_with_cjk_font(tmp_path):
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    from labelwise._plots import cjk_font, plot_confusion

    font = cjk_font()
    if font is None:
        pytest.skip("no CJK font installed (apt-get install fonts-wqy-microhei)")
    path = font_manager.findfont(font_manager.FontProperties(family=font), fallback_to_default=False)
    assert all(FT2Font(path).get_char_index(ord(ch)) for ch in "类别金融支持无预测")
    gold, pred = make_data(1, n=80)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = plot_confusion(confusion(gold, pred, TAXONOMY), tmp_path / "sub" / "confusion.png", title="混淆矩阵")
    assert _png(out)


def test_plots_fall_back_without_cjk_font(tmp_path, monkeypatch):
    from labelwise import _plots

    monkeypatch.setattr(_plots, "cjk_font", lambda: None)
    with pytest.warns(UserWarning, match="no CJK font") as record:
        out = _plots.plot_confusion(confusion([{"甲"}, {"乙"}], [["甲"], []]), tmp_path / "c.png")
    assert _png(out) and len(record) == 1


def test_plot_scatter_accepts_point_shapes(tmp_path):
    from types import SimpleNamespace

    from labelwise._plots import plot_scatter

    points = [("零样本", 0.1, 0.4), {"name": "少样本", "x": 0.3, "y": 0.6}, SimpleNamespace(name="定义", x=0.5, y=0.7)]
    assert _png(plot_scatter(points, tmp_path / "s.png", "成本 (USD)", "Krippendorff α"))


def test_bootstrap_ci_is_the_percentile_interval_of_rescoring_each_resample():
    # the bootstrap weighs groups of alike items; the same resamples scored item by item give the same interval
    from labelwise._metrics import HEADLINE as FIGURES

    rng = np.random.default_rng(3)
    gold = [set(rng.choice(LABELS, rng.integers(1, 3), replace=False).tolist()) for _ in range(40)]
    pred = [sorted(g)[:1] if rng.random() < 0.5 else [str(rng.choice(LABELS))] for g in gold]
    got = score(gold, pred, LABELS, n_boot=30, seed=4)
    draws = np.random.default_rng(4).integers(0, 40, size=(30, 40))  # one chunk: the bootstrap's own draws
    each = [score([gold[i] for i in row], [pred[i] for i in row], LABELS, n_boot=0).model_dump() for row in draws]
    for m in FIGURES:
        values = np.array([np.nan if e[m] is None else e[m] for e in each])
        values = values[~np.isnan(values)]
        want = tuple(np.percentile(values, [2.5, 97.5])) if len(values) else None
        assert got.ci[m] == (pytest.approx(want, abs=1e-12) if want else None), m
