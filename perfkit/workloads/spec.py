"""The ``workload:`` section of a study that sends load: which kind of traffic, from which file, with which
options; validated with the rest of the parameters, its file read and checked before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from perfkit.core.errors import ConfigError
from perfkit.core.schema import MAX_PROMPT_WORDS, Strict

KINDS = ("synthetic", "dataset", "sessions", "shared_prefix", "trace")
BUILTIN = Path(__file__).resolve().parent / "data"
_FILE_KINDS = ("dataset", "sessions", "trace")


class WorkloadError(ConfigError):
    """A workload file that can't be used: the message names the file, the line and what is wrong."""


class WorkloadParams(Strict):
    """``kind``: ``synthetic`` (perfkit's own one-shot prompts, never served from a cache: the default),
    ``dataset`` (each conversation's first question, with its system prompt), ``sessions`` (multi-turn chats:
    each simulated user sends a conversation's questions one by one, carrying the history with the server's
    own answers), ``shared_prefix`` (synthetic prompts behind ``prefixes`` shared system prompts of
    ``prefix_words`` words) or ``trace`` (arrival times and input/output lengths replayed from a file).

    ``file``: a JSONL of conversations (ShareGPT ``{"conversations": [{"from", "value"}]}`` or OpenAI
    ``{"messages": [{"role", "content"}]}``) or a trace (CSV or JSONL: timestamp, input tokens, output tokens);
    a relative path is read from the parameter file's directory; ``builtin:NAME`` is a file shipped with perfkit
    (``builtin:chat`` conversations, ``builtin:tools`` conversations with tools, ``builtin:trace`` a bursty trace).

    Tools: a conversation may offer ``tools`` (beside its turns, OpenAI's function form, also as JSON text);
    its assistant turns' ``tool_calls`` (ShareGPT: ``function_call`` turns) say which tools the dataset's own
    answer called, and its ``role: tool`` turns (ShareGPT: ``observation``) give each tool's results. When the
    server calls a tool, perfkit answers with the file's next result for it (a deterministic stand-in where the
    file has none) and the conversation goes on."""

    kind: Literal["synthetic", "dataset", "sessions", "shared_prefix", "trace"] = "synthetic"
    file: str | None = None
    sample: int | None = Field(None, ge=1, le=100_000, description="conversations (or trace rows) drawn with the "
                                                                   "run's seed; default: every one")
    min_words: int | None = Field(None, ge=1, le=MAX_PROMPT_WORDS, description="skip first questions shorter")
    max_words: int | None = Field(None, ge=1, le=MAX_PROMPT_WORDS, description="skip first questions longer")
    output: Literal["study", "dataset"] = Field(
        "study", description="cap each answer at the study's num_predict, or at the dataset's answer length")
    max_turns: int | None = Field(None, ge=1, le=1000, description="sessions: turns per conversation at most")
    think_s: float = Field(0.0, ge=0, le=3600, description="sessions: the user's pause between an answer and the "
                                                          "next question")
    think: Literal["fixed", "exponential"] = Field("fixed", description="sessions: think_s fixed, or the mean of "
                                                                        "exponential pauses (seeded)")
    prefix_words: int = Field(200, ge=1, le=MAX_PROMPT_WORDS, description="shared_prefix: the system prompt's length")
    prefixes: int = Field(1, ge=1, le=10_000, description="shared_prefix: how many distinct system prompts")
    time_scale: float = Field(1.0, gt=0, le=1e6, description="trace: its times divided by this (2 = twice as fast)")
    tool_choice: Literal["auto", "required", "none"] | None = Field(
        None, description="dataset, sessions: the tool choice sent with each question of a conversation that offers "
                          "tools (a turn answering a tool leaves it to the model); default: none sent")
    max_tool_rounds: int = Field(3, ge=0, le=50, description="sessions: turns answering the server's tool calls per "
                                                             "question at most, then the next question follows")

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind in _FILE_KINDS and not self.file:
            raise ValueError(f"kind {self.kind} needs a file (a path, or builtin:chat / builtin:trace)")
        if self.kind not in _FILE_KINDS and self.file:
            raise ValueError(f"file is used only with kind {', '.join(_FILE_KINDS)}, not {self.kind}")
        if self.min_words and self.max_words and self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is above max_words ({self.max_words})")
        only = {"max_turns": "sessions", "think_s": "sessions", "prefix_words": "shared_prefix",
                "prefixes": "shared_prefix", "time_scale": "trace", "max_tool_rounds": "sessions"}
        for key, kind in only.items():
            # by value, not by "was it given": a dumped and re-read section carries every default
            if getattr(self, key) != type(self).model_fields[key].default and self.kind != kind:
                raise ValueError(f"{key} is used only with kind {kind}")
        if self.tool_choice is not None and self.kind not in ("dataset", "sessions"):
            raise ValueError("tool_choice is used only with kind dataset or sessions (a file whose conversations "
                             "offer tools)")
        if self.output == "dataset" and self.kind not in ("dataset", "sessions"):
            raise ValueError("output: dataset needs a dataset's answers (kind dataset or sessions)")
        return self

    @property
    def multi_turn(self) -> bool:
        return self.kind == "sessions"

    @property
    def uses_cache(self) -> bool:
        """Whether its prompts are meant to share prefixes (the server's prompt cache is part of the figure)."""
        return self.kind in ("sessions", "shared_prefix", "dataset")

    def describe(self) -> str:
        return self.kind + (f" from {self.file}" if self.file else "")


def resolve_file(spec: str, base_dir: str | Path | None) -> Path:
    """The file a ``file:`` names: ``builtin:NAME`` (shipped with perfkit), else a path (``~`` expanded; relative
    to ``base_dir``, the parameter file's directory)."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        found = sorted(BUILTIN.glob(f"{name}.*"))
        if not found:
            have = ", ".join(sorted(f"builtin:{p.stem}" for p in BUILTIN.iterdir() if p.is_file()))
            raise WorkloadError(f"no built-in workload file {spec!r}; built in: {have}")
        return found[0]
    p = Path(spec).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p
