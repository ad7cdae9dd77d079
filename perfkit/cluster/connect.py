"""A run's cluster: Ray joined at ``cluster.address``, the agents placed on the server hosts, the request engines on
the client nodes, every node's clock measured and its perfkit version checked; everything perfkit placed is
taken down again by :meth:`Cluster.close` (and by Ray itself when the driver dies, ``kill -9`` included: the
actors are the driver's, and a server an agent started dies with its agent)."""

from __future__ import annotations

from typing import Any, Mapping

from perfkit.cluster.agent import RESOURCE_CLIENT, RESOURCE_HOST, HostAgent
from perfkit.cluster.clients import ClientNode, ClientShares
from perfkit.cluster.clock import ClockOffset, measure_offset
from perfkit.cluster.control import AgentControl
from perfkit.core import host
from perfkit.core.errors import PerfkitError


class ClusterError(PerfkitError):
    """A cluster that can't be used as asked (not reachable, a node missing, another perfkit version)."""


def install_hint() -> str:
    return "pip install 'ray>=2.40' on every node (scripts/setup.sh installs it here)"


def check_version(facts: Mapping[str, Any], ours: str | None) -> None:
    """A node whose perfkit differs from the driver's is refused: its agent would answer other questions."""
    theirs = facts.get("perfkit_version")
    if theirs != ours:
        raise ClusterError(f"node {facts.get('node')} ({facts.get('hostname')}) runs perfkit {theirs}, this driver "
                           f"perfkit {ours}: install the same perfkit on every node")


class Cluster:
    """Args:
        params: the ``cluster`` section (``perfkit.core.schema.ClusterParams``).
    """

    def __init__(self, params):
        self.params = params
        self.agents: dict[str, AgentControl] = {}
        self.client_actors: list[tuple[str, Any, ClockOffset]] = []
        self.nodes: dict[str, dict[str, Any]] = {}
        self._connected = False

    def connect(self) -> "Cluster":
        try:
            import ray
        except ImportError:
            raise ClusterError(f"cluster: Ray is not installed ({install_hint()})") from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.params.address, namespace="perfkit", log_to_driver=False,
                         logging_level="ERROR", configure_logging=True)
            except Exception as e:  # noqa: BLE001 - Ray's many ways of not finding a cluster: one clear error
                raise ClusterError(f"cluster.address {self.params.address}: no Ray cluster answered "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        self._connected = True
        return self

    def names(self, prefix: str) -> list[str]:
        """The live nodes that joined with a ``prefix + NAME`` resource, by name."""
        import ray

        out = []
        for n in ray.nodes():
            if n.get("Alive"):
                out += [k[len(prefix):] for k in n.get("Resources", {}) if k.startswith(prefix)]
        return sorted(set(out))

    def _place(self, cls, prefix: str, name: str):
        import ray

        have = self.names(prefix)
        if name not in have:
            raise ClusterError(f"no live node joined as {prefix}{name} (nodes that did: "
                               f"{', '.join(have) or 'none'}); on that host: ray start --address=HEAD:6379 "
                               f"--resources='{{\"{prefix}{name}\": 1}}'")
        actor = ray.remote(cls).options(num_cpus=0, resources={prefix + name: 0.001}, max_concurrency=8,
                                        max_restarts=0).remote(name)
        try:
            facts = ray.get(actor.hello.remote(), timeout=self.params.connect_timeout_s)
        except Exception as e:  # noqa: BLE001
            ray.kill(actor)
            raise ClusterError(f"node {name}: perfkit did not start there within {self.params.connect_timeout_s:g} s "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); is perfkit installed on it?") \
                from None
        try:
            check_version(facts, host.versions().get("perfkit"))
        except ClusterError:
            ray.kill(actor)
            raise
        clock = measure_offset(name, lambda: ray.get(actor.clock.remote(), timeout=30), self.params.clock_round_trips)
        self.nodes[name] = {**facts, "role": "host" if prefix == RESOURCE_HOST else "client", "clock": clock.as_dict()}
        return actor, clock

    def agent(self, name: str, server: Mapping[str, Any], settings: Mapping[str, Any]) -> AgentControl:
        """The agent on host ``name``, its server opened (started, or found by its port) with ``settings``."""
        import ray

        if name in self.agents:
            raise ClusterError(f"host {name} is named twice: one agent, one server per host")
        actor, clock = self._place(HostAgent, RESOURCE_HOST, name)
        try:
            described = ray.get(actor.open_server.remote(dict(server), dict(settings)),
                                timeout=float(server.get("ready_timeout_s") or 120) + 60)
        except Exception as e:  # noqa: BLE001
            ray.kill(actor)
            cause = getattr(e, "cause", None) or e
            raise ClusterError(f"host {name}: the agent could not open its server: {str(cause).splitlines()[0][:300]}") \
                from None
        ctl = AgentControl(name, actor, clock, described=described, node=self.nodes[name])
        self.agents[name] = ctl
        return ctl

    def release(self, name: str) -> dict[str, Any]:
        """Take one agent down (its sampling stopped, its server stopped or given its settings back)."""
        import ray

        ctl = self.agents.pop(name, None)
        if ctl is None:
            return {}
        try:
            out = ray.get(ctl.actor.shutdown.remote(), timeout=120)
        except Exception as e:  # noqa: BLE001 - said; the actor is killed anyway
            out = {"shutdown_failed": str(e).splitlines()[0][:200]}
        ray.kill(ctl.actor)
        return out

    def clients(self) -> ClientShares | None:
        """The client nodes load series are sent from (``cluster.clients``), or None: from this process."""
        p = self.params
        if not p.client_count():
            return None
        if not self.client_actors:
            names = p.clients if isinstance(p.clients, list) else self.names(RESOURCE_CLIENT)[:p.clients]
            if len(names) < p.client_count():
                raise ClusterError(f"cluster.clients: {p.clients} client nodes asked for, {len(names)} joined as "
                                   f"{RESOURCE_CLIENT}NAME ({', '.join(names) or 'none'})")
            for name in names:
                actor, clock = self._place(ClientNode, RESOURCE_CLIENT, name)
                self.client_actors.append((name, actor, clock))
        return ClientShares(self.client_actors, timeout_s=24 * 3600.0)

    def describe(self) -> dict[str, Any]:
        """For the manifest: where the cluster is and every node perfkit used, with its clock offset ± uncertainty."""
        return {"address": self.params.address, "nodes": self.nodes}

    def close(self) -> dict[str, Any]:
        """Stop every agent's sampling and server (a user's server gets its settings back) and every actor."""
        import ray

        out = {name: self.release(name) for name in list(self.agents)}
        for _, actor, _ in self.client_actors:
            ray.kill(actor)
        self.agents, self.client_actors = {}, []
        return out

    def __enter__(self) -> "Cluster":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()
