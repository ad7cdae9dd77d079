"""Tool calls on the wire: the calls a server streams back (whole, or in fragments joined by index), and the
chat messages that carry calls and their results into the next request.

perfkit keeps one neutral form of a conversation's messages; each server kind turns it into its own wire form:
an assistant message ``{"role": "assistant", "content": text, "tool_calls": [{"id", "name", "arguments"}]}``
(``arguments``: the JSON text the server sent) and a result ``{"role": "tool", "content": text, "name": tool,
"tool_call_id": id}``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from perfkit.core.tools import ToolCall, Tools


@dataclass
class CallFragments:
    """Streamed call fragments joined by ``index`` (``/v1``: the first fragment of a call has its id and name,
    later ones pieces of its arguments; a proxy that drops ``index`` sends fragments of call 0)."""

    _calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, fragment: dict) -> None:
        i = fragment.get("index", 0)
        if not isinstance(i, int):
            i = 0
        call = self._calls.setdefault(i, {"name": "", "arguments": "", "id": None})
        fn = fragment.get("function") or {}
        if fragment.get("id"):
            call["id"] = fragment["id"]
        if fn.get("name") and not call["name"]:
            call["name"] = fn["name"]
        args = fn.get("arguments")
        if isinstance(args, str):
            call["arguments"] += args
        elif args is not None:  # a server that sends the object whole
            call["arguments"] += json.dumps(args)

    def calls(self) -> list[ToolCall]:
        return [ToolCall(c["name"], c["arguments"], c["id"]) for _, c in sorted(self._calls.items())]


def whole_call(entry: dict) -> ToolCall:
    """A call that arrives whole (Ollama's ``message.tool_calls`` entry: ``arguments`` is an object)."""
    fn = entry.get("function") or {}
    args = fn.get("arguments")
    return ToolCall(str(fn.get("name") or ""), args if isinstance(args, str) else json.dumps(args or {}),
                    entry.get("id"))


def v1_messages(messages: list[dict]) -> list[dict]:
    """Neutral messages as ``/v1/chat/completions`` takes them: a call's ``arguments`` as JSON text, ``content``
    null beside calls with no text, a result tied to its call by ``tool_call_id``."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            out.append({"role": "assistant", "content": m.get("content") or None,
                        "tool_calls": [{"id": c.get("id") or f"call_{k}", "type": "function",
                                        "function": {"name": c["name"], "arguments": c.get("arguments") or "{}"}}
                                       for k, c in enumerate(m["tool_calls"])]})
        elif m.get("role") == "tool":
            out.append({"role": "tool", "content": m.get("content", ""),
                        "tool_call_id": m.get("tool_call_id") or f"call_{m.get('call_index', 0)}",
                        **({"name": m["name"]} if m.get("name") else {})})
        else:
            out.append({k: v for k, v in m.items() if k in ("role", "content")})
    return out


def v1_fields(tools: Tools | None) -> dict[str, Any]:
    """A ``/v1`` request's tool fields."""
    if tools is None:
        return {}
    return {"tools": list(tools.definitions), **({"tool_choice": tools.choice} if tools.choice else {})}
