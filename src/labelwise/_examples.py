"""Few-shot example selection from a labeled pool, as LangChain example selectors, with a leakage guard."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from langchain_core.example_selectors import BaseExampleSelector

from ._corpus import Corpus, Item, item_id

__all__ = ["PoolSelector", "SimilarSelector", "DiverseSelector", "RandomSelector", "FixedSelector", "make_selector", "STRATEGIES",
           "ExamplePicker"]


def _as_example(it: Item) -> dict[str, Any]:
    return {"id": it.id, "text": it.text, "labels": list(it.labels)}


class PoolSelector(BaseExampleSelector):
    """Base of our selectors: a pool of labeled items, K, and never the query's own text.

    The guard compares content ids (hashes of the normalized text), whatever id a caller gives its item,
    so neither the text itself nor an identical copy of it is ever shown as an example.
    """

    def __init__(self, pool: Corpus | list[Item], k: int, seed: int = 0) -> None:
        self.items: list[Item] = [it for it in pool if it.labels]
        self.k = k
        self.seed = seed

    def add_example(self, example: dict[str, Any]) -> None:
        """Add one labeled example ({"text", "labels"}) to the pool."""
        self.items.append(Item(item_id(example["text"]), example["text"], tuple(example["labels"])))
        self._changed()

    def _changed(self) -> None:
        """Hook for selectors that index the pool."""

    def identity(self) -> dict[str, Any]:
        """What decides this selector's choices (part of cache keys)."""
        return {"strategy": type(self).__name__, "k": self.k, "seed": self.seed, **getattr(self, "params", {})}

    def select_examples(self, input_variables: dict[str, Any]) -> list[dict[str, Any]]:
        """Up to K examples for the input `text`; the text itself (and any identical text) is excluded."""
        if self.k <= 0 or not self.items:
            return []
        text = input_variables["text"]
        return [_as_example(self.items[i]) for i in self._select(text, item_id(text))]

    def select_many(self, texts: list[str], k: int | None = None) -> list[list[dict[str, Any]]]:
        """Examples for many texts at once; `k` may ask for more than K (batches need spares)."""
        k = self.k if k is None else k
        if k <= 0 or not self.items:
            return [[] for _ in texts]
        saved, self.k = self.k, k
        try:
            return [[_as_example(self.items[i]) for i in self._select(text, item_id(text))] for text in texts]
        finally:
            self.k = saved

    def _select(self, text: str, qid: str) -> list[int]:
        raise NotImplementedError


class SimilarSelector(PoolSelector):
    """Nearest neighbours by character n-gram TF-IDF cosine: no word segmentation needed for Chinese."""

    def __init__(self, pool, k: int, seed: int = 0, ngram_range: tuple[int, int] = (1, 2)) -> None:
        super().__init__(pool, k, seed)
        self.ngram_range = ngram_range
        self.params = {"ngram_range": list(ngram_range), "analyzer": "char", "sublinear_tf": True}
        self._index = None

    def _changed(self) -> None:
        self._index = None

    def _fit(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(analyzer="char", ngram_range=self.ngram_range, sublinear_tf=True)
        matrix = vec.fit_transform([it.text for it in self.items])
        self._index = (vec, matrix, [it.id for it in self.items])
        return self._index

    def similarities(self, text: str):
        """Cosine similarity of `text` to every pool item."""
        vec, matrix, _ = self._index or self._fit()
        return (matrix @ vec.transform([text]).T).toarray().ravel()

    def _select(self, text: str, qid: str) -> list[int]:
        return self._pick(self.similarities(text), qid, self.k)

    def select_many(self, texts: list[str], k: int | None = None) -> list[list[dict[str, Any]]]:
        k = self.k if k is None else k
        if k <= 0 or not self.items or not texts:
            return [[] for _ in texts]
        vec, matrix, _ = self._index or self._fit()
        out: list[list[dict[str, Any]]] = []
        for start in range(0, len(texts), 256):
            chunk = texts[start:start + 256]
            sims = (vec.transform(chunk) @ matrix.T).toarray()
            out += [[_as_example(self.items[i]) for i in self._pick(row, item_id(t), k)] for row, t in zip(sims, chunk)]
        return out

    def _pick(self, sims, qid: str, k: int) -> list[int]:
        import numpy as np

        ids = self._index[2]
        take = min(len(sims), k + 1)
        top = np.argpartition(-sims, take - 1)[:take]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [int(i) for i in top if ids[i] != qid][:k]


class DiverseSelector(SimilarSelector):
    """Cover as many labels as K allows: per label its nearest example, labels ordered by that nearness."""

    def _pick(self, sims, qid: str, k: int) -> list[int]:
        import numpy as np

        ids = self._index[2]
        order = np.argsort(-sims, kind="stable")
        chosen: list[int] = []
        covered: set[str] = set()
        for i in order:
            if ids[i] == qid:
                continue
            if not covered.issuperset(self.items[i].labels):
                chosen.append(int(i))
                covered.update(self.items[i].labels)
                if len(chosen) == k:
                    return chosen
        taken = set(chosen)
        rest = [int(i) for i in order if ids[i] != qid and int(i) not in taken]
        return chosen + rest[: k - len(chosen)]


class RandomSelector(PoolSelector):
    """Seeded, label-stratified random examples: labels drawn by their frequency, one example each."""

    def __init__(self, pool, k: int, seed: int = 0) -> None:
        super().__init__(pool, k, seed)
        self._changed()

    def _changed(self) -> None:
        self.by_label: dict[str, list[int]] = defaultdict(list)
        for i, it in enumerate(self.items):
            self.by_label[it.labels[0]].append(i)

    def _select(self, text: str, qid: str) -> list[int]:
        digest = hashlib.sha256(f"{self.seed}:{qid}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        labels = list(self.by_label)
        weights = [len(self.by_label[lab]) for lab in labels]
        chosen: list[int] = []
        while labels and len(chosen) < self.k:
            j = rng.choices(range(len(labels)), weights)[0]
            candidates = [i for i in self.by_label[labels[j]] if self.items[i].id != qid and i not in chosen]
            if candidates:
                chosen.append(rng.choice(candidates))
            del labels[j], weights[j]
        if len(chosen) < self.k:
            rest = [i for i in range(len(self.items)) if self.items[i].id != qid and i not in chosen]
            chosen += rng.sample(rest, min(len(rest), self.k - len(chosen)))
        return chosen


class FixedSelector(PoolSelector):
    """The same examples for every text: the first pool item of each label, most frequent labels first."""

    def _changed(self) -> None:
        self._order = None

    def _select(self, text: str, qid: str) -> list[int]:
        if getattr(self, "_order", None) is None:
            counts: dict[str, int] = defaultdict(int)
            first: dict[str, int] = {}
            for i, it in enumerate(self.items):
                counts[it.labels[0]] += 1
                first.setdefault(it.labels[0], i)
            heads = [first[lab] for lab in sorted(first, key=lambda lab: (-counts[lab], first[lab]))]
            seen = set(heads)
            self._order = heads + [i for i in range(len(self.items)) if i not in seen][: self.k + 64]
        return [i for i in self._order if self.items[i].id != qid][: self.k]


STRATEGIES: dict[str, type[PoolSelector]] = {
    "similar": SimilarSelector,
    "diverse": DiverseSelector,
    "random": RandomSelector,
    "fixed": FixedSelector,
}


def make_selector(strategy: str, pool: Corpus | list[Item], k: int, seed: int = 0) -> PoolSelector:
    """The selector for a strategy name."""
    try:
        cls = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {sorted(STRATEGIES)}") from None
    return cls(pool, k, seed)


class ExamplePicker:
    """The examples of each request: selected in bulk ahead of asking, never an item itself or a batch-mate."""

    def __init__(self, selector: PoolSelector, items_per_request: int = 1) -> None:
        self.selector = selector
        self.k = selector.k
        self.spare = items_per_request - 1  # extra candidates per item, for when batch-mates are dropped
        self._ready: dict[str, list[dict[str, Any]]] = {}

    def prefetch(self, items: Sequence[tuple[str, str]]) -> None:
        """Select examples for many (id, text) items in one vectorised pass."""
        texts = [t for _, t in items]
        for (iid, _), exs in zip(items, self.selector.select_many(texts, self.k + self.spare)):
            self._ready[iid] = exs

    def pick(self, items: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """K examples for a request of one or more items, interleaving each item's nearest in rank order."""
        missing = [q for q in items if q[0] not in self._ready]
        if missing:
            self.prefetch(missing)
        per_item = [self._ready.pop(iid) for iid, _ in items]
        banned = {item_id(text) for _, text in items}
        merged: dict[str, dict[str, Any]] = {}
        for rank in range(max(map(len, per_item), default=0)):
            for exs in per_item:
                if rank < len(exs) and exs[rank]["id"] not in banned:
                    merged.setdefault(exs[rank]["id"], exs[rank])
            if len(merged) >= self.k:
                break
        return list(merged.values())[: self.k]
