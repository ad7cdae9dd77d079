"""Is a server there, and is it the API we think? One GET with the configured headers (their values are
never printed or recorded) of the route a server kind names (:class:`ProbeSpec`), whose JSON the kind reads.
Anything else is a ``PerfkitError`` that says what was reached: nothing listening, a web page, a refused
credential ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import httpx

from perfkit.core.errors import PerfkitError
from perfkit.core.secrets import redact_text


@dataclass(frozen=True)
class ProbeSpec:
    """How a server kind is recognised: GET ``path`` (on the URL less ``strip_suffix``) answers a JSON object;
    ``api``: the API in words ('the Ollama API'); ``program``: what to start when nothing listens;
    ``identify(body, shown_url, status)``: what was reached, in words, or raises ValueError saying why it is not
    that API; ``loading_status``: a status that means the server is up but still loading (a JSON body still)."""

    path: str
    api: str
    program: str
    identify: Callable[[dict, str, int], str]
    strip_suffix: str = ""
    loading_status: int | None = None


def probe(spec: ProbeSpec, base_url: str, headers: dict[str, str] | None, where: str, timeout_s: float = 10.0) -> str:
    """One GET of the kind's route; returns what was reached ('ollama 0.33.0 at http://…'), raises PerfkitError
    starting with ``where`` otherwise. Header values are sent, never printed."""
    path, api = spec.path, spec.api
    url = base_url.rstrip("/").removesuffix(spec.strip_suffix) if spec.strip_suffix else base_url.rstrip("/")
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
        raise PerfkitError(f"{where}: nothing listening there (connection refused): is {spec.program} running, "
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
    loading = spec.loading_status is not None and r.status_code == spec.loading_status and isinstance(body, dict)
    if r.status_code >= 400 and not loading:
        raise PerfkitError(f"{where}: GET {probe} answered {code}: not {api} (wrong port or path?)")
    if not isinstance(body, dict):
        raise PerfkitError(f"{where}: GET {probe} answered {ctype or 'something'} that is not a JSON object: "
                           f"not {api}")
    try:
        return spec.identify(body, shown, r.status_code)
    except ValueError as e:
        raise PerfkitError(f"{where}: GET {probe} answered JSON {e}: not {api}") from None
