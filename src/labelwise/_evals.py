"""Prompt evaluation: specs as data, a fixed held-out split, a grid of variants, a leaderboard with CIs."""

from __future__ import annotations

import html
import itertools
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._corpus import Corpus, load_corpus
from ._exceptions import SpecError
from ._cache import stable_hash
from ._io import atomic_write_json, atomic_write_text, parse_yaml
from ._metrics import Agreement, Difference, McNemar
from ._settings import LabelSettings, RunOptions, SettingsUpdate
from ._taxonomy import load_taxonomy

__all__ = ["EvalSpec", "Variant", "EvalResult", "EvalRow", "ComparisonRow", "SplitInfo", "load_spec", "run_eval", "arun_eval",
           "check_gates", "leaderboard_markdown"]

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


class SplitInfo(BaseModel):
    """The held-out split an eval ran on: its file, sizes and seed."""

    file: str
    held_out: int
    pool: int
    seed: int


class EvalRow(BaseModel):
    """One leaderboard row: a variant's figures on the held-out split, tokens, cost and time per item."""

    variant: str
    settings: dict[str, Any]
    prompt: str | None
    n: int
    failed: int
    cached: int
    metrics: Agreement | None
    tokens_per_1k_items: float
    cost_per_1k_items: float | None
    seconds_per_item: float
    seconds: float
    calibration: dict[str, Any] | None = None


class ComparisonRow(BaseModel):
    """The best variant against one other, paired on the items both labeled."""

    best: str
    other: str
    items: int
    n: int
    metrics: dict[str, Difference]
    mcnemar: McNemar


class EvalResult(BaseModel):
    """An eval's results: the rows (best first by `primary`), the paired comparisons; results.json is `to_json()`."""

    spec: str
    primary: str
    split: SplitInfo
    rows: list[EvalRow]
    comparisons: list[ComparisonRow]
    out: str | None = None

    def to_json(self) -> dict[str, Any]:
        """results.json's object: the baseline row has no calibration key (it gives no probabilities)."""
        data = self.model_dump(exclude={"out"})
        for row in data["rows"]:
            if row["variant"] == BASELINE:
                row.pop("calibration")
        return data


async def arun_eval(spec_path: str | Path, *, out: str | Path | None = None, only: list[str] | None = None,
                    limit: int | None = None, cache_dir: str | None = None, progress: bool | None = None) -> EvalResult:
    """Run every variant (or `only` some) on the held-out split and write the leaderboard; returns the results.

    Each variant's predictions stream into its own predictions.jsonl, so an interrupted eval resumes where it stopped.
    """
    from ._baseline import TfidfBaseline
    from ._labeler import Labeler
    from ._prices import cost_of, load_prices
    from ._progress import Progress
    from ._runs import label_into, lock_run_dir, read_predictions, sort_predictions

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
    lock = lock_run_dir(out_dir)  # variants append to their predictions as they go: one eval at a time per directory
    try:
        prices = load_prices(_resolve(root, spec.prices))
        gold = [it.labels for it in test]
        classes = sorted({lab for it in corpus.items for lab in it.labels} | set(load_taxonomy(taxonomy).labels if taxonomy else ()))
        split_fp = stable_hash([ids, [it.id for it in pool.items]])
        rows: list[EvalRow] = []
        tables: dict[str, Any] = {}
        tty = sys.stderr.isatty() if progress is None else progress

        async def run(name: str, predictor: Any, settings: dict[str, Any], fingerprint: dict[str, Any], model: str) -> None:
            path = out_dir / _slug(name) / "predictions.jsonl"
            bars: list[Progress] = []  # started once resuming is done, at the resumed count
            t0 = time.monotonic()
            try:
                stats = await label_into(
                    path, predictor, test, gold, fingerprint={**fingerprint, "split": split_fp},
                    on_start=lambda st: bars.append(Progress(len(test), st.resumed, tty, title=name)),
                    on_result=lambda p: bars[0].update(p, cost_of(p.usage, model, prices)))
            finally:
                for bar in bars:
                    bar.close()
                await predictor.aclose()
            sort_predictions(path, ids)  # held-out order, as the split file lists them
            table = tables[name] = read_predictions(path, ids, classes)
            rows.append(_score_row(name, settings, table, classes, model, prices, time.monotonic() - t0,
                                   stats.resumed + stats.cached_now, spec.n_boot,
                                   getattr(predictor, "prompt", None)))

        options = RunOptions(concurrency=spec.concurrency, cache_dir=cache_dir)
        for name, settings in variants.items():
            resolved = settings.updated(prompt=_prompt_path(root, settings.prompt))
            labeler = Labeler.from_settings(resolved, options, pool=pool)
            await run(name, labeler, settings.model_dump(exclude_defaults=True), {"labeler": labeler.fingerprint},
                      labeler.model.name)
        if spec.baseline and (not only or BASELINE in only):
            await run(BASELINE, TfidfBaseline(pool, classes), {"model": "scikit-learn"},
                      {"variant": BASELINE, "labels": classes}, "scikit-learn")

        rows.sort(key=lambda r: _sort_key(r, spec.primary))
        result = EvalResult(spec=spec.name, primary=spec.primary,
                            split=SplitInfo(file=spec.split.file, held_out=len(test), pool=len(pool), seed=spec.split.seed),
                            rows=rows, comparisons=_compare_best(rows, tables, spec.n_boot))
        atomic_write_json(out_dir / "results.json", result.to_json())
        atomic_write_text(out_dir / "leaderboard.md", leaderboard_markdown(result))
        atomic_write_text(out_dir / "leaderboard.html", _leaderboard_html(result))
        from ._plots import plot_scatter

        plot_scatter([(r.variant, r.tokens_per_1k_items, (r.metrics.model_dump() if r.metrics else {}).get(spec.primary) or 0.0)
                      for r in rows], out_dir / "agreement_vs_cost.png", "tokens per 1,000 items (prompt + completion)", spec.primary)
        result.out = str(out_dir)
        return result
    finally:
        lock.release()


def _ok_matrices(table, classes: list[str]):
    """A variant's rows over `classes`' columns: (ok mask, gold, predicted, top column or -1, label_probs or NaN)."""
    import numpy as np

    where = {lab: j for j, lab in enumerate(table.labels)}
    dst = np.array([k for k, c in enumerate(classes) if c in where], dtype=np.int64)
    src = np.array([where[c] for c in classes if c in where], dtype=np.int64)
    n, L = len(table), len(classes)
    G, P = np.zeros((n, L), dtype=bool), np.zeros((n, L), dtype=bool)
    G[:, dst], P[:, dst] = table.G[:, src], table.P[:, src]
    probs = np.zeros((n, L))
    if table.probs is not None:
        probs[:, dst] = table.probs[:, src]
    probs[~table.has_probs] = np.nan
    remap = np.full(len(table.labels) + 1, -1, dtype=np.int64)
    remap[src] = dst
    return table.ok, G, P, remap[table.top], probs


def _score_row(name: str, settings: dict[str, Any], table, classes: list[str], model: str, prices, seconds: float,
               cached: int, n_boot: int, prompt) -> EvalRow:
    """A leaderboard row from a variant's predictions: figures on its ok rows, calibration, tokens, cost, time."""
    import numpy as np

    from ._metrics import score_matrix, scored_columns
    from ._prices import cost_of
    from ._triage import calibration_of

    ok, G, P, top, probs = _ok_matrices(table, classes)
    metrics = calibration = None
    if ok.any():
        use = scored_columns(G[ok], P[ok])
        remap = np.full(len(classes) + 1, -1, dtype=np.int64)
        remap[use] = np.arange(len(use))
        metrics = score_matrix(G[ok][:, use], P[ok][:, use], remap[top[ok]], [classes[j] for j in use], n_boot=n_boot)
        ok_rows = np.flatnonzero(ok)
        label_probs = [None if np.isnan(p).any() else dict(zip(classes, map(float, p))) for p in probs[ok_rows]]
        calibration = calibration_of(label_probs, [[classes[j] for j in np.flatnonzero(G[i])] for i in ok_rows], classes,
                                     [str(i) for i in table.ids[ok_rows]])  # None: no label_probs
    n = len(table)
    usage = table.usage
    cost = 0.0 if name == BASELINE else cost_of(usage, model, prices)
    total = usage["prompt_tokens"] + usage["completion_tokens"]
    return EvalRow(variant=name, settings=settings, prompt=prompt.ref if prompt is not None else None, n=n,
                   failed=int((~ok).sum()), cached=cached, metrics=metrics,
                   tokens_per_1k_items=round(total / max(1, n) * 1000, 1),
                   cost_per_1k_items=None if cost is None else round(cost / max(1, n) * 1000, 6),
                   seconds_per_item=round(seconds / max(1, n), 4), seconds=round(seconds, 2), calibration=calibration)


def _prompt_path(root: Path, prompt: str) -> str:
    """A prompt name resolves to the spec project's prompts/ first, then the bundled ones; a path as given."""
    if Path(prompt).suffix:
        return _resolve(root, prompt)
    local = root / "prompts" / f"{prompt}.yaml"
    return str(local) if local.exists() else prompt


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _compare_best(rows: list[EvalRow], tables: dict[str, Any], n_boot: int) -> list[ComparisonRow]:
    """Paired comparison of the best variant against each other one, on the items both labeled."""
    import numpy as np

    from ._metrics import compare_matrix, scored_columns

    if len(rows) < 2 or not rows[0].metrics:
        return []
    best = rows[0].variant
    classes = sorted({lab for t in tables.values() for lab in t.labels})
    ok_b, G, Pb, top_b, _ = _ok_matrices(tables[best], classes)
    out = []
    for r in rows[1:]:
        ok_a, _, Pa, top_a, _ = _ok_matrices(tables[r.variant], classes)
        both = ok_a & ok_b
        if not both.any():
            continue
        use = scored_columns(G[both], Pa[both], Pb[both])
        remap = np.full(len(classes) + 1, -1, dtype=np.int64)
        remap[use] = np.arange(len(use))
        cmp = compare_matrix(G[both][:, use], Pa[both][:, use], remap[top_a[both]], Pb[both][:, use], remap[top_b[both]],
                             [classes[j] for j in use], n_boot=n_boot)
        out.append(ComparisonRow(best=best, other=r.variant, items=int(both.sum()), **cmp.model_dump()))
    return out


def _sort_key(row: EvalRow, primary: str) -> float:
    """Best first by the primary metric; a variant without figures last."""
    if row.metrics is None:
        return float("inf")
    value = getattr(row.metrics, primary)
    return -(value if value is not None else float("-inf"))


def _fmt(m: Agreement | None, key: str) -> str:
    value = None if m is None else getattr(m, key)
    if value is None:
        return "n/a"
    band = m.ci.get(key)  # type: ignore[union-attr]
    return f"{value:.3f}" + (f" [{band[0]:.3f}, {band[1]:.3f}]" if band else "")


def _ece(row: EvalRow) -> str:
    cal = row.calibration
    return "n/a" if not cal else f"{cal['ece']:.3f} [{cal['ece_raw']:.3f}]"


_BOARD_HEADER = ("variant", "top-1 acc", "micro-F1", "macro-F1", "samples Jaccard", "kappa", "alpha", "ECE", "failed",
                 "tokens/1k items", "cost/1k items (USD)", "s/item")
_COMPARE_HEADER = ("other", "items", "Δ top-1 (best − other) [95% CI]", "p (bootstrap)", "McNemar p", "only best right",
                   "only other right")


def _board(result: EvalResult) -> tuple[str, list[str], list[list[str]], str | None, list[list[str]]]:
    """The leaderboard as data: title, notes, one list of cells per variant, the comparison's title and rows."""
    s = result.split
    notes = [f"Held-out texts: {s.held_out} (split `{s.file}`, seed {s.seed}); example pool: {s.pool} texts "
             f"(held-out texts and identical texts excluded). Sorted by {result.primary}; 95% bootstrap CIs.",
             "ECE: expected calibration error of the top label's probability after cross-fitted calibration (raw in "
             "brackets); n/a where the model gives no per-label probabilities."]
    rows = []
    for r in result.rows:
        m = r.metrics
        cost = "n/a" if r.cost_per_1k_items is None else f"{r.cost_per_1k_items:.4f}"
        rows.append([r.variant, _fmt(m, "top1_accuracy"), _fmt(m, "micro_f1"), _fmt(m, "macro_f1"),
                     _fmt(m, "samples_jaccard"), _fmt(m, "cohen_kappa"), _fmt(m, "krippendorff_alpha"), _ece(r),
                     f"{r.failed}/{r.n}", f"{r.tokens_per_1k_items:,.0f}", cost, f"{r.seconds_per_item:.3f}"])
    title = None
    comparisons = []
    if result.comparisons:
        title = f"Paired comparison: best ({result.comparisons[0].best}) vs each other variant"
        for c in result.comparisons:
            d = c.metrics.get("top1_accuracy")
            band = d.ci if d else None
            diff = "n/a" if d is None or d.diff is None else (
                f"{d.diff:+.3f}" + (f" [{band[0]:+.3f}, {band[1]:+.3f}]" if band else ""))
            p = "n/a" if d is None or d.p_value is None else f"{d.p_value:.4f}"
            mc = c.mcnemar
            comparisons.append([c.other, str(c.items), diff, p, f"{mc.p_value:.4g}", str(mc.b01), str(mc.b10)])
    return f"Leaderboard: {result.spec}", notes, rows, title, comparisons


def leaderboard_markdown(result: EvalResult) -> str:
    """The leaderboard as a markdown table, then the paired comparisons."""
    title, notes, rows, cmp_title, cmp_rows = _board(result)

    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"  # a name can't split a row

    def table(header: Sequence[str], body: list[list[str]]) -> list[str]:
        return [row(header), "|" + "---|" * len(header), *(row(r) for r in body)]

    lines = [f"# {title}", ""]
    for note in notes:
        lines += [note, ""]
    lines += table(_BOARD_HEADER, rows)
    if cmp_title:
        lines += ["", f"## {cmp_title}", "", *table(_COMPARE_HEADER, cmp_rows)]
    return "\n".join(lines) + "\n"


def _leaderboard_html(result: EvalResult) -> str:
    """The same leaderboard as an HTML page, built from the results (every text escaped)."""
    e = html.escape
    title, notes, rows, cmp_title, cmp_rows = _board(result)

    def table(header: Sequence[str], body: list[list[str]]) -> str:
        head = "<tr>" + "".join(f"<th>{e(c)}</th>" for c in header) + "</tr>"
        return "<table>" + head + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>"

    parts = [f"<h2>{e(title)}</h2>", *(f"<p>{e(n)}</p>" for n in notes), table(_BOARD_HEADER, rows)]
    if cmp_title:
        parts += [f"<h2>{e(cmp_title)}</h2>", table(_COMPARE_HEADER, cmp_rows)]
    return ("<!doctype html><html lang='zh'><meta charset='utf-8'><title>labelwise leaderboard</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
            "td,th{border:1px solid #ccc;padding:4px 8px}</style>" + "\n".join(parts) +
            "<img alt='agreement vs cost' src='agreement_vs_cost.png'></html>")


def check_gates(result: EvalResult | dict[str, Any], gates: list[str]) -> list[str]:
    """Failed gates among `[VARIANT:]METRIC=VALUE` (no variant: every row that isn't the baseline)."""
    if isinstance(result, EvalResult):
        result = result.to_json()
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


def run_eval(spec_path: str | Path, **kwargs: Any) -> EvalResult:
    """Sync wrapper of `arun_eval`."""
    from ._loop import run_sync

    return run_sync(arun_eval(spec_path, **kwargs))
