"""The recorded prediction (what a valid answer is and how it is read: `_answer`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._redact import redact

RAW_CAP = 20_000  # characters of a raw answer kept in a prediction; the rest is cut, and the cut is said

__all__ = ["RAW_CAP", "Prediction"]


class Prediction(BaseModel):
    """One labeled text: what was predicted, how sure, from which prompt, examples and model, at what cost."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    labels: list[str]
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    # A probability for every taxonomy label (taxonomy order), or None where the model gives none.
    label_probs: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] | None = None
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None
    examples: list[str] = Field(default_factory=list)
    prompt: str
    model: str
    attempts: int = 1
    usage: dict[str, int] = Field(default_factory=dict)
    cached: bool = False
    raw: str | None = None

    @field_validator("error", "raw")
    @classmethod
    def _safe_to_store(cls, value: str | None, info) -> str | None:
        """No secret is ever recorded (a server may echo the key); a huge raw answer is cut, saying so."""
        value = redact(value)
        if info.field_name == "raw" and value is not None and len(value) > RAW_CAP and "[cut: " not in value[RAW_CAP:]:
            value = value[:RAW_CAP] + f" [cut: {len(value) - RAW_CAP} more characters]"
        return value
