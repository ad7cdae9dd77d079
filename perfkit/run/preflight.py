"""Before any study starts, everything that can be checked is: does ``backend.url`` answer with the API the
parameter file names, does the server have every model the studies name, does the restart command exist, a
server log file that is named, the telemetry sources (Prometheus, exporter endpoints), the cluster's nodes, and each study's own needs (a user's fleet answering, settings that need a
restart). One ``PerfkitError`` lists every problem, each naming the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from perfkit import kinds
from perfkit.core.errors import PerfkitError
from perfkit.core.secrets import redact_text
from perfkit.studies import registry


def _families() -> str:
    """The exporter series perfkit reads, by family: 'DCGM_FI_DEV_*, node_*, <each server kind's prefix>:*'."""
    from perfkit.sampling import exposition

    heads = [s.name.split(":")[0] + ":*" if ":" in s.name else s.name.split("_")[0] + "_*" for s in exposition.SERIES]
    return ", ".join(dict.fromkeys(h.replace("DCGM_*", "DCGM_FI_DEV_*") for h in heads))


def check_backend(params, params_path: str | Path, timeout_s: float = 10.0) -> str:
    """What was reached ('ollama 0.33.0 at http://…'), '' for a server perfkit starts; PerfkitError otherwise."""
    b = params.backend
    if kinds.get(b.kind).started_by_perfkit:
        return ""
    return kinds.probe(b.kind, b.url, dict(b.headers), f"{params_path}: backend.url {redact_text(b.url)}",
                       timeout_s)


def check_models(params, params_path: str | Path) -> list[str]:
    """Models the studies name that the server does not have (a server that can't list its models: none)."""
    b = params.backend
    kind = kinds.get(b.kind)
    if kind.started_by_perfkit:
        return []
    be = kind.create_backend(b.url, headers=b.headers, endpoint=b.endpoint, inspect_host=False)
    try:
        names = be.models()
    except Exception:  # noqa: BLE001 - a server that can't list its models is checked by its first request
        return []
    finally:
        be.close()
    return [f"{params_path}: {key}: the server has no model {model!r}; it has: {', '.join(sorted(names)[:12]) or 'none'}"
            for key, model in params.models_used() if not kind.has_model(names, model)]


def check_local(params, params_path: str | Path) -> list[str]:
    """The restart command's program and a server log file, where the parameters name them."""
    b, out = params.backend, []
    if b.host is not None:  # the restart command and the log are the server host's, checked there by its agent
        return out
    if b.restart_command:
        exe = b.restart_command[0]
        if not (Path(exe).is_file() or shutil.which(exe)):
            out.append(f"{params_path}: backend.restart_command: {exe!r} is not a program found here")
    if b.server_log is not None and b.server_log.file and not Path(b.server_log.file).expanduser().is_file():
        out.append(f"{params_path}: backend.server_log.file: {b.server_log.file} does not exist")
    if b.server_log is not None and b.server_log.command:
        exe = b.server_log.command[0]
        if not (Path(exe).is_file() or shutil.which(exe)):
            out.append(f"{params_path}: backend.server_log.command: {exe!r} is not a program found here")
    return out


def check_telemetry(params, params_path: str | Path, timeout_s: float = 10.0) -> list[str]:
    """The telemetry sources answer and select something: Prometheus reachable, the labels of each group matching
    series (a group's own labels that match nothing, or labels that match nothing at all, are errors), the scrape
    interval known; each scraped URL answers in the exposition format with series perfkit reads."""
    import httpx

    from perfkit.sampling.exposition import names_of, parse
    from perfkit.sampling.prometheus import PrometheusClient, PrometheusError, discover, one_host

    t, out = params.telemetry, []
    if t.prometheus is not None:
        pr = t.prometheus
        client = PrometheusClient(pr.url, pr.all_headers(), timeout_s)
        try:
            found = discover(client, pr.selectors())
        except PrometheusError as e:
            found = None
            out.append(f"telemetry.prometheus.url: {e}")
        finally:
            client.close()
        if found is not None:
            own = {"gpu": pr.gpu_labels, "host": pr.host_labels, "server": pr.server_labels}
            several = one_host(found, "telemetry.prometheus." + ("gpu_labels" if pr.gpu_labels is not None else "labels"))
            if several:
                out.append(several)
            for group, f in found.items():
                if not f.series and own[group] is not None:
                    out.append(f"telemetry.prometheus.{group}_labels: {f.selector} matches no series in the last 5 "
                               f"minutes (looked for {', '.join(names_of(group)[:4])} …)")
            if not any(f.series for f in found.values()):
                out.append(f"telemetry.prometheus.labels: {pr.selectors()} match no series perfkit reads in the last 5 "
                           f"minutes ({_families()}): check the label names and values "
                           "against Prometheus's targets")
            elif pr.scrape_interval_s is None and not any(f.interval_s for f in found.values()):
                out.append("telemetry.prometheus.scrape_interval_s: not given, and the series have too few samples to "
                           "measure it; give it")
    with httpx.Client(timeout=timeout_s) as client:
        for i, url in enumerate(t.scrape):
            where = f"telemetry.scrape[{i}] {redact_text(url)}"
            try:
                r = client.get(url, headers=dict(t.scrape_headers))
                r.raise_for_status()
                readings = parse(r.text)
            except httpx.HTTPError as e:
                out.append(f"{where}: did not answer: {type(e).__name__}: {e}")
                continue
            except ValueError as e:
                out.append(f"{where}: not in the Prometheus exposition format: {e}")
                continue
            if not readings:
                out.append(f"{where}: answers, but with none of the series perfkit reads ({_families()})")
    return out


def check_workloads(params, params_path: str | Path, studies: list[str]) -> list[str]:
    """Each study's workload file, read whole: a malformed line is named before anything runs."""
    from perfkit.workloads import WorkloadError, WorkloadParams, check as check_workload

    out = []
    for s in studies:
        w = getattr(getattr(params.studies, s, None), "workload", None)
        if isinstance(w, WorkloadParams):
            try:
                check_workload(w, Path(params_path).resolve().parent, f"studies.{s}.workload")
            except WorkloadError as e:
                out.append(str(e))
    return out


def _asks_to_think(section: Any) -> bool:
    """Whether a study's parameters ask a model to think (a setting, a searched value or its own ``think``)."""
    from perfkit.core.settings import THINK, role_of

    asked: list[object] = [getattr(section, "think", None)]
    for s in getattr(section, "settings", None) or []:
        asked += [v for k, v in s.items() if _is_setting(k) and role_of(k) == THINK]
    space = getattr(section, "space", None)
    if isinstance(space, dict):
        for k, vs in space.items():
            if _is_setting(k) and role_of(k) == THINK:
                asked += list(vs) if isinstance(vs, list) else [True]
    return any(v is not None and str(v).lower() not in ("false", "0", "none") for v in asked)


def _is_setting(key: str) -> bool:
    from perfkit.core.errors import ConfigError
    from perfkit.core.settings import role_of

    try:
        role_of(key)
    except (ConfigError, KeyError):
        return False
    return True


def _offers_tools(w: Any, base_dir: Path) -> bool:
    from perfkit.workloads import WorkloadError, WorkloadParams, read_conversations
    from perfkit.workloads.spec import resolve_file

    if not isinstance(w, WorkloadParams) or not w.file or w.kind not in ("dataset", "sessions"):
        return False
    try:
        return any(c.tools for c in read_conversations(resolve_file(w.file, base_dir)))
    except WorkloadError:
        return False  # named by check_workloads


def check_capabilities(params, params_path: str | Path, studies: list[str]) -> list[str]:
    """A model asked to think, or offered tools, that the server says cannot (Ollama refuses such requests)."""
    b = params.backend
    kind = kinds.get(b.kind)
    if kind.started_by_perfkit:
        return []
    base_dir = Path(params_path).resolve().parent
    needs = []
    for s in studies:
        section = getattr(params.studies, s, None)
        model = getattr(section, "model", None)
        if not isinstance(model, str):
            continue
        if _asks_to_think(section):
            needs.append((f"studies.{s}", model, "thinking", "asks it to think"))
        if _offers_tools(getattr(section, "workload", None), base_dir):
            needs.append((f"studies.{s}.workload.file", model, "tools", "offers it tools"))
    if not needs:
        return []
    be = kind.create_backend(b.url, headers=b.headers, endpoint=b.endpoint, inspect_host=False)
    out = []
    try:
        for key, model, need, what in needs:
            caps = be.model_capabilities(model)
            if caps is not None and need not in caps:
                out.append(f"{key} {what}, and the server says {model!r} cannot (its capabilities: "
                           f"{', '.join(sorted(caps)) or 'none'}); it would refuse every such request")
    finally:
        be.close()
    return out


def check_cluster(params, params_path: str | Path, studies: list[str]) -> list[str]:
    """The cluster answers, and every host node and client node the parameters need has joined it."""
    c = params.cluster
    if c is None:
        return []
    from perfkit.cluster import Cluster, ClusterError

    hosts = [(f"studies.{s}.hosts[{i}].host", h.host) for s in studies
             for i, h in enumerate(getattr(getattr(params.studies, s, None), "hosts", None) or [])]
    if not hosts and not c.client_count():
        return []
    try:
        import ray
    except ImportError:
        from perfkit.cluster.connect import install_hint

        return [f"cluster: Ray is not installed ({install_hint()})"]
    was = ray.is_initialized()
    try:
        cl = Cluster(c).connect()
    except ClusterError as e:
        return [str(e)]
    try:
        have_hosts, have_clients = cl.names("perfkit-host:"), cl.names("perfkit-client:")
    finally:
        if not was:
            ray.shutdown()
    out = [f"{key}: no live node joined the cluster as perfkit-host:{name} (joined: {', '.join(have_hosts) or 'none'})"
           for key, name in hosts if name not in have_hosts]
    if isinstance(c.clients, list):
        out += [f"cluster.clients: no live node joined as perfkit-client:{n} (joined: {', '.join(have_clients) or 'none'})"
                for n in c.clients if n not in have_clients]
    elif c.clients > len(have_clients):
        out.append(f"cluster.clients: {c.clients} client nodes asked for, {len(have_clients)} joined as "
                   f"perfkit-client:NAME ({', '.join(have_clients) or 'none'})")
    return out


def check(params, params_path: str | Path, studies: list[str]) -> str:
    """Every check above and each chosen study's own; returns what was reached, raises one PerfkitError
    listing every problem otherwise."""
    reached = check_backend(params, params_path)
    problems = check_local(params, params_path) + check_models(params, params_path)
    problems += [f"{params_path}: {p}" for p in check_telemetry(params, params_path)]
    problems += [f"{params_path}: {p}" for p in check_workloads(params, params_path, studies)]
    problems += [f"{params_path}: {p}" for p in check_capabilities(params, params_path, studies)]
    problems += [f"{params_path}: {p}" for p in check_cluster(params, params_path, studies)]
    for s in studies:
        problems += [f"{params_path}: {p}" for p in registry.get(s).preflight(params)]
    if problems:
        raise PerfkitError("nothing was measured; fix these first:\n" + "\n".join(f"  - {p}" for p in problems))
    return reached
