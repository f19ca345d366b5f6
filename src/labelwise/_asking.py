"""Asking for labels: a request's answer, cached, validated, re-asked with the error until valid or out of tries.

Network retries belong to the models (transport); this module re-asks only for content that failed validation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pydantic import ValidationError

from ._cache import ResponseCache, stable_hash
from ._exceptions import FatalTransportError, ModelError, TransportError
from ._answer import batch_confidence, confidence, labels_of, parse_batch_answer, short_error
from ._models import Model, ModelAnswer, ModelRequest
from ._prompts import PromptSpec
from ._schema import RAW_CAP, Prediction
from ._settings import LabelSettings

__all__ = ["Asker", "Key", "Plan"]

Key = tuple[str, str]  # (item id, text)
Plan = Callable[[Sequence[Key]], tuple[ModelRequest, list[str]]]  # items -> (request, example ids), as sent online
Defer = Callable[[Sequence[Key], ModelRequest, list[str], int], None]


class Asker:
    """Turns planned requests into predictions: cache, model call, validation, re-asks, and the prediction memo."""

    def __init__(self, model: Model, cache: ResponseCache | None, settings: LabelSettings, labels: list[str],
                 fingerprint: str, prompt: PromptSpec, plan: Plan, max_reasks: int) -> None:
        self.model, self.cache, self.settings, self.labels = model, cache, settings, labels
        self.fingerprint, self.prompt, self.plan, self.max_reasks = fingerprint, prompt, plan, max_reasks
        self.prompt_ref = prompt.ref
        self.fatal: FatalTransportError | None = None  # the first error that stops a run (auth, quota, not found)
        self.stats = {"model_calls": 0, "cache_hits": 0, "reasks": 0, "prompt_tokens": 0, "completion_tokens": 0}

    # ------------------------------------------------------------------ the prediction memo

    def _memo_key(self, iid: str) -> str:
        return f"{self.fingerprint}:{iid}"

    def cached(self, items: Sequence[Key]) -> dict[str, Prediction]:
        """Finished predictions for these items under exactly these settings, where cached."""
        if self.cache is None:
            return {}
        out = {}
        for (iid, text), hit in zip(items, self.cache.get_many("prediction", [self._memo_key(iid) for iid, _ in items])):
            if hit is not None:  # read in one pass: a rerun's pre-pass asks for every item at once
                self.stats["cache_hits"] += 1
                out[iid] = Prediction.model_validate({**hit, "cached": True, "text": text})
        return out

    def _store(self, pred: Prediction) -> None:
        """Remember a finished, valid prediction under these settings (the counterpart of `cached`)."""
        if self.cache is not None:
            self.cache.set("prediction", self._memo_key(pred.id), pred.model_dump(exclude={"text", "cached"}))

    # ------------------------------------------------------------------ answers

    def answer_key(self, request: ModelRequest) -> str:
        """Cache key of a model answer: model identity, the full request (messages, schema, decoding)."""
        return stable_hash({"model": self.model.identity(), "request": request.__dict__})

    async def _ask(self, request: ModelRequest) -> tuple[ModelAnswer, bool]:
        """The model's answer, from the cache when this exact request was answered validly before."""
        if self.cache is not None:
            hit = self.cache.get("answer", self.answer_key(request))
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
            self.cache.set("answer", self.answer_key(request), answer.to_dict())

    # ------------------------------------------------------------------ one item

    async def label_one(self, iid: str, text: str, request: ModelRequest, example_ids: list[str], *,
                        first: ModelAnswer | None = None, start: int = 1,
                        defer: Callable[[ModelRequest, int], None] | None = None) -> Prediction | None:
        """Ask, validate, re-ask with the error. `first`: an answer already in hand (a batch output line) for
        attempt `start`; `defer`: re-asks are handed to it (a follow-up batch) instead of asked here (returns None)."""
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        base = dict(id=iid, text=text, examples=example_ids, prompt=self.prompt_ref, model=self.model.name)
        all_cached = True
        raw = None
        sent = start - 1  # requests sent for this item, transport retries included (an earlier batch round: one)
        for attempt in range(start, self.max_reasks + 2):
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
                labels = labels_of(answer, self.labels, self.settings.multi_label, self.settings.max_labels,
                                   self.settings.label_threshold)
            except (ValidationError, ValueError) as err:
                self.stats["reasks"] += attempt <= self.max_reasks
                error = short_error(err)
                echoed = answer.text if len(answer.text) <= RAW_CAP else answer.text[:RAW_CAP] + "…"
                request = replace(request, reasks=request.reasks + ((echoed, self.prompt.render_reask(error)),))
                if defer is not None and attempt <= self.max_reasks:
                    defer(request, attempt + 1)
                    return None
                continue
            self._remember(request, answer)
            pred = Prediction(**base, labels=labels, confidence=confidence(answer, labels[0]),
                              label_probs=answer.label_probs, attempts=sent, usage=usage, cached=all_cached)
            self._store(pred)
            return pred
        return Prediction(**base, labels=[], status="failed", error=f"invalid answer after {self.max_reasks} re-asks: {error}",
                          attempts=sent, usage=usage, raw=raw)

    async def label_alone(self, iid: str, text: str) -> Prediction:
        """One item in a request of its own."""
        pred = await self.label_one(iid, text, *self.plan([(iid, text)]))
        assert pred is not None  # nothing deferred here
        return pred

    # ------------------------------------------------------------------ several items per request

    async def label_group(self, items: Sequence[Key]) -> list[Prediction]:
        """Label texts in one request; an item whose answer is missing or invalid is re-asked alone."""
        if len(items) == 1:
            return [await self.label_alone(*items[0])]
        request, example_ids = self.plan(items)
        try:
            answer: ModelAnswer | Exception
            answer, cached = await self._ask(request)
        except (TransportError, ModelError) as err:
            if isinstance(err, FatalTransportError):
                self.fatal = self.fatal or err
                return [self.failed(iid, text, err, example_ids) for iid, text in items]
            answer, cached = err, False
        out = await self.finish(items, request, example_ids, answer, cached=cached)
        return [out[iid] for iid, _ in items]

    async def finish(self, items: Sequence[Key], request: ModelRequest, example_ids: list[str],
                     answer: ModelAnswer | Exception, *, cached: bool = False, start: int = 1,
                     defer: Defer | None = None) -> dict[str, Prediction]:
        """Predictions from an answer to `plan(items)` (or the error instead of one), validated as online.

        Invalid answers and failed requests are asked again online, or handed to `defer(items, next_request,
        example_ids, attempt)` (then left out of the result)."""
        if len(items) == 1 and not request.keys:
            iid, text = items[0]
            if isinstance(answer, Exception):  # this request failed as a whole: ask it again
                if defer is not None and start <= self.max_reasks:
                    defer(items, request, example_ids, start + 1)
                    return {}
                pred = await self.label_one(iid, text, request, example_ids, start=min(start, self.max_reasks + 1))
            else:
                later = (lambda req, attempt: defer(items, req, example_ids, attempt)) if defer else None
                pred = await self.label_one(iid, text, request, example_ids, first=answer, start=start, defer=later)
            return {iid: pred} if pred is not None else {}
        s, keys = self.settings, request.keys
        if isinstance(answer, Exception):
            answer, results = None, {k: str(answer) for k in keys}
        else:
            results = parse_batch_answer(answer.text, answer.answer_format, keys, self.labels, s.multi_label, s.max_labels)
        share = {k: v // len(items) for k, v in (answer.usage.items() if answer else [])}
        if answer and all(isinstance(v, list) for v in results.values()):
            self._remember(request, answer)
        out: dict[str, Prediction] = {}
        for key, (iid, text) in zip(keys, items):
            labels = results[key]
            if isinstance(labels, list):
                pred = Prediction(id=iid, text=text, labels=labels, examples=example_ids, prompt=self.prompt_ref,
                                  model=self.model.name, usage=share, cached=cached, attempts=answer.attempts,
                                  confidence=batch_confidence(answer, key, labels[0]))
                self._store(pred)
                out[iid] = pred
            elif self.fatal is not None:  # no more requests once the run must stop
                out[iid] = self.failed(iid, text, self.fatal, example_ids)
            elif defer is not None:
                self.stats["reasks"] += 1
                alone = [(iid, text)]
                defer(alone, *self.plan(alone), 1)
            else:
                self.stats["reasks"] += 1
                out[iid] = await self.label_alone(iid, text)
        return out

    def failed(self, iid: str, text: str, err: Exception, example_ids: list[str]) -> Prediction:
        """A failed prediction for an item a request could not label."""
        return Prediction(id=iid, text=text, labels=[], status="failed", error=str(err), examples=example_ids,
                          prompt=self.prompt_ref, model=self.model.name, attempts=getattr(err, "attempts", 1))
