"""Server backends behind one interface: Ollama's native API, llama.cpp's llama-server, any OpenAI-compatible server."""

from .base import DEFAULT_TIMEOUT_S, Backend, ModelFacts, Sampling
from .llamacpp import LlamaServerBackend
from .ollama import OllamaBackend
from .openai import OpenAIBackend

__all__ = ["Backend", "ModelFacts", "Sampling", "DEFAULT_TIMEOUT_S", "LlamaServerBackend", "OllamaBackend", "OpenAIBackend"]
