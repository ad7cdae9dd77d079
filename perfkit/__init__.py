"""perfkit: measure, explain and tune the performance of LLM inference servers (Ollama, llama.cpp).

Public API::

    import perfkit

    with perfkit.Engine(perfkit.models_dir(), {"OLLAMA_NUM_PARALLEL": 2}) as engine:
        backend = perfkit.backends.create("embedded", engine=engine)   # or create("ollama", "http://gpu:11434")
        record = backend.generate("smollm2-135m-q4_1", "Hello")        # a RequestRecord: ttft_s, e2e_s ...

    perfkit.studies.names()                      # the registered studies
    perfkit.compare.compare("results/A", "results/B").summary()
    perfkit.units.SECONDS.estimate(perfkit.estimate(ttfts))   # "412 ms [398, 431] (n=10)"
"""

__version__ = "0.1.0"

from perfkit import compare, studies
from perfkit.analysis.stats import Estimate, estimate, ratio
from perfkit.client import backends
from perfkit.client.backends import Backend, LlamaServerBackend, OllamaBackend, OpenAIBackend, Sampling
from perfkit.core import units
from perfkit.core.errors import ConfigError, EngineError, PerfkitError
from perfkit.core.records import CACHE_STATES, RequestRecord
from perfkit.core.store import RunStore
from perfkit.measure.runner import Runner, Trial, plan
from perfkit.sampling import GpuSampler, Monitor, SystemSampler
from perfkit.servers.engine import Engine
from perfkit.servers.models import list_models, models_dir

__all__ = [
    "backends", "compare", "studies", "units", "Backend", "LlamaServerBackend", "OllamaBackend", "OpenAIBackend",
    "Sampling",
    "Engine", "ConfigError", "EngineError", "PerfkitError", "list_models", "models_dir", "CACHE_STATES",
    "RequestRecord", "Runner", "Trial", "plan", "GpuSampler", "Monitor", "SystemSampler", "Estimate", "estimate",
    "ratio", "RunStore", "__version__",
]
