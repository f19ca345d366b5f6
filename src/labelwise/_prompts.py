"""Prompt templates as files under prompts/, rendered with LangChain prompt templates."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ._answer import LABEL_JOINER, item_line
from ._exceptions import PromptError
from ._io import bundled, parse_yaml
from ._taxonomy import Taxonomy

__all__ = ["PromptSpec", "Rendered", "load_prompt", "PROMPTS_DIR", "EXAMPLE_MAX_CHARS"]

PROMPTS_DIR = bundled("labelwise.prompts")
EXAMPLE_MAX_CHARS = 2000  # an example text longer than this is cut (with "…"): one huge text must not fill every prompt
_FIELDS = {"name", "description", "prefix", "example", "separator", "suffix", "batch_suffix", "batch_completion",
           "json_instruction", "reask"}
_DEFAULT_JSON_INSTRUCTION = '只输出一个JSON对象，格式为 {{"labels": ["类别", ...]}}，类别必须取自上面的类别列表。'
_DEFAULT_BATCH_SUFFIX = (
    "请为下面每个句子分别给出类别。每个句子前的方括号里是它的编号。\n{items}\n"
    '只输出一个JSON对象，格式为 {{"items": [{{"id": "编号", "labels": ["类别", ...]}}, ...]}}，每个编号恰好一次。'
)
_DEFAULT_BATCH_COMPLETION = "\n下面每个句子前的方括号里是它的编号。\n{items}\n\n各句的类别依次为：\n"
# The user turn after an invalid answer; {error} is what was wrong with it.
_DEFAULT_REASK = "上一个回答无效：{error}\n请重新回答，只用给定的类别。"


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt and what went into it."""

    text: str
    example_ids: tuple[str, ...]


@dataclass(frozen=True)
class PromptSpec:
    """A prompt template file: static prefix (instructions, definitions), examples, then the item(s) last."""

    name: str
    source: str
    prefix: str
    example: str | None
    suffix: str
    separator: str = "\n"
    batch_suffix: str = _DEFAULT_BATCH_SUFFIX
    batch_completion: str = _DEFAULT_BATCH_COMPLETION
    json_instruction: str = _DEFAULT_JSON_INSTRUCTION
    reask: str = _DEFAULT_REASK
    description: str = ""

    @cached_property
    def hash(self) -> str:
        """Hash of the file's text and of every part in effect (defaults included), so a changed prompt, re-ask
        or answer instruction never reuses an old answer unnoticed."""
        parts = [self.source, self.prefix, self.example, self.suffix, self.separator, self.batch_suffix,
                 self.batch_completion, self.json_instruction, self.reask]
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()[:12]

    @property
    def ref(self) -> str:
        """`name@hash`, recorded with every prediction."""
        return f"{self.name}@{self.hash}"

    @property
    def uses_examples(self) -> bool:
        """Whether the template shows few-shot examples at all."""
        return bool(self.example)

    @cached_property
    def _templates(self) -> dict[str, Any]:
        from langchain_core.prompts import PromptTemplate

        parts = {"prefix": self.prefix, "suffix": self.suffix, "batch_suffix": self.batch_suffix,
                 "batch_completion": self.batch_completion, "json_instruction": self.json_instruction,
                 "reask": self.reask}
        if self.example:
            parts["example"] = self.example
        try:
            return {k: PromptTemplate.from_template(v) for k, v in parts.items()}
        except Exception as e:  # langchain reports template syntax errors with various types
            raise PromptError(f"invalid template: {e}", path=self.name) from None

    def _context(self, taxonomy: Taxonomy) -> dict[str, Any]:
        return {"labels": LABEL_JOINER.join(taxonomy.labels), "definitions": taxonomy.describe(),
                "n_labels": len(taxonomy)}

    def _fill(self, part: str, values: dict[str, Any]) -> str:
        tpl = self._templates[part]
        try:
            return tpl.format(**{k: values[k] for k in tpl.input_variables})
        except KeyError as e:
            raise PromptError(f"{part} uses unknown variable {e}; known: {sorted(values)}", path=self.name) from None

    def _head(self, taxonomy: Taxonomy, examples: list[dict[str, Any]]) -> list[str]:
        ctx = self._context(taxonomy)
        parts = [self._fill("prefix", ctx)]
        if self.example:
            for ex in examples:
                text = ex["text"] if len(ex["text"]) <= EXAMPLE_MAX_CHARS else ex["text"][:EXAMPLE_MAX_CHARS] + "…"
                parts.append(self._fill("example", {**ctx, "text": text, "labels": LABEL_JOINER.join(ex["labels"])}))
        return parts

    def render(self, text: str, taxonomy: Taxonomy, examples: list[dict[str, Any]], *, answer_format: str = "lines",
               json_answer: bool | None = None) -> Rendered:
        """The prompt for one text: prefix, examples, the text; the JSON answer instruction for `answer_format`
        "json" (`json_answer=True` is the older spelling of that)."""
        answer_format = _format_of(answer_format, json_answer)
        ctx = self._context(taxonomy)
        parts = self._head(taxonomy, examples) + [self._fill("suffix", {**ctx, "text": text})]
        body = self.separator.join(p.rstrip("\n") for p in parts)
        if answer_format == "json":
            body = body + "\n" + self._fill("json_instruction", ctx)
        return Rendered(body, tuple(ex["id"] for ex in examples if self.example))

    def render_batch(self, items: list[tuple[str, str]], taxonomy: Taxonomy, examples: list[dict[str, Any]], *,
                     answer_format: str = "json", json_answer: bool | None = None) -> Rendered:
        """One prompt for several (key, text) items, static parts first so prefix caches help."""
        json_out = _format_of(answer_format, json_answer) == "json"
        ctx = self._context(taxonomy)
        listing = "\n".join(item_line(key, text) for key, text in items)
        tail = self._fill("batch_suffix" if json_out else "batch_completion", {**ctx, "items": listing})
        body = self.separator.join(p.rstrip("\n") for p in self._head(taxonomy, examples))
        return Rendered(body + "\n" + tail.lstrip("\n") if json_out else body + "\n" + tail,
                        tuple(ex["id"] for ex in examples if self.example))

    def render_reask(self, error: str) -> str:
        """The user turn that re-asks after an invalid answer, saying what was wrong with it."""
        return self._fill("reask", {"error": error})


def _format_of(answer_format: str, json_answer: bool | None) -> str:
    """The answer format a render call asks for; `json_answer` (the older keyword), when given, decides it."""
    if json_answer is None:
        return answer_format
    return "json" if json_answer else "lines"


def load_prompt(name_or_path: str | Path) -> PromptSpec:
    """A prompt by name (a file under prompts/) or by path to a YAML template file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPTS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml") if p.stem != "policy_taxonomy")
        raise PromptError(f"prompt not found; known prompts: {known}", path=path)
    source = path.read_text(encoding="utf-8")
    data = parse_yaml(source, path, PromptError)
    if not isinstance(data, dict):
        raise PromptError("a prompt file is a YAML mapping with prefix / example / suffix", path=path)
    unknown = set(data) - _FIELDS
    if unknown:
        raise PromptError(f"unknown fields {sorted(unknown)}; allowed: {sorted(_FIELDS)}", path=path)
    for req in ("prefix", "suffix"):
        if not isinstance(data.get(req), str):
            raise PromptError(f"missing field {req!r}", path=path)
    spec = PromptSpec(
        name=str(data.get("name") or path.stem),
        source=source,
        prefix=data["prefix"],
        example=data.get("example"),
        suffix=data["suffix"],
        separator=data.get("separator", "\n"),
        batch_suffix=data.get("batch_suffix", _DEFAULT_BATCH_SUFFIX),
        batch_completion=data.get("batch_completion", _DEFAULT_BATCH_COMPLETION),
        json_instruction=data.get("json_instruction", _DEFAULT_JSON_INSTRUCTION),
        reask=data.get("reask", _DEFAULT_REASK),
        description=data.get("description", ""),
    )
    unknown_vars = set(spec._templates["reask"].input_variables) - {"error"}
    if unknown_vars:  # a re-ask is only rendered after an invalid answer: say so now, not mid-run
        raise PromptError(f"reask uses unknown variables {sorted(unknown_vars)}; known: ['error']", path=path)
    return spec
