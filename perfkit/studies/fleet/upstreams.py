"""Which upstream answered a proxied request: nginx names the address it connected to, the user names a host, so
both are matched through every address the host resolves to; and the balance that follows against the weights."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from perfkit.analysis import stats
from perfkit.analysis.requests import measured

from .records import phase_rows
from .results import ServerSetup

NO_HEADER = ("unknown, because the proxy adds no X-Upstream-Addr header; add "
             "`add_header X-Upstream-Addr $upstream_addr always;` to its location")


def addresses(url: str) -> set[str]:
    """Every ``address:port`` a server URL's host resolves to (nginx's $upstream_addr names the address)."""
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    out = {f"{u.hostname}:{port}"}
    try:
        for info in socket.getaddrinfo(u.hostname, port, type=socket.SOCK_STREAM):
            addr = info[4][0]
            out.add(f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}")
    except OSError:
        pass
    return out


def served_by(value: Any) -> str | None:
    """The upstream that answered: the last of a retried request's "a, b" (and of "a : b" redirects)."""
    if not isinstance(value, str) or not value.strip() or value.strip() == "-":
        return None
    return value.replace(" : ", ", ").split(",")[-1].strip()


def server_names(servers: list[ServerSetup]) -> dict[str, str]:
    """Every address nginx may name (each configured host resolved) → the server as the user configured it."""
    return {addr: s.address for s in servers for addr in addresses(s.url)}


def balance_table(df: pd.DataFrame, servers: list[ServerSetup]) -> tuple[pd.DataFrame, str]:
    """Which server answered each proxied request (the proxy's X-Upstream-Addr, matched against every address
    each server's host resolves to) against the weights; a server that matched nothing says what nginx named."""
    rows = measured(pd.concat([phase_rows(df, "scaling"), phase_rows(df, "cold_upstream")]))
    rows = rows[rows["target"] == "proxy"] if len(rows) else rows
    if rows.empty or "served_by" not in rows or rows["served_by"].isna().all():
        return pd.DataFrame(), NO_HEADER
    # The cold-upstream series only says whether the header is there: its split follows a cold server, not weights.
    scaling = rows[rows["phase"] == "scaling"]
    last = scaling["served_by"].map(served_by)
    server = last.map(server_names(servers))
    n = len(scaling)
    total_w = sum(s.weight for s in servers)
    out = []
    for s in servers:
        k = int((server == s.address).sum())
        share = stats.proportion(k, n)
        want = s.weight / total_w
        out.append({"server": s.address, "weight": s.weight, "configured share": want,
                    "requests": k, "share": share.value, "share_lo": share.lo, "share_hi": share.hi,
                    "matches weights": bool(share.lo <= want <= share.hi)})
    other = sorted(set(last[server.isna()].dropna()))
    src = "the X-Upstream-Addr header the proxy adds to each response"
    if other:
        src += f" (answers from {', '.join(other[:4])} matched no configured server)"
    return pd.DataFrame(out), src
