"""A Ray cluster of three nodes on this machine, for the cluster tests (Ray's own test utility: each node its own
raylet processes): the head is client node ``c1``; node 2 is server host ``gpu-a`` and client node ``c2``; node 3
is server host ``gpu-b``."""

from __future__ import annotations

import os

HOSTS = ("gpu-a", "gpu-b")
CLIENTS = ("c1", "c2")


def start():
    """The cluster (``.address`` for ``ray.init`` and ``cluster.address``); ``.shutdown()`` stops every node."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                       "resources": {"perfkit-client:c1": 1}})
    c.add_node(num_cpus=1, resources={"perfkit-host:gpu-a": 1, "perfkit-client:c2": 1})
    c.add_node(num_cpus=1, resources={"perfkit-host:gpu-b": 1})
    c.wait_for_nodes()
    return c
