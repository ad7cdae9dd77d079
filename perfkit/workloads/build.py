"""A series' requests from its workload: one-shot requests (messages, output cap, arrival time) and chat
sessions (conversations whose later turns the runner builds from the server's answers)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from perfkit.core.tools import Tools
from perfkit.core.prompts import prompt_for
from perfkit.core.schema import MAX_TOKENS
from perfkit.workloads.files import Conversation, read_conversations, read_trace
from perfkit.workloads.spec import WorkloadError, WorkloadParams, resolve_file

WORDS_PER_TOKEN = 0.75  # English text in a BPE vocabulary: what a trace's token counts become as words


@dataclass
class Request:
    """One request: the chat messages to send, its output cap (None: the study's), its arrival after the series'
    start (a trace's, None otherwise), and tags stored with its row (conversation, prefix, trace line)."""

    messages: list[dict[str, str]]
    num_predict: int | None = None
    offset_s: float | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    tools: Tools | None = None  # the tools a dataset's conversation offers
    expected_tools: list[str] | None = None  # the tools the dataset's own answer called

    @property
    def words(self) -> int:
        return sum(len(m["content"].split()) for m in self.messages)


def answer_tokens(text: str | None) -> int | None:
    """A dataset answer's length as an output cap, in tokens (from its words; the server counts the real ones)."""
    if not text:
        return None
    return max(1, min(MAX_TOKENS, round(len(text.split()) / WORDS_PER_TOKEN)))


def first_questions(convs: list[Conversation], w: WorkloadParams) -> list[Conversation]:
    """The conversations whose first question is within ``min_words`` … ``max_words``."""
    out = []
    for c in convs:
        n = len(c.questions[0].split())
        if (w.min_words is None or n >= w.min_words) and (w.max_words is None or n <= w.max_words):
            out.append(c)
    return out


def _draw(items: list, n: int, seed: int, key: str) -> list:
    """``n`` items in a seeded order: a shuffled pass over all of them, then another, so every item is used
    before any repeats."""
    rng = random.Random(f"{seed}/{key}")
    out: list = []
    while len(out) < n:
        order = list(items)
        rng.shuffle(order)
        out += order
    return out[:n]


def _sampled(convs: list[Conversation], w: WorkloadParams, seed: int) -> list[Conversation]:
    if w.sample is not None and w.sample < len(convs):
        return random.Random(f"{seed}/sample").sample(convs, w.sample)
    return convs


def shared_prefix_text(nonce: str, p: int, words: int) -> str:
    """System prompt ``p`` of a run: ``words`` words, different for each ``p`` and each run (the nonce), the
    same for every request that shares it."""
    digest = hashlib.sha256(f"{nonce}\0prefix{p}".encode()).hexdigest()[:12]
    head = f"[{digest}] You are the assistant of team {p}. Follow these house rules in every answer. "
    filler = ("Be precise and brief, cite the relevant part of the question, prefer plain words over jargon, "
              "give one concrete example, and say so when you are not sure. ").split()
    out = head.split()
    i = 0
    while len(out) < words:
        out.append(filler[i % len(filler)])
        i += 1
    return " ".join(out[:max(words, len(head.split()))])


def single_turn(w: WorkloadParams, n: int, *, key: str, seed: int, nonce: str, prompt_words: int,
                base_dir: str | Path | None = None) -> list[Request]:
    """``n`` one-shot requests of a series ``key``: synthetic prompts of ``prompt_words`` words (unique per run
    and request), a dataset's first questions (sessions too: their first turns), prompts behind shared system
    prompts, or a trace's requests with their arrival times (``time_scale`` applied)."""
    if w.kind == "synthetic":
        return [Request([{"role": "user", "content": prompt_for(f"{key}/{i}", prompt_words, nonce)}])
                for i in range(n)]
    if w.kind == "shared_prefix":
        out = []
        for i in range(n):
            p = i % w.prefixes
            out.append(Request([{"role": "system", "content": shared_prefix_text(nonce, p, w.prefix_words)},
                                {"role": "user", "content": prompt_for(f"{key}/{i}", prompt_words, nonce)}],
                               tags={"prefix": p}))
        return out
    path = resolve_file(w.file, base_dir)
    if w.kind == "trace":
        rows = read_trace(path)
        if w.sample is not None:
            rows = rows[:w.sample]
        out, period = [], (rows[-1].t_s + (rows[-1].t_s / max(1, len(rows) - 1))) if rows else 0.0
        for i in range(n):
            r, lap = rows[i % len(rows)], i // len(rows)  # a trace shorter than the series repeats, in time
            words = max(4, round(r.input_tokens * WORDS_PER_TOKEN))
            out.append(Request([{"role": "user", "content": prompt_for(f"{key}/{i}", words, nonce)}],
                               num_predict=min(r.output_tokens, MAX_TOKENS),
                               offset_s=(r.t_s + lap * period) / w.time_scale,
                               tags={"trace_line": r.line, "trace_input_tokens": r.input_tokens,
                                     "trace_output_tokens": r.output_tokens}))
        return out
    convs = first_questions(_sampled(read_conversations(path), w, seed), w)
    out = []
    for c in _draw(convs, n, seed, key):
        msgs = ([{"role": "system", "content": c.system}] if c.system else []) + \
               [{"role": "user", "content": c.questions[0]}]
        out.append(Request(msgs, answer_tokens(c.answers[0]) if w.output == "dataset" else None,
                           tags={"conversation": c.id},
                           tools=Tools(c.tools, w.tool_choice) if c.tools else None,
                           expected_tools=c.expected_tools[0] if c.tools and c.expected_tools else None))
    return out


def conversations(w: WorkloadParams, n_requests: int, *, key: str, seed: int,
                  base_dir: str | Path | None = None) -> list[Conversation]:
    """Conversations for a sessions series of about ``n_requests`` turns in all (at least one conversation),
    drawn in a seeded order, each cut at ``max_turns``."""
    convs = first_questions(_sampled(read_conversations(resolve_file(w.file, base_dir)), w, seed), w)
    rng_order = _draw(convs, max(len(convs), 1) * (1 + n_requests // max(1, sum(len(c.questions) for c in convs))),
                      seed, key)
    out: list[Conversation] = []
    total = 0
    for c in rng_order:
        if total >= n_requests and out:
            break
        turns = c.questions[:w.max_turns] if w.max_turns else c.questions
        out.append(replace(c, questions=list(turns), answers=list(c.answers[:len(turns)]),
                           expected_tools=list(c.expected_tools[:len(turns)])))
        total += len(turns)
    return out


def check(w: WorkloadParams, base_dir: str | Path | None, where: str) -> None:
    """Read the workload's file whole (so a malformed line stops the run before it starts); WorkloadError
    naming ``where`` (the key), the file and the line."""
    if not w.file:
        return
    path = resolve_file(w.file, base_dir)
    if not path.is_file():
        raise WorkloadError(f"{where}.file: {path} does not exist")
    try:
        if w.kind == "trace":
            read_trace(path)
        else:
            convs = read_conversations(path)
            if not first_questions(convs, w):
                raise WorkloadError(f"{path}: no conversation's first question is within min_words "
                                    f"{w.min_words} … max_words {w.max_words}")
    except WorkloadError as e:
        raise WorkloadError(f"{where}.file: {e}") from None

