"""What perfkit knows about one kind of server, in one place: its API client, its controller, how it is
recognised, which of the backend section's keys it takes and their rules, its settings vocabulary (registered
with ``perfkit.core.settings``), the search space it offers to tuning, and the files a tuned setting is deployed
with. A kind is a folder under ``perfkit/kinds/`` (or a plugin's module) whose class registers itself with
:func:`perfkit.kinds.register`; nothing outside it names it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping

from perfkit.client.backends.base import Backend, Capabilities
from perfkit.client.probe import ProbeSpec


class ServerKind:
    """A kind of server, as a parameter file's ``backend.kind`` names it.

    ``backend``: its API client class; ``probe``: how a URL is recognised as this kind (None: not checked);
    ``keys``: the backend section's optional keys this kind takes beyond the common ones (url, headers,
    settings, ready_timeout_s); ``started_by_perfkit``: perfkit starts the server itself, on this host;
    ``needs_url``: the section must give a url; ``tuning_space``: settings `perfkit tune` searches by default
    (roles, see ``perfkit.core.settings`` → values, ordinal ones in order); ``agent_driven``: perfkit's agent on a cluster node can
    open such a server there (``backend.host``).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    backend: ClassVar[type[Backend]]
    probe: ClassVar[ProbeSpec | None] = None
    keys: ClassVar[frozenset[str]] = frozenset()
    started_by_perfkit: ClassVar[bool] = False
    needs_url: ClassVar[bool] = True
    agent_driven: ClassVar[bool] = False
    tuning_space: ClassVar[dict[str, list]] = {}
    order: ClassVar[int] = 50
    generic: ClassVar[bool] = False  # the kind for any server that speaks the common /v1 protocol
    restart_hint: ClassVar[str] = ""  # where to find a restart command for such a server, said after its key

    @property
    def capabilities(self) -> Capabilities:
        import dataclasses

        return dataclasses.replace(self.backend.capabilities, started_by_perfkit=self.started_by_perfkit)

    def check_section(self, section: Any) -> list[str]:
        """Problems with the backend section for this kind (each naming its key): its keys beyond this kind's are
        refused, so a key that would be silently ignored is said."""
        out = []
        if self.needs_url and not section.url:
            out.append(f"backend kind {self.name!r} needs a url")
        if not self.needs_url and section.url:
            out.append(f"url is not used with kind {self.name!r} (perfkit picks its port): remove it or set kind")
        for key in OPTIONAL_KEYS - self.keys:
            if getattr(section, key) not in (None, OPTIONAL_DEFAULTS.get(key)):
                users = ", ".join(k for k in _kinds_taking(key)) or "none"
                out.append(f"{key} is used only with kind {users}")
        if section.host is not None and not self.agent_driven:
            out.append(f"host: perfkit's agent does not drive a {self.name} server; kinds it drives: "
                       f"{', '.join(_agent_kinds()) or 'none'}")
        return out

    def create_backend(self, url: str | None, *, engine=None, **opts: Any) -> Backend:
        """The API client for ``url`` (options a parameter file gives: headers, endpoint, restart_command, log,
        ready_timeout_s, inspect_host, control); each kind takes the ones its server has."""
        from perfkit.core.errors import ConfigError

        if not url:
            raise ConfigError(f"backend kind {self.name!r} needs a url")
        return self.backend.create(url, **opts)

    def has_model(self, names: list[str], model: str) -> bool:
        """Whether a server listing ``names`` has ``model`` (a kind that resolves names its own way overrides)."""
        return model in names

    def deploy_files(self, settings: Mapping[str, object], head: str, model: str) -> dict[str, str]:
        """Files that run this kind's server of ``model`` with ``settings`` (relative path → text, starting with
        ``head``); {} when perfkit knows no such file for it."""
        return {}

    def add_commands(self, sub: Any, *, settings_of: Any, port: Any) -> None:
        """Add this kind's own ``perfkit`` subcommands to ``sub`` (argparse sub-parsers); ``settings_of`` turns
        ``--set NAME=VALUE`` lists into settings, ``port`` checks a port number."""

    def public(self) -> dict[str, Any]:
        """Names this kind adds to perfkit's public face (``perfkit.Engine`` …)."""
        return {}

    def check_models(self, section: Any, models: list[tuple[str, str]], where: str) -> None:
        """Before anything runs: ConfigError for a model (key path, name) that this kind's own store lacks (a kind
        perfkit starts; a user's server is asked at preflight)."""

    def models_dir(self, section: Any) -> Path | None:
        """The model store a server perfkit starts serves (None: the server's own business)."""
        return None

    def check_ready(self, section: Any) -> None:
        """Before a run: PerfkitError when what this kind needs on this machine is missing (an engine not built)."""

    def restore_pending(self, record: Path) -> Any:
        """Give a user's server its own settings back from a restore record a killed run left (a RestartInfo);
        None when the record is not this kind's or there was nothing to give back."""
        return None

    def open_on_host(self, spec: Mapping[str, Any], settings: Mapping[str, Any], *, log_path: Path, log: Any,
                     where: str) -> tuple[Any, Backend, Any]:
        """On the server's own host (perfkit's agent there): start the server (``spec["command"]``: the agent owns
        it) or find the user's by its URL, applying ``settings`` where it can restart it. Returns its controller,
        its API client and what a killed run left to give back (a RestartInfo, or None)."""
        from perfkit.core.errors import PerfkitError

        raise PerfkitError(f"{where}: perfkit's agent does not drive a {self.name} server")

    def start_server(self, models_dir: Path, settings: Mapping[str, Any], *, log_path: Path,
                     ready_timeout_s: float) -> Any:
        """Start the server (a kind perfkit starts itself): a handle with ``stop()`` and ``base_url``; None for a
        kind whose server is the user's."""
        return None


# The backend section's optional keys that some kinds take, and their defaults (a default is not "given").
OPTIONAL_KEYS = frozenset({"endpoint", "restart_command", "server_log", "models_dir"})
OPTIONAL_DEFAULTS = {"endpoint": "chat"}


def _kinds_taking(key: str) -> list[str]:
    from perfkit import kinds

    return [n for n in kinds.names() if key in kinds.get(n).keys]


def _agent_kinds() -> list[str]:
    from perfkit import kinds

    return [n for n in kinds.names() if kinds.get(n).agent_driven]
