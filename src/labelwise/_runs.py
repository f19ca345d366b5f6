"""Shared run plumbing: label items into a predictions.jsonl as they complete, resume from it, read it back compactly.

Relabel runs and every eval variant (the TF-IDF baseline included) go through `label_into`; their reports read the
file back with `read_predictions`, which keeps label-index arrays (numpy), never a dict or an object per row.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, Field

from ._io import append_jsonl, atomic_write_json, atomic_write_lines, iter_jsonl_lines, repair_torn_tail
from ._schema import Prediction

__all__ = ["lock_run_dir", "set_aside", "Predictor", "LabelStats", "PredictionTable", "label_into", "read_predictions", "predictions_path",
           "sort_predictions"]

# Items handed to the predictor at a time: its to-do list, batches and example prefetch hold only these, and a
# chunk is large enough (many requests per worker) that the pause between chunks costs no throughput that shows.
CHUNK = 8192


class Predictor(Protocol):
    """Anything that labels (id, text) pairs like a Labeler: an LLM labeler, the TF-IDF baseline."""

    async def alabel_items(self, items: Sequence[tuple[str, str]], *, on_result: Callable[[Prediction], Any] | None = None,
                           collect: bool = True) -> list[Prediction]: ...

    async def aclose(self) -> None: ...


class LabelStats(BaseModel):
    """What one `label_into` call did: rows resumed, lines dropped or repaired, rows labeled, tokens and cache hits."""

    selected: int
    resumed: int
    redone_or_deduplicated_lines: int
    torn_bytes_repaired: int
    labeled_now: int = 0
    cached_now: int = 0
    usage: dict[str, int] = Field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    restarted: bool = False  # an eval variant whose settings changed: its old predictions were set aside


def predictions_path(target: str | Path) -> Path:
    """`target/predictions.jsonl` for a run directory, else the file itself."""
    target = Path(target)
    return target if target.suffix == ".jsonl" else target / "predictions.jsonl"


def set_aside(*paths: Path) -> None:
    """Rename what exists of `paths` to `NAME.replaced-STAMP` (one stamp for all): old answers are kept, not reused."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for path in paths:
        if path.exists():
            path.rename(path.with_name(f"{path.name}.replaced-{stamp}"))


def _check_fingerprint(path: Path, fingerprint: dict[str, Any] | None) -> bool:
    """Record what the file's answers depend on beside it; a different record sets the old answers aside (True)."""
    if fingerprint is None:
        return False
    state = path.with_name(path.stem + ".settings.json")
    old = json.loads(state.read_text(encoding="utf-8")) if state.exists() else None
    restarted = old is not None and old != json.loads(json.dumps(fingerprint, default=str))
    if restarted or (old is None and path.exists()):  # answers of unknown settings are not reused either
        set_aside(path)
        restarted = True
    if old is None or restarted:
        atomic_write_json(state, fingerprint)
    return restarted


def _resume(path: Path, wanted: set[str]) -> tuple[set[str], int, int]:
    """Ids with a kept ok line; failed, unwanted and duplicate lines are dropped (redone); a torn tail is cut."""
    torn = repair_torn_tail(path)
    keep: set[str] = set()
    lines = dropped = 0
    for _, _, row in iter_jsonl_lines(path):
        lines += 1
        iid = row.get("id")
        if iid in wanted and row.get("status") == "ok" and iid not in keep:
            keep.add(iid)
        else:
            dropped += 1
    if dropped:  # rewrite with the kept lines only, streamed (first line of each kept id)
        seen: set[str] = set()

        def kept():
            for _, line, row in iter_jsonl_lines(path):
                iid = row.get("id")
                if iid in keep and iid not in seen and row.get("status") == "ok":
                    seen.add(iid)
                    yield line
        atomic_write_lines(path, kept())
    return keep, dropped, torn


def _pair(item: Any) -> tuple[str, str]:
    return (item[0], item[1]) if isinstance(item, tuple) else (item.id, item.text)


async def label_into(target: str | Path, predictor: Predictor, items: Sequence[Any],
                     gold: Sequence[Sequence[str] | None] | None = None, *,
                     on_result: Callable[[Prediction], Any] | None = None,
                     on_start: Callable[[LabelStats], Any] | None = None, fingerprint: dict[str, Any] | None = None,
                     chunk: int = CHUNK) -> LabelStats:
    """Label `items` ((id, text) pairs or corpus items) into `target`'s predictions.jsonl, one line per prediction as
    it completes, each with its `gold` (aligned with items; None = unlabeled); ok lines already there are kept.

    `on_start` sees the stats once resuming is done (e.g. to start a progress bar at the resumed count).
    `fingerprint`: what the answers depend on, kept beside the file; when it changed, the old file is set aside and
    everything is labeled afresh. A fatal transport error propagates after every answer received was written.
    """
    path = predictions_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    restarted = _check_fingerprint(path, fingerprint)
    done, redone, torn = _resume(path, {_pair(it)[0] for it in items})
    stats = LabelStats(selected=len(items), resumed=len(done), redone_or_deduplicated_lines=redone,
                       torn_bytes_repaired=torn, restarted=restarted)
    if on_start is not None:
        on_start(stats)
    with open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(items), chunk):
            part = [(k, *_pair(items[k])) for k in range(start, min(len(items), start + chunk))]
            part = [p for p in part if p[1] not in done]
            if not part:
                continue
            gold_of = {iid: (None if gold is None or gold[k] is None else list(gold[k])) for k, iid, _ in part}

            def record(pred: Prediction) -> None:
                append_jsonl(f, {**pred.model_dump(), "gold": gold_of[pred.id]})
                stats.labeled_now += 1
                if pred.cached:
                    stats.cached_now += 1
                else:
                    for key in stats.usage:
                        stats.usage[key] += pred.usage.get(key, 0)
                if on_result is not None:
                    on_result(pred)

            await predictor.alabel_items([(iid, text) for _, iid, text in part], on_result=record, collect=False)
    return stats


def sort_predictions(target: str | Path, ids: Sequence[str]) -> None:
    """Rewrite a (small) predictions file in the order of `ids` (others after, in file order), if it is not already."""
    path = predictions_path(target)
    rank = {iid: k for k, iid in enumerate(ids)}
    lines = [(rank.get(row.get("id"), len(rank)), n, line) for n, (_, line, row) in enumerate(iter_jsonl_lines(path))]
    ordered = sorted(lines)
    if [n for _, n, _ in ordered] != list(range(len(lines))):
        atomic_write_lines(path, (line for _, _, line in ordered))


@dataclass
class PredictionTable:
    """A predictions.jsonl read back as arrays, rows in the order of the ids given (unknown ids last, file order).

    `labels` holds every label any row uses, sorted; `G`/`P` are row x label booleans (gold, predicted), `top` the
    predicted top label's column (-1: none), `probs` the label_probs (NaN where absent), `offsets` each row's byte
    offset in the file, so a report streams the rows' texts from the file instead of holding them.
    """

    path: Path
    labels: list[str]
    ids: np.ndarray
    order: np.ndarray  # input position of each row (len(order_ids) for ids not in it)
    offsets: np.ndarray
    ok: np.ndarray
    has_gold: np.ndarray  # gold is not None
    G: np.ndarray
    P: np.ndarray
    top: np.ndarray
    gold_flat: np.ndarray  # gold label columns in each row's own order: gold_flat[gold_start[i]:gold_start[i + 1]]
    gold_start: np.ndarray
    confidence: np.ndarray
    probs: np.ndarray | None
    has_probs: np.ndarray
    cached: np.ndarray
    usage: dict[str, int]

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, i: int) -> dict[str, Any]:
        """Row i as its full JSON object, read from the file."""
        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[i]))
            return json.loads(f.readline())

    def rows(self, index: Sequence[int] | np.ndarray | None = None):
        """Full JSON objects of the given rows (all by default), read one at a time from the file."""
        with open(self.path, "rb") as f:
            for i in range(len(self)) if index is None else index:
                f.seek(int(self.offsets[i]))
                yield json.loads(f.readline())

    def gold_of(self, i: int) -> list[str]:
        """Row i's gold labels in their own order."""
        return [self.labels[j] for j in self.gold_flat[self.gold_start[i]:self.gold_start[i + 1]]]

    def label_sets(self, M: np.ndarray, rows: np.ndarray) -> list[list[str]]:
        """The labels of matrix M's given rows, as lists (for small callers)."""
        return [[self.labels[j] for j in np.flatnonzero(M[i])] for i in rows]


def read_predictions(target: str | Path, order_ids: Sequence[str] = (), prob_labels: Sequence[str] = ()) -> PredictionTable:
    """Read a predictions.jsonl into a `PredictionTable`, one parsed line at a time; `prob_labels`: label_probs keys."""
    path = predictions_path(target)
    index: dict[str, int] = {}

    def col(lab: str) -> int:
        j = index.get(lab)
        if j is None:
            j = index[lab] = len(index)
        return j

    for lab in prob_labels:
        col(lab)
    n_probs = len(prob_labels)
    ids: list[str] = []
    offsets, ok, has_gold, cached = array("q"), array("b"), array("b"), array("b")
    pred_flat, pred_start, gold_flat, gold_start = array("i"), array("q", [0]), array("i"), array("q", [0])
    confidence, probs, has_probs = array("d"), array("d"), array("b")  # probs: rows that have label_probs only
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for offset, _, row in iter_jsonl_lines(path):
        ids.append(row["id"])
        offsets.append(offset)
        ok.append(row.get("status", "ok") == "ok")
        g = row.get("gold")
        has_gold.append(g is not None)
        gold_flat.extend(col(x) for x in g or ())
        gold_start.append(len(gold_flat))
        pred_flat.extend(col(x) for x in row.get("labels") or ())
        pred_start.append(len(pred_flat))
        c = row.get("confidence")
        confidence.append(float("nan") if c is None else c)
        cached.append(bool(row.get("cached")))
        for k in usage:  # every row's, cached or not: what the predictions cost when they were made
            usage[k] += (row.get("usage") or {}).get(k, 0)
        lp = row.get("label_probs") if ok[-1] else None
        has_probs.append(lp is not None)
        if n_probs and lp is not None:
            probs.extend([lp.get(lab, 0.0) for lab in prob_labels])
    n = len(ids)
    # columns in sorted label order: the order every report lists labels in
    names = sorted(index)
    remap = np.empty(len(index), dtype=np.int32)
    for new, lab in enumerate(names):
        remap[index[lab]] = new
    L = len(names)
    gf = remap[np.frombuffer(gold_flat, dtype=np.int32)] if len(gold_flat) else np.zeros(0, np.int32)
    pf = remap[np.frombuffer(pred_flat, dtype=np.int32)] if len(pred_flat) else np.zeros(0, np.int32)
    gs, ps = np.frombuffer(gold_start, dtype=np.int64), np.frombuffer(pred_start, dtype=np.int64)
    G = np.zeros((n, L), dtype=bool)
    P = np.zeros((n, L), dtype=bool)
    G[np.repeat(np.arange(n), np.diff(gs)), gf] = True
    P[np.repeat(np.arange(n), np.diff(ps)), pf] = True
    top = np.full(n, -1, dtype=np.int32)
    has_pred = np.diff(ps) > 0
    top[has_pred] = pf[ps[:-1][has_pred]]
    id_arr = np.array(ids) if ids else np.zeros(0, dtype="U1")
    del ids
    order = np.full(n, len(order_ids), dtype=np.int64)
    if len(order_ids) and n:
        known = np.array(list(order_ids))
        sort = np.argsort(known, kind="stable")
        at = np.searchsorted(known[sort], id_arr).clip(0, len(known) - 1)
        found = known[sort][at] == id_arr
        order[found] = sort[at[found]]
    perm = np.argsort(order, kind="stable")

    def b(a: array) -> np.ndarray:
        return np.frombuffer(a, dtype=np.int8).astype(bool)[perm] if n else np.zeros(0, bool)

    has = b(has_probs)
    P_probs = None
    if n_probs and has.any():  # one row x label matrix, NaN where a row has no label_probs, filled in place from the flat values
        P_probs = np.full((n, L), np.nan)
        rows = np.flatnonzero(has)  # rows (in the new order) with label_probs, in file order of appearance:
        rows = rows[np.argsort(perm[rows], kind="stable")]  # the flat values are in file order
        P_probs[rows] = 0.0  # a label outside label_probs' keys has probability 0
        P_probs[np.ix_(rows, remap[:n_probs])] = np.frombuffer(probs, dtype=np.float64).reshape(-1, n_probs)
        del probs

    starts = np.frombuffer(gold_start, dtype=np.int64)
    lens = np.diff(starts)[perm]
    new_start = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    take = np.repeat(starts[:-1][perm] - new_start[:-1], lens) + np.arange(int(new_start[-1]))  # each row's gold, moved
    return PredictionTable(
        path=path, labels=names, ids=id_arr[perm], order=order[perm],
        offsets=np.frombuffer(offsets, dtype=np.int64)[perm] if n else np.zeros(0, np.int64),
        ok=b(ok), has_gold=b(has_gold), G=G[perm], P=P[perm], top=top[perm],
        gold_flat=gf[take] if len(gf) else gf, gold_start=new_start,
        confidence=np.frombuffer(confidence, dtype=np.float64)[perm] if n else np.zeros(0),
        probs=P_probs, has_probs=has, cached=b(cached), usage=usage)


def lock_run_dir(run_dir: Path) -> Any:
    """Create and hold a run (or eval) directory for this process; a second run on it is refused, naming the holder's PID."""
    import os

    from filelock import FileLock, Timeout

    from ._exceptions import RunError

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        what = "is a file, not a directory" if run_dir.is_file() else f"can't be created ({err.strerror or err})"
        raise RunError(f"--out {run_dir} {what}; give a directory path") from None
    lock = FileLock(run_dir / ".lock", timeout=0)
    pid_file = run_dir / ".lock.pid"
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = pid_file.read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise RunError(f"{run_dir} is in use by another labelwise run (PID {holder}); wait for it to finish "
                       "or give another --out") from None
    atomic_write_json(pid_file, os.getpid())
    return lock
