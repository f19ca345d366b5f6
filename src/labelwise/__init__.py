"""labelwise: label texts with an LLM against a fixed taxonomy, few-shot from a labeled corpus.

Names are re-exported from private modules and imported on first use, so the CLI starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "._corpus": ["Corpus", "Item", "item_id", "load_corpus", "normalize_text", "EncodingGuessWarning"],
    "._taxonomy": ["Taxonomy", "load_taxonomy"],
    "._prompts": ["PromptSpec", "load_prompt"],
    "._examples": ["SimilarSelector", "DiverseSelector", "RandomSelector", "FixedSelector", "make_selector"],
    "._models": ["Model", "ModelOptions", "ModelRequest", "ModelAnswer", "LocalModel", "OpenAIModel", "get_model",
                  "register_model"],
    "._cache": ["ResponseCache"],
    "._schema": ["Prediction"],
    "._labeler": ["Labeler", "DEFAULT_CORPUS"],
    "._settings": ["LabelSettings", "RunOptions"],
    "._metrics": ["score", "compare", "confusion"],
    "._runner": ["relabel", "RelabelConfig", "RunResult"],
    "._runs": ["label_into", "LabelStats", "Predictor", "read_predictions"],
    "._baseline": ["TfidfBaseline"],
    "._batch": ["BatchConfig", "batch_status", "cancel_batches"],
    "._evals": ["run_eval", "EvalSpec", "EvalResult"],
    "._triage": ["triage", "Triage", "TriageRow", "Calibrator"],
    "._review": ["export_tasks", "push_tasks", "pull_corrections", "import_corrections", "apply_corrections", "label_config"],
    "._exceptions": [
        "LabelwiseError", "InputError", "CorpusError", "TaxonomyError", "PromptError", "SpecError",
        "ModelError", "ModelConfigError", "TransportError", "FatalTransportError", "OutputError", "RunError",
        "ReviewError", "LabelStudioError",
    ],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'labelwise' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
