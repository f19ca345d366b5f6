"""A fake OpenAI-compatible chat-completions server (asyncio + stdlib) for fault-injection tests and benchmarks.

Endpoints: `POST /v1/chat/completions`, `GET /v1/models`, and `GET /_stats` (stats + server-thread CPU seconds);
the Files and Batch API (`/v1/files`, `/v1/batches`, `GET /_batch_stats`; see `BatchScenario`).
Answers are valid labels in the requested format:

* `response_format` `{"type": "json_schema", "json_schema": {"schema": S}}` or `{"type": "json_object", "schema": S}`:
  the answer is an instance of S; every `enum` in S (after `$ref`/`anyOf`) is filled with values from it.
  Batch convention: an array whose items are objects with an `id` property gets one entry per item id, the ids
  being the lines of the last user message that start with `[ID]` (e.g. `[17] some text`), else the id's enum.
* no schema: `{"labels": [label]}` with labels read from the first prompt line containing `labels:`/`类别` (the
  text after its last colon split on `,，、;|`, or the list lines below it: `- label：definition`), else
  `{"labels": []}`; with `[ID]` lines in the last user message the answer is `{"items": [{"id", "labels"}...]}`.
* Labels are picked with the seeded RNG, except that labels found in the item's text are preferred (the `[ID]`
  line in batch mode; otherwise the last user message from its last `句子：`/`Text:` line on), so a test can get
  a deterministic right answer by putting the label into the text.

`Scenario.script` entries (consumed one per chat request, before limits and rates; `server.script` is a deque a
test may extend while the server runs): "ok", "garbage", "off_taxonomy", "hang" / "hang:SECONDS", "hold" (a valid
answer held, in flight, until `server.release()`: a test sees `server.held` requests in flight without timing),
"drop" (the connection is closed with no answer), an HTTP status "429" / "429:RETRY_AFTER_S" / "500" / "503" ...,
or one of the misbehaving answers in `MISBEHAVIOURS` (a 200 that is not a usable completion, a 401 echoing the key,
an exhausted quota, a huge answer). Limits: `max_in_flight` concurrent answers, and `rpm` as a token bucket
(`rpm_burst` tokens, refilled at rpm/60 per second of `server.clock`, which a test may replace); beyond either, 429
with `Retry-After` (seconds, may be fractional) and `retry-after-ms`, or with `retry_after_date` an HTTP-date
`Retry-After` alone. Latency and hangs are timers (`loop.call_later`), so a waiting request costs no task.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import email.utils
import functools
import http
import json
import math
import random
import re
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OFF_LABEL = "__off_taxonomy__"
_GARBAGE = ['Sure! Here are the labels: {"labels": ["', "I'm sorry, I cannot help with that.", "",
            '```json\n{labels: [first, second,]}\n```', '{"labels": ["a"], "items": [}']
_SCRIPT_RE = re.compile(r"^(ok|garbage|off_taxonomy|hold|drop|hang(:\d+(\.\d*)?)?|[1-5]\d\d(:\d+(\.\d*)?)?"
                        r"|empty_choices|html_200|not_completion|broken_logprobs|echo_key_401|quota_429|context_length_400|huge_answer(:\d+)?)$")
# Script entries for answers no healthy server gives: the client must survive each of them.
MISBEHAVIOURS = {
    "empty_choices": "200, a chat.completion whose `choices` is []",
    "html_200": "200 with an HTML body (text/html), as a misconfigured proxy sends",
    "not_completion": "200 with JSON that is not a chat.completion",
    "broken_logprobs": "200, a chat.completion whose `logprobs.content` is not a list of tokens",
    "echo_key_401": "401 whose error message echoes the request's Authorization header (the key)",
    "quota_429": "429 with code `insufficient_quota` (retrying can't help)",
    "context_length_400": "400 with code `context_length_exceeded` (this request only: the run goes on)",
    "huge_answer": "200 whose answer is CHARS (default 200000) characters of prose: `huge_answer:CHARS`",
}
_ID_RE = re.compile(r"^\s*\[([^\]\n]+)\]([^\n]*)", re.M)
_TEXT_RE = re.compile(r"^\s*(句子|文本|text|sentence|input)\s*[:：]", re.M | re.I)
_LABELS_RE = re.compile(r"labels?\s*[:：]|类别", re.I)


# ---- Files and Batch API (`/v1/files`, `/v1/batches`) ------------------------------------------------------------
class BatchScenario(BaseModel):
    """How the fake Batch API behaves. A batch is validating for the first 10% of `seconds`, in_progress until 90%
    (its request counts growing), finalizing, then completed. Faults are named and counted from the first batch:

    * `line_script`: one entry per request line, consumed in order across batches: "ok", "garbage", "off_taxonomy",
      "error" (a line-level `error` object, no response) or an HTTP status ("500", "400", ...; the error file).
    * `expire`: the first N batches expire: the first half of their lines are answered, the rest are in the error
      file as `batch_expired`.
    * `fail_validation`: the first N batches fail validation (status `failed`, `errors` naming line 1).
    * `create_delay_s`: the answer to `POST /batches` comes this late (the batch exists already: a client killed
      while waiting must find it, not create another).
    Input lines are validated as OpenAI does (JSON, unique `custom_id`, `method` POST, `url` equal to the endpoint);
    a bad file makes the batch `failed` with the line numbers.
    """

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(default=0.0, ge=0)
    line_script: list[str] = Field(default_factory=list)
    expire: int = Field(default=0, ge=0)
    fail_validation: int = Field(default=0, ge=0)
    create_delay_s: float = Field(default=0.0, ge=0)

    @field_validator("line_script")
    @classmethod
    def _check_lines(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not re.fullmatch(r"ok|garbage|off_taxonomy|error|[1-5]\d\d", s)]
        if bad:
            raise ValueError(f"unknown line_script entries {bad}")
        return v


_BATCH_ROUTE = re.compile(r"^/(files|batches)(?:/([^/]+))?(?:/(content|cancel))?$")


class _BatchAPI:
    """The Files and Batch endpoints of FakeOpenAIServer; `batch_stats` counts uploads, batches created, cancels."""

    scenario: Scenario
    _rng: random.Random

    @property
    def batch_stats(self) -> dict[str, int]:
        """Counters: files uploaded, batches created and cancelled, request lines answered."""
        self._batch_init()
        return self._bstats

    def _batch_init(self) -> None:
        if not hasattr(self, "_bstats"):
            self._bstats = {"files_uploaded": 0, "batches_created": 0, "batches_cancelled": 0, "lines": 0}
            self._files: dict[str, dict[str, Any]] = {}
            self._batches: dict[str, dict[str, Any]] = {}
            self._line_script: collections.deque[str] = collections.deque(self.scenario.batch.line_script)

    def _batch_route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Route `/files...`, `/batches...` and `GET /_batch_stats`."""
        self._batch_init()
        if path == "/_batch_stats":
            return _Reply(200, json.dumps(self.batch_stats).encode())
        m = _BATCH_ROUTE.match(path)
        if not m:
            return _error(404, f"no route {method} {path}", "invalid_request_error")
        kind, oid, verb = m.groups()
        if kind == "files":
            if method == "POST" and not oid:
                return self._upload(headers, body)
            f = self._files.get(oid or "")
            if method == "GET" and not oid:
                return _Reply(200, json.dumps({"object": "list", "data": [f["meta"] for f in self._files.values()]}).encode())
            if f is None:
                return _error(404, f"No such File object: {oid}", "invalid_request_error")
            if method == "GET" and verb == "content":
                return _Reply(200, f["content"])
            if method == "GET" and not verb:
                return _Reply(200, json.dumps(f["meta"]).encode())
        else:
            if method == "POST" and not oid:
                return self._create_batch(body)
            if method == "GET" and not oid:
                data = [self._batch_view(b) for b in sorted(self._batches.values(), key=lambda b: -b["seq"])]
                return _Reply(200, json.dumps({"object": "list", "data": data, "has_more": False,
                                               "first_id": data[0]["id"] if data else None,
                                               "last_id": data[-1]["id"] if data else None}).encode())
            b = self._batches.get(oid or "")
            if b is None:
                return _error(404, f"No batch found with id '{oid}'", "invalid_request_error")
            if method == "GET" and not verb:
                return _Reply(200, json.dumps(self._batch_view(b)).encode())
            if method == "POST" and verb == "cancel":
                return self._cancel(b)
        return _error(404, f"no route {method} {path}", "invalid_request_error")

    def _new_file(self, content: bytes, filename: str, purpose: str) -> str:
        fid = f"file-fake{len(self._files) + 1}"
        meta = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()), "filename": filename,
                "purpose": purpose, "status": "processed"}
        self._files[fid] = {"meta": meta, "content": content}
        return fid

    def _upload(self, headers: dict[str, str], body: bytes) -> _Reply:
        """`POST /files`, multipart/form-data with `file` and `purpose`."""
        import email.parser
        import email.policy

        ctype = headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return _error(400, "expected multipart/form-data", "invalid_request_error")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"content-type: {ctype}\r\n\r\n".encode() + body)
        parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
        if "file" not in parts or "purpose" not in parts:
            return _error(400, "multipart body needs `file` and `purpose`", "invalid_request_error")
        content = parts["file"].get_payload(decode=True) or b""
        purpose = (parts["purpose"].get_payload(decode=True) or b"").decode()
        filename = parts["file"].get_filename() or "upload.jsonl"
        self.batch_stats["files_uploaded"] += 1
        return _Reply(200, json.dumps(self._files[self._new_file(content, filename, purpose)]["meta"]).encode())

    def _create_batch(self, body: bytes) -> _Reply:
        """`POST /batches`: validate the input file now, answer every line now; the clock decides what is shown."""
        sc = self.scenario.batch
        try:
            req = json.loads(body)
        except ValueError:
            return _error(400, "body must be JSON", "invalid_request_error")
        f = self._files.get(req.get("input_file_id", ""))
        if f is None:
            return _error(404, f"No such File object: {req.get('input_file_id')}", "invalid_request_error")
        if req.get("completion_window") != "24h":
            return _error(400, "completion_window must be 24h", "invalid_request_error")
        n = self.batch_stats["batches_created"] = self.batch_stats["batches_created"] + 1
        bid = f"batch_fake{n}"
        lines = f["content"].decode("utf-8", "replace").splitlines()
        errors, outputs, failures = [], [], []
        seen: set[str] = set()
        for no, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except ValueError:
                errors.append({"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.", "line": no})
                continue
            cid = row.get("custom_id") if isinstance(row, dict) else None
            if not isinstance(cid, str) or cid in seen:
                errors.append({"code": "duplicate_custom_id" if cid in seen else "missing_required_parameter",
                               "message": "custom_id must be a unique string", "line": no})
            elif row.get("method") != "POST" or row.get("url") != req.get("endpoint"):
                errors.append({"code": "invalid_url", "message": "method must be POST and url the batch endpoint", "line": no})
            else:
                seen.add(cid)
        if n <= sc.fail_validation and not errors:
            errors.append({"code": "invalid_request", "message": "injected validation failure (fake server)", "line": 1})
        if not errors:
            for no, line in enumerate(lines, 1):
                row = json.loads(line)
                self.batch_stats["lines"] += 1
                kind = self._line_script.popleft() if self._line_script else "ok"
                rid = f"batch_req_{bid}_{no}"
                if kind == "error":
                    failures.append({"id": rid, "custom_id": row["custom_id"], "response": None,
                                     "error": {"code": "server_error", "message": "injected line error (fake server)"}})
                elif kind.isdigit():
                    failures.append({"id": rid, "custom_id": row["custom_id"], "error": None, "response": {
                        "status_code": int(kind), "request_id": rid, "body": {"error": {
                            "message": f"injected error {kind} (fake server)", "type": "server_error", "code": None}}}})
                else:
                    b = row.get("body") or {}
                    done = self._completion(b, b.get("messages") or [], kind)
                    outputs.append({"id": rid, "custom_id": row["custom_id"], "error": None,
                                    "response": {"status_code": 200, "request_id": rid, "body": done}})
        now = time.time()
        self._batches[bid] = {
            "seq": n, "id": bid, "object": "batch", "endpoint": req.get("endpoint"), "input_file_id": f["meta"]["id"],
            "completion_window": "24h", "created_at": int(now), "t0": time.monotonic(), "metadata": req.get("metadata"),
            "total": len(lines), "outputs": outputs, "failures": failures, "errors": errors,
            "expire": n <= sc.expire, "final": None, "output_file_id": None, "error_file_id": None,
        }
        reply = _Reply(200, json.dumps(self._batch_view(self._batches[bid])).encode())
        reply.delay = sc.create_delay_s
        return reply

    def _batch_view(self, b: dict[str, Any]) -> dict[str, Any]:
        """The Batch object as of now (status from the clock, or the final one)."""
        seconds = self.scenario.batch.seconds
        frac = 1.0 if seconds <= 0 else (time.monotonic() - b["t0"]) / seconds
        if b["final"] is None:
            if b["errors"]:
                self._finalize(b, "failed", 0)
            elif frac >= 1.0:
                self._finalize(b, "expired" if b["expire"] else "completed", b["total"] // 2 if b["expire"] else b["total"])
        status = b["final"] or ("validating" if frac < 0.1 else "in_progress" if frac < 0.9 else "finalizing")
        n_out, n_fail = len(b["outputs"]), len(b["failures"])
        if b["final"] is not None:
            done, failed = b["counts"]
        elif status == "validating":
            done = failed = 0
        else:
            share = min(1.0, (frac - 0.1) / 0.8)
            done, failed = int(n_out * share), int(n_fail * share)
        view = {k: b[k] for k in ("id", "object", "endpoint", "input_file_id", "completion_window", "created_at",
                                  "metadata", "output_file_id", "error_file_id")}
        view.update(status=status, request_counts={"total": b["total"] if not b["errors"] else 0, "completed": done,
                                                   "failed": failed},
                    errors={"object": "list", "data": b["errors"]} if b["errors"] else None,
                    expires_at=b["created_at"] + 86400, **{f"{status}_at": int(time.time())} if b["final"] else {})
        return view

    def _finalize(self, b: dict[str, Any], status: str, answered: int) -> None:
        """Write the output and error files of a batch that ends now with `answered` lines processed."""
        rows = sorted([(r["id"], r, True) for r in b["outputs"]] + [(r["id"], r, False) for r in b["failures"]],
                      key=lambda x: int(x[0].rsplit("_", 1)[1]))
        done, rest = rows[:answered], rows[answered:]
        out = [r for _, r, ok in done if ok]
        err = [r for _, r, ok in done if not ok]
        code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(status)
        if code:
            err += [{"id": r["id"], "custom_id": r["custom_id"], "response": None,
                     "error": {"code": code, "message": f"This request was not executed: the batch is {status}."}}
                    for _, r, _ in rest]
        dump = lambda rs: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs).encode()  # noqa: E731
        if out:
            b["output_file_id"] = self._new_file(dump(out), f"{b['id']}_output.jsonl", "batch_output")
        if err:
            b["error_file_id"] = self._new_file(dump(err), f"{b['id']}_error.jsonl", "batch_output")
        b["final"], b["counts"] = status, (len(out), sum(1 for _, _, ok in done if not ok))

    def _cancel(self, b: dict[str, Any]) -> _Reply:
        """`POST /batches/ID/cancel`: a running batch stops now, keeping the lines answered so far."""
        if b["final"] is None:
            view = self._batch_view(b)
            if b["final"] is None:
                self.batch_stats["batches_cancelled"] += 1
                self._finalize(b, "cancelled", view["request_counts"]["completed"] + view["request_counts"]["failed"])
        return _Reply(200, json.dumps(self._batch_view(b)).encode())


class Scenario(BaseModel):
    """How the fake server behaves: latency, limits, fault rates and a per-request script."""

    model_config = ConfigDict(extra="forbid")

    latency_s: float = Field(default=0.0, ge=0)
    jitter_s: float = Field(default=0.0, ge=0)
    max_in_flight: int | None = Field(default=None, ge=1)
    rpm: float | None = Field(default=None, gt=0)
    rpm_burst: float | None = Field(default=None, ge=1)  # token-bucket size; default one second's worth (at least 1)
    retry_after_s: float = Field(default=1.0, ge=0)  # Retry-After of max_in_flight and plain scripted "429" answers
    retry_after_date: bool = False  # 429s say Retry-After as an HTTP date (whole seconds, rounded up), no retry-after-ms
    error_rate: float = Field(default=0.0, ge=0, le=1)
    garbage_rate: float = Field(default=0.0, ge=0, le=1)
    off_taxonomy_rate: float = Field(default=0.0, ge=0, le=1)
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    hang_s: float = Field(default=30.0, ge=0)
    seed: int = 0
    script: list[str] = Field(default_factory=list)
    require_api_key: str | None = None
    reject_json_schema: bool = False  # 400 on response_format json_schema (server without strict schemas)
    reject_response_format: bool = False  # 400 on any response_format
    no_logprobs: bool = False  # ignores logprobs / top_logprobs and returns none (as many servers do)
    model: str = "fake-model"
    batch: BatchScenario = Field(default_factory=BatchScenario)

    @field_validator("script")
    @classmethod
    def _check_script(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not _SCRIPT_RE.match(s)]
        if bad:
            raise ValueError(f"unknown script entries {bad}")
        return v

    @model_validator(mode="after")
    def _check_rates(self) -> Scenario:
        if self.error_rate + self.garbage_rate + self.off_taxonomy_rate + self.hang_rate > 1:
            raise ValueError("error, garbage, off_taxonomy and hang rates add up to more than 1")
        return self


@dataclass
class Stats:
    """Counters of what the server answered; `log` holds (arrival, done, status) per chat request (monotonic)."""

    requests: int = 0
    connections: int = 0
    completions: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0
    errors: int = 0
    garbage: int = 0
    off_taxonomy: int = 0
    hangs: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    log: list[tuple[float, float, int]] = field(default_factory=list)

    def snapshot(self, with_log: bool = False) -> dict[str, Any]:
        """A JSON-able copy (the log only when asked)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "log"}
        d["by_status"] = {str(k): v for k, v in sorted(self.by_status.items())}
        return {**d, "log": list(self.log)} if with_log else d


def _text(content: Any) -> str:
    """The text of a message content (a string or a list of parts)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _prompt_labels(prompt: str) -> list[str]:
    """Labels listed after a line containing `labels:`/`类别`, inline or as list lines below it."""
    lines = prompt.splitlines()
    for i, line in enumerate(lines):
        if not _LABELS_RE.search(line):
            continue
        rest = re.split(r"[:：]", line)[-1].strip().rstrip("。.")
        if rest:
            found = [x.strip(" `'\"") for x in re.split(r"[,，、;；|]", rest)]
        else:
            found = []
            for nxt in lines[i + 1:]:
                s = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", nxt).strip()
                if not s:
                    break
                found.append(re.split(r"[:：]", s)[0].strip(" `'\""))
        if found := [x for x in found if x]:
            return found
    return []


@functools.lru_cache(maxsize=64)
def _reason(status: int) -> str:
    """The HTTP reason phrase of a status."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _fmt_s(seconds: float) -> str:
    """Seconds as a short decimal string ("1", "0.25")."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: parses Content-Length requests and answers them in order."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.head: tuple[str, str, dict[str, str], int, bool] | None = None  # method, path, headers, length, close
        self.transport: asyncio.Transport | None = None
        self.pending: tuple[asyncio.TimerHandle | None, _Reply] | None = None  # a delayed (None: held) answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._conns.add(self)
        self.server.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)
        if self.pending:  # the client gave up (timeout) or the server closes: the answer is never sent
            if self.pending[0] is not None:
                self.pending[0].cancel()
            else:
                self.server._held.remove(self)
            self.server._finish(self.pending[1], sent=False)
            self.pending = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next()

    def _next(self) -> None:
        """Answer every complete request in the buffer, unless one is still pending."""
        while self.pending is None and self.transport and not self.transport.is_closing():
            if self.head is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > 1 << 16:
                        self.transport.close()
                    return
                lines = self.buf[:end].decode("latin-1").split("\r\n")
                del self.buf[:end + 4]
                method, target, version = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                try:
                    length = max(0, int(headers.get("content-length") or 0))
                except ValueError:
                    length = 0
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                self.head = (method, target.split("?", 1)[0], headers, length, close)
            method, path, headers, length, close = self.head
            if len(self.buf) < length:
                return
            body = bytes(self.buf[:length])
            del self.buf[:length]
            self.head = None
            try:
                reply = self.server._respond(method, path, headers, body)
            except Exception as e:  # noqa: BLE001 - a bug here must not look like a hanging server
                reply = _error(500, f"fake server failure: {e!r}", "server_error")
            reply.close = close
            if reply.drop:
                self.server._finish(reply, sent=False)
                self.transport.abort()
                return
            if reply.held:
                self.pending = (None, reply)
                self.server._held.append(self)
            elif reply.delay > 0:
                loop = asyncio.get_running_loop()
                self.pending = (loop.call_later(reply.delay, self._send, reply), reply)
            else:
                self._send(reply)

    def _send(self, reply: _Reply) -> None:
        """Write one response, then go on with buffered requests."""
        self.pending = None
        assert self.transport is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
        # counted before it is written: a client that has its answer finds it in the stats already
        self.server._finish(reply, sent=True)
        self.transport.write(f"HTTP/1.1 {reply.status} {_reason(reply.status)}\r\n"
                             f"content-type: {reply.content_type}\r\ncontent-length: {len(reply.body)}\r\n{extra}\r\n"
                             .encode() + reply.body)
        if reply.close:
            self.transport.close()
        elif self.buf:
            self._next()


@dataclass
class _Reply:
    """An answer to send after `delay` seconds; `chat` for the log, `admitted` while it counts as in flight."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chat: bool = False
    admitted: bool = False
    arrival: float = 0.0
    close: bool = False
    content_type: str = "application/json"
    held: bool = False  # sent only on `server.release()`
    drop: bool = False  # never sent: the connection is closed instead


class FakeOpenAIServer(_BatchAPI):
    """The fake server on 127.0.0.1 (free port by default), run in a background thread with its own loop."""

    def __init__(self, scenario: Scenario | None = None, host: str = "127.0.0.1", port: int = 0, record: bool = False) -> None:
        self.scenario = scenario or Scenario()
        self.recorded: list[Any] | None = [] if record else None  # record=True: every chat request's JSON body
        self.host, self.port = host, port
        self.stats = Stats()
        self.script: collections.deque[str] = collections.deque(self.scenario.script)
        self._rng = random.Random(self.scenario.seed)
        self.clock = time.monotonic  # the rpm bucket's clock; a test may set a manual one before the first request
        self._tokens = self._bucket_size()
        self._refilled: float | None = None
        self._held: list[_Connection] = []
        self._ids = 0
        self._authorization = ""
        self._conns: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. `http://127.0.0.1:PORT/v1`."""
        return f"http://{self.host}:{self.port}/v1"

    # ---- lifecycle -------------------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Start listening on the running loop (the thread or the CLI calls this)."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        """Stop listening and drop every connection, pending (hanging) answers included."""
        if self._server:
            self._server.close()
        for conn in list(self._conns):
            if conn.transport:
                conn.transport.abort()
        await asyncio.sleep(0)

    def start(self) -> FakeOpenAIServer:
        """Run the server in a daemon thread; returns once it listens."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.serve())
            except BaseException as e:  # noqa: BLE001 - handed to the starting thread
                failure.append(e)
                return
            finally:
                ready.set()
            loop.run_forever()
            loop.run_until_complete(self.aclose())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def close(self) -> None:
        """Stop the server thread (idempotent)."""
        if self._thread and self._thread.is_alive() and self._loop:
            try:
                self._loop.call_soon_threadsafe(self._loop.stop)  # also fine before run_forever() has begun
            except RuntimeError:  # the loop is already closed
                pass
            self._thread.join(10)
        self._thread = None

    @property
    def held(self) -> int:
        """How many "hold" answers wait for `release()` (each is a request in flight)."""
        return len(self._held)

    def release(self) -> None:
        """Send every held answer now (callable from any thread)."""
        def send() -> None:
            held, self._held = self._held, []
            for conn in held:
                reply = conn.pending[1] if conn.pending else None
                if reply is not None and reply.held:
                    conn._send(reply)

        assert self._loop is not None, "the server is not running"
        self._loop.call_soon_threadsafe(send)

    def cpu_s(self) -> float:
        """CPU seconds the server's thread has used so far."""
        if self._loop is None or self._thread is None:
            return time.thread_time()
        done: concurrent.futures.Future[float] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(lambda: done.set_result(time.thread_time()))
        return done.result(5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> FakeOpenAIServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    # ---- requests --------------------------------------------------------------------------------------------
    def _respond(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Route one request: auth, then models, stats or chat completions."""
        key = self.scenario.require_api_key
        if key and headers.get("authorization") != f"Bearer {key}":
            return _error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")
        self._authorization = headers.get("authorization", "")  # what `echo_key_401` echoes back
        path = path.removeprefix("/v1")
        if method == "GET" and path == "/models":
            data = [{"id": self.scenario.model, "object": "model", "created": 0, "owned_by": "labelwise"}]
            return _Reply(200, json.dumps({"object": "list", "data": data}).encode())
        if method == "GET" and path == "/_stats":
            return _Reply(200, json.dumps({**self.stats.snapshot(), "cpu_s": time.thread_time()}).encode())
        if method == "POST" and path == "/chat/completions":
            return self._chat(body)
        if path.startswith(("/files", "/batches", "/_batch_stats")):
            return self._batch_route(method, path, headers, body)
        return _error(404, f"no route {method} {path}", "invalid_request_error")

    def _finish(self, reply: _Reply, sent: bool) -> None:
        """Count an answer that was sent (or, with sent=False, dropped: status 0 in the log)."""
        st = self.stats
        if sent:
            st.requests += 1
            st.by_status[reply.status] = st.by_status.get(reply.status, 0) + 1
        if reply.chat:
            st.in_flight -= reply.admitted
            st.log.append((reply.arrival, time.monotonic(), reply.status if sent else 0))

    def _bucket_size(self) -> float:
        """Token-bucket capacity for the rpm limit."""
        rpm = self.scenario.rpm or 60.0
        return self.scenario.rpm_burst or max(1.0, rpm / 60.0)

    def _rpm_wait(self) -> float:
        """Take one rpm token: 0 when admitted, else seconds until one is available."""
        rate = self.scenario.rpm / 60.0  # type: ignore[operator]
        now = self.clock()
        if self._refilled is not None:
            self._tokens = min(self._bucket_size(), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate

    def _decide(self) -> tuple[str, float | None]:
        """The outcome of a new chat request: script entry, limits, then random faults."""
        sc = self.scenario
        if self.script:
            kind, _, arg = self.script.popleft().partition(":")
            return kind, float(arg) if arg else None
        if sc.max_in_flight is not None and self.stats.in_flight >= sc.max_in_flight:
            return "429", sc.retry_after_s
        if sc.rpm is not None and (wait := self._rpm_wait()) > 0:
            return "429", wait
        r = self._rng.random()
        for kind, rate in (("hang", sc.hang_rate), ("500", sc.error_rate), ("garbage", sc.garbage_rate),
                           ("off_taxonomy", sc.off_taxonomy_rate)):
            if r < rate:
                return kind, None
            r -= rate
        return "ok", None

    def _chat(self, body: bytes) -> _Reply:
        """Answer one chat-completions request according to the scenario."""
        sc, st = self.scenario, self.stats
        arrival = time.monotonic()
        req: Any
        try:
            req = json.loads(body)
        except ValueError:
            req = None
        if self.recorded is not None:
            self.recorded.append(req)
        if not isinstance(req, dict) or not isinstance(req.get("messages"), list):
            return _error(400, "body must be a JSON object with a `messages` list", "invalid_request_error")
        rf: dict[str, Any] = req["response_format"] if isinstance(req.get("response_format"), dict) else {}
        if req.get("stream"):
            return _error(400, "stream is not supported by the fake server", "invalid_request_error")
        if rf and sc.reject_response_format or rf.get("type") == "json_schema" and sc.reject_json_schema:
            return _error(400, f"response_format {rf.get('type')!r} is not supported", "invalid_request_error")
        st.completions += 1
        kind, arg = self._decide()
        if kind in MISBEHAVIOURS:
            reply = self._misbehave(kind, arg, req)
        elif kind == "429":
            st.rate_limited += 1
            ms = max(0, math.ceil((sc.retry_after_s if arg is None else arg) * 1000))
            after = {"retry-after": email.utils.formatdate(math.ceil(time.time() + ms / 1000), usegmt=True)} \
                if sc.retry_after_date else {"retry-after": _fmt_s(ms / 1000), "retry-after-ms": str(ms)}
            reply = _error(429, "Rate limit reached (fake server)", "requests", "rate_limit_exceeded", after)
        elif kind == "drop":
            reply = _Reply(0, b"", drop=True)
        elif kind.isdigit():
            st.errors += int(kind) >= 500
            reply = _error(int(kind), f"injected error {kind} (fake server)",
                           "server_error" if int(kind) >= 500 else "invalid_request_error")
        else:
            st.garbage += kind == "garbage"
            st.off_taxonomy += kind == "off_taxonomy"
            reply = _Reply(200, json.dumps(self._completion(req, req["messages"], kind), ensure_ascii=False).encode())
        reply.chat, reply.arrival, reply.held = True, arrival, kind == "hold"
        if kind != "429":
            reply.admitted = True
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            reply.delay = max(0.0, sc.latency_s + self._rng.uniform(-sc.jitter_s, sc.jitter_s)) if sc.jitter_s else sc.latency_s
        if kind == "hang":
            st.hangs += 1
            reply.delay = sc.hang_s if arg is None else arg
        return reply

    # ---- misbehaving answers (see MISBEHAVIOURS) --------------------------------------------------------------
    def _misbehave(self, kind: str, arg: float | None, req: dict[str, Any]) -> _Reply:
        """The reply of a misbehaving-answer script entry."""
        if kind == "empty_choices":
            body = {**self._completion(req, req["messages"], "ok"), "choices": []}
            return _Reply(200, json.dumps(body).encode())
        if kind == "html_200":  # a proxy's error page, served with status 200
            page = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
            return _Reply(200, page.encode(), content_type="text/html; charset=utf-8")
        if kind == "not_completion":  # valid JSON, but not a chat.completion (here: a model list)
            return _Reply(200, json.dumps({"object": "list", "data": [{"id": self.scenario.model}]}).encode())
        if kind == "broken_logprobs":
            body = self._completion(req, req["messages"], "ok")
            body["choices"][0]["logprobs"] = {"content": "not a token list", "refusal": None}
            return _Reply(200, json.dumps(body, ensure_ascii=False).encode())
        if kind == "echo_key_401":
            return _error(401, f"Incorrect API key provided: {self._authorization}", "invalid_request_error",
                          "invalid_api_key")
        if kind == "quota_429":
            return _error(429, "You exceeded your current quota, please check your plan and billing details.",
                          "insufficient_quota", "insufficient_quota")
        if kind == "context_length_400":
            return _error(400, "This model's maximum context length is 128000 tokens. Please reduce the length of the "
                          "messages.", "invalid_request_error", "context_length_exceeded")
        # huge_answer[:CHARS]: a 200 whose answer is CHARS characters of prose (not a valid answer)
        size = int(arg) if arg is not None else 200_000
        body = self._completion(req, req["messages"], "ok")
        body["choices"][0]["message"]["content"] = ("这不是标签。" * (size // 6 + 1))[:size]
        body["choices"][0]["logprobs"] = None
        return _Reply(200, json.dumps(body, ensure_ascii=False).encode())

    def _completion(self, req: dict[str, Any], messages: list[Any], kind: str) -> dict[str, Any]:
        """The chat.completion object: n choices with answers, optional logprobs, and usage."""
        prompt = "\n".join(_text(m.get("content")) for m in messages if isinstance(m, dict))
        users = [_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        last = users[-1] if users else prompt
        marks = list(_TEXT_RE.finditer(last))
        focus = last[marks[-1].start():] if marks else last
        items = [(m.group(1).strip(), m.group(2)) for m in _ID_RE.finditer(last)]
        choices, completion_tokens = [], 0
        for i in range(max(1, min(int(req.get("n") or 1), 16))):
            if kind == "garbage":
                content = self._rng.choice(_GARBAGE)
            else:
                content = json.dumps(self._answer(req, prompt, focus, items, kind == "off_taxonomy"), ensure_ascii=False)
            completion_tokens += max(1, len(content) // 3)
            choice: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": content, "refusal": None},
                                      "finish_reason": "stop", "logprobs": None}
            if req.get("logprobs") and not self.scenario.no_logprobs:
                choice["logprobs"] = {"content": _logprobs(content, int(req.get("top_logprobs") or 0)), "refusal": None}
            choices.append(choice)
        self._ids += 1
        prompt_tokens = max(1, len(prompt) // 2)
        return {"id": f"chatcmpl-fake{self._ids}", "object": "chat.completion", "created": int(time.time()),
                "model": req.get("model") or self.scenario.model, "choices": choices, "system_fingerprint": "fake",
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _answer(self, req: dict[str, Any], prompt: str, focus: str, items: list[tuple[str, str]], off: bool) -> Any:
        """The JSON answer: an instance of the requested schema, else `{"labels"}` / `{"items"}` from the prompt."""
        rf: dict[str, Any] = req.get("response_format") or {}
        schema = (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" else rf.get("schema")
        if isinstance(schema, dict):
            return self._instance(schema, schema, focus, items, off)
        labels = _prompt_labels(prompt)
        if items:
            return {"items": [{"id": k, "labels": self._pick(labels, text, off) if labels else []} for k, text in items]}
        return {"labels": self._pick(labels, focus, off) if labels else []}

    def _pick(self, labels: list[Any], text: str, off: bool, least: int = 1, most: int = 1) -> list[Any]:
        """Labels found in `text` (unless all are), topped up at random to `least`; or one off-taxonomy label."""
        if off:
            return [OFF_LABEL if all(isinstance(x, str) for x in labels) else 987654321]
        hits, rest = [], text
        for lab in _longest_first(tuple(x for x in labels if isinstance(x, str))):
            if lab in rest:
                hits.append(lab)
                rest = rest.replace(lab, "\0")
        out = sorted(hits, key=labels.index)[:most] if len(hits) < len(labels) else []
        others = [x for x in labels if x not in out]
        need = min(max(least, 1) - len(out), len(others))
        return out + self._rng.sample(others, need) if need > 0 else out

    def _instance(self, s: Any, root: dict[str, Any], text: str, items: list[tuple[str, str]], off: bool, depth: int = 0) -> Any:
        """A value valid against schema `s`; enums are filled with labels (see the module doc)."""
        s = _resolve(s, root)
        if not isinstance(s, dict) or depth > 32:
            return None
        for key in ("anyOf", "oneOf", "allOf"):
            if s.get(key):
                options = [o for o in s[key] if not (isinstance(o, dict) and o.get("type") == "null")] or s[key]
                return self._instance(options[0], root, text, items, off, depth + 1)
        if "const" in s:
            return s["const"]
        if s.get("enum"):
            return self._pick(s["enum"], text, off)[0]
        kind = s.get("type")
        kind = next((t for t in kind if t != "null"), "null") if isinstance(kind, list) else kind
        if kind == "object" or "properties" in s:
            return {name: self._instance(sub, root, text, items, off, depth + 1) for name, sub in s.get("properties", {}).items()}
        if kind == "array":
            sub = _resolve(s.get("items") or {}, root)
            props = sub.get("properties", {}) if isinstance(sub, dict) else {}
            if "id" in props:  # batch: one entry per item id
                ids = items or [(str(x), "") for x in _resolve(props["id"], root).get("enum", [])]
                return [{**self._instance(sub, root, t, [], off, depth + 1), "id": _coerce_id(k, props["id"], root)}
                        for k, t in ids]
            least, most = int(s.get("minItems", 1)), int(s.get("maxItems", 1 << 30))
            if isinstance(sub, dict) and sub.get("enum"):
                return self._pick(sub["enum"], text, off, least, most)
            return [self._instance(sub, root, text, items, off, depth + 1) for _ in range(max(least, 1))]
        if kind in ("integer", "number"):
            bounds: dict[str, Any] = s
            lo = float(bounds.get("minimum", bounds.get("exclusiveMinimum", 0)))
            hi = float(bounds.get("maximum", bounds.get("exclusiveMaximum", 1)))
            value = (lo + hi) / 2 if hi >= lo else lo
            return int(value) if kind == "integer" else value
        return {"boolean": True, "null": None}.get(kind, "fake")  # type: ignore[arg-type]


@functools.lru_cache(maxsize=256)
def _longest_first(labels: tuple[str, ...]) -> list[str]:
    """The labels, longest first (so "not spam" is matched before "spam")."""
    return sorted((x for x in labels if x), key=len, reverse=True)


def _resolve(s: Any, root: dict[str, Any]) -> Any:
    """Follow local `$ref`s (`#/$defs/X`) to the schema node they point at."""
    for _ in range(32):
        if not (isinstance(s, dict) and isinstance(s.get("$ref"), str)):
            return s
        node: Any = root
        for part in s["$ref"].removeprefix("#").strip("/").split("/"):
            node = node.get(part, {}) if isinstance(node, dict) and part else node
        s = node
    return {}


def _coerce_id(key: str, s: Any, root: dict[str, Any]) -> Any:
    """An item id as the schema's type wants it (int for integer ids)."""
    s = _resolve(s, root)
    return int(key) if isinstance(s, dict) and s.get("type") == "integer" and key.lstrip("-").isdigit() else key


def _logprobs(content: str, top: int) -> list[dict[str, Any]]:
    """Plausible per-token logprobs: one token per 3 characters, logprob -0.05."""
    out = []
    for i in range(0, len(content), 3):
        tok = content[i:i + 3]
        alts = [{"token": tok, "logprob": -0.05, "bytes": list(tok.encode())}] + \
               [{"token": f"<alt{j}>", "logprob": -3.0 - j, "bytes": list(f"<alt{j}>".encode())} for j in range(1, top)]
        out.append({"token": tok, "logprob": -0.05, "bytes": list(tok.encode()), "top_logprobs": alts[:top]})
    return out


def _error(status: int, message: str, kind: str, code: str | None = None, headers: dict[str, str] | None = None) -> _Reply:
    """An OpenAI-style error response."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return _Reply(status, json.dumps(body).encode(), headers or {})


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.fake_openai --port N [--latency S] ...`: serve until SIGINT/SIGTERM, print stats."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--scenario", help="Scenario as JSON (other flags override its fields)")
    for flag in ("latency", "jitter", "rpm", "rpm-burst", "retry-after", "error-rate", "garbage-rate",
                 "off-taxonomy-rate", "hang-rate", "hang"):
        p.add_argument(f"--{flag}", type=float)
    p.add_argument("--max-in-flight", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--api-key")
    args = p.parse_args(argv)
    overrides = json.loads(args.scenario) if args.scenario else {}
    names = {"latency": "latency_s", "jitter": "jitter_s", "retry_after": "retry_after_s", "hang": "hang_s",
             "api_key": "require_api_key"}
    for name, value in vars(args).items():
        if name not in ("host", "port", "scenario") and value is not None:
            overrides[names.get(name, name)] = value

    async def run() -> None:
        server = FakeOpenAIServer(Scenario(**overrides), args.host, args.port)
        await server.serve()
        print(f"fake OpenAI server at {server.base_url}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.aclose()
        print(json.dumps({**server.stats.snapshot(), "cpu_s": round(time.process_time(), 3)}), flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
