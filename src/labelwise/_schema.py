"""Pydantic models of a valid answer (labels only from the taxonomy) and of a recorded prediction."""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from ._prompts import LABEL_JOINER
from ._redact import redact

RAW_CAP = 20_000  # characters of a raw answer kept in a prediction; the rest is cut, and the cut is said

__all__ = ["RAW_CAP", "Prediction", "answer_model", "batch_answer_model", "parse_answer", "parse_batch_answer", "label_confidence",
           "labels_from_probs", "label_probs_from_logprobs"]


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


def _dedupe(labels: list[str]) -> list[str]:
    return list(dict.fromkeys(labels))


@lru_cache(maxsize=64)
def answer_model(labels: tuple[str, ...], multi_label: bool = True, max_labels: int = 3) -> type[BaseModel]:
    """The answer `{"labels": [...]}` whose labels can only be taxonomy labels."""
    Label = Literal[labels]  # type: ignore[valid-type]
    upper = max_labels if multi_label else 1
    model = create_model(
        "Answer",
        __config__=ConfigDict(extra="forbid"),
        labels=(Annotated[list[Label], Field(min_length=1, max_length=upper)], ...),
        __validators__={"dedupe": field_validator("labels", mode="before")(classmethod(lambda cls, v: _dedupe(v) if isinstance(v, list) else v))},
    )
    return model


@lru_cache(maxsize=64)
def batch_answer_model(keys: tuple[str, ...], labels: tuple[str, ...], multi_label: bool = True, max_labels: int = 3) -> type[BaseModel]:
    """The batch answer `{"items": [{"id", "labels"}, ...]}`; each item is validated on its own later."""
    Key = Literal[keys]  # type: ignore[valid-type]
    Label = Literal[labels]  # type: ignore[valid-type]
    upper = max_labels if multi_label else 1
    entry = create_model("ItemAnswer", __config__=ConfigDict(extra="forbid"), id=(Key, ...),
                         labels=(Annotated[list[Label], Field(min_length=1, max_length=upper)], ...))
    return create_model("BatchAnswer", __config__=ConfigDict(extra="forbid"), items=(list[entry], ...))


def short_error(err: ValidationError | ValueError) -> str:
    """A validation error as one compact line the model (and a user) can act on."""
    if isinstance(err, ValidationError):
        parts = []
        for e in err.errors()[:3]:
            loc = ".".join(str(x) for x in e["loc"])
            parts.append(f"{loc}: {e['msg']}" + (f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""))
        return "; ".join(parts)[:400]
    return str(err)[:400]


def _load_json(text: str) -> Any:
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`").removeprefix("json").strip()
    start = s.find("{")
    end = s.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"not a JSON object: {text[:80]!r}")
    obj = s[start:end + 1]
    try:
        return json.loads(obj)
    except json.JSONDecodeError as e:
        pos = max(0, text.find(obj)) + e.pos  # where in the answer itself, not in the object cut out of it
        line, col = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        raise ValueError(f"invalid JSON: {e.msg} at line {line}, column {col} of the answer") from None


def parse_answer(text: str, fmt: str, labels: tuple[str, ...], multi_label: bool, max_labels: int) -> list[str]:
    """Validated labels from a raw answer (JSON object, or `A、B` text); raises ValueError/ValidationError."""
    model = answer_model(labels, multi_label, max_labels)
    if fmt == "labels":
        first = text.strip().splitlines()[0] if text.strip() else ""
        data = {"labels": [p.strip() for p in first.split(LABEL_JOINER) if p.strip()]}
    else:
        data = _load_json(text)
    return list(model.model_validate(data).labels)


def _lines_to_entries(text: str) -> list[dict[str, Any]]:
    """`[key] A、B` lines (the embedded model's batch answer) as {"id", "labels"} entries."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and "]" in line:
            key, _, rest = line[1:].partition("]")
            entries.append({"id": key.strip(), "labels": [p.strip() for p in rest.split(LABEL_JOINER) if p.strip()]})
    return entries


def parse_batch_answer(text: str, fmt: str, keys: tuple[str, ...], labels: tuple[str, ...], multi_label: bool,
                       max_labels: int) -> dict[str, list[str] | str]:
    """Per key: validated labels, or the error message for that key (missing / invalid), each item on its own."""
    item_model = answer_model(labels, multi_label, max_labels)
    out: dict[str, list[str] | str] = {k: "no answer for this item" for k in keys}
    if fmt == "lines":
        data: Any = {"items": _lines_to_entries(text)}
    else:
        try:
            data = _load_json(text)
        except ValueError as e:
            return {k: str(e) for k in keys}
    entries = data.get("items") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return {k: "answer has no `items` list" for k in keys}
    for entry in entries:
        if not isinstance(entry, dict) or str(entry.get("id")) not in out or isinstance(out[str(entry.get("id"))], list):
            continue
        key = str(entry["id"])
        try:
            out[key] = list(item_model.model_validate({"labels": entry.get("labels")}).labels)
        except ValidationError as e:
            out[key] = short_error(e)
    return out


def label_confidence(text: str, tokens: list[tuple[str, float]] | None, label: str) -> float | None:
    """exp(sum of log-probs of the tokens that spell `label`'s first occurrence): the model's probability of it."""
    if not tokens:
        return None
    joined = "".join(t for t, _ in tokens)
    start = joined.find(label)
    if start < 0:
        return None
    end = start + len(label)
    pos = 0
    total = 0.0
    for tok, lp in tokens:
        nxt = pos + len(tok)
        if nxt > start and pos < end and lp is not None:
            total += lp
        pos = nxt
        if pos >= end:
            break
    return float(min(1.0, max(0.0, math.exp(total))))


def labels_from_probs(probs: dict[str, float], multi_label: bool, max_labels: int, threshold: float) -> list[str]:
    """The predicted set from label probabilities: the top label, then (multi-label) every other label whose
    probability is at least `threshold`, likeliest first, at most `max_labels` in all."""
    ranked = sorted(probs, key=lambda lab: -probs[lab])  # stable: ties keep taxonomy order
    upper = max_labels if multi_label else 1
    return ranked[:1] + [lab for lab in ranked[1:upper] if probs[lab] >= threshold]


_FIRST_LABEL = re.compile(rb'"labels"\s*:\s*\[\s*"')

# One answer token with its alternatives: (bytes, logprob, [(alternative bytes, logprob), ...]).
TokenAlternatives = tuple[bytes, float, list[tuple[bytes, float]]]


def label_probs_from_logprobs(tokens: list[TokenAlternatives], labels: tuple[str, ...]) -> dict[str, float] | None:
    """Every label's probability as the first label of a JSON answer, from the server's `top_logprobs`.

    Walking the answer's tokens through the first label's value, each alternative token at each step is mapped
    onto the labels it can still spell (given the answer's bytes so far): its mass (the chosen path's probability
    up to there, times its own) goes to that label, or is shared equally by the labels it can start (a later
    token would tell them apart, but the server only shows the alternatives of the path it took). The chosen
    path's own label gets the product of its tokens. Alternatives that spell no label are dropped, and the result
    is normalised over the labels: the distribution of the first label given that it is a taxonomy label. A label
    among none of the alternatives gets 0. None when the answer has no `"labels": ["...` or the server gave no
    alternatives at all.
    """
    joined = b"".join(t[0] for t in tokens)
    m = _FIRST_LABEL.search(joined)
    if not m:
        return None
    encoded = {lab: lab.encode("utf-8") for lab in labels}
    end = joined.find(b'"', m.end())
    chosen_label = joined[m.end():end if end >= 0 else len(joined)]
    if not any(alts for _, _, alts in tokens):
        return None  # the server gave no top_logprobs: nothing to say about the other labels
    mass = dict.fromkeys(labels, 0.0)

    def spell(prefix: bytes) -> list[str]:
        """Labels that `prefix` (label bytes, maybe running into the closing quote and on) can still be."""
        return [lab for lab, b in encoded.items() if (b + b'"').startswith(prefix) or prefix.startswith(b + b'"')]

    pos, path_p, consumed = 0, 1.0, b""
    for tok, lp, alts in tokens:
        start, pos = pos, pos + len(tok)
        if pos <= m.end():
            continue
        skip = max(0, m.end() - start)  # bytes of this token before the label's first byte
        for alt, alt_lp in alts:
            if alt == tok or not alt.startswith(tok[:skip]):
                continue
            cands = spell(consumed + alt[skip:])
            for lab in cands:
                mass[lab] += path_p * math.exp(alt_lp) / len(cands)
        path_p *= math.exp(lp)
        consumed += tok[skip:]
        if len(consumed) >= len(chosen_label):
            label = chosen_label.decode("utf-8", "replace")
            if label in mass:
                mass[label] += path_p
            break
    total = sum(mass.values())
    if total <= 0.0:
        return None
    return {lab: mass[lab] / total for lab in labels}
