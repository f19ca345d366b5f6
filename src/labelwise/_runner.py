"""Bulk relabeling runs: resumable, accounted, ending in a review of where the model disagrees with the labels."""

from __future__ import annotations

import hashlib
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ._corpus import Corpus, load_corpus
from ._batch import BatchConfig, batchable
from ._exceptions import FatalTransportError, RunError
from ._io import atomic_write_json
from ._labeler import Labeler
from ._prices import cost_of, estimate_tokens, load_prices
from ._progress import Progress
from ._prompts import EXAMPLE_MAX_CHARS
from ._metrics import Agreement
from ._redact import redact
from ._runs import CHUNK, LabelStats, label_into, lock_run_dir, set_aside
from ._schema import Prediction
from ._settings import LabelSettings, RunOptions

__all__ = ["RelabelConfig", "RunResult", "RunCounts", "relabel", "arelabel", "select_items"]

class RelabelConfig(BaseModel):
    """A relabel run: input, output directory, what to label and how."""

    model_config = ConfigDict(extra="forbid")

    input: str
    out: str
    text_col: str | None = None
    label_col: str | None = None
    skip_bad: bool = False
    limit: int | None = Field(None, ge=1)
    sample: int | None = Field(None, ge=1)
    seed: int = 0
    force: bool = False
    prices: str | None = None
    header: bool | None = None  # TSV: None = detect a `label<TAB>text` header line
    encoding: str | None = None  # None = UTF-8, or GB18030 when the file plainly is not UTF-8 (a guess; warned)
    batch: BatchConfig | None = None  # through batch files (Batch API, or export / import) instead of online calls
    triage: Literal["llm", "corpus", "ensemble"] = "ensemble"  # what ranks label_issues.csv
    settings: LabelSettings = Field(default_factory=LabelSettings)  # examples None: the input itself, leave-one-out
    options: RunOptions = Field(default_factory=RunOptions)


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def select_items(corpus: Corpus, limit: int | None, sample: int | None, seed: int) -> list:
    """The unique items a run labels: a seeded sample, then the first `limit`."""
    items = list(corpus.items)
    if sample is not None and sample < len(items):
        items = random.Random(seed).sample(items, sample)
    if limit is not None:
        items = items[:limit]
    return items


def _fingerprint(cfg: RelabelConfig, input_hash: str, labeler: Labeler) -> dict[str, Any]:
    """What a run's answers depend on: its items, and the labeler's own fingerprint (what decides each answer).
    Resuming with anything else mixes answers, so it is refused."""
    return {
        "input_sha256": input_hash, "text_col": cfg.text_col, "label_col": cfg.label_col, "skip_bad": cfg.skip_bad,
        "limit": cfg.limit, "sample": cfg.sample, "seed": cfg.seed, "labeler": labeler.fingerprint,
        # only when set, so run directories made before these options existed still resume
        **{k: v for k, v in (("header", cfg.header), ("encoding", cfg.encoding)) if v is not None},
    }


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Each setting that differs, as `name: old -> new` (nested settings by dotted name)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _check_resume(run_dir: Path, fingerprint: dict[str, Any], settings: dict[str, Any], force: bool) -> None:
    """Refuse to resume a run whose answers would differ, naming what changed (as typed, else as resolved)."""
    state = run_dir / "run.json"
    if not state.exists():
        return
    import json

    old = json.loads(state.read_text(encoding="utf-8"))
    old_fp = old.get("fingerprint", {})
    if old_fp == fingerprint:
        return
    outer = _differences({k: v for k, v in old_fp.items() if k != "labeler"},
                         {k: v for k, v in fingerprint.items() if k != "labeler"})
    inner = (_differences(old.get("settings", {}), settings, "settings.")
             or _differences(old_fp.get("labeler", {}), fingerprint["labeler"], "labeler."))
    diffs = outer + inner
    if not force:
        raise RunError(f"{run_dir} holds a run whose settings differ ({'; '.join(diffs)}); "
                       "use another --out, or --force to start this run over there (old predictions are kept aside)")
    set_aside(*(run_dir / name for name in ("predictions.jsonl", "run.json", "batch")))  # batch: planned under the old settings


async def arelabel(cfg: RelabelConfig, *, progress: bool | None = None, dry_run: bool = False) -> RunResult | dict[str, Any]:
    """Relabel a dataset into cfg.out; resumable; returns the run's result (or the dry-run / export summary)."""
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    corpus = load_corpus(cfg.input, text_col=cfg.text_col, label_col=cfg.label_col, skip_bad=cfg.skip_bad,
                         header=cfg.header, encoding=cfg.encoding)
    items = select_items(corpus, cfg.limit, cfg.sample, cfg.seed)
    labeler = Labeler.from_settings(cfg.settings, cfg.options, pool=None if cfg.settings.examples else corpus)
    if corpus.labeled:
        labeler.taxonomy.check_items(corpus.items, where=cfg.input)
    prices = load_prices(cfg.prices)
    if dry_run:
        return _dry_run(cfg, corpus, items, labeler, prices)
    if cfg.batch is not None and (cfg.batch.mode == "export" or not batchable(labeler.model)):
        from ._batch import aexport, chat_model

        try:
            chat_model(labeler.model)  # a clear error before the run directory is touched
            return await aexport(cfg.batch, labeler, items)
        finally:
            await labeler.aclose()

    run_dir = Path(cfg.out)
    try:
        lock = lock_run_dir(run_dir)
    except BaseException:
        await labeler.aclose()
        raise
    try:
        return await _run(cfg, run_dir, corpus, items, labeler, prices, started, t0, progress)
    finally:
        lock.release()


async def _run(cfg: RelabelConfig, run_dir: Path, corpus: Corpus, items: list, labeler: Labeler, prices,
               started: datetime, t0: float, progress: bool | None) -> RunResult:
    """The run itself, with the run directory locked: resume, label, write the review files and the manifest."""
    pool = cfg.settings.examples
    input_hash = _sha256(cfg.input)
    fingerprint = _fingerprint(cfg, input_hash, labeler)
    try:
        _check_resume(run_dir, fingerprint, cfg.settings.model_dump(), cfg.force)
    except RunError:
        await labeler.aclose()
        raise
    atomic_write_json(run_dir / "run.json", {"fingerprint": fingerprint, "settings": cfg.settings.model_dump(),
                                            "started": started.isoformat()})

    ahead = None
    if corpus.labeled and cfg.triage != "llm":  # triage's corpus classifier needs no answers: fit it while labeling
        from ._triage import CorpusAhead

        ahead = CorpusAhead([(it.id, it.text, it.labels) for it in items if it.labels], labeler.pool,
                            labeler.taxonomy.labels, seed=cfg.seed, cache_dir=cfg.options.cache_dir, cache=cfg.options.cache)
    tty = sys.stderr.isatty() if progress is None else progress
    pred_path = run_dir / "predictions.jsonl"
    gold = [it.labels for it in items] if corpus.labeled else None
    batch = None
    fatal: FatalTransportError | None = None
    stats = None
    bar = None
    try:
        predictor: Any = labeler if cfg.batch is None else _BatchPredictor(cfg.batch, labeler, run_dir, prices, tty, items)

        def show(pred: Prediction) -> None:
            bar.update(pred, cost_of(pred.usage, labeler.model.name, prices))  # type: ignore[union-attr]

        def started_bar(resumed: LabelStats) -> None:
            nonlocal bar
            # a batch run shows its own bar while waiting
            bar = Progress(len(items), resumed.resumed, tty and cfg.batch is None)

        try:
            stats = await label_into(pred_path, predictor, items, gold, on_result=show, on_start=started_bar,
                                     chunk=len(items) if cfg.batch is not None else CHUNK)  # a batch takes them all
            if cfg.batch is not None:
                if predictor.summary is None:  # nothing left to label: still collect or report the run's batches
                    await predictor.alabel_items([], on_result=show)
                batch = predictor.summary
        except FatalTransportError as err:  # no new request was sent after it; answers received are written
            fatal = err
    finally:
        if bar is not None:
            bar.close()
        await labeler.aclose()

    from ._report import write_run_report
    from ._runs import read_predictions

    table = read_predictions(pred_path, [it.id for it in items], labeler.taxonomy.labels)
    triage = None
    if corpus.labeled:
        from ._cache import ResponseCache
        from ._triage import triage_run

        scored = np.flatnonzero(table.G.any(1))  # every row with existing labels (failed ones have no label_probs)
        rows = [{k: r.get(k) for k in ("id", "text", "gold", "status", "label_probs")} for r in table.rows(scored)]
        memo = ResponseCache(cfg.options.cache_dir) if cfg.options.cache else None  # a cached rerun reuses its triage
        try:
            triage = triage_run(rows, labeler.taxonomy.labels, labeler.pool, cfg.triage, seed=cfg.seed, cache=memo,
                                ahead=ahead)
        finally:
            if memo is not None:
                memo.close()
        del rows
    report = write_run_report(run_dir, table, triage)
    first_error = None
    if not table.ok.all():
        first_error = table.row(int(np.flatnonzero(~table.ok)[0])).get("error")
    resumed = stats.resumed if stats is not None else 0
    counts = {"selected": len(items), "resumed": resumed,
              "redone_or_deduplicated_lines": stats.redone_or_deduplicated_lines if stats is not None else 0,
              "torn_bytes_repaired": stats.torn_bytes_repaired if stats is not None else 0,
              "labeled_now": report.counts.predictions - resumed, **report.counts.model_dump()}
    usage = stats.usage if stats is not None else {"prompt_tokens": 0, "completion_tokens": 0}
    finished = datetime.now(timezone.utc)
    from . import __version__

    manifest = {
        "tool": f"labelwise {__version__}",
        "command": redact(" ".join(sys.argv)),
        "input": {"path": str(cfg.input), "sha256": input_hash, "rows": corpus.rows, "unique_texts": len(corpus),
                  "labeled": corpus.labeled, "encoding": corpus.encoding,
                  "encoding_guessed": corpus.encoding_guessed, "header_line_skipped": corpus.header_skipped,
                  "skipped_lines": [{"line": s.line, "reason": s.reason} for s in corpus.skipped]},
        "examples": {"path": str(pool) if pool else "input (leave-one-out)",
                     "sha256": _sha256(pool) if pool else input_hash, "pool_size": len(labeler.pool or []),
                     "max_chars": EXAMPLE_MAX_CHARS,
                     "texts_cut_to_max_chars": sum(len(it.text) > EXAMPLE_MAX_CHARS for it in labeler.pool or [])},
        **labeler.model.describe(),
        "prompt": labeler.prompt.ref, "strategy": cfg.settings.strategy, "shots": labeler.shots,
        "taxonomy": labeler.taxonomy.source, "multi_label": cfg.settings.multi_label,
        "items_per_request": cfg.settings.items_per_request, "concurrency": cfg.options.concurrency,
        "counts": counts,
        "tokens_this_session": usage, "cost_usd_this_session": cost_of(usage, labeler.model.name, prices) if batch is None
        else _sum(batch["cost_usd"], batch["online_reask_cost_usd"]), "batch": batch,
        "model_calls": labeler.stats["model_calls"], "reasks": labeler.stats["reasks"],
        "started": started.isoformat(), "finished": finished.isoformat(), "seconds": round(time.monotonic() - t0, 3),
        "stopped_by": str(fatal) if fatal else None,
    }
    atomic_write_json(run_dir / "manifest.json", manifest)
    if fatal is not None:
        raise FatalTransportError(f"{fatal} -- run stopped: no new requests were sent after it; "
                                  f"{manifest['counts']['ok']} answers received were written to {run_dir}",
                                  status=fatal.status, attempts=fatal.attempts) from fatal
    return RunResult(run_dir=str(run_dir), counts=RunCounts(**counts), seconds=manifest["seconds"], tokens_this_session=usage,
                     skipped_lines=manifest["input"]["skipped_lines"], batch=batch, metrics=report.metrics,
                     triage=report.triage, first_error=first_error, manifest=manifest)


class RunCounts(BaseModel):
    """A run's rows: selected, resumed, redone, labeled now, and the report's ok / failed / scored / disagreeing."""

    selected: int
    resumed: int
    redone_or_deduplicated_lines: int
    torn_bytes_repaired: int
    labeled_now: int
    predictions: int
    ok: int
    failed: int
    scored: int
    disagreements: int


class RunResult(BaseModel):
    """What a finished relabel run returns: where it is, its counts and figures; `manifest` is manifest.json's object."""

    run_dir: str
    counts: RunCounts
    seconds: float
    tokens_this_session: dict[str, int]
    skipped_lines: list[dict[str, Any]]
    batch: dict[str, Any] | None = None
    metrics: Agreement | None = None
    triage: dict[str, Any] | None = None
    first_error: str | None = None
    manifest: dict[str, Any]


class _BatchPredictor:
    """A relabel run's batch files (Batch API or import) as a predictor: all its items go in one call."""

    def __init__(self, cfg: BatchConfig, labeler: Labeler, run_dir: Path, prices, progress: bool, items: list) -> None:
        self.cfg, self.labeler, self.run_dir, self.prices = cfg, labeler, run_dir, prices
        self.progress, self.items = progress, items
        self.summary: dict[str, Any] | None = None

    async def alabel_items(self, items, *, on_result=None, collect: bool = False) -> list:
        from ._batch import arun_batch

        self.summary = await arun_batch(self.cfg, self.labeler, list(items), self.run_dir, on_result or (lambda p: None),
                                        self.prices, progress=self.progress, known={it.id: it.text for it in self.items})
        return []

    async def aclose(self) -> None:
        """Nothing of its own to close: the run closes its labeler."""


def _dry_run(cfg: RelabelConfig, corpus: Corpus, items: list, labeler: Labeler, prices) -> dict[str, Any]:
    """Count, one rendered prompt, and a token and cost estimate; no model call."""
    if not items:
        raise RunError("nothing to label")
    size = labeler.items_per_request  # 1 for a label-scoring model, whatever was asked
    probe = items[: min(len(items), 50)]
    prompt_tokens = [estimate_tokens(labeler.render(it.text, id=it.id).text) for it in probe]
    per_request = sum(prompt_tokens) / len(prompt_tokens)
    requests = -(-len(items) // size)
    est = {"prompt_tokens": int(per_request * requests),
           "completion_tokens": int(len(items) * (8 * labeler.settings.max_labels + (12 if labeler.answer_format == "json" else 2)))}
    return {
        "unique_texts": len(corpus), "to_label": len(items), "requests": requests,
        "example_prompt": labeler.render(items[0].text, id=items[0].id).text,
        "estimated_tokens": est, "estimated_cost_usd": cost_of(est, labeler.model.name, prices, batch=cfg.batch is not None),
        "estimated_online_cost_usd": cost_of(est, labeler.model.name, prices),
        "estimated_batch_cost_usd": cost_of(est, labeler.model.name, prices, batch=True),
        "model": labeler.model.name, "prompt": labeler.prompt.ref,
    }


def _sum(*costs: float | None) -> float | None:
    return None if any(c is None for c in costs) else sum(costs)  # type: ignore[arg-type]


def relabel(cfg: RelabelConfig, *, progress: bool | None = None, dry_run: bool = False) -> RunResult | dict[str, Any]:
    """Sync wrapper of `arelabel`."""
    from ._loop import run_sync

    return run_sync(arelabel(cfg, progress=progress, dry_run=dry_run))
