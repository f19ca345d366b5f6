"""PNG charts for reports: a confusion heatmap and an agreement-vs-cost scatter, with Chinese text.

matplotlib is imported inside the functions and drawn through a bare Agg `Figure`, so importing this
module is free and no global pyplot backend is touched; the layout is computed once, without a full draw. Chinese needs a CJK font: the first one
matplotlib can find from `CJK_FONTS` is used (on Debian: `apt-get install -y fonts-wqy-microhei`);
without one the chart is still written, with one warning, and CJK characters show as boxes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["CJK_FONTS", "cjk_font", "plot_confusion", "plot_scatter"]

CJK_FONTS = (
    "WenQuanYi Micro Hei",
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "AR PL UMing CN",
    "PingFang SC",
    "Heiti SC",
    "Microsoft YaHei",
    "SimHei",
)
DPI = 120
_FILE_HINTS = ("wqy", "notosanscjk", "notoserifcjk", "sourcehan", "droidsansfallback", "uming", "ukai", "msyh", "simhei")


@cache
def cjk_font() -> str | None:
    """Family name of an installed CJK font, registering system fonts newer than matplotlib's cache."""
    from matplotlib import font_manager

    def known() -> str | None:
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((f for f in CJK_FONTS if f in names), None)

    if found := known():
        return found
    for path in font_manager.findSystemFonts():
        if any(h in Path(path).name.lower().replace("-", "").replace("_", "") for h in _FILE_HINTS):
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):
                continue
    return known()


def _draw(path: str | Path, paint: Any, size: tuple[float, float]) -> Path:
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    font = cjk_font()
    if font is None:
        warnings.warn(
            "no CJK font found, Chinese text will show as boxes; install one, e.g. apt-get install fonts-wqy-microhei",
            stacklevel=3,
        )
    rc = {"font.family": "sans-serif", "font.sans-serif": [font, "DejaVu Sans"] if font else ["DejaVu Sans"]}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rc_context(rc), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        fig = Figure(figsize=size, dpi=DPI)
        paint(fig)
        # Constrained layout run once by hand: a figure that keeps a layout engine is drawn twice by savefig (once
        # only to lay it out), which doubled the time of a chart with hundreds of cell labels.
        ConstrainedLayoutEngine().execute(fig)
        fig.savefig(out, dpi=DPI)
    return out


def plot_confusion(df: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Write a heatmap of a confusion table (rows gold, columns predicted) as PNG, counts in the cells."""
    rows, cols = df.shape
    values = df.to_numpy(dtype=float)

    def paint(fig: Any) -> None:
        ax = fig.add_subplot()
        im = ax.imshow(values, cmap="Blues", aspect="auto")
        ax.set_xticks(range(cols), [str(c) for c in df.columns], rotation=60, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(rows), [str(r) for r in df.index])
        ax.set_xlabel(str(df.columns.name or "predicted"))
        ax.set_ylabel(str(df.index.name or "gold"))
        if title:
            ax.set_title(title)
        if rows * cols <= 1600:
            top = values.max() if values.size else 0
            for i in range(rows):
                for j in range(cols):
                    if values[i, j]:
                        color = "white" if values[i, j] > top / 2 else "black"
                        ax.text(j, i, f"{values[i, j]:g}", ha="center", va="center", fontsize=7, color=color,
                                in_layout=False)  # inside the axes: the layout need not measure hundreds of them
        fig.colorbar(im, ax=ax, shrink=0.8, use_gridspec=False)  # placed as under constrained layout

    side = 3 + 0.35 * max(rows, cols)
    return _draw(path, paint, (side + 1.5, side))


def _xy(point: Any) -> tuple[str, float, float]:
    if isinstance(point, Mapping):
        return str(point["name"]), float(point["x"]), float(point["y"])
    if hasattr(point, "name"):
        return str(point.name), float(point.x), float(point.y)
    name, x, y = point
    return str(name), float(x), float(y)


def plot_scatter(points: Iterable[Any], path: str | Path, xlabel: str, ylabel: str, title: str | None = None) -> Path:
    """Write a scatter of named points as PNG, e.g. agreement vs cost per prompt or model.

    A point is a (name, x, y) tuple, a mapping with those keys, or an object with those attributes.
    """
    pts = [_xy(p) for p in points]

    def paint(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.scatter([p[1] for p in pts], [p[2] for p in pts], s=36, zorder=3)
        for name, x, y in pts:
            ax.annotate(name, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3, zorder=0)
        ax.margins(x=0.25, y=0.15)

    return _draw(path, paint, (7, 5))
