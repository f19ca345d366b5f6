"""Persistent response cache: a second identical call costs no model call, and nothing is silently evicted."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["ResponseCache", "default_cache_dir", "stable_hash", "stable_hash_rows"]


def default_cache_dir() -> Path:
    """`$LABELWISE_CACHE_DIR`, else `~/.cache/labelwise`."""
    return Path(os.environ.get("LABELWISE_CACHE_DIR") or Path.home() / ".cache" / "labelwise")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def stable_hash(obj: Any) -> str:
    """SHA-256 of canonical JSON: the same inputs give the same key in every process."""
    return hashlib.sha256(_canonical(obj)).hexdigest()


def stable_hash_rows(head: Any, rows: Iterable[Any]) -> str:
    """A stable key for a header and many rows, hashed row by row: no JSON string of a whole 1M-row run in memory."""
    h = hashlib.sha256(_canonical(head))
    for row in rows:
        h.update(b"\n" + _canonical(row))
    return h.hexdigest()


class ResponseCache:
    """diskcache with eviction off; model answers and finished predictions under namespaced keys."""

    def __init__(self, directory: str | Path | None = None) -> None:
        import diskcache

        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self.directory), eviction_policy="none", size_limit=2**50)
        self.hits = 0
        self.misses = 0

    def get(self, namespace: str, key: str) -> Any | None:
        """The stored value, or None."""
        value = self._cache.get(f"{namespace}:{key}")
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def get_many(self, namespace: str, keys: Iterable[str]) -> list[Any | None]:
        """The stored values of many keys (None where absent), read in one transaction: a rerun's bulk pre-pass."""
        with self._cache.transact():
            values = [self._cache.get(f"{namespace}:{key}") for key in keys]
        found = sum(v is not None for v in values)
        self.hits += found
        self.misses += len(values) - found
        return values

    def set(self, namespace: str, key: str, value: Any) -> None:
        """Store a successful result (callers never store failures)."""
        self._cache.set(f"{namespace}:{key}", value)

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Drop everything (only on the user's request)."""
        self._cache.clear()

    def close(self) -> None:
        self._cache.close()
