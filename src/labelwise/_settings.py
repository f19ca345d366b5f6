"""Settings, in two strict halves: what decides the answers (`LabelSettings`) and how a run operates (`RunOptions`).

Only `LabelSettings` reaches a fingerprint or a cache key; an eval variant is a partial update of it.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

__all__ = ["LabelSettings", "RunOptions", "SettingsUpdate", "DEFAULT_LABEL_THRESHOLD", "split_options"]

# Chosen on labeled data with `python -m benchmarks.threshold`: leave-one-out predictions of the embedded model
# (fewshot, 8 similar shots) on 150 corpus texts (seed 0); 0.15 gave the best samples-F1 (0.479; 0.430 at 0.5+,
# i.e. the top label alone) and the best micro-F1 (0.456) of the grid 0.05..0.95.
DEFAULT_LABEL_THRESHOLD = 0.15


class LabelSettings(BaseModel):
    """What decides a labeler's answers: model, prompt, examples, label set and decoding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "local"
    base_url: str | None = None
    # None: the default pool for the use at hand (the bundled corpus; for `relabel`, the input itself, leave-one-out)
    examples: str | None = None
    taxonomy: str | None = None
    prompt: str = "fewshot"
    strategy: Literal["similar", "diverse", "random", "fixed"] = "similar"
    shots: int = Field(8, ge=0, le=64)
    multi_label: bool = True
    max_labels: int = Field(3, ge=1, le=10)
    # Multi-label with a label-scoring model (local): labels other than the top one join the set at this
    # probability. Chosen on labeled data (README, "How the threshold is chosen").
    label_threshold: float = Field(DEFAULT_LABEL_THRESHOLD, gt=0.0, le=1.0)
    seed: int = 0
    items_per_request: int = Field(1, ge=1, le=100)
    structured: Literal["auto", "json_schema", "json_object", "prompt"] = "auto"
    temperature: float = 0.0

    def updated(self, **changes: Any) -> LabelSettings:
        """A copy with `changes` applied and validated as strictly as the original."""
        return type(self).model_validate({**self.model_dump(), **changes})


class RunOptions(BaseModel):
    """How a labeler operates; nothing here changes an answer, so nothing here is in a fingerprint."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(8, ge=1, le=4096)
    rpm: float | None = None
    tpm: float | None = None
    timeout: float = Field(60.0, gt=0)
    max_reasks: int = Field(2, ge=0, le=10)
    cache: bool = True
    cache_dir: str | None = None


# Every LabelSettings field, optional and unset by default, with the same bounds: a partial update (an eval variant)
# is validated field by field when read, and its unset fields inherit.
SettingsUpdate = create_model(
    "SettingsUpdate",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Some LabelSettings fields; unset ones inherit from the settings this updates.",
    **{name: (Optional[f.annotation], FieldInfo.merge_field_infos(f, default=None))
       for name, f in LabelSettings.model_fields.items()},
)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword options split into LabelSettings and RunOptions fields; an unknown name is refused, naming both sets."""
    label = {k: v for k, v in options.items() if k in LabelSettings.model_fields}
    run = {k: v for k, v in options.items() if k in RunOptions.model_fields}
    unknown = sorted(set(options) - set(label) - set(run))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; label settings: {sorted(LabelSettings.model_fields)}, "
                        f"run options: {sorted(RunOptions.model_fields)}")
    return label, run

