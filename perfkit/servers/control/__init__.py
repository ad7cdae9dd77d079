"""Server controllers: what perfkit can see and do beyond a server's HTTP API (one per backend)."""

from perfkit.servers.control.base import Device, RemoteControl, RestartInfo, ServerControl, SettingCheck, Unknown
from perfkit.servers.control.embedded import EngineControl
from perfkit.servers.control.ollama_local import LocalOllamaControl


def ollama_control(url: str, *, restart_command=None, log=None, headers=None, ready_timeout_s: float = 120.0
                   ) -> ServerControl:
    """A local Ollama's controller when a process on this host listens on the URL's port, else a
    remote one that says why it can't see more."""
    from urllib.parse import urlparse

    from perfkit.servers import procs

    u = urlparse(url)
    host, port = u.hostname or "127.0.0.1", u.port or 11434
    if not procs.is_local_host(host):
        return RemoteControl(url, f"the server at {url} is on another host ({host}); only its HTTP API is visible "
                                  "(run perfkit on the server itself to see its processes, files and log)")
    if procs.listening_pid(port, host) is None:
        return RemoteControl(url, f"no process on this host is seen listening on port {port} (a container's "
                                  "port forward, or a process perfkit may not inspect)")
    return LocalOllamaControl(url, restart_command=restart_command, log=log, headers=headers,
                              ready_timeout_s=ready_timeout_s)


__all__ = ["Device", "RemoteControl", "RestartInfo", "ServerControl", "SettingCheck", "Unknown", "EngineControl",
           "LocalOllamaControl", "ollama_control"]
