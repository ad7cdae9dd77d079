"""A study's workload bound to its run: the parameters, the parameter file's directory (for ``file:``), the run's
seed and nonce, and the context window a conversation must fit in; what the runner asks for each series."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from perfkit.workloads import Conversation, Request, WorkloadParams, conversations, single_turn
from perfkit.workloads.build import WORDS_PER_TOKEN

TEMPLATE_TOKENS_PER_MESSAGE = 8  # a chat template's role markers around each message (Qwen, Llama 3: 4–8)


@dataclass
class Workload:
    """``context_tokens``: the context one request gets on the server (a slot's), where known: a conversation
    whose estimated prompt exceeds it is flagged before it is sent."""

    params: WorkloadParams
    base_dir: Path | None
    seed: int
    nonce: str
    context_tokens: int | None = None

    def requests(self, n: int, *, key: str, prompt_words: int = 48) -> list[Request]:
        return single_turn(self.params, n, key=key, seed=self.seed, nonce=self.nonce, prompt_words=prompt_words,
                           base_dir=self.base_dir)

    def conversations(self, n_requests: int, *, key: str) -> list[Conversation]:
        return conversations(self.params, n_requests, key=key, seed=self.seed, base_dir=self.base_dir)

    def think_s(self, key: str):
        """The pause before each turn (seconds): fixed, or exponential around ``think_s``, seeded per session."""
        p = self.params
        if p.think_s <= 0:
            return lambda s, t: 0.0
        if p.think == "fixed":
            return lambda s, t: p.think_s
        return lambda s, t: random.Random(f"{self.seed}/{key}/{s}/{t}").expovariate(1 / p.think_s)

    def tag(self, session: int) -> str:
        """Put before a conversation's first question: the run's own, so a server's cache from an earlier run
        can't serve it (its system prompt, shared by the conversations, still can)."""
        return f"[{self.nonce[:8]}-{session}] "


def estimate_prompt_tokens(messages: list[dict[str, str]], prev_prompt_tokens: int | None = None,
                           prev_output_tokens: int | None = None, new_words: int | None = None) -> int:
    """A turn's prompt in tokens before it is sent: the server's own count of the turn before (its prompt and
    its answer) plus the new question, else every message's words (``WORDS_PER_TOKEN``) and template markers."""
    if prev_prompt_tokens is not None and prev_output_tokens is not None and new_words is not None:
        return int(prev_prompt_tokens + prev_output_tokens + new_words / WORDS_PER_TOKEN + 2 * TEMPLATE_TOKENS_PER_MESSAGE)
    words = sum(len(m["content"].split()) for m in messages)
    return int(words / WORDS_PER_TOKEN + TEMPLATE_TOKENS_PER_MESSAGE * len(messages))
