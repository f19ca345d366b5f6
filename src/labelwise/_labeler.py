"""The labeler: examples + prompt -> model -> validated prediction, cached, with re-asks on invalid answers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._cache import ResponseCache, stable_hash
from ._corpus import Corpus, item_id, load_corpus, normalize_text
from ._examples import make_selector
from ._exceptions import FatalTransportError, ModelError, TransportError
from ._io import bundled
from ._models import REASK, Model, ModelAnswer, ModelOptions, ModelRequest, get_model
from ._prompts import PromptSpec, Rendered, load_prompt
from ._ratelimit import RateLimiter
from ._schema import (RAW_CAP, Prediction, answer_model, batch_answer_model, label_confidence, labels_from_probs,
                      parse_answer, parse_batch_answer, short_error)
from ._taxonomy import Taxonomy, load_taxonomy

__all__ = ["Labeler", "LabelerConfig", "DEFAULT_CORPUS", "run_sync"]

DEFAULT_CORPUS = bundled("labelwise.data") / "policy_labels.tsv"
# Chosen on labeled data with `python -m benchmarks.threshold`: leave-one-out predictions of the embedded model
# (fewshot, 8 similar shots) on 150 corpus texts (seed 0); 0.15 gave the best samples-F1 (0.479; 0.430 at 0.5+,
# i.e. the top label alone) and the best micro-F1 (0.456) of the grid 0.05..0.95.
DEFAULT_LABEL_THRESHOLD = 0.15
T = TypeVar("T")


def check_text(text: Any, where: str = "text") -> str:
    """`text` if it is a non-empty string; else a ValueError saying what is wrong (no model call for it)."""
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{where} is empty")
    return text


class _LoopThread:
    """One event loop on a daemon thread that every sync call runs on, so async clients outlive a call."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="labelwise-loop", daemon=True).start()
            return self._loop

    def run(self, coro: Awaitable[T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise


_LOOP = _LoopThread()


def run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine from sync code (also from inside a running loop, e.g. Jupyter) on labelwise's loop thread."""
    return _LOOP.run(coro)


class LabelerConfig(BaseModel):
    """Everything that decides a labeler's answers (and so its cache keys), strictly validated."""

    model_config = ConfigDict(extra="forbid")

    model: str = "local"
    base_url: str | None = None
    examples: str | None = str(DEFAULT_CORPUS)
    taxonomy: str | None = None
    shots: int = Field(8, ge=0, le=64)
    strategy: Literal["similar", "diverse", "random", "fixed"] = "similar"
    prompt: str = "fewshot"
    multi_label: bool = True
    max_labels: int = Field(3, ge=1, le=10)
    # Multi-label with a label-scoring model (local): labels other than the top one join the set at this
    # probability. Chosen on labeled data (README, "How the threshold is chosen").
    label_threshold: float = Field(DEFAULT_LABEL_THRESHOLD, gt=0.0, le=1.0)
    max_reasks: int = Field(2, ge=0, le=10)
    seed: int = 0
    concurrency: int = Field(8, ge=1, le=4096)
    items_per_request: int = Field(1, ge=1, le=100)
    rpm: float | None = None
    tpm: float | None = None
    structured: Literal["auto", "json_schema", "json_object", "prompt"] = "auto"
    temperature: float = 0.0
    timeout: float = 60.0
    cache: bool = True
    cache_dir: str | None = None


class Labeler:
    """Labels texts against a taxonomy with few-shot examples from a labeled pool.

    `label(text)`, `label_many(texts)`, `label_dataframe(df)`; `alabel*` are the async originals.
    """

    def __init__(
        self,
        model: str | Model = "local",
        *,
        examples: str | Path | Corpus | None = DEFAULT_CORPUS,
        taxonomy: str | Path | Taxonomy | None = None,
        prompt: str | Path | PromptSpec = "fewshot",
        exclude_ids: Iterable[str] = (),
        **options: Any,
    ) -> None:
        self.config = LabelerConfig(
            model=model if isinstance(model, str) else model.name,
            examples=None if examples is None or isinstance(examples, Corpus) else str(examples),
            taxonomy=None if taxonomy is None or isinstance(taxonomy, Taxonomy) else str(taxonomy),
            prompt=prompt.name if isinstance(prompt, PromptSpec) else str(prompt),
            **options,
        )
        cfg = self.config
        self.pool: Corpus | None = examples if isinstance(examples, Corpus) else (load_corpus(examples) if examples else None)
        if self.pool is not None and exclude_ids:
            self.pool = self.pool.without(exclude_ids)
        if isinstance(taxonomy, Taxonomy):
            self.taxonomy = taxonomy
        elif taxonomy:
            self.taxonomy = load_taxonomy(taxonomy)
        elif self.pool is not None:
            self.taxonomy = Taxonomy.from_labels(self.pool.labels, source=self.pool.path)
        else:
            raise ValueError("give a taxonomy file or an example corpus to take the label set from")
        if self.pool is not None:
            self.taxonomy.check_items(self.pool.items, where=self.pool.path)
        self.prompt = prompt if isinstance(prompt, PromptSpec) else load_prompt(prompt)
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        if isinstance(model, Model):
            self.model = model
        else:
            self.model = get_model(model, ModelOptions(base_url=cfg.base_url, structured=cfg.structured, timeout=cfg.timeout,
                                                       limiter=self.limiter))
        # A model the registry made for us is ours to close, unless it is shared; a model passed in is the caller's.
        self._owns_model = isinstance(model, str) and self.model.owned
        self.shots = cfg.shots if self.prompt.uses_examples and self.pool is not None else 0
        self.selector = make_selector(cfg.strategy, self.pool, self.shots, cfg.seed) if self.shots else None
        self.cache = ResponseCache(cfg.cache_dir) if cfg.cache else None
        self.json_answer = self.model.answer_format == "json"
        # A label-scoring model answers one item per request: each item is scored on its own (its KV prefix reuse
        # does what batching would), so items_per_request does not apply to it.
        self.items_per_request = 1 if self.model.scores_labels else cfg.items_per_request
        self._schema = answer_model(self.taxonomy.labels, cfg.multi_label, cfg.max_labels).model_json_schema()
        self._settings_key = stable_hash({
            "model": self.model.identity(), "prompt": self.prompt.ref, "labels": self.taxonomy.labels,
            "definitions": self.taxonomy.definitions, "strategy": cfg.strategy, "shots": self.shots,
            "selector": self.selector.identity() if self.selector else None, "seed": cfg.seed,
            "multi": cfg.multi_label, "max_labels": cfg.max_labels, "temperature": cfg.temperature,
            "json": self.json_answer, "pool": stable_hash([(it.id, it.labels) for it in self.pool]) if self.shots else None,
            "ipr": self.items_per_request,
            "threshold": cfg.label_threshold if self.model.scores_labels and cfg.multi_label else None,
        })
        self._prefetched: dict[str, list[dict[str, Any]]] = {}
        self.fatal: FatalTransportError | None = None  # the first error that stops a run (auth, quota, not found)
        self.stats = {"model_calls": 0, "cache_hits": 0, "reasks": 0, "prompt_tokens": 0, "completion_tokens": 0}

    # ------------------------------------------------------------------ single items

    def _examples_for(self, keys: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """Examples for one or more items; none of them is ever an example of itself or of a batch-mate."""
        if not self.selector:
            return []
        k = self.selector.k
        missing = [q for q in keys if q[0] not in self._prefetched]
        if missing:
            self._prefetch(missing)
        per_item = [self._prefetched.pop(iid) for iid, _ in keys]
        banned = {item_id(text) for _, text in keys}
        merged: dict[str, dict[str, Any]] = {}
        for rank in range(max(map(len, per_item), default=0)):
            for exs in per_item:
                if rank < len(exs) and exs[rank]["id"] not in banned:
                    merged.setdefault(exs[rank]["id"], exs[rank])
            if len(merged) >= k:
                break
        return list(merged.values())[:k]

    def _prefetch(self, keys: Sequence[tuple[str, str]]) -> None:
        """Select examples for many items in one vectorised pass (spares for batch-mates included)."""
        if self.selector:
            extra = self.items_per_request - 1
            for (iid, _), exs in zip(keys, self.selector.select_many([t for _, t in keys], self.selector.k + extra)):
                self._prefetched[iid] = exs

    def _request(self, prompt: str, batch: bool = False, schema: dict | None = None) -> ModelRequest:
        cfg = self.config
        return ModelRequest(prompt, self.taxonomy.labels, schema or self._schema, cfg.multi_label, cfg.max_labels,
                            batch=batch, temperature=cfg.temperature, max_tokens=16 * cfg.max_labels + 32)

    def _answer_key(self, request: ModelRequest) -> str:
        """Cache key of a model answer: model identity, the full request (messages, schema, decoding)."""
        return stable_hash({"model": self.model.identity(), "request": request.__dict__})

    async def _ask(self, request: ModelRequest) -> tuple[ModelAnswer, bool]:
        """The model's answer, from the cache when this exact request was answered validly before."""
        if self.cache is not None:
            hit = self.cache.get("answer", self._answer_key(request))
            if hit is not None:
                return ModelAnswer.from_dict(hit), True
        self.stats["model_calls"] += 1
        answer = await self.model.complete(request)
        self.stats["prompt_tokens"] += answer.usage.get("prompt_tokens", 0)
        self.stats["completion_tokens"] += answer.usage.get("completion_tokens", 0)
        return answer, False

    def _remember(self, request: ModelRequest, answer: ModelAnswer) -> None:
        """Cache an answer once it validated (failures and invalid answers are never cached)."""
        if self.cache is not None:
            self.cache.set("answer", self._answer_key(request), answer.to_dict())

    def _memo_key(self, iid: str) -> str:
        return f"{self._settings_key}:{iid}"

    def _store(self, pred: Prediction) -> None:
        """Remember a finished, valid prediction under these settings (the counterpart of `_memo`)."""
        if self.cache is not None:
            self.cache.set("prediction", self._memo_key(pred.id), pred.model_dump(exclude={"text", "cached"}))

    def _memo(self, iid: str, text: str) -> Prediction | None:
        """A finished prediction for this item under exactly these settings, if one is cached."""
        return self._memo_many([(iid, text)])[0]

    def _memo_many(self, items: Sequence[tuple[str, str]]) -> list[Prediction | None]:
        """`_memo` for many items, read from the cache in one pass."""
        if self.cache is None:
            return [None] * len(items)
        hits = self.cache.get_many("prediction", [self._memo_key(iid) for iid, _ in items])
        self.stats["cache_hits"] += sum(h is not None for h in hits)
        return [None if h is None else Prediction.model_validate({**h, "cached": True, "text": text})
                for h, (_, text) in zip(hits, items)]

    async def alabel(self, text: str, *, id: str | None = None) -> Prediction:
        """Label one text (async)."""
        check_text(text)
        iid = id or item_id(text)
        hit = self._memo(iid, text)
        if hit is not None:
            return hit
        rendered = self.render(text, id=iid)
        return await self._label_request(iid, text, self._request(rendered.text), list(rendered.example_ids))

    def render(self, text: str, *, id: str | None = None) -> Rendered:
        """The exact prompt this labeler would send for `text`, and the ids of the examples in it."""
        iid = id or item_id(text)
        examples = self._examples_for([(iid, text)])
        return self.prompt.render(normalize_text(text), self.taxonomy, examples, json_answer=self.json_answer)

    async def _label_request(self, iid: str, text: str, request: ModelRequest, example_ids: list[str], *,
                             first: ModelAnswer | None = None, start: int = 1,
                             defer: Callable[[ModelRequest, int], None] | None = None) -> Prediction | None:
        """Ask, validate, re-ask with the error. `first`: an answer already in hand (a batch output line) for
        attempt `start`; `defer`: re-asks are handed to it (a follow-up batch) instead of asked here (returns None)."""
        cfg = self.config
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        base = dict(id=iid, text=text, examples=example_ids, prompt=self.prompt.ref, model=self.model.name)
        all_cached = True
        raw = None
        sent = start - 1  # requests sent for this item, transport retries included (an earlier batch round: one)
        for attempt in range(start, cfg.max_reasks + 2):
            if first is not None:
                answer, cached, first = first, False, None
            else:
                try:
                    answer, cached = await self._ask(request)
                except (TransportError, ModelError) as err:
                    if isinstance(err, FatalTransportError) and self.fatal is None:
                        self.fatal = err
                    return Prediction(**base, labels=[], status="failed", error=str(err),
                                      attempts=sent + getattr(err, "attempts", 1), usage=usage,
                                      raw=getattr(err, "raw", None) or raw)
            sent += answer.attempts
            all_cached &= cached
            for k in usage:
                usage[k] += answer.usage.get(k, 0)
            raw = answer.text
            try:
                labels = self._labels_of(answer)
            except (ValidationError, ValueError) as err:
                self.stats["reasks"] += attempt <= cfg.max_reasks
                error = short_error(err)
                echoed = answer.text if len(answer.text) <= RAW_CAP else answer.text[:RAW_CAP] + "…"
                request = replace(request, reasks=request.reasks + ((echoed, REASK.format(error=error)),))
                if defer is not None and attempt <= cfg.max_reasks:
                    defer(request, attempt + 1)
                    return None
                continue
            self._remember(request, answer)
            pred = Prediction(**base, labels=labels, confidence=self._confidence(answer, labels[0]),
                              label_probs=answer.label_probs, attempts=sent, usage=usage, cached=all_cached)
            self._store(pred)
            return pred
        return Prediction(**base, labels=[], status="failed", error=f"invalid answer after {cfg.max_reasks} re-asks: {error}",
                          attempts=sent, usage=usage, raw=raw)

    def _labels_of(self, answer: ModelAnswer) -> list[str]:
        """The validated label set of an answer: from its probabilities (a scoring model) or its text."""
        cfg = self.config
        if answer.format == "probs":
            probs = answer.label_probs or {}
            if set(probs) != set(self.taxonomy.labels):
                raise ValueError(f"scores for {sorted(probs)} do not cover the taxonomy")
            return labels_from_probs(probs, cfg.multi_label, cfg.max_labels, cfg.label_threshold)
        return parse_answer(answer.text, answer.format, self.taxonomy.labels, cfg.multi_label, cfg.max_labels)

    @staticmethod
    def _confidence(answer: ModelAnswer, label: str) -> float | None:
        """The probability of the top label: its entry in the label probabilities, else from its tokens' log-probs."""
        if answer.label_probs and label in answer.label_probs:
            return answer.label_probs[label]
        return label_confidence(answer.text, answer.tokens, label)

    # ------------------------------------------------------------------ several items per request

    async def _alabel_batch(self, items: Sequence[tuple[str, str]]) -> list[Prediction]:
        """Label several texts in one request; an item whose answer is missing or invalid is re-asked alone."""
        cfg = self.config
        out: dict[str, Prediction] = {}
        todo = []
        for iid, text in items:
            hit = self._memo(iid, text)
            if hit is not None:
                out[iid] = hit
            else:
                todo.append((iid, text))
        if len(todo) == 1:
            out[todo[0][0]] = await self.alabel(todo[0][1], id=todo[0][0])
        elif todo:
            request, example_ids = self.plan_request(todo)
            try:
                answer: ModelAnswer | Exception
                answer, cached = await self._ask(request)
            except (TransportError, ModelError) as err:
                if isinstance(err, FatalTransportError):
                    self.fatal = self.fatal or err
                    return [out.get(iid) or self._failed(iid, text, err, example_ids) for iid, text in items]
                answer, cached = err, False
            out.update(await self.afinish(todo, request, example_ids, answer, cached=cached))
        return [out[iid] for iid, _ in items]

    def plan_request(self, items: Sequence[tuple[str, str]]) -> tuple[ModelRequest, list[str]]:
        """The request the online path sends for one item or a group of items, and the ids of its examples."""
        cfg = self.config
        if len(items) == 1:
            iid, text = items[0]
            rendered = self.render(text, id=iid)
            return self._request(rendered.text), list(rendered.example_ids)
        keys = tuple(str(n) for n in range(1, len(items) + 1))
        examples = self._examples_for(items)
        rendered = self.prompt.render_batch([(k, normalize_text(t)) for k, (_, t) in zip(keys, items)], self.taxonomy,
                                            examples, json_answer=self.json_answer)
        schema = batch_answer_model(keys, self.taxonomy.labels, cfg.multi_label, cfg.max_labels).model_json_schema()
        return replace(self._request(rendered.text, batch=True, schema=schema), keys=keys), list(rendered.example_ids)

    async def afinish(
        self, items: Sequence[tuple[str, str]], request: ModelRequest, example_ids: list[str],
        answer: ModelAnswer | Exception, *, cached: bool = False, start: int = 1,
        defer: Callable[[Sequence[tuple[str, str]], ModelRequest, list[str], int], None] | None = None,
    ) -> dict[str, Prediction]:
        """Predictions from an answer to `plan_request(items)` (or the error instead of one), validated as online.

        Invalid answers and failed requests are asked again online, or handed to `defer(items, next_request,
        example_ids, attempt)` (then left out of the result)."""
        cfg = self.config
        if len(items) == 1 and not request.keys:
            iid, text = items[0]
            if isinstance(answer, Exception):  # this request failed as a whole: ask it again
                if defer is not None and start <= cfg.max_reasks:
                    defer(items, request, example_ids, start + 1)
                    return {}
                pred = await self._label_request(iid, text, request, example_ids, start=min(start, cfg.max_reasks + 1))
            else:
                later = (lambda req, attempt: defer(items, req, example_ids, attempt)) if defer else None
                pred = await self._label_request(iid, text, request, example_ids, first=answer, start=start, defer=later)
            return {iid: pred} if pred is not None else {}
        keys = request.keys
        if isinstance(answer, Exception):
            answer, results = None, {k: str(answer) for k in keys}
        else:
            results = parse_batch_answer(answer.text, answer.format, keys, self.taxonomy.labels, cfg.multi_label,
                                         cfg.max_labels)
        share = {k: v // len(items) for k, v in (answer.usage.items() if answer else [])}
        if answer and all(isinstance(v, list) for v in results.values()):
            self._remember(request, answer)
        out: dict[str, Prediction] = {}
        for key, (iid, text) in zip(keys, items):
            labels = results[key]
            if isinstance(labels, list):
                pred = Prediction(id=iid, text=text, labels=labels, examples=example_ids, prompt=self.prompt.ref,
                                  model=self.model.name, usage=share, cached=cached, attempts=answer.attempts,
                                  confidence=self._batch_confidence(answer, key, labels[0]))
                self._store(pred)
                out[iid] = pred
            elif self.fatal is not None:  # no more requests once the run must stop
                out[iid] = self._failed(iid, text, self.fatal, example_ids)
            elif defer is not None:
                self.stats["reasks"] += 1
                alone = [(iid, text)]
                defer(alone, *self.plan_request(alone), 1)
            else:
                self.stats["reasks"] += 1
                out[iid] = await self.alabel(text, id=iid)
        return out

    def _failed(self, iid: str, text: str, err: Exception, example_ids: list[str]) -> Prediction:
        """A failed prediction for an item a batch request could not label."""
        return Prediction(id=iid, text=text, labels=[], status="failed", error=str(err), examples=example_ids,
                          prompt=self.prompt.ref, model=self.model.name, attempts=getattr(err, "attempts", 1))

    @staticmethod
    def _batch_confidence(answer: ModelAnswer | None, key: str, label: str) -> float | None:
        """Confidence of an item's first label: the tokens spelling it after the item's id in the answer."""
        if not answer or not answer.tokens:
            return None
        marker = f"[{key}] " if answer.format == "lines" else f'"{key}"'
        at = answer.text.find(marker)
        if at < 0:
            return None
        pos, rest = 0, []
        for tok, lp in answer.tokens:
            if pos >= at:
                rest.append((tok, lp))
            pos += len(tok)
        return label_confidence(answer.text[at:], rest, label) if rest else None

    # ------------------------------------------------------------------ many items

    async def alabel_items(
        self, items: Sequence[tuple[str, str]], *, on_result: Callable[[Prediction], Any] | None = None,
        collect: bool = True,
    ) -> list[Prediction]:
        """Label (id, text) pairs with bounded concurrency; `on_result` sees each prediction as it completes.

        With `collect=False` nothing is kept (a streaming caller writes each result itself) and [] is returned.
        """
        results: dict[str, Prediction] = {}
        self.fatal = None  # a fatal error stops this call; a later call (e.g. with the problem fixed) starts afresh

        def done(pred: Prediction) -> None:
            if collect:
                results[pred.id] = pred
            if on_result is not None:
                on_result(pred)

        todo = []
        for (iid, text), hit in zip(items, self._memo_many(items)):
            if hit is not None:
                done(hit)
            else:
                todo.append((iid, text))
        size = self.items_per_request
        groups = [todo[i:i + size] for i in range(0, len(todo), size)]
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * self.config.concurrency)

        async def produce() -> None:
            step = max(1, 256 // size)
            for start in range(0, len(groups), step):
                chunk = groups[start:start + step]
                self._prefetch([q for g in chunk for q in g])
                for g in chunk:
                    await queue.put(g)
            for _ in range(n_workers):
                await queue.put(None)

        async def work() -> None:
            while (group := await queue.get()) is not None:
                if self.fatal is not None:  # stop sending at the first fatal error; in-flight answers still land
                    continue
                preds = await self._alabel_batch(group) if len(group) > 1 else [await self.alabel(group[0][1], id=group[0][0])]
                for p in preds:
                    done(p)

        n_workers = min(self.config.concurrency, max(1, len(groups)))
        tasks = [asyncio.create_task(produce())] + [asyncio.create_task(work()) for _ in range(n_workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
        if self.fatal is not None:
            raise self.fatal
        return [results[iid] for iid, _ in items] if collect else []

    async def alabel_many(self, texts: Iterable[str]) -> list[Prediction]:
        """Label many texts (async); identical texts are labeled once."""
        texts = list(texts)
        for n, t in enumerate(texts):
            check_text(t, f"texts[{n}]")
        ids = [item_id(t) for t in texts]
        unique = list({i: t for i, t in zip(ids, texts)}.items())
        done = {p.id: p for p in await self.alabel_items(unique)}
        return [done[i].model_copy(update={"text": t}) for i, t in zip(ids, texts)]

    def label(self, text: str) -> Prediction:
        """Label one text."""
        return run_sync(self.alabel(text))

    def label_many(self, texts: Iterable[str]) -> list[Prediction]:
        """Label many texts."""
        return run_sync(self.alabel_many(texts))

    def label_dataframe(self, df, text_col: str = "text"):
        """A copy of `df` with prediction columns added (labels, confidence, status, error, id, ...)."""
        import pandas as pd

        if text_col not in df.columns:
            raise KeyError(f"no column {text_col!r}; columns found: {list(df.columns)}")
        cells = df[text_col].tolist()
        bad = {}
        for n, (index, cell) in enumerate(zip(df.index, cells)):
            try:
                if cell is None or (pd.api.types.is_scalar(cell) and pd.isna(cell)):  # None, NaN, pd.NA
                    raise ValueError(f"{text_col!r} at row {index!r} is missing")
                cells[n] = check_text(cell if isinstance(cell, str) else str(cell), f"{text_col!r} at row {index!r}")
            except ValueError as err:
                bad[n] = Prediction(id="", text="" if not isinstance(cell, str) else cell, labels=[], status="failed",
                                    error=str(err), prompt=self.prompt.ref, model=self.model.name, attempts=0)
        labeled = iter(self.label_many([c for n, c in enumerate(cells) if n not in bad]))
        preds = [bad[n] if n in bad else next(labeled) for n in range(len(cells))]
        extra = pd.DataFrame([p.model_dump(exclude={"text"}) for p in preds], index=df.index)
        extra = extra.rename(columns={c: f"pred_{c}" if c in df.columns else c for c in extra.columns})
        return pd.concat([df, extra], axis=1)

    def close(self) -> None:
        """Close the model client and the cache (an unclosed HTTP client can stall other clients)."""
        run_sync(self.aclose())

    def __enter__(self) -> Labeler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Labeler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the model client and the cache."""
        if self._owns_model:
            await self.model.aclose()
        if self.cache is not None:
            self.cache.close()
