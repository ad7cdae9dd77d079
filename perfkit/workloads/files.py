"""Reading workload files: conversations (JSONL, ShareGPT or OpenAI form) and traces (CSV or JSONL). Every
problem names the file, the line and what was expected."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfkit.workloads.spec import WorkloadError
from perfkit.workloads.tools import call_from_file, read_definitions

_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                   "bing": "assistant", "bard": "assistant", "assistant": "assistant", "function_call": "call",
                   "observation": "tool", "tool": "tool"}
_MESSAGES_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                   "tool": "tool"}


@dataclass
class Conversation:
    """One conversation of a dataset: its system prompt, the user's questions in order and the dataset's own
    answers (their lengths cap a request's output when ``output: dataset``; their text is never sent).

    With tools: ``tools`` the definitions its requests offer; ``expected_tools[k]`` the tools the dataset's own
    answer to question k called (None where the dataset has no answer to it); ``tool_results`` each tool's
    results in the dataset, in order (what perfkit answers when the server calls that tool)."""

    id: str
    questions: list[str]
    answers: list[str | None] = field(default_factory=list)
    system: str | None = None
    line: int = 0
    tools: tuple[dict, ...] | None = None
    expected_tools: list[list[str] | None] = field(default_factory=list)
    tool_results: dict[str, list[str]] = field(default_factory=dict)


def _read_lines(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line
    except UnicodeDecodeError as e:
        raise WorkloadError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise WorkloadError(f"{path}: cannot be read ({e.strerror})") from None


def _text(value: Any) -> Any:
    if isinstance(value, list):  # OpenAI content parts: the text ones
        return "".join(p.get("text", "") for p in value if isinstance(p, dict))
    return value


def read_conversations(path: str | Path) -> list[Conversation]:
    """Every conversation of a JSONL file (blank lines skipped); WorkloadError naming the line otherwise."""
    path = Path(path)
    out: list[Conversation] = []
    for lineno, line in _read_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise WorkloadError(f"{where}: expected an object with 'conversations' (ShareGPT) or 'messages' (chat messages)")
        out.append(_conversation(obj, where, lineno))
    if not out:
        raise WorkloadError(f"{path}: no conversation in it")
    return out


def _conversation(obj: dict, where: str, lineno: int) -> Conversation:
    if "conversations" in obj:
        turns, role_key, text_key, roles = obj["conversations"], "from", "value", _SHAREGPT_ROLES
    elif "messages" in obj:
        turns, role_key, text_key, roles = obj["messages"], "role", "content", _MESSAGES_ROLES
    else:
        raise WorkloadError(f"{where}: neither 'conversations' (ShareGPT) nor 'messages' (chat messages) is there; "
                            f"keys: {', '.join(list(obj)[:8]) or 'none'}")
    if not isinstance(turns, list) or not turns:
        raise WorkloadError(f"{where}: '{'conversations' if role_key == 'from' else 'messages'}' must be a "
                            "non-empty list of turns")
    conv = Conversation(str(obj.get("id") or f"line{lineno}"), [], [], None, lineno)
    if obj.get("tools") not in (None, [], ""):
        conv.tools = read_definitions(obj["tools"], where)
    if isinstance(obj.get("system"), str) and obj["system"]:  # LLaMA-Factory's ShareGPT keeps it beside the turns
        conv.system = obj["system"]
    names_by_id: dict[str, str] = {}
    pending: list[str] = []  # the last answer's calls not yet given a result: an unnamed result is the next's
    for k, t in enumerate(turns):
        if not isinstance(t, dict) or role_key not in t:
            raise WorkloadError(f"{where}: turn {k} needs '{role_key}' and '{text_key}'")
        role = roles.get(str(t[role_key]).lower())
        if role is None:
            raise WorkloadError(f"{where}: turn {k} has {role_key} {t[role_key]!r}; allowed: "
                                f"{', '.join(sorted(set(roles)))}")
        calls = [call_from_file(c, f"{where}: turn {k}") for c in (t.get("tool_calls") or [])] \
            if role == "assistant" else []
        if role == "call":
            calls, role = [call_from_file(t.get(text_key), f"{where}: turn {k}")], "assistant"
        text = _text(t.get(text_key))
        if text is None and (calls or role == "tool"):
            text = ""
        if not isinstance(text, str):
            raise WorkloadError(f"{where}: turn {k} needs '{role_key}' and '{text_key}' (text)")
        if role == "system":
            if conv.questions:
                raise WorkloadError(f"{where}: turn {k} is a system prompt after the conversation began")
            conv.system = (conv.system + "\n" if conv.system else "") + text
        elif role == "user":
            if len(conv.answers) < len(conv.questions):  # two questions in a row: the first had no answer
                conv.answers.append(None)
            conv.questions.append(text)
            conv.expected_tools.append(None)
        elif role == "tool":
            name = t.get("name") or t.get("tool_name") or names_by_id.get(str(t.get("tool_call_id"))) \
                or (pending[0] if pending else None)
            if name in pending:
                pending.remove(name)
            if not name:
                raise WorkloadError(f"{where}: turn {k} is a tool result for no call: give it 'name' (or "
                                    "'tool_call_id' of a call above)")
            conv.tool_results.setdefault(str(name), []).append(text)
        else:
            if not conv.questions:
                raise WorkloadError(f"{where}: turn {k} is an answer before any question")
            if calls:
                for c in calls:
                    if c.id:
                        names_by_id[c.id] = c.name
                conv.expected_tools[-1] = (conv.expected_tools[-1] or []) + [c.name for c in calls]
                pending = [c.name for c in calls]
            elif conv.expected_tools[-1] is None:
                conv.expected_tools[-1] = []  # answered without a tool
            if text:
                if len(conv.answers) == len(conv.questions):
                    conv.answers[-1] = (conv.answers[-1] or "") + text
                else:
                    conv.answers.append(text)
    if not conv.questions:
        raise WorkloadError(f"{where}: no user ({'human' if role_key == 'from' else 'user'}) turn")
    conv.answers += [None] * (len(conv.questions) - len(conv.answers))
    if conv.tools is None:
        if conv.tool_results or any(conv.expected_tools):
            raise WorkloadError(f"{where}: tool calls or results but no 'tools' to offer: add the tool definitions "
                                "as 'tools' beside the turns")
        conv.expected_tools = []
    else:
        offered = {d["function"]["name"] for d in conv.tools}
        for name in [n for e in conv.expected_tools if e for n in e] + list(conv.tool_results):
            if name not in offered:
                raise WorkloadError(f"{where}: a call or result of tool {name!r}, which 'tools' does not define; "
                                    f"defined: {', '.join(sorted(offered))}")
    return conv


@dataclass
class TraceRow:
    """One request of a trace: its arrival (seconds after the trace's first), input and output tokens."""

    t_s: float
    input_tokens: int
    output_tokens: int
    line: int = 0


_T = ("timestamp", "time", "arrival_s", "arrival_time", "t", "ts")
_IN = ("input_tokens", "input_length", "prompt_tokens", "contexttokens", "input_len")
_OUT = ("output_tokens", "output_length", "completion_tokens", "generatedtokens", "output_len")


def _pick(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    low = {str(k).strip().lower(): v for k, v in row.items()}
    for n in names:
        if n in low and low[n] not in (None, ""):
            return low[n]
    return None


def _seconds(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        import pandas as pd

        try:
            return pd.Timestamp(str(v)).value / 1e9
        except (ValueError, TypeError):
            raise WorkloadError(f"{where}: timestamp {v!r} is neither seconds nor a date-time") from None
    if not math.isfinite(x):
        raise WorkloadError(f"{where}: timestamp {v!r} is not a finite number")
    return x


def _count(v: Any, what: str, where: str) -> int:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise WorkloadError(f"{where}: {what} {v!r} is not a number") from None
    if not math.isfinite(x) or x < 1 or x != int(x):
        raise WorkloadError(f"{where}: {what} {v!r} must be a whole number ≥ 1")
    return int(x)


def read_trace(path: str | Path) -> list[TraceRow]:
    """A trace's requests in arrival order, times relative to the first; CSV (a header naming the columns) or
    JSONL. Columns: a time (timestamp/time/arrival_s: seconds, or a date-time), input tokens
    (input_tokens/prompt_tokens/ContextTokens …) and output tokens (output_tokens/GeneratedTokens …)."""
    path = Path(path)
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for lineno, line in _read_lines(path):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise WorkloadError(f"{path}:{lineno}: not JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise WorkloadError(f"{path}:{lineno}: expected an object with a timestamp, input and output tokens")
            rows.append((lineno, obj))
    else:
        lines = [ln for _, ln in _read_lines(path)]
        reader = csv.DictReader(lines)
        if not reader.fieldnames:
            raise WorkloadError(f"{path}: empty, or no header line")
        for k, row in enumerate(reader, 2):
            rows.append((k, row))
    out: list[TraceRow] = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        t, i, o = _pick(row, _T), _pick(row, _IN), _pick(row, _OUT)
        for v, names in ((t, _T), (i, _IN), (o, _OUT)):
            if v is None:
                raise WorkloadError(f"{where}: no {names[0]} (also read as: {', '.join(names[1:])})")
        out.append(TraceRow(_seconds(t, where), _count(i, "input tokens", where), _count(o, "output tokens", where),
                            lineno))
    if not out:
        raise WorkloadError(f"{path}: no request in it")
    for a, b in zip(out, out[1:]):
        if b.t_s < a.t_s:
            raise WorkloadError(f"{path}:{b.line}: its time is before the line above's ({b.t_s} < {a.t_s}): a trace "
                                "must be in arrival order")
    t0 = out[0].t_s
    for r in out:
        r.t_s -= t0
    return out
