"""Did the server really start with the settings asked for? Each setting confirmed, not applied (and what the
server runs instead) or unverifiable (and why), from the server's own evidence (its controller), with the slots it
offers: what config tuning and ``perfkit tune`` record beside every setting they measure."""

from __future__ import annotations

from typing import Any

from perfkit.core.errors import PerfkitError
from perfkit.core.settings import PARALLEL, name_of, request_options, server_settings
from perfkit.measure.cache_states import ensure_warm
from perfkit.servers.control.base import SettingCheck, Unknown


def confirm_settings(session, model: str) -> dict[str, Any]:
    """Did the server really start with these settings? Each one confirmed, not applied (and what the
    server runs instead) or unverifiable (and why), from the server's own evidence (controller)."""
    try:
        ensure_warm(session.backend, model, session.runner.keep_alive, timeout_s=session.runner.timeout_s)
    except PerfkitError as e:  # the server can't serve the model: the series will say how it fails
        return {"checks": {}, "all_applied": None, "error": str(e)[:300]}
    checks = session.control.settings_in_effect(server_settings(session.settings), model)
    for role, v in request_options(session.settings).items():
        checks[name_of(role)] = SettingCheck(name_of(role), v, "confirmed", v, "a request option: sent with every request")
    statuses = {k: c.status for k, c in checks.items()}
    out: dict[str, Any] = {"checks": {k: c.as_dict() for k, c in checks.items()},
                           "all_applied": (False if "not applied" in statuses.values() else
                                           None if "unverifiable" in statuses.values() else True)}
    try:
        out.update(session.control.slots(model))
    except Unknown:
        parallel = name_of(PARALLEL)
        if parallel in checks and checks[parallel].status == "confirmed":
            out["total_slots"] = int(checks[parallel].effective)
    return out
