"""perfkit: measure, explain and tune the performance of LLM inference servers.

Public API::

    import perfkit

    with perfkit.Engine(perfkit.models_dir(), {"OLLAMA_NUM_PARALLEL": 2}) as engine:
        backend = perfkit.kinds.create("embedded", engine=engine)   # or create("ollama", "http://gpu:11434")
        record = backend.generate("smollm2-135m-q4_1", "Hello")     # a RequestRecord: ttft_s, e2e_s ...

    perfkit.kinds.names()                        # the server kinds (each a plugin, perfkit/kinds/<kind>/)
    perfkit.studies.names()                      # the registered studies
    perfkit.compare.compare("results/A", "results/B").summary()
    perfkit.units.SECONDS.estimate(perfkit.estimate(ttfts))   # "412 ms [398, 431] (n=10)"
"""

__version__ = "0.1.0"

# The server kinds first: each registers the settings names it speaks, which every parameter check reads.
from perfkit import kinds  # noqa: I001
from perfkit import compare, studies
from perfkit.analysis.stats import Estimate, estimate, ratio
from perfkit.client.backends import Backend, Sampling
from perfkit.core import units
from perfkit.core.errors import ConfigError, EngineError, PerfkitError
from perfkit.core.records import CACHE_STATES, RequestRecord
from perfkit.core.store import RunStore
from perfkit.measure.runner import Runner, Trial, plan
from perfkit.sampling import GpuSampler, Monitor, SystemSampler

kinds.KINDS.discover()


def __getattr__(name: str):
    # The embedded engine's public names (Engine, models_dir, list_models) come from the kind that provides them.
    for kind in kinds.names():
        public = kinds.get(kind).public()
        if name in public:
            return public[name]
    raise AttributeError(f"module 'perfkit' has no attribute {name!r}")


__all__ = [
    "kinds", "compare", "studies", "units", "Backend", "Sampling", "Engine", "ConfigError", "EngineError", "PerfkitError",
    "list_models", "models_dir", "CACHE_STATES", "RequestRecord", "Runner", "Trial", "plan", "GpuSampler",
    "Monitor", "SystemSampler", "Estimate", "estimate", "ratio", "RunStore", "__version__",
]
