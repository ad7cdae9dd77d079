"""Secrets never reach results, reports or the terminal: one redaction for every place perfkit writes.

A value is secret when its key looks like one (``headers``, ``api_key``, ``token``, ``password``,
``Authorization`` ... at any depth), when it is a ``Bearer …``/``Basic …`` credential, or when it is the
userinfo of a URL (``http://user:PASS@host``). :func:`redact` keeps the data's shape (keys, lists, the rest of
a URL), so a redacted parameter file still validates.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
# Whole key names (or their last part): "api_key", "access_token", "headers"; not "output_tokens" or "cache_key".
SECRET_KEY = re.compile(r"^(.*[-_.])?(api[-_]?key|apikey|access[-_]?key|secret[-_]?key|private[-_]?key|token|"
                        r"secret|password|passwd|authorization|auth|cookie|bearer|headers?)$", re.I)
_CREDENTIAL = re.compile(r"^\s*(bearer|basic)\s+\S+", re.I)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@?#]+)@")


def redact_text(text: str) -> str:
    """``text`` with URL userinfo replaced (``http://***@host``); a whole credential string becomes ``***``."""
    if _CREDENTIAL.match(text):
        return REDACTED
    return _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def redact(obj: Any, secret: bool = False) -> Any:
    """``obj`` with every secret value replaced by ``***``, keys and shape kept (see the module's rules)."""
    if isinstance(obj, dict):
        return {k: redact(v, secret or (isinstance(k, str) and bool(SECRET_KEY.search(k)))) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secret) for v in obj]
    if secret and obj is not None:
        return REDACTED
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def redacted_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the values :func:`redact` replaced (e.g. ``backend.headers.Authorization``)."""
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in redacted_keys(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(obj, list):
        return [k for i, v in enumerate(obj) for k in redacted_keys(v, f"{prefix}[{i}]")]
    if isinstance(obj, str) and (obj == REDACTED or f"://{REDACTED}@" in obj):
        return [prefix]
    return []
