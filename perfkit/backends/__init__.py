"""Server backends behind one interface: Ollama's native API and llama.cpp's llama-server."""

from .base import DEFAULT_TIMEOUT_S, Backend, ModelFacts, Sampling
from .llamacpp import LlamaServerBackend
from .ollama import OllamaBackend

__all__ = ["Backend", "ModelFacts", "Sampling", "DEFAULT_TIMEOUT_S", "LlamaServerBackend", "OllamaBackend"]
