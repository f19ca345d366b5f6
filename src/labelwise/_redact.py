"""Secrets out of everything labelwise stores or shows: the API key in use, `sk-…` tokens and `Bearer …` values.

A server may echo the key back (a 401 that quotes the Authorization header); its message then reaches errors,
raw outputs, predictions.jsonl, labels.csv and logs. Everything that records such text passes it through `redact`.
"""

from __future__ import annotations

import logging
import os
import re

__all__ = ["redact", "register_secret", "install_log_redaction", "REDACTED"]

REDACTED = "[REDACTED]"
_TOKENS = re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{8,}|(?i:\bBearer\s+)\S+")
_SECRETS: set[str] = set()
_LOGGERS = ("labelwise", "openai", "openai._base_client", "httpx", "httpx2", "httpcore")


def register_secret(value: str | None) -> None:
    """Redact this value (a key in use) from now on; short placeholder values are ignored."""
    if value and len(value) >= 8:
        _SECRETS.add(value)


def _bearer(match: re.Match[str]) -> str:
    text = match.group(0)
    return REDACTED if text.startswith("sk-") else text[: len(text) - len(text.split()[-1])] + REDACTED


def redact(text: str | None) -> str | None:
    """`text` with every known key, `sk-…` token and `Bearer …` value replaced by [REDACTED]."""
    if not text:
        return text
    secrets = set(_SECRETS)
    env_key = os.environ.get("OPENAI_API_KEY")
    if env_key and len(env_key) >= 8:
        secrets.add(env_key)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _TOKENS.sub(_bearer, text)


class _RedactingFilter(logging.Filter):
    """Rewrites a log record whose message holds a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's problem, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


_FILTER = _RedactingFilter()


def install_log_redaction() -> None:
    """Attach the redacting filter to labelwise's and the HTTP client's loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
