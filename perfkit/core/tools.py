"""Tools a request offers and the calls a server makes: the neutral form every layer shares (each server kind
writes it in its own wire form)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

TOOL_CHOICES = ("auto", "required", "none")


@dataclass(frozen=True)
class Tools:
    """What a request offers: tool definitions in the function form both Ollama and ``/v1`` take
    (``{"type": "function", "function": {"name", "description", "parameters"}}``) and the tool choice (``auto``,
    ``required``, ``none``; None sends none, and the server decides)."""

    definitions: tuple[dict, ...]
    choice: str | None = None

    def names(self) -> list[str]:
        return [d["function"]["name"] for d in self.definitions]

    def schema_of(self, name: str) -> dict | None:
        for d in self.definitions:
            if d["function"]["name"] == name:
                return d["function"].get("parameters") or {"type": "object"}
        return None


@dataclass
class ToolCall:
    """One call a server made: the tool's name, its arguments as the JSON text the server sent (Ollama's object
    written out as JSON), and the server's id for it where it gave one."""

    name: str
    arguments: str = ""
    id: str | None = None

    def parsed_arguments(self) -> dict | None:
        """The arguments as an object; None when they are not a JSON object (a parse failure)."""
        try:
            value = json.loads(self.arguments) if self.arguments.strip() else {}
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# What a model writes when it meant to call a tool and the server's parser did not turn it into one: Hermes and
# Qwen's <tool_call>, Mistral's [TOOL_CALLS], Llama 3's <|python_tag|>, or a bare {"name": …, "arguments": …}.
_UNPARSED = re.compile(r'<tool_call>|\[TOOL_CALLS\]|<\|python_tag\|>|^\s*\{\s*"name"\s*:\s*"[^"]+"\s*,\s*"(arguments|parameters)"')


def looks_like_a_call(text: str) -> bool:
    """Whether answer text looks like a tool call the server left unparsed."""
    return bool(_UNPARSED.search(text or ""))
