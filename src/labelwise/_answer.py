"""The answer format: what a valid answer looks like and how a model's answer is read into labels and confidence.

An answer comes in one of three formats (`answer_format`): "json" (`{"labels": [...]}`, or `{"items": [{"id",
"labels"}, ...]}` for several items), "lines" (`A、B` text; `[key] A、B` lines for several items) or "probs" (a
probability for every taxonomy label, which is the answer itself). The pydantic schemas, the joiner and batch
markers, parsing, `labels_from_probs` and every confidence read from an answer live here and nowhere else.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

if TYPE_CHECKING:
    from ._models import ModelAnswer

__all__ = ["LABEL_JOINER", "TokenAlternatives", "answer_format_name", "batch_keys", "item_line",
           "label_terminators", "answer_model", "batch_answer_model", "short_error", "parse_answer",
           "parse_batch_answer", "labels_from_probs", "labels_of", "label_confidence", "confidence",
           "batch_confidence", "label_probs_from_logprobs"]

LABEL_JOINER = "、"  # between labels in a "lines" answer, in rendered examples and after a scored label
_FORMAT_ALIASES = {"labels": "lines"}  # the older name of the "lines" format (a model may still say it)

# One answer token with its alternatives: (bytes, logprob, [(alternative bytes, logprob), ...]).
TokenAlternatives = tuple[bytes, float, list[tuple[bytes, float]]]


def answer_format_name(value: str) -> str:
    """The answer format's current name (`labels` is read as `lines`); other values are returned unchanged."""
    return _FORMAT_ALIASES.get(value, value)


# --------------------------------------------------------------------------- batch markers


def batch_keys(n: int) -> tuple[str, ...]:
    """The ids that the items of an n-item request carry in the prompt and the answer: "1" .. "n"."""
    return tuple(str(k) for k in range(1, n + 1))


def item_line(key: str, text: str) -> str:
    """An item as one line of a batch prompt (and a "lines" answer): `[key] text`."""
    return f"[{key}] {text}"


def _item_marker(key: str, answer_format: str) -> str:
    """What precedes an item's labels in a batch answer: its `[key] ` line start, or its JSON id."""
    return item_line(key, "") if answer_format == "lines" else f'"{key}"'


def label_terminators(multi_label: bool, max_labels: int) -> tuple[str, ...]:
    """What may follow a complete label in a "lines" answer: the joiner (when more labels may come) or a newline."""
    return (LABEL_JOINER, "\n") if multi_label and max_labels > 1 else ("\n",)


# --------------------------------------------------------------------------- schemas


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


# --------------------------------------------------------------------------- parsing


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


def _split_labels(text: str) -> list[str]:
    return [p.strip() for p in text.split(LABEL_JOINER) if p.strip()]


def parse_answer(text: str, answer_format: str, labels: tuple[str, ...], multi_label: bool, max_labels: int) -> list[str]:
    """Validated labels from a raw answer (JSON object, or `A、B` text); raises ValueError/ValidationError."""
    model = answer_model(labels, multi_label, max_labels)
    if answer_format_name(answer_format) == "lines":
        first = text.strip().splitlines()[0] if text.strip() else ""
        data = {"labels": _split_labels(first)}
    else:
        data = _load_json(text)
    return list(model.model_validate(data).labels)


def _lines_to_entries(text: str) -> list[dict[str, Any]]:
    """`[key] A、B` lines (a "lines" batch answer) as {"id", "labels"} entries."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and "]" in line:
            key, _, rest = line[1:].partition("]")
            entries.append({"id": key.strip(), "labels": _split_labels(rest)})
    return entries


def parse_batch_answer(text: str, answer_format: str, keys: tuple[str, ...], labels: tuple[str, ...], multi_label: bool,
                       max_labels: int) -> dict[str, list[str] | str]:
    """Per key: validated labels, or the error message for that key (missing / invalid), each item on its own."""
    item_model = answer_model(labels, multi_label, max_labels)
    out: dict[str, list[str] | str] = {k: "no answer for this item" for k in keys}
    if answer_format_name(answer_format) == "lines":
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


def labels_from_probs(probs: dict[str, float], multi_label: bool, max_labels: int, threshold: float) -> list[str]:
    """The predicted set from label probabilities: the top label, then (multi-label) every other label whose
    probability is at least `threshold`, likeliest first, at most `max_labels` in all."""
    ranked = sorted(probs, key=lambda lab: -probs[lab])  # stable: ties keep taxonomy order
    upper = max_labels if multi_label else 1
    return ranked[:1] + [lab for lab in ranked[1:upper] if probs[lab] >= threshold]


def labels_of(answer: ModelAnswer, labels: tuple[str, ...], multi_label: bool, max_labels: int,
              threshold: float) -> list[str]:
    """The validated label set of one item's answer: from its probabilities ("probs") or its text."""
    if answer_format_name(answer.answer_format) == "probs":
        probs = answer.label_probs or {}
        if set(probs) != set(labels):
            raise ValueError(f"scores for {sorted(probs)} do not cover the taxonomy")
        return labels_from_probs(probs, multi_label, max_labels, threshold)
    return parse_answer(answer.text, answer.answer_format, labels, multi_label, max_labels)


# --------------------------------------------------------------------------- confidence


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


def confidence(answer: ModelAnswer, label: str) -> float | None:
    """The probability of an item's top label: its entry in the label probabilities, else from its tokens' log-probs."""
    if answer.label_probs and label in answer.label_probs:
        return answer.label_probs[label]
    return label_confidence(answer.text, answer.tokens, label)


def batch_confidence(answer: ModelAnswer | None, key: str, label: str) -> float | None:
    """Confidence of one batch item's first label: the tokens spelling it after the item's marker in the answer."""
    if not answer or not answer.tokens:
        return None
    at = answer.text.find(_item_marker(key, answer_format_name(answer.answer_format)))
    if at < 0:
        return None
    pos, rest = 0, []
    for tok, lp in answer.tokens:
        if pos >= at:
            rest.append((tok, lp))
        pos += len(tok)
    return label_confidence(answer.text[at:], rest, label) if rest else None


_FIRST_LABEL = re.compile(rb'"labels"\s*:\s*\[\s*"')


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
