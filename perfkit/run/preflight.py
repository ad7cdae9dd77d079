"""Before any study starts: does ``backend.url`` answer, and is it the API the parameter file says?

One GET with the configured headers (their values are never printed or recorded):
Ollama ``/api/version`` must return JSON with a ``version``; llama-server ``/health`` must return
JSON (200, or 503 while a model loads). Anything else is a ``PerfkitError`` that names the file,
``backend.url`` and what was reached: nothing listening, a web page, a refused credential ...
"""

from __future__ import annotations

from pathlib import Path

import httpx

from perfkit.core.errors import PerfkitError

_API = {"ollama": ("/api/version", "the Ollama API"), "llama-server": ("/health", "a llama-server"),
        "openai": ("/v1/models", "an OpenAI-compatible API")}


def check_backend(params, params_path: str | Path, timeout_s: float = 10.0) -> str:
    """Returns what was reached ('ollama 0.33.0 at http://…'); raises PerfkitError otherwise."""
    b = params.backend
    if b.kind not in _API:
        return ""
    probe, api = _API[b.kind]
    url = b.url.rstrip("/").removesuffix("/v1") if b.kind == "openai" else b.url.rstrip("/")
    where = f"{params_path}: backend.url {b.url}"
    hint_headers = "check backend.headers" if b.headers else "the server wants credentials: set backend.headers"
    try:
        r = httpx.get(url + probe, headers=dict(b.headers), timeout=timeout_s, follow_redirects=False)
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
                           f"{ {'ollama': 'ollama serve', 'openai': 'the server'}.get(b.kind, 'llama-server')} running, "
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
    loading = b.kind == "llama-server" and r.status_code == 503 and isinstance(body, dict)
    if r.status_code >= 400 and not loading:
        raise PerfkitError(f"{where}: GET {probe} answered {code}: not {api} (wrong port or path?)")
    if not isinstance(body, dict):
        raise PerfkitError(f"{where}: GET {probe} answered {ctype or 'something'} that is not a JSON object: "
                           f"not {api}")
    if b.kind == "ollama":
        if "version" not in body:
            raise PerfkitError(f"{where}: GET {probe} answered JSON without a 'version': not {api}")
        return f"ollama {body['version']} at {url}"
    if b.kind == "openai":
        models = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
        return f"an OpenAI-compatible server at {url} serving {', '.join(models) or 'no model'}"
    return f"llama-server at {url} ({'loading' if loading else body.get('status', 'ok')})"
