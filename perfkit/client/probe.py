"""Is a server there, and is it the API we think? One GET with the configured headers (their values are
never printed or recorded): Ollama ``/api/version`` must return JSON with a ``version``; llama-server
``/health`` JSON (200, or 503 while a model loads); an OpenAI-compatible server ``/v1/models`` JSON. Anything
else is a ``PerfkitError`` that says what was reached: nothing listening, a web page, a refused credential ...
"""

from __future__ import annotations

import httpx

from perfkit.core.errors import PerfkitError
from perfkit.core.secrets import redact_text

_API = {"ollama": ("/api/version", "the Ollama API"), "llama-server": ("/health", "a llama-server"),
        "openai": ("/v1/models", "an OpenAI-compatible API")}


def probe(kind: str, base_url: str, headers: dict[str, str] | None, where: str, timeout_s: float = 10.0) -> str:
    """One GET of the API ``kind`` says the server speaks; returns what was reached ('ollama 0.33.0 at
    http://…'), raises PerfkitError starting with ``where`` otherwise. Header values are sent, never printed."""
    if kind not in _API:
        return ""
    path, api = _API[kind]
    url = base_url.rstrip("/").removesuffix("/v1") if kind == "openai" else base_url.rstrip("/")
    shown = redact_text(url)
    hint_headers = "check backend.headers" if headers else "the server wants credentials: set backend.headers"
    probe = path
    try:
        r = httpx.get(url + probe, headers=dict(headers or {}), timeout=timeout_s, follow_redirects=False)
    except httpx.ConnectTimeout:
        raise PerfkitError(f"{where}: no answer within {timeout_s:g} s (connect timeout): a firewall, or the "
                           "wrong host?") from None
    except httpx.TimeoutException:
        raise PerfkitError(f"{where}: connected, but GET {probe} got no answer within {timeout_s:g} s") from None
    except httpx.ConnectError as e:
        text = str(e)
        if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text \
                or "Temporary failure in name resolution" in text:
            raise PerfkitError(f"{where}: host not found (DNS): check the host name") from None
        if "SSL" in text or "certificate" in text.lower():
            raise PerfkitError(f"{where}: TLS failed ({text[:160]}): http:// or https://?") from None
        raise PerfkitError(f"{where}: nothing listening there (connection refused): is "
                           f"{ {'ollama': 'ollama serve', 'openai': 'the server'}.get(kind, 'llama-server')} running, "
                           "on that port?") from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:
        raise PerfkitError(f"{where}: not a usable http(s) URL ({e})") from None
    except httpx.HTTPError as e:
        raise PerfkitError(f"{where}: GET {probe} failed: {type(e).__name__}: {str(e)[:160]}") from None
    code = f"HTTP {r.status_code} {r.reason_phrase}".strip()
    if r.status_code in (401, 403, 407):
        raise PerfkitError(f"{where}: {code}: {hint_headers}")
    if 300 <= r.status_code < 400:
        raise PerfkitError(f"{where}: {code}, a redirect to {r.headers.get('location', '?')}: not {api}; "
                           "give the API's own URL")
    ctype = r.headers.get("content-type", "")
    head = r.text[:300].lstrip().lower()
    if "html" in ctype or head.startswith(("<!doctype", "<html")):
        raise PerfkitError(f"{where}: this URL answers HTML (a web page, {code}), not {api} (GET {probe})")
    try:
        body = r.json()
    except ValueError:
        body = None
    loading = kind == "llama-server" and r.status_code == 503 and isinstance(body, dict)
    if r.status_code >= 400 and not loading:
        raise PerfkitError(f"{where}: GET {probe} answered {code}: not {api} (wrong port or path?)")
    if not isinstance(body, dict):
        raise PerfkitError(f"{where}: GET {probe} answered {ctype or 'something'} that is not a JSON object: "
                           f"not {api}")
    if kind == "ollama":
        if "version" not in body:
            raise PerfkitError(f"{where}: GET {probe} answered JSON without a 'version': not {api}")
        return f"ollama {body['version']} at {shown}"
    if kind == "openai":
        models = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
        return f"an OpenAI-compatible server at {shown} serving {', '.join(models) or 'no model'}"
    return f"llama-server at {shown} ({'loading' if loading else body.get('status', 'ok')})"
