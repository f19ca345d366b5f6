"""The labeler: examples + prompt -> model -> validated prediction, wired from one set of settings."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._asking import Asker, Defer, Key
from ._cache import ResponseCache, stable_hash
from ._corpus import DEFAULT_CORPUS, Corpus, check_text, column_texts, item_id, load_corpus, normalize_text
from ._examples import ExamplePicker, make_selector
from ._exceptions import FatalTransportError
from ._loop import run_sync
from ._models import Model, ModelAnswer, ModelOptions, ModelRequest, get_model
from ._prompts import PromptSpec, Rendered, load_prompt
from ._ratelimit import RateLimiter
from ._scheduler import label_groups
from ._answer import answer_model, batch_answer_model, batch_keys
from ._schema import Prediction
from ._settings import LabelSettings, RunOptions, split_options
from ._taxonomy import Taxonomy, load_taxonomy

__all__ = ["Labeler", "DEFAULT_CORPUS", "run_sync"]


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
        label_opts, run_opts = split_options(options)
        settings = LabelSettings(
            model=model if isinstance(model, str) else model.name,
            examples=None if examples is None or isinstance(examples, Corpus) else str(examples),
            taxonomy=None if taxonomy is None or isinstance(taxonomy, Taxonomy) else str(taxonomy),
            prompt=prompt.name if isinstance(prompt, PromptSpec) else str(prompt), **label_opts)
        pool = examples if isinstance(examples, Corpus) else (load_corpus(examples) if examples else None)
        self._setup(settings, RunOptions(**run_opts), pool, exclude_ids, model=model if isinstance(model, Model) else None,
                    taxonomy=taxonomy if isinstance(taxonomy, Taxonomy) else None,
                    prompt=prompt if isinstance(prompt, PromptSpec) else None)

    @classmethod
    def from_settings(cls, settings: LabelSettings, options: RunOptions | None = None, *, pool: Corpus | None = None,
                      exclude_ids: Iterable[str] = ()) -> Labeler:
        """The labeler for validated settings: the one path the CLI, relabel runs and evals take.

        `pool`: the example corpus when it is already loaded (a run's input, an eval's pool); else `settings.examples`,
        else the bundled corpus."""
        if pool is None:
            pool = load_corpus(settings.examples or DEFAULT_CORPUS)
        self = cls.__new__(cls)
        self._setup(settings, options or RunOptions(), pool, exclude_ids)
        return self

    def _setup(self, settings: LabelSettings, options: RunOptions, pool: Corpus | None, exclude_ids: Iterable[str], *,
               model: Model | None = None, taxonomy: Taxonomy | None = None, prompt: PromptSpec | None = None) -> None:
        self.settings, self.options = settings, options
        self.pool = pool.without(exclude_ids) if pool is not None and exclude_ids else pool
        if taxonomy is None and settings.taxonomy:
            taxonomy = load_taxonomy(settings.taxonomy)
        elif taxonomy is None and self.pool is not None:
            taxonomy = Taxonomy.from_labels(self.pool.labels, source=self.pool.path)
        elif taxonomy is None:
            raise ValueError("give a taxonomy file or an example corpus to take the label set from")
        self.taxonomy = taxonomy
        if self.pool is not None:
            self.taxonomy.check_items(self.pool.items, where=self.pool.path)
        self.prompt = prompt or load_prompt(settings.prompt)
        self.limiter = RateLimiter(options.rpm, options.tpm)
        self.model = model or get_model(settings.model, ModelOptions(
            base_url=settings.base_url, structured=settings.structured, timeout=options.timeout, limiter=self.limiter))
        # A model the registry made for us is ours to close, unless it is shared; a model passed in is the caller's.
        self._owns_model = model is None and self.model.owned
        self.shots = settings.shots if self.prompt.uses_examples and self.pool is not None else 0
        self.answer_format = self.model.answer_format
        # A label-scoring model answers one item per request: each item is scored on its own (its KV prefix reuse
        # does what batching would), so items_per_request does not apply to it.
        self.items_per_request = 1 if self.model.scores_labels else settings.items_per_request
        selector = make_selector(settings.strategy, self.pool, self.shots, settings.seed) if self.shots else None
        self.examples = ExamplePicker(selector, self.items_per_request) if selector else None
        self.answer_schema = answer_model(self.taxonomy.labels, settings.multi_label, settings.max_labels).model_json_schema()
        # What decides every answer, in its JSON form (as run.json keeps it, to refuse a resume under other settings)
        self.fingerprint = json.loads(json.dumps({
            "model": self.model.identity(), "prompt": self.prompt.ref, "labels": self.taxonomy.labels,
            "definitions": self.taxonomy.definitions, "strategy": settings.strategy, "shots": self.shots,
            "selector": selector.identity() if selector else None, "seed": settings.seed,
            "multi": settings.multi_label, "max_labels": settings.max_labels, "temperature": settings.temperature,
            "json": self.answer_format == "json", "pool": stable_hash([(it.id, it.labels) for it in self.pool]) if self.shots else None,
            "ipr": self.items_per_request,
            "threshold": settings.label_threshold if self.model.scores_labels and settings.multi_label else None,
        }))
        cache = ResponseCache(options.cache_dir) if options.cache else None
        self.asker = Asker(self.model, cache, settings, self.taxonomy.labels, stable_hash(self.fingerprint),
                           self.prompt, self.plan_request, options.max_reasks)

    @property
    def stats(self) -> dict[str, int]:
        """Model calls, cache hits, re-asks and tokens so far."""
        return self.asker.stats

    @property
    def fatal(self) -> FatalTransportError | None:
        """The error that stopped the last call (auth, quota, not found), if one did."""
        return self.asker.fatal

    # ------------------------------------------------------------------ requests

    def render(self, text: str, *, id: str | None = None) -> Rendered:
        """The exact prompt this labeler would send for `text`, and the ids of the examples in it."""
        examples = self.examples.pick([(id or item_id(text), text)]) if self.examples else []
        return self.prompt.render(normalize_text(text), self.taxonomy, examples, answer_format=self.answer_format)

    def plan_request(self, items: Sequence[Key]) -> tuple[ModelRequest, list[str]]:
        """The request the online path sends for one item or a group of items, and the ids of its examples."""
        s = self.settings
        request = ModelRequest("", self.taxonomy.labels, self.answer_schema, s.multi_label, s.max_labels,
                               temperature=s.temperature, max_tokens=16 * s.max_labels + 32)
        if len(items) == 1:
            iid, text = items[0]
            rendered = self.render(text, id=iid)
            return replace(request, prompt=rendered.text), list(rendered.example_ids)
        keys = batch_keys(len(items))
        examples = self.examples.pick(items) if self.examples else []
        rendered = self.prompt.render_batch([(k, normalize_text(t)) for k, (_, t) in zip(keys, items)], self.taxonomy,
                                            examples, answer_format=self.answer_format)
        schema = batch_answer_model(keys, self.taxonomy.labels, s.multi_label, s.max_labels).model_json_schema()
        return replace(request, prompt=rendered.text, batch=True, schema=schema, keys=keys), list(rendered.example_ids)

    def prefetch(self, items: Sequence[Key]) -> None:
        """Select the examples of many items in one pass, ahead of asking (what a long run does a chunk at a time)."""
        if self.examples:
            self.examples.prefetch(items)

    def cached(self, items: Sequence[Key]) -> dict[str, Prediction]:
        """Finished predictions for these (id, text) items under exactly these settings, where cached."""
        return self.asker.cached(items)

    async def afinish(self, items: Sequence[Key], request: ModelRequest, example_ids: list[str],
                      answer: ModelAnswer | Exception, *, cached: bool = False, start: int = 1,
                      defer: Defer | None = None) -> dict[str, Prediction]:
        """Predictions from an answer to `plan_request(items)` obtained elsewhere (a batch output line), as online."""
        return await self.asker.finish(items, request, example_ids, answer, cached=cached, start=start, defer=defer)

    # ------------------------------------------------------------------ labeling

    async def alabel(self, text: str, *, id: str | None = None) -> Prediction:
        """Label one text (async)."""
        check_text(text)
        iid = id or item_id(text)
        hit = self.asker.cached([(iid, text)]).get(iid)
        return hit if hit is not None else await self.asker.label_alone(iid, text)

    async def alabel_items(self, items: Sequence[Key], *, on_result: Callable[[Prediction], Any] | None = None,
                           collect: bool = True) -> list[Prediction]:
        """Label (id, text) pairs with bounded concurrency; `on_result` sees each prediction as it completes.

        With `collect=False` nothing is kept (a streaming caller writes each result itself) and [] is returned."""
        results: dict[str, Prediction] = {}
        self.asker.fatal = None  # a fatal error stops this call; a later call (e.g. with the problem fixed) starts afresh

        def done(pred: Prediction) -> None:
            if collect:
                results[pred.id] = pred
            if on_result is not None:
                on_result(pred)

        hits = self.asker.cached(items)
        for pred in hits.values():
            done(pred)
        todo = [q for q in items if q[0] not in hits]
        size = self.items_per_request
        await label_groups([todo[i:i + size] for i in range(0, len(todo), size)], self.asker.label_group, done,
                           concurrency=self.options.concurrency, prefetch=self.prefetch,
                           stop=lambda: self.asker.fatal is not None)
        if self.asker.fatal is not None:
            raise self.asker.fatal
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

        cells, bad = column_texts(df, text_col)  # a missing or empty cell becomes a failed row, not an error
        labeled = iter(self.label_many([c for n, c in enumerate(cells) if n not in bad]))
        preds = [Prediction(id="", text=cells[n] if isinstance(cells[n], str) else "", labels=[], status="failed",
                            error=bad[n], prompt=self.prompt.ref, model=self.model.name, attempts=0)
                 if n in bad else next(labeled) for n in range(len(cells))]
        extra = pd.DataFrame([p.model_dump(exclude={"text"}) for p in preds], index=df.index)
        extra = extra.rename(columns={c: f"pred_{c}" if c in df.columns else c for c in extra.columns})
        return pd.concat([df, extra], axis=1)

    # ------------------------------------------------------------------ lifetime

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
        if self.asker.cache is not None:
            self.asker.cache.close()
