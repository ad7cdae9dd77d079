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


def prompt_for(key: str, n_words: int = 48) -> str:
    """A prompt unique to ``key`` from its first token on, so no prefix is served from the cache.

    The same key gives the same prompt (a resumed run sends what it would have sent); ``n_words``
    pads the prompt to roughly that many words, to set the prefill size.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()
    topic = _TOPICS[int(digest[:8], 16) % len(_TOPICS)]
    head = f"[{digest[:12]}] Explain {topic}. "
    words = head.split()
    filler = _FILLER.split()
    i = 0
    while len(words) < n_words:
        words.append(filler[i % len(filler)])
        i += 1
    return " ".join(words)
