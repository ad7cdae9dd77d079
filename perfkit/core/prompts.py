"""Prompts that defeat the prompt cache (unless a series is about caching), deterministic per trial."""

from __future__ import annotations

import hashlib

_TOPICS = (
    "how a CPU cache works", "why the sky is blue", "the history of the printing press",
    "how vaccines train the immune system", "what makes a good unit test", "how tides form",
    "the rules of chess for a beginner", "how a bicycle stays upright", "what a compiler does",
    "how bread rises", "why leaves change colour", "how GPS finds a position",
)

_FILLER = ("Please answer clearly and concretely, in plain words, with one example. "
           "Keep the answer focused on the main idea and avoid lists. ")


def new_nonce() -> str:
    """A per-run secret mixed into every prompt: a second run of the same parameters against a
    long-lived server must not find its prompts in the server's cache."""
    import secrets

    return secrets.token_hex(8)


def prompt_for(key: str, n_words: int = 48, nonce: str = "") -> str:
    """A prompt unique to ``(nonce, key)`` from its first token on, so no prefix is served from the cache.

    The same key and nonce give the same prompt (a resumed run keeps its run's nonce and sends what it
    would have sent); ``n_words`` pads the prompt to roughly that many words, to set the prefill size.
    """
    digest = hashlib.sha256(f"{nonce}\0{key}".encode() if nonce else key.encode()).hexdigest()
    topic = _TOPICS[int(digest[:8], 16) % len(_TOPICS)]
    head = f"[{digest[:12]}] Explain {topic}. "
    words = head.split()
    filler = _FILLER.split()
    i = 0
    while len(words) < n_words:
        words.append(filler[i % len(filler)])
        i += 1
    return " ".join(words)
