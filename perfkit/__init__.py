"""perfkit: measure, explain and tune the performance of LLM inference servers (Ollama, llama.cpp).

Public API::

    from perfkit import Engine, LlamaServerBackend, OllamaBackend, Runner, RunStore, Monitor, plan

    with Engine(perfkit.models_dir(), {"OLLAMA_NUM_PARALLEL": 2}) as engine:
        backend = LlamaServerBackend.from_engine(engine)
        record = backend.generate("smollm2-135m-q4_1", "Hello")   # a RequestRecord, ttft_s, e2e_s ...
"""

__version__ = "0.1.0"

from perfkit.client.backends import Backend, LlamaServerBackend, OllamaBackend, OpenAIBackend, Sampling
from perfkit.measure.cache_states import KeepWarm, prepare_state, user_first_request
from perfkit.servers.engine import Engine
from perfkit.core.errors import ConfigError, EngineError, PerfkitError
from perfkit.servers.models import list_models, models_dir
from perfkit.core.records import CACHE_STATES, RequestRecord
from perfkit.measure.runner import Runner, Trial, plan
from perfkit.sampling import GpuSampler, Monitor, SystemSampler
from perfkit.analysis.stats import Estimate, estimate, ratio
from perfkit.core.store import RunStore

__all__ = [
    "Backend", "LlamaServerBackend", "OllamaBackend", "OpenAIBackend", "Sampling", "KeepWarm", "prepare_state", "user_first_request",
    "Engine", "ConfigError", "EngineError", "PerfkitError", "list_models", "models_dir", "CACHE_STATES",
    "RequestRecord", "Runner", "Trial", "plan", "GpuSampler", "Monitor", "SystemSampler", "Estimate", "estimate",
    "ratio", "RunStore", "__version__",
]
