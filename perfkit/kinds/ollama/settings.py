"""The settings as Ollama names them: its server's environment variables (the names every report uses), and the
runner options it takes per request (num_thread …), which the embedded engine takes as server settings."""

from __future__ import annotations

from typing import Mapping

from perfkit.core import settings as S

NAMES = [
    S.Name("OLLAMA_FLASH_ATTENTION", S.FLASH_ATTENTION, canonical=True),
    S.Name("OLLAMA_NUM_PARALLEL", S.PARALLEL, canonical=True),
    S.Name("OLLAMA_KV_CACHE_TYPE", S.KV_CACHE_TYPE, canonical=True),
    S.Name("OLLAMA_CONTEXT_LENGTH", S.CONTEXT_LENGTH, canonical=True),
    S.Name("OLLAMA_KEEP_ALIVE", S.KEEP_ALIVE, canonical=True),
    S.Name("OLLAMA_MAX_LOADED_MODELS", S.MAX_LOADED_MODELS, canonical=True),
    S.Name("num_thread", S.THREADS, server_env=False, canonical=True),
    S.Name("num_batch", S.BATCH, server_env=False, canonical=True),
    S.Name("use_mmap", S.MMAP, server_env=False, canonical=True),
]
S.register_names(NAMES)


def to_env(settings: Mapping[str, object]) -> dict[str, str]:
    """Settings an Ollama server reads from its environment (per-request options are left out)."""
    return {k: v for k, v in S.validate_settings(settings).items() if S.is_server_env(k)}
