"""Beyond one machine, on Ray: an agent on every server host (the controller interface of a local server, answered
there), request engines on client nodes, one clock for the run.

Public face: :class:`Cluster` (connect, place, close), :class:`AgentControl` and :class:`AgentView` (a host's
server and samples), :class:`ClientShares` (a series from client nodes), :class:`ClockOffset`.
"""

from perfkit.cluster.clients import ClientShares
from perfkit.cluster.clock import ClockOffset, measure_offset
from perfkit.cluster.connect import Cluster, ClusterError, check_version
from perfkit.cluster.control import AgentControl, AgentView

__all__ = ["Cluster", "ClusterError", "check_version", "AgentControl", "AgentView", "ClientShares", "ClockOffset",
           "measure_offset"]
