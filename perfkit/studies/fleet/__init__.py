"""Fleet: several servers behind a load balancer (nginx): scaling, balance against the weights, the
proxy's own overhead and whether streaming survives it, a cold or dead server, proxy timeouts (504)
and nginx's response cache, each measured, with n and CI.

Embedded: perfkit starts ``servers`` engines (the machine's cores split between them) and nginx with a
config generated in the run directory, and changes it between phases (reload). Servers on other hosts
(``hosts``, with a ``cluster:``): perfkit's agent on each host starts (or finds) its Ollama and sees it
as if it were local — its processes sampled there, its log, its model file for a cold-disk first request,
a kill and a revival for failover — with nginx started here in front of them (or the user's proxy). A
user's fleet: ``proxy_url`` and ``server_urls``; perfkit starts and changes nothing, and the phases that
need to (kill a server, shorten a timeout, turn a cache on) say "unknown, because" in the report.

Where things are: ``params`` (the parameter section), ``measurement`` (the phases in order, set-up and clean-up),
``phases/`` (one module per phase: what it measures and how it is read), ``analysis`` (the result and its
figures), ``results`` (the result's types), ``tables`` and ``conclusions`` (the report).
"""

# Importing the study registers it (perfkit.studies.registry.discover imports this package). The names below are
# what the notebook and tests use as ``perfkit.studies.fleet.<name>``; ``conclusions`` here is the function, which
# hides the submodule of that name as an attribute (import the submodule's contents with ``from ... import``).
from .analysis import analyze
from .conclusions import answer, conclusions
from .measurement import PHASES, measure
from .params import FleetParams, FleetProxyParams
from .phases.failover import failover_summary
from .results import FleetResult
from .study import FleetStudy
from .tables import (balance_display, clocks_display, cold_disk_display, cold_display, details, hosts_display,
                     overhead_display, scaling_display, timeline_display)

__all__ = ["PHASES", "FleetParams", "FleetProxyParams", "FleetResult", "FleetStudy", "analyze", "answer",
           "balance_display", "clocks_display", "cold_disk_display", "cold_display", "conclusions", "details",
           "failover_summary", "hosts_display", "measure", "overhead_display", "scaling_display", "timeline_display"]
