"""Prompt evaluation: specs as data, a fixed held-out split, a grid of variants, a leaderboard with CIs."""

from __future__ import annotations

import html
import itertools
import json
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._corpus import Corpus, load_corpus
from ._exceptions import SpecError
from ._io import atomic_write_json, atomic_write_text, parse_yaml, write_jsonl
from ._settings import LabelSettings, RunOptions, SettingsUpdate
from ._taxonomy import load_taxonomy

__all__ = ["EvalSpec", "Variant", "load_spec", "run_eval", "arun_eval", "check_gates", "leaderboard_markdown"]

BASELINE = "baseline:tfidf-linearsvm"


class Variant(SettingsUpdate):
    """One labeling set-up to score: a partial update of the spec's settings (prompt, strategy, K, model, ...)."""

    name: str | None = None

    def settings(self, base: LabelSettings) -> LabelSettings:
        """The spec's settings with this variant's changes applied (validated)."""
        return base.updated(**self.model_dump(exclude_unset=True, exclude={"name"}))

    def label(self, base: LabelSettings) -> str:
        """A readable, unique name: prompt/strategy/kK/model[/ipr N][/other changed settings]."""
        if self.name:
            return self.name
        s = self.settings(base)
        parts = [s.prompt, "zero-shot" if s.shots == 0 else f"{s.strategy}/k{s.shots}", s.model]
        if s.items_per_request > 1:
            parts.append(f"ipr{s.items_per_request}")
        named = {"prompt", "strategy", "shots", "model", "items_per_request", "base_url"}
        parts += [f"{k}={v}" for k, v in self.model_dump(exclude_unset=True, exclude={"name"}).items() if k not in named]
        return "/".join(parts)


class Split(BaseModel):
    """The held-out split: `size` unique items drawn with `seed`, stored by id in `file` so it never moves."""

    model_config = ConfigDict(extra="forbid")

    file: str
    size: int = Field(200, ge=1)
    seed: int = 0


class EvalSpec(BaseModel):
    """An eval spec file (YAML): dataset, split, variants (a grid and/or a list), baseline, settings."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    dataset: str
    taxonomy: str | None = None
    settings: SettingsUpdate = Field(default_factory=SettingsUpdate)  # what every variant starts from
    split: Split
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    variants: list[Variant] = Field(default_factory=list)
    baseline: bool = True
    primary: Literal["top1_accuracy", "micro_f1", "macro_f1", "samples_jaccard", "exact_match", "cohen_kappa",
                     "krippendorff_alpha"] = "top1_accuracy"
    concurrency: int = Field(4, ge=1)
    n_boot: int = Field(1000, ge=0)
    prices: str | None = None

    def base(self, taxonomy: str | None = None) -> LabelSettings:
        """The settings every variant updates: the defaults, the spec's `settings`, its taxonomy (resolved)."""
        return LabelSettings().updated(**self.settings.model_dump(exclude_unset=True), taxonomy=taxonomy or self.taxonomy)

    def all_variants(self, taxonomy: str | None = None) -> dict[str, LabelSettings]:
        """Each variant's name and settings: the grid's cartesian product, then the listed variants; names are unique."""
        out: list[Variant] = []
        if self.grid:
            keys = list(self.grid)
            for combo in itertools.product(*(self.grid[k] for k in keys)):
                out.append(Variant(**dict(zip(keys, combo))))
        out += self.variants
        base = self.base(taxonomy)
        names = [v.label(base) for v in out]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecError(f"variant names repeat: {dupes}; give them distinct `name`s")
        if any(v.examples for v in out):
            raise SpecError("a variant can't set `examples`: every variant draws its examples from the split's pool")
        return {name: v.settings(base) for name, v in zip(names, out)}


def load_spec(path: str | Path) -> tuple[EvalSpec, Path]:
    """Read and validate a spec; relative paths in it are relative to the project (the spec's parent's parent)."""
    path = Path(path)
    if not path.exists():
        raise SpecError("spec file not found", path=path)
    data = parse_yaml(path.read_text(encoding="utf-8"), path, SpecError)
    try:
        spec = EvalSpec.model_validate(data)
        spec.all_variants()
    except ValidationError as e:
        first = e.errors()[0]
        raise SpecError(f"{'.'.join(map(str, first['loc']))}: {first['msg']} ({len(e.errors())} problem(s))", path=path) from None
    except (TypeError, SpecError) as e:
        raise SpecError(str(e), path=path) from None
    return spec, path.resolve().parent.parent


def _resolve(root: Path, p: str | None) -> str | None:
    if p is None:
        return None
    q = Path(p)
    return str(q if q.is_absolute() or q.exists() else root / q)


def held_out(spec: EvalSpec, corpus: Corpus, root: Path) -> list[str]:
    """The split's item ids: read from its file, or drawn once (seeded) and written there."""
    path = Path(_resolve(root, spec.split.file))
    known = corpus.by_id()
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = data["ids"]
        missing = [i for i in ids if i not in known]
        if missing:
            raise SpecError(f"{len(missing)} held-out ids are not in the dataset (e.g. {missing[0]}); the dataset changed "
                            "under a fixed split: delete the split file to draw a new one", path=path)
        if len(ids) < spec.split.size:
            raise SpecError(f"split file holds {len(ids)} ids but the spec asks for {spec.split.size}", path=path)
        return ids[: spec.split.size]
    if spec.split.size >= len(corpus):
        raise SpecError(f"split size {spec.split.size} leaves no example pool (dataset has {len(corpus)} unique texts)")
    ids = sorted(it.id for it in random.Random(spec.split.seed).sample(corpus.items, spec.split.size))
    atomic_write_json(path, {"dataset": spec.dataset, "seed": spec.split.seed, "size": spec.split.size, "ids": ids})
    return ids


def _baseline(pool: Corpus, test: list, labels: list[str]) -> list[list[str]]:
    """A character n-gram TF-IDF one-vs-rest linear SVM trained on the pool: what the LLM must beat."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer
    from sklearn.svm import LinearSVC

    mlb = MultiLabelBinarizer(classes=labels)
    y = mlb.fit_transform([it.labels for it in pool.items])
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
    X = vec.fit_transform([it.text for it in pool.items])
    clf = OneVsRestClassifier(LinearSVC(C=0.5))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
        clf.fit(X, y)  # a taxonomy label absent from the pool is simply never predicted
    scores = clf.decision_function(vec.transform([it.text for it in test]))
    out = []
    for row in scores:
        order = np.argsort(-row)
        out.append([labels[order[0]]] + [labels[j] for j in order[1:3] if row[j] > 0])
    return out


async def arun_eval(spec_path: str | Path, *, out: str | Path | None = None, only: list[str] | None = None,
                    limit: int | None = None, cache_dir: str | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run every variant (or `only` some) on the held-out split and write the leaderboard; returns the results."""
    from ._labeler import Labeler
    from ._metrics import score, scored_labels
    from ._prices import cost_of, load_prices
    from ._progress import Progress
    from ._triage import calibration_of

    spec, root = load_spec(spec_path)
    corpus = load_corpus(_resolve(root, spec.dataset))
    ids = held_out(spec, corpus, root)
    if limit:
        ids = ids[:limit]
    index = corpus.by_id()
    test = [index[i] for i in ids]
    pool = corpus.without(ids)
    taxonomy = _resolve(root, spec.taxonomy)
    variants = spec.all_variants(taxonomy)
    if only:
        unknown = sorted(set(only) - set(variants) - {BASELINE})
        if unknown:
            raise SpecError(f"no variant named {unknown}; variants: {list(variants)}")
        variants = {name: v for name, v in variants.items() if name in only}
    out_dir = Path(out or Path("runs") / f"eval-{spec.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    prices = load_prices(_resolve(root, spec.prices))
    gold = [list(it.labels) for it in test]
    classes = sorted({lab for it in corpus.items for lab in it.labels} | set(load_taxonomy(taxonomy).labels if taxonomy else ()))
    rows: list[dict[str, Any]] = []
    preds_by_variant: dict[str, list[list[str] | None]] = {}

    options = RunOptions(concurrency=spec.concurrency, cache_dir=cache_dir)
    for name, settings in variants.items():
        resolved = settings.updated(prompt=_prompt_path(root, settings.prompt))
        labeler = Labeler.from_settings(resolved, options, pool=pool)
        bar = Progress(len(test), 0, sys.stderr.isatty() if progress is None else progress, title=name)
        t0 = time.monotonic()
        try:
            preds = await labeler.alabel_items([(it.id, it.text) for it in test],
                                               on_result=lambda p: bar.update(p, cost_of(p.usage, labeler.model.name, prices)))
        finally:
            bar.close()
            await labeler.aclose()
        seconds = time.monotonic() - t0
        write_jsonl(out_dir / _slug(name) / "predictions.jsonl",
                    [{**p.model_dump(), "gold": g} for p, g in zip(preds, gold)])
        ok = [i for i, p in enumerate(preds) if p.status == "ok"]
        usage = {k: sum(p.usage.get(k, 0) for p in preds) for k in ("prompt_tokens", "completion_tokens")}
        cost = cost_of(usage, labeler.model.name, prices)
        g_ok, p_ok = [gold[i] for i in ok], [preds[i].labels for i in ok]
        metrics = score(g_ok, p_ok, scored_labels(g_ok, p_ok), n_boot=spec.n_boot) if ok else None
        preds_by_variant[name] = [p.labels if p.status == "ok" else None for p in preds]
        rows.append(_row(name, settings.model_dump(exclude_defaults=True), metrics, len(preds) - len(ok), len(test), usage, cost, seconds,
                         sum(p.cached for p in preds), labeler.prompt.ref))
        rows[-1]["calibration"] = calibration_of([preds[i].label_probs for i in ok], g_ok, classes,
                                                 [preds[i].id for i in ok])
    if spec.baseline and (not only or BASELINE in only):
        t0 = time.monotonic()
        base = _baseline(pool, test, classes)
        seconds = time.monotonic() - t0
        preds_by_variant[BASELINE] = base
        write_jsonl(out_dir / _slug(BASELINE) / "predictions.jsonl",
                    [{"id": it.id, "text": it.text, "labels": p, "status": "ok", "gold": g} for it, p, g in zip(test, base, gold)])
        rows.append(_row(BASELINE, {"model": "scikit-learn"}, score(gold, base, scored_labels(gold, base), n_boot=spec.n_boot), 0, len(test),
                         {"prompt_tokens": 0, "completion_tokens": 0}, 0.0, seconds, 0, None))

    rows.sort(key=lambda r: -(r["metrics"] or {}).get(spec.primary, float("-inf")) if r["metrics"] else float("inf"))
    comparisons = _compare_best(rows, preds_by_variant, gold, spec.n_boot)
    result = {"spec": spec.name, "primary": spec.primary, "split": {"file": spec.split.file, "held_out": len(test),
              "pool": len(pool), "seed": spec.split.seed}, "rows": rows, "comparisons": comparisons}
    atomic_write_json(out_dir / "results.json", result)
    atomic_write_text(out_dir / "leaderboard.md", leaderboard_markdown(result))
    atomic_write_text(out_dir / "leaderboard.html", _leaderboard_html(result))
    from ._plots import plot_scatter

    plot_scatter([(r["variant"], r["tokens_per_1k_items"], (r["metrics"] or {}).get(spec.primary) or 0.0) for r in rows],
                 out_dir / "agreement_vs_cost.png", "tokens per 1,000 items (prompt + completion)", spec.primary)
    result["out"] = str(out_dir)
    return result


def _prompt_path(root: Path, prompt: str) -> str:
    """A prompt name resolves to the spec project's prompts/ first, then the bundled ones; a path as given."""
    if Path(prompt).suffix:
        return _resolve(root, prompt)
    local = root / "prompts" / f"{prompt}.yaml"
    return str(local) if local.exists() else prompt


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _row(name, settings, metrics, failed, n, usage, cost, seconds, cached, prompt_ref) -> dict[str, Any]:
    total = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"variant": name, "settings": settings, "prompt": prompt_ref, "n": n, "failed": failed, "cached": cached,
            "metrics": metrics.model_dump() if metrics is not None else None,
            "tokens_per_1k_items": round(total / max(1, n) * 1000, 1),
            "cost_per_1k_items": None if cost is None else round(cost / max(1, n) * 1000, 6),
            "seconds_per_item": round(seconds / max(1, n), 4), "seconds": round(seconds, 2)}


def _compare_best(rows, preds_by_variant, gold, n_boot) -> list[dict[str, Any]]:
    """Paired comparison of the best variant against each other one, on the items both labeled."""
    from ._metrics import compare, scored_labels

    if len(rows) < 2 or not rows[0]["metrics"]:
        return []
    best = rows[0]["variant"]
    out = []
    for r in rows[1:]:
        a, b = preds_by_variant[r["variant"]], preds_by_variant[best]
        both = [i for i in range(len(gold)) if a[i] is not None and b[i] is not None]
        if not both:
            continue
        g, pa, pb = [gold[i] for i in both], [a[i] for i in both], [b[i] for i in both]
        cmp = compare(g, pa, pb, scored_labels(g, pa, pb), n_boot=n_boot)
        out.append({"best": best, "other": r["variant"], "items": len(both), **cmp.model_dump()})
    return out


def _fmt(m: dict[str, Any] | None, key: str) -> str:
    if not m or m.get(key) is None:
        return "n/a"
    band = (m.get("ci") or {}).get(key)
    return f"{m[key]:.3f}" + (f" [{band[0]:.3f}, {band[1]:.3f}]" if band else "")


def _ece(row: dict[str, Any]) -> str:
    cal = row.get("calibration")
    return "n/a" if not cal else f"{cal['ece']:.3f} [{cal['ece_raw']:.3f}]"


def leaderboard_markdown(result: dict[str, Any]) -> str:
    """The leaderboard as a markdown table, then the paired comparisons."""
    s = result["split"]
    lines = [f"# Leaderboard: {result['spec']}", "",
             f"Held-out texts: {s['held_out']} (split `{s['file']}`, seed {s['seed']}); example pool: {s['pool']} texts "
             f"(held-out texts and identical texts excluded). Sorted by {result['primary']}; 95% bootstrap CIs.", "",
             "ECE: expected calibration error of the top label's probability after cross-fitted calibration (raw in "
             "brackets); n/a where the model gives no per-label probabilities.", "",
             "| variant | top-1 acc | micro-F1 | macro-F1 | samples Jaccard | kappa | alpha | ECE | failed | tokens/1k items | cost/1k items (USD) | s/item |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        m = r["metrics"]
        cost = "n/a" if r["cost_per_1k_items"] is None else f"{r['cost_per_1k_items']:.4f}"
        lines.append(f"| {r['variant']} | {_fmt(m, 'top1_accuracy')} | {_fmt(m, 'micro_f1')} | {_fmt(m, 'macro_f1')} | "
                     f"{_fmt(m, 'samples_jaccard')} | {_fmt(m, 'cohen_kappa')} | {_fmt(m, 'krippendorff_alpha')} | {_ece(r)} | "
                     f"{r['failed']}/{r['n']} | {r['tokens_per_1k_items']:,.0f} | {cost} | {r['seconds_per_item']:.3f} |")
    if result["comparisons"]:
        lines += ["", f"## Paired comparison: best ({result['comparisons'][0]['best']}) vs each other variant", "",
                  "| other | items | Δ top-1 (best − other) [95% CI] | p (bootstrap) | McNemar p | only best right | only other right |",
                  "|---|---|---|---|---|---|---|"]
        for c in result["comparisons"]:
            d = c["metrics"].get("top1_accuracy") or {}
            band = d.get("ci")
            diff = "n/a" if d.get("diff") is None else f"{d['diff']:+.3f}" + (f" [{band[0]:+.3f}, {band[1]:+.3f}]" if band else "")
            p = "n/a" if d.get("p_value") is None else f"{d['p_value']:.4f}"
            mc = c["mcnemar"]
            lines.append(f"| {c['other']} | {c['items']} | {diff} | {p} | {mc['p_value']:.4g} | {mc['b01']} | {mc['b10']} |")
    return "\n".join(lines) + "\n"


def _leaderboard_html(result: dict[str, Any]) -> str:
    """The same leaderboard as an HTML page (every text escaped)."""
    e = html.escape
    md = leaderboard_markdown(result).splitlines()
    body = []
    for line in md:
        if line.startswith("|---"):
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            body.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        elif line.startswith("#"):
            body.append(f"<h2>{e(line.lstrip('# '))}</h2><table>")
        elif line.strip():
            body.append(f"<p>{e(line)}</p>")
    page = "\n".join(body).replace("</p>\n<tr>", "</p>\n<table><tr>")
    return ("<!doctype html><html lang='zh'><meta charset='utf-8'><title>labelwise leaderboard</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
            "td{border:1px solid #ccc;padding:4px 8px}</style>" + page + "</table><img alt='agreement vs cost' "
            "src='agreement_vs_cost.png'></html>")


def check_gates(result: dict[str, Any], gates: list[str]) -> list[str]:
    """Failed gates among `[VARIANT:]METRIC=VALUE` (no variant: every row that isn't the baseline)."""
    failures = []
    for gate in gates:
        target, _, value = gate.partition("=")
        variant, _, metric = target.rpartition(":")  # metric names have no ':'; variant names may
        try:
            threshold = float(value)
        except ValueError:
            raise SpecError(f"--fail-under takes [VARIANT:]METRIC=VALUE, got {gate!r}") from None
        rows = [r for r in result["rows"] if (r["variant"] == variant if variant else r["variant"] != BASELINE)]
        if not rows:
            raise SpecError(f"--fail-under {gate!r}: no such variant in this run")
        for r in rows:
            got = (r["metrics"] or {}).get(metric)
            if r["metrics"] is not None and metric not in r["metrics"]:
                raise SpecError(f"--fail-under: unknown metric {metric!r}")
            if got is None or got < threshold:
                failures.append(f"{r['variant']}: {metric} = {got} < {threshold}")
    return failures


def run_eval(spec_path: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Sync wrapper of `arun_eval`."""
    from ._loop import run_sync

    return run_sync(arun_eval(spec_path, **kwargs))
