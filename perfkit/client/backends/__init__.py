"""Server backends behind one interface: Ollama's native API, llama.cpp's llama-server, any OpenAI-compatible server."""

from perfkit.client.backends.base import DEFAULT_TIMEOUT_S, Backend, ModelFacts, Sampling
from perfkit.client.backends.llamacpp import LlamaServerBackend
from perfkit.client.backends.ollama import OllamaBackend
from perfkit.client.backends.openai import OpenAIBackend

__all__ = ["Backend", "ModelFacts", "Sampling", "DEFAULT_TIMEOUT_S", "LlamaServerBackend", "OllamaBackend", "OpenAIBackend"]
