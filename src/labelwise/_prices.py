"""Token prices and costs: what a run or an estimate costs, online or through the Batch API."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRICES", "load_prices", "cost_of", "estimate_tokens"]

# USD per 1M tokens (input, output[, batch input, batch output]); the Batch API costs half unless a row says
# otherwise; `--prices FILE` overrides or extends.
PRICES: dict[str, tuple[float, ...]] = {
    "local": (0.0, 0.0),
    "openai:gpt-4o-mini": (0.15, 0.60, 0.075, 0.30),
    "openai:gpt-4o": (2.50, 10.00, 1.25, 5.00),
    "openai:gpt-4.1-mini": (0.40, 1.60, 0.20, 0.80),
    "openai:gpt-4.1-nano": (0.10, 0.40, 0.05, 0.20),
    "openai:deepseek-chat": (0.27, 1.10),
    "openai:qwen-plus": (0.40, 1.20),
    "openai:qwen-turbo": (0.05, 0.20),
}


def load_prices(path: str | None) -> dict[str, tuple[float, ...]]:
    """The price table, with a user's YAML file (`model: {input, output[, batch_input, batch_output]}` per 1M) on top."""
    prices = dict(PRICES)
    if path:
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        for name, p in data.items():
            batch = (float(p["batch_input"]), float(p["batch_output"])) if "batch_input" in p else ()
            prices[name] = (float(p["input"]), float(p["output"]), *batch)
    return prices


def cost_of(usage: dict[str, int], model: str, prices: dict[str, tuple[float, ...]], batch: bool = False) -> float | None:
    """USD for the tokens used (at Batch API prices with `batch`), or None when the model has no price."""
    price = prices.get(model) or (prices["local"] if model.startswith("local") else None)
    if price is None:
        return None
    if batch:
        price = price[2:4] if len(price) >= 4 else (price[0] / 2, price[1] / 2)
    return usage.get("prompt_tokens", 0) / 1e6 * price[0] + usage.get("completion_tokens", 0) / 1e6 * price[1]


def estimate_tokens(text: str) -> int:
    """Rough token count: about one token per CJK character, four other characters per token."""
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef")
    return cjk + (len(text) - cjk) // 4 + 1
