"""Every error labelwise raises on purpose.

LabelwiseError
 ├── InputError                 bad user input: carries where (path, line, column, item id)
 │    ├── CorpusError           a corpus / dataset file can't be read as items
 │    ├── TaxonomyError         a taxonomy file is malformed, or a label is unknown
 │    ├── PromptError           a prompt template is missing or malformed
 │    ├── SpecError             an eval spec is malformed
 │    └── ReviewError           a run, review export or corrections file can't be used (names the task / item)
 ├── ModelError                 talking to a model failed
 │    ├── ModelConfigError      unknown model spec, missing key, missing extra
 │    ├── TransportError        network / HTTP failure or malformed answer after retries (status, attempts, raw)
 │    │    └── FatalTransportError  4xx that retrying can't fix (400/401/403/404, quota): a run stops
 │    └── OutputError           the answer could not be validated (raw output kept)
 ├── RunError                   a relabel run directory can't be resumed as asked
 └── LabelStudioError           Label Studio unreachable, no API key, or its API refused
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "LabelwiseError",
    "InputError",
    "CorpusError",
    "TaxonomyError",
    "PromptError",
    "SpecError",
    "ModelError",
    "ModelConfigError",
    "TransportError",
    "FatalTransportError",
    "OutputError",
    "RunError",
    "ReviewError",
    "LabelStudioError",
]


class LabelwiseError(Exception):
    """Base of every error labelwise raises deliberately."""


class InputError(LabelwiseError):
    """Bad input, with where it was found so the user can fix it."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: int | str | None = None,
        item_id: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        self.item_id = item_id
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {self.column}")
        if self.item_id:
            where.append(f"item {self.item_id}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class CorpusError(InputError):
    """A corpus or dataset file can't be read as labeled items."""


class TaxonomyError(InputError):
    """A taxonomy file is malformed, or a label is not in the taxonomy."""


class PromptError(InputError):
    """A prompt template is missing or malformed."""


class SpecError(InputError):
    """An eval spec is malformed."""


class ReviewError(InputError):
    """A run, a Label Studio export or a corrections file can't be used as asked."""


class ModelError(LabelwiseError):
    """Talking to a model failed."""


class ModelConfigError(ModelError):
    """The model can't be set up: unknown spec, missing key, missing extra."""


class TransportError(ModelError):
    """The request failed at the network or HTTP level, after any retries."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1, raw: str | None = None) -> None:
        self.status = status
        self.attempts = attempts
        self.raw = raw  # the body of a malformed answer, kept for the failed prediction
        super().__init__(message)


class FatalTransportError(TransportError):
    """An HTTP error that no retry can fix (bad request, auth, not found, quota)."""


class OutputError(ModelError):
    """The model's answer failed validation after every re-ask; the raw output is kept."""

    def __init__(self, message: str, *, raw: str | None = None, attempts: int = 1) -> None:
        self.raw = raw
        self.attempts = attempts
        super().__init__(message)


class RunError(LabelwiseError):
    """A run directory can't be used as asked (e.g. resumed with other settings)."""


class LabelStudioError(LabelwiseError):
    """Label Studio can't be reached, the API key is missing, or its API refused a request."""
