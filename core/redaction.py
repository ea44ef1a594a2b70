"""Masking secrets in text that may quote a connection string or a token."""

from __future__ import annotations

import re

_SECRET_KEYS = re.compile(r"\b(PWD|PASSWORD|Password|pwd|UID_PASSWORD|token)\s*=\s*[^;]*", re.I)


def redact(text: str) -> str:
    """Mask ``PWD=...``-style secrets in text that may quote a connection string."""
    return _SECRET_KEYS.sub(lambda m: m.group(0).split("=", 1)[0] + "=***", text)
