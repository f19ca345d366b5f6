"""The fixed label set a model may answer with, optionally with a short definition per label."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._exceptions import TaxonomyError
from ._io import parse_yaml

__all__ = ["Taxonomy", "load_taxonomy"]


@dataclass(frozen=True)
class Taxonomy:
    """Ordered labels and their definitions (a definition may be empty)."""

    labels: tuple[str, ...]
    definitions: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    @classmethod
    def from_labels(cls, labels: Iterable[str], source: str | None = None) -> Taxonomy:
        """A taxonomy without definitions, e.g. the label set of a corpus."""
        labs = tuple(dict.fromkeys(labels))
        if not labs:
            raise TaxonomyError("the taxonomy has no labels", path=source)
        return cls(labs, {}, source)

    def __contains__(self, label: object) -> bool:
        return label in self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def check(self, labels: Iterable[str], *, where: str | None = None) -> None:
        """Raise if any label is outside the taxonomy."""
        unknown = sorted(set(labels) - set(self.labels))
        if unknown:
            raise TaxonomyError(f"labels not in the taxonomy: {unknown}", path=where)

    def check_items(self, items: Iterable[Any], *, where: str | None = None) -> None:
        """Raise naming the first line (and item) whose existing label is outside the taxonomy, and how many more."""
        bad = [(it, lab) for it in items for lab in it.labels if lab not in self.labels]
        if not bad:
            return
        it, lab = min(bad, key=lambda b: b[0].lines[0] if b[0].lines else 0)
        more = ""
        if len(bad) > 1:
            others = sorted({b[1] for b in bad} - {lab})
            more = f"; {len(bad) - 1} more such label(s) elsewhere" + (f", e.g. {others[:5]}" if others else "")
        raise TaxonomyError(f"existing label {lab!r} is not in the taxonomy{more}", path=where,
                            line=it.lines[0] if it.lines else None, item_id=it.id)

    def describe(self) -> str:
        """One line per label, `label：definition` where a definition exists."""
        return "\n".join(f"- {lab}：{self.definitions[lab]}" if self.definitions.get(lab) else f"- {lab}" for lab in self.labels)


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read a taxonomy file: YAML mapping label -> definition, YAML list, or one label per line."""
    path = Path(path)
    if not path.exists():
        raise TaxonomyError("taxonomy file not found", path=path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        data = parse_yaml(text, path, TaxonomyError)
        if isinstance(data, dict):
            if not data:
                raise TaxonomyError("the taxonomy has no labels", path=path)
            for k, v in data.items():
                if not isinstance(k, str) or not (v is None or isinstance(v, str)):
                    raise TaxonomyError(f"entry {k!r} must map a label to a definition string", path=path)
            return Taxonomy(tuple(data), {k: (v or "").strip() for k, v in data.items()}, str(path))
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            return Taxonomy.from_labels(data, str(path))
        raise TaxonomyError("expected a mapping of label: definition or a list of labels", path=path)
    labels = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return Taxonomy.from_labels(labels, str(path))
