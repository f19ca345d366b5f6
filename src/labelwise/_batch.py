"""Bulk runs through batch files: the OpenAI Batch API (or any compatible provider), and files for vLLM's run-batch.

One request line per item (or per group of `items_per_request`): `{"custom_id", "method", "url", "body"}`, the body
being exactly what the online path sends (`OpenAIModel.chat_body`). Answers come back as output lines
`{"id", "custom_id", "response": {"status_code", "body"}, "error"}` (OpenAI's and vLLM's format alike) and go through
the labeler's own validation, re-asks and cache (`Labeler.afinish`), so a later online run is served from the cache.

Run-directory state (`RUN/batch/`), written atomically before anything is waited on, so a kill at any point loses
nothing and submits nothing twice: `state.json` (one entry per part: file id, batch id, status), and per part
`NNNN-input.jsonl` (the uploaded file), `NNNN-plan.jsonl` (items and the request of each line), and the downloaded
`NNNN-output.jsonl` / `NNNN-errors.jsonl`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ._exceptions import ModelConfigError, RunError
from ._io import atomic_write_bytes, atomic_write_json, atomic_write_lines, read_jsonl_repairing
from ._models import ModelAnswer, ModelRequest

if TYPE_CHECKING:
    from ._labeler import Labeler

__all__ = ["BatchConfig", "batchable", "chat_model", "LIMITS", "ENDPOINT", "arun_batch", "aexport", "batch_status", "cancel_batches",
           "custom_id", "request_line"]

# The provider's limits per batch input file (OpenAI's): every split reads them from here.
LIMITS = {"max_requests": 50_000, "max_bytes": 200 * 1024 * 1024}
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
UNRUN = ("batch_expired", "batch_cancelled")
T = TypeVar("T")  # line errors that mean "never executed": the item is resubmitted


class BatchConfig(BaseModel):
    """How a relabel run goes through batch files: submit to the Batch API, or export / import files."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["api", "export", "import"] = "api"
    path: str | None = None  # the file written by export, or read by import
    wait: bool = True  # api: poll until every batch ends (False: submit, record, return)
    reask: Literal["online", "batch"] = "online"  # where invalid answers and failed lines are asked again
    poll_s: float = Field(5.0, gt=0)  # first poll interval; it grows by half each poll up to max_poll_s
    max_poll_s: float = Field(60.0, gt=0)
    max_requests: int = Field(LIMITS["max_requests"], ge=1)
    max_bytes: int = Field(LIMITS["max_bytes"], ge=1024)


def custom_id(items: Sequence[tuple[str, str]], attempt: int = 1) -> str:
    """A line's custom_id: its item ids joined by `+` (and `#attempt` for a re-ask), so results map back by content."""
    return "+".join(iid for iid, _ in items) + (f"#{attempt}" if attempt > 1 else "")


def _ids(cid: str) -> list[str]:
    return cid.split("#", 1)[0].split("+")


def _request_dict(request: ModelRequest) -> dict[str, Any]:
    return dict(request.__dict__)


def _request_from(d: dict[str, Any]) -> ModelRequest:
    """A ModelRequest back from its JSON form (tuples restored, so it hashes and extends as the original did)."""
    return ModelRequest(**{**d, "labels": tuple(d["labels"]), "keys": tuple(d["keys"]),
                           "reasks": tuple(tuple(r) for r in d["reasks"])})


def batchable(model: Any) -> bool:
    """Whether a model's requests can go into batch files (an OpenAI-compatible chat model builds their bodies)."""
    return hasattr(model, "chat_body") and hasattr(model, "answer_from_body")


def chat_model(model: Any) -> Any:
    """The model, if its requests can go into batch files; else a clear error."""
    if not batchable(model):
        raise ModelConfigError(f"batch files need an openai:MODEL (a chat-completions model), not {model.name}")
    return model


def request_line(model: Any, plan: dict[str, Any]) -> bytes:
    """One batch input line: the online request body of a planned request under its custom_id."""
    body = model.chat_body(_request_from(plan["request"]))
    return (json.dumps({"custom_id": plan["custom_id"], "method": "POST", "url": ENDPOINT, "body": body},
                       ensure_ascii=False) + "\n").encode()


def _plan(labeler: Labeler, items: Sequence[tuple[str, str]], request: ModelRequest | None = None,
          attempt: int = 1) -> dict[str, Any]:
    """One request line's plan: its items, request (as the online path builds it), examples and attempt."""
    examples: list[str] = []
    if request is None:
        request, examples = labeler.plan_request(items)
    return {"custom_id": custom_id(items, attempt), "items": [list(x) for x in items], "examples": examples,
            "request": _request_dict(request), "attempt": attempt}


def _plans_for(labeler: Labeler, todo: Sequence[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    """Plans for items in groups of `items_per_request`, examples selected a chunk at a time as online."""
    size = labeler.items_per_request
    step = 256 * size
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        labeler.prefetch(list(chunk))
        for i in range(0, len(chunk), size):
            yield _plan(labeler, chunk[i:i + size])


def _chunks(pairs: Iterable[tuple[T, bytes]], max_requests: int, max_bytes: int) -> Iterator[list[tuple[T, bytes]]]:
    """(thing, line) pairs cut into files that keep within the request and byte limits, streaming."""
    part: list[tuple[T, bytes]] = []
    size = 0
    for n, (thing, line) in enumerate(pairs, 1):
        if len(line) > max_bytes:
            raise RunError(f"request line {n} is {len(line):,} bytes, more than a batch file may hold ({max_bytes:,})")
        if part and (len(part) >= max_requests or size + len(line) > max_bytes):
            yield part
            part, size = [], 0
        part.append((thing, line))
        size += len(line)
    if part:
        yield part


def _answer_of(model: Any, row: dict[str, Any]) -> ModelAnswer | Exception | None:
    """The answer in one output line; an Exception for a failed request; None for a request never executed."""
    err, resp = row.get("error"), row.get("response")
    if isinstance(err, dict) and err.get("code") in UNRUN:
        return None
    if isinstance(resp, dict) and resp.get("status_code") == 200 and isinstance(resp.get("body"), dict):
        try:
            return model.answer_from_body(resp["body"])
        except Exception as e:  # noqa: BLE001 - a malformed body is this line's failure, not the run's
            return RunError(f"batch line {row.get('custom_id')}: unreadable response body ({e})")
    if isinstance(resp, dict) and resp.get("status_code"):
        body = resp.get("body") or {}
        msg = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        msg = msg or (err.get("message") if isinstance(err, dict) else err)  # vLLM: the error is a string
        return RunError(f"batch line failed: HTTP {resp['status_code']}{': ' + str(msg) if msg else ''}")
    detail = err.get("message") if isinstance(err, dict) else err
    return RunError(f"batch line failed: {detail or 'no response'}")


def _read_results(path: Path) -> Iterator[dict[str, Any]]:
    """Output lines of a results file, streamed; a bad line fails with its file and line number."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RunError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("custom_id"), str):
                raise RunError(f"{path}, line {n}: a batch output line needs a string `custom_id`")
            yield row


class _Usage:
    """Tokens of batch answers (billed at batch prices) and of online re-asks (online prices)."""

    def __init__(self, labeler: Labeler) -> None:
        self.batch = {"prompt_tokens": 0, "completion_tokens": 0}
        self.labeler = labeler
        self.online0 = {k: labeler.stats[k] for k in self.batch}

    def add(self, answer: Any) -> None:
        if isinstance(answer, ModelAnswer):
            for k in self.batch:
                self.batch[k] += answer.usage.get(k, 0)

    def report(self, prices: dict[str, Any]) -> dict[str, Any]:
        from ._prices import cost_of

        name = self.labeler.model.name
        online = {k: self.labeler.stats[k] - v for k, v in self.online0.items()}
        return {"tokens": self.batch, "cost_usd": cost_of(self.batch, name, prices, batch=True),
                "online_reask_tokens": online, "online_reask_cost_usd": cost_of(online, name, prices)}


async def _apply(labeler: Labeler, model: Any, plan: dict[str, Any], row: dict[str, Any] | None, texts: dict[str, str],
                 todo: dict[str, str], record: Callable[[Any], None], usage: _Usage, defer: Callable[..., None] | None) -> bool:
    """Feed one line's result through the labeler; False when the line was never executed (item left to redo)."""
    items = [(iid, texts.get(iid, text)) for iid, text in plan["items"]]
    if not any(iid in todo for iid, _ in items):
        return True  # recorded by an earlier (killed) pass over the same results
    answer = _answer_of(model, row) if row is not None else None
    if answer is None:
        return False
    usage.add(answer)
    preds = await labeler.afinish(items, _request_from(plan["request"]), plan["examples"], answer,
                                  start=plan["attempt"], defer=defer)
    for iid, pred in preds.items():
        if todo.pop(iid, None) is not None:
            record(pred)
    return True


# --------------------------------------------------------------------------- export / import (vLLM run-batch)


async def aexport(cfg: BatchConfig, labeler: Labeler, items: Sequence[Any]) -> dict[str, Any]:
    """Write the request file for every item not already answered under these settings; call nothing."""
    if not cfg.path:
        raise RunError("batch export needs a file path")
    pairs = [(it.id, it.text) for it in items]
    hits = labeler.cached(pairs)
    todo = [q for q in pairs if q[0] not in hits]
    model = chat_model(labeler.model)
    n = atomic_write_lines(cfg.path, (request_line(model, p) for p in _plans_for(labeler, todo)))
    return {"exported": str(cfg.path), "requests": n, "items": len(todo), "already_cached": len(items) - len(todo)}


async def _aimport(cfg: BatchConfig, labeler: Labeler, texts: dict[str, str], todo: dict[str, str],
                   record: Callable[[Any], None], prices: dict[str, Any]) -> dict[str, Any]:
    """Read a results file (OpenAI batch output / vLLM run-batch output) into the run; each line is re-planned
    from its custom_id, so its answer is validated and cached under the request the online path would send."""
    path = Path(cfg.path or "")
    if not path.is_file():
        raise RunError(f"batch results file not found: {path}")
    if cfg.reask == "batch":
        raise RunError("--batch-reask works with --batch only; imported results are re-asked online")
    model, usage = chat_model(labeler.model), _Usage(labeler)
    lines = foreign = done = unrun = 0
    rows = _read_results(path)
    while chunk := list(itertools.islice(rows, 256 * labeler.items_per_request)):
        mine = []
        for row in chunk:
            ids = _ids(row["custom_id"])
            if any(i not in texts for i in ids):
                foreign += 1
            elif not any(i in todo for i in ids):
                done += 1
            else:
                mine.append((row, [(i, texts[i]) for i in ids]))
        labeler.prefetch([item for _, items in mine for item in items])  # examples a chunk at a time, as online
        for row, items in mine:
            unrun += not await _apply(labeler, model, _plan(labeler, items), row, texts, todo, record, usage, None)
        lines += len(chunk)
    return {"mode": "import", "path": str(path), "lines": lines, "lines_not_in_this_run": foreign,
            "lines_already_done": done, "lines_never_executed": unrun, "items_left": len(todo), **usage.report(prices)}


# --------------------------------------------------------------------------- the Batch API


class _State:
    """`RUN/batch/state.json`: one entry per submitted part; saved atomically after every step."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "batch"
        self.path = self.dir / "state.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {"parts": []}
        self.parts: list[dict[str, Any]] = self.data["parts"]

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def file(self, part: dict[str, Any], kind: str) -> Path:
        return self.dir / f"{part['n']:04d}-{kind}.jsonl"

    def plans(self, part: dict[str, Any]) -> list[dict[str, Any]]:
        rows, _ = read_jsonl_repairing(self.file(part, "plan"))
        return rows

    def add(self, labeler: Labeler, plans: Iterable[dict[str, Any]], cfg: BatchConfig, round_: int) -> list[dict[str, Any]]:
        """Write input and plan files for new parts (cut at the limits), then record them: nothing is sent yet."""
        model = chat_model(labeler.model)
        new = []
        for chunk in _chunks(((p, request_line(model, p)) for p in plans), cfg.max_requests, cfg.max_bytes):
            part = {"n": len(self.parts), "round": round_, "requests": len(chunk),
                    "items": sum(len(p["items"]) for p, _ in chunk), "bytes": sum(len(line) for _, line in chunk),
                    "file_id": None, "batch_id": None, "status": "written", "processed": False}
            atomic_write_bytes(self.file(part, "plan"),
                               "".join(json.dumps(p, ensure_ascii=False) + "\n" for p, _ in chunk).encode())
            atomic_write_bytes(self.file(part, "input"), b"".join(line for _, line in chunk))
            self.parts.append(part)
            new.append(part)
        self.save()
        return new


def _client(model: Any) -> Any:
    """The model's client with the SDK's own retries (backoff, Retry-After) for the few Batch API calls."""
    return model.client.with_options(max_retries=5)


async def _submit(client: Any, state: _State, part: dict[str, Any]) -> None:
    """Upload and create the batch of a part, recording each id as soon as it exists."""
    if part["file_id"] is None:
        data = state.file(part, "input").read_bytes()
        f = await client.files.create(file=(state.file(part, "input").name, data), purpose="batch")
        part.update(file_id=f.id, uploaded_at=int(time.time()), status="uploaded")
        state.save()
    if part["batch_id"] is None:
        _note(part, await _create(client, state, part))
        state.save()


def _note(part: dict[str, Any], b: Any) -> None:
    """Record what a Batch object says about a part."""
    counts = b.request_counts
    part.update(batch_id=b.id, status=b.status, output_file_id=b.output_file_id, error_file_id=b.error_file_id,
                counts={"total": counts.total, "completed": counts.completed, "failed": counts.failed} if counts else None,
                errors=[e.model_dump() for e in (b.errors.data or [])] if b.errors else None)


async def _create(client: Any, state: _State, part: dict[str, Any]) -> Any:
    """Create a part's batch exactly once: an attempt that may have reached the server (a kill, a timeout) is
    looked up by its input file before another is made, so a batch is never created twice."""
    import openai

    once = client.with_options(max_retries=0)
    for attempt in range(4):
        if part.get("creating"):
            async for b in client.batches.list(limit=100):  # newest first
                if b.input_file_id == part["file_id"]:
                    return b
                if b.created_at < part["uploaded_at"] - 3600:
                    break
        part["creating"] = True
        state.save()
        try:
            return await once.batches.create(input_file_id=part["file_id"], endpoint=ENDPOINT, completion_window="24h",
                                             metadata={"labelwise_part": str(part["n"])})
        except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError):
            if attempt == 3:
                raise
            await asyncio.sleep(2 ** attempt)
    raise AssertionError("unreachable")


class _Bar:
    """A rich bar of completed / failed requests over the batches being waited on; silent when not on a terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("failed {task.fields[failed]}  {task.fields[status]}"), stderr=True)
            self.task = self.bar.add_task("batch", total=total, failed=0, status="")
            self.bar.start()

    def update(self, done: int, failed: int, status: str) -> None:
        if self.enabled:
            self.bar.update(self.task, completed=done + failed, failed=failed, status=status)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


async def _wait(client: Any, state: _State, parts: list[dict[str, Any]], cfg: BatchConfig, progress: bool) -> None:
    """Poll the parts' batches with growing intervals until each has ended (just once without `cfg.wait`)."""
    bar = _Bar(sum(p["requests"] for p in parts), progress and cfg.wait)
    delay = cfg.poll_s
    try:
        while True:
            done = failed = 0
            statuses = []
            for part in parts:
                if part["status"] not in TERMINAL:
                    _note(part, await client.batches.retrieve(part["batch_id"]))
                c = part.get("counts") or {}
                done += c.get("completed", 0)
                failed += c.get("failed", 0)
                statuses.append(part["status"])
            state.save()
            bar.update(done, failed, " ".join(f"{s}:{statuses.count(s)}" for s in dict.fromkeys(statuses)))
            if all(s in TERMINAL for s in statuses) or not cfg.wait:
                return
            await asyncio.sleep(delay)
            delay = min(cfg.max_poll_s, delay * 1.5)
    finally:
        bar.close()


async def _collect(client: Any, state: _State, part: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Download (once) the output and error files of an ended part; rows by custom_id."""
    rows: dict[str, dict[str, Any]] = {}
    for kind, key in (("output", "output_file_id"), ("errors", "error_file_id")):
        path = state.file(part, kind)
        if part.get(key) and not path.exists():
            content = await client.files.content(part[key])
            atomic_write_bytes(path, content.content)
        if path.exists():
            for row in _read_results(path):
                rows.setdefault(row["custom_id"], row)
    return rows


async def arun_batch(cfg: BatchConfig, labeler: Labeler, todo_items: Sequence[tuple[str, str]], run_dir: Path,
                     record: Callable[[Any], None], prices: dict[str, Any], *, progress: bool | None = None,
                     known: dict[str, str] | None = None) -> dict[str, Any]:
    """Label `todo_items` through batch files (api or import); each prediction goes to `record`; returns the report.

    `known`: every item of the run (done ones too), so an import can tell done lines from foreign ones."""
    model = chat_model(labeler.model)
    texts, todo = {**(known or {}), **dict(todo_items)}, {}
    hits = labeler.cached(todo_items)
    for iid, text in todo_items:
        if iid in hits:
            record(hits[iid])
        else:
            todo[iid] = text
    if cfg.mode == "import":
        return await _aimport(cfg, labeler, texts, todo, record, prices)
    progress = sys.stderr.isatty() if progress is None else progress
    client, state, usage = _client(model), _State(run_dir), _Usage(labeler)
    notes: list[str] = []
    open_parts = [p for p in state.parts if not p["processed"]]
    covered = {iid for p in open_parts for plan in state.plans(p) for iid, _ in plan["items"]}
    fresh = [(iid, text) for iid, text in todo.items() if iid not in covered]
    round_ = max((p["round"] for p in state.parts), default=-1) + 1
    if fresh:
        open_parts += state.add(labeler, _plans_for(labeler, fresh), cfg, round_)
    deferred: list[dict[str, Any]] = []

    def defer(items: Sequence[tuple[str, str]], request: ModelRequest, examples: list[str], attempt: int) -> None:
        deferred.append({**_plan(labeler, items, request, attempt), "examples": examples})

    while open_parts:
        for part in open_parts:
            await _submit(client, state, part)
        await _wait(client, state, open_parts, cfg, progress)
        for part in open_parts:
            if part["status"] not in TERMINAL:
                continue  # --no-wait: still running; collected by a later run
            rows = await _collect(client, state, part)
            unrun = 0
            for plan in state.plans(part):
                unrun += not await _apply(labeler, model, plan, rows.get(plan["custom_id"]), texts, todo, record, usage,
                                          defer if cfg.reask == "batch" else None)
            part.update(processed=True, unfinished_requests=unrun)
            if part["status"] != "completed" or unrun:
                why = "; ".join(f"line {e.get('line')}: {e.get('message')}" for e in (part.get("errors") or [])[:5])
                notes.append(f"batch {part['batch_id']} {part['status']}{': ' + why if why else ''}: "
                             f"{unrun} of {part['requests']} requests unfinished; their items are resubmitted on the next run")
        round_ += 1
        # one atomic write: the parts just processed, and the follow-up parts holding their re-asks
        open_parts = state.add(labeler, deferred, cfg, round_) if deferred else []
        deferred = []
        state.save()
        if not cfg.wait:
            for part in open_parts:
                await _submit(client, state, part)
            break
    pending = [p for p in state.parts if not p["processed"]]
    return {
        "mode": "api", "endpoint": ENDPOINT,
        "batches": [{k: p.get(k) for k in ("n", "round", "batch_id", "file_id", "status", "requests", "items", "counts",
                                           "unfinished_requests")} for p in state.parts],
        "requests_submitted": sum(p["requests"] for p in state.parts),
        "pending_batches": len(pending), "items_left": len(todo), "notes": notes, **usage.report(prices),
    }


# --------------------------------------------------------------------------- status / cancel


def _run_client(run_dir: Path, base_url: str | None) -> tuple[Any, _State]:
    from ._models import ModelOptions, get_model

    state = _State(Path(run_dir))
    info = Path(run_dir) / "run.json"
    if not state.path.exists() or not info.exists():
        raise RunError(f"{run_dir} has no batches (no batch/state.json)")
    settings = json.loads(info.read_text(encoding="utf-8"))["settings"]
    model = get_model(settings["model"], ModelOptions(base_url=base_url or settings.get("base_url")))
    return chat_model(model), state


async def _astatus(run_dir: Path, base_url: str | None, cancel: bool) -> list[dict[str, Any]]:
    model, state = _run_client(run_dir, base_url)
    client = _client(model)
    out = []
    try:
        for part in state.parts:
            row = {"n": part["n"], "batch_id": part["batch_id"], "requests": part["requests"], "items": part["items"],
                   "local": "processed" if part["processed"] else "waiting" if part["batch_id"] else "not submitted"}
            if part["batch_id"]:
                b = await client.batches.retrieve(part["batch_id"])
                if cancel and b.status not in TERMINAL and b.status != "cancelling":
                    b = await client.batches.cancel(part["batch_id"])
                    row["cancelled"] = True
                c = b.request_counts
                row.update(status=b.status, completed=c.completed if c else None, failed=c.failed if c else None)
            out.append(row)
    finally:
        await model.aclose()
    return out


def batch_status(run_dir: str | Path, base_url: str | None = None) -> list[dict[str, Any]]:
    """Where each batch of a run stands (asks the provider)."""
    from ._loop import run_sync

    return run_sync(_astatus(Path(run_dir), base_url, cancel=False))


def cancel_batches(run_dir: str | Path, base_url: str | None = None) -> list[dict[str, Any]]:
    """Cancel every running batch of a run; what is answered by then is collected by the next run."""
    from ._loop import run_sync

    return run_sync(_astatus(Path(run_dir), base_url, cancel=True))
