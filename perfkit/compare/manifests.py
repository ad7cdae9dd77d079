"""What differs between two runs' manifests (settings, models and digests, quantization, engine and server
versions, host, perfkit version, git commit, every parameter), and what else than the intended change could
explain a row: another host, another model file, a noisy machine."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from perfkit.analysis.figures import Figure
from perfkit.compare.runs import Run
from perfkit.core import fmt, host

# A row is flagged when at least this share of its requests in either run ran while other processes used
# the machine (res_noisy): its difference may be the other load, not the change.
NOISY_SHARE = 0.5
ORDER = ["settings", "models", "quantization", "engine", "host", "study parameters", "perfkit", "versions", "git",
         "parameters"]


@dataclass
class Difference:
    """Something the two runs' manifests record differently: ``category`` is one of settings, models,
    quantization, engine, host, study parameters, perfkit, versions (libraries), git, parameters."""

    category: str
    what: str
    a: Any
    b: Any


def show(v: Any) -> str:
    if v is ABSENT:
        return "(absent)"
    return v if isinstance(v, str) else json.dumps(v, default=str)


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'backend.settings.num_thread': 2, 'studies.config_tuning.settings[1].OLLAMA_NUM_PARALLEL': 2, ...}"""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: obj}
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def _host_line(h: dict) -> dict[str, Any]:
    return {"host.hostname": h.get("hostname"), "host.cpu": h.get("cpu"),
            "host.cpu_cores_logical": h.get("cpu_cores_logical"),
            "host.memory_total_bytes": h.get("memory_total_bytes"),
            "host.gpus": [g.get("name") for g in h.get("gpus") or [] if isinstance(g, dict)]}


def facts(m: dict) -> dict[str, tuple[str, Any]]:
    """(category, value) of everything but the parameters a manifest records, by dotted name."""
    h = m.get("host") or {}
    out: dict[str, tuple[str, Any]] = {k: ("host", v) for k, v in _host_line(h).items()}
    b = m.get("backend") or {}
    out["engine"] = ("engine", b.get("backend"))
    out["engine version"] = ("engine", b.get("version"))
    for k, v in (h.get("versions") or {}).items():
        if k != "perfkit":
            out[f"versions.{k}"] = ("engine" if k in host.ENGINE_DISTS else "versions", v)
    out["perfkit version"] = ("perfkit", m.get("perfkit_version") or (h.get("versions") or {}).get("perfkit"))
    out["git commit"] = ("git", h.get("git_commit"))
    nodes = dict((m.get("cluster") or {}).get("nodes") or {})
    if isinstance(m.get("control"), dict) and m["control"].get("host"):  # one server on a cluster node
        nodes.setdefault(m["control"]["host"], m["control"].get("node") or {})
    for name, n in nodes.items():  # the server hosts and client nodes a run used are part of what it measured
        out[f"cluster.{name}.hostname"] = ("host", n.get("hostname"))
        out[f"cluster.{name}.cores"] = ("host", n.get("cores"))
    for name, f in (m.get("models") or {}).items():
        if isinstance(f, dict):
            out[f"models.{name}.digest"] = ("models", f.get("digest"))
            out[f"models.{name}.size_bytes"] = ("models", f.get("size_bytes"))
            out[f"models.{name}.quantization"] = ("quantization", f.get("quantization"))
    return out


def param_category(path: str) -> str:
    if path.startswith("backend.settings."):
        return "settings"
    if path.startswith("studies."):
        return "study parameters"
    return "parameters"


def differences(a: Run, b: Run) -> list[Difference]:
    """What the two runs' manifests record differently, settings first. A study only one run has is itself
    a difference; facts shared by every study (host, versions) are listed once."""
    seen: dict[str, Difference] = {}
    for s in sorted(set(a.manifests) | set(b.manifests), key=str):
        if s not in a.manifests or s not in b.manifests:
            seen[f"study {s}"] = Difference("study parameters", f"study {s}", "measured" if s in a.manifests else
                                            ABSENT, "measured" if s in b.manifests else ABSENT)
            continue
        ma, mb = a.manifests[s], b.manifests[s]
        fa, fb = facts(ma), facts(mb)
        for k in list(fa) + [k for k in fb if k not in fa]:
            va, vb = fa.get(k, (None, ABSENT))[1], fb.get(k, (None, ABSENT))[1]
            if va != vb and k not in seen and not (k.startswith("models.") and (va is ABSENT or vb is ABSENT)):
                seen[k] = Difference((fa.get(k) or fb.get(k))[0], k, va, vb)
        pa, pb = flat(ma.get("params") or {}), flat(mb.get("params") or {})
        for k in list(pa) + [k for k in pb if k not in pa]:
            va, vb = pa.get(k, ABSENT), pb.get(k, ABSENT)
            if va != vb and k not in seen:
                seen[k] = Difference(param_category(k), k, va, vb)
    return sorted(seen.values(), key=lambda d: ORDER.index(d.category) if d.category in ORDER else len(ORDER))


def _digest(run: Run, study: str, model: str | None) -> Any:
    if not model:
        return None
    f = ((run.manifests.get(study) or {}).get("models") or {}).get(model)
    return f.get("digest") if isinstance(f, dict) else None


def row_confounds(fa: Figure, fb: Figure, a: Run, b: Run) -> list[str]:
    out = []
    if fa.model and fb.model and fa.model != fb.model:
        out.append(f"another model ({fa.model} → {fb.model})")
    else:
        da, db = _digest(a, fa.study, fa.model), _digest(b, fb.study, fb.model)
        if da and db and da != db:
            out.append(f"another model file for {fa.model} (digest {str(da)[:12]}… → {str(db)[:12]}…)")
    noisy = [(w, f.noisy) for w, f in (("A", fa), ("B", fb)) if math.isfinite(f.noisy) and f.noisy >= NOISY_SHARE]
    if noisy:
        out.append("a noisy machine: " + " and ".join(f"{fmt.pct(s)} of {w}'s" for w, s in noisy)
                   + " requests ran while other processes used it")
    return out


def run_confounds(a: Run, b: Run) -> list[str]:
    ha = next((m.get("host") for m in a.manifests.values() if m.get("host")), {}) or {}
    hb = next((m.get("host") for m in b.manifests.values() if m.get("host")), {}) or {}
    la, lb = _host_line(ha), _host_line(hb)
    diff = [k.removeprefix("host.") for k in la if la[k] != lb[k]]
    if not diff:
        return []
    return [f"another host ({', '.join(diff)} differ: {ha.get('hostname')} {ha.get('cpu')} → {hb.get('hostname')} "
            f"{hb.get('cpu')}): every difference below may come from the machine, not the change"]
