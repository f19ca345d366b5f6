"""The TF-IDF baseline an eval's LLM variants must beat, as one more predictor (the labeler's `alabel_items` interface)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ._corpus import Corpus
from ._schema import Prediction

__all__ = ["TfidfBaseline"]


class TfidfBaseline:
    """A character n-gram TF-IDF one-vs-rest linear SVM trained on the example pool (fitted on first use)."""

    name = "tfidf-linearsvm"
    model_name = "scikit-learn"

    def __init__(self, pool: Corpus, labels: Sequence[str], chunk: int = 2000) -> None:
        self.pool, self.labels, self.chunk = pool, list(labels), chunk
        self._fitted: tuple[Any, Any] | None = None

    @property
    def fitted(self) -> bool:
        """Whether it has trained (it trains on its first prediction)."""
        return self._fitted is not None

    def _fit(self) -> tuple[Any, Any]:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.preprocessing import MultiLabelBinarizer
        from sklearn.svm import LinearSVC

        y = MultiLabelBinarizer(classes=self.labels).fit_transform([it.labels for it in self.pool.items])
        vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
        X = vec.fit_transform([it.text for it in self.pool.items])
        clf = OneVsRestClassifier(LinearSVC(C=0.5))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Label not .* is present in all training examples")
            clf.fit(X, y)  # a taxonomy label absent from the pool is simply never predicted
        return vec, clf

    def predict(self, texts: Sequence[str]) -> list[list[str]]:
        """Ranked labels of each text: the top-scoring label, then up to two more with a positive margin."""
        import numpy as np

        if self._fitted is None:
            self._fitted = self._fit()
        vec, clf = self._fitted
        out = []
        for start in range(0, len(texts), self.chunk):
            for row in clf.decision_function(vec.transform(texts[start:start + self.chunk])):
                order = np.argsort(-row)
                out.append([self.labels[order[0]]] + [self.labels[j] for j in order[1:3] if row[j] > 0])
        return out

    async def alabel_items(self, items: Sequence[tuple[str, str]], *,
                           on_result: Callable[[Prediction], Any] | None = None, collect: bool = True) -> list[Prediction]:
        """Predictions for (id, text) pairs, like `Labeler.alabel_items` (no model call, no tokens, no confidence)."""
        items = list(items)
        preds = [Prediction(id=iid, text=text, labels=labels, prompt=self.name, model=self.model_name)
                 for (iid, text), labels in zip(items, self.predict([t for _, t in items]) if items else [])]
        for p in preds:
            if on_result is not None:
                on_result(p)
        return preds if collect else []

    async def aclose(self) -> None:
        """Nothing to close."""
