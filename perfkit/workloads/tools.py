"""Tools in workload files: their definitions (read and checked before anything runs), the results a file gives
for them, the answer perfkit sends when a server calls one, and each turn's verdict on the calls it got."""

from __future__ import annotations

import json
import re
from typing import Any

from perfkit.core.tools import ToolCall, Tools, looks_like_a_call
from perfkit.workloads.spec import WorkloadError


def read_definitions(value: Any, where: str) -> tuple[dict, ...]:
    """A file's ``tools``: a list (or, as LLaMA-Factory writes it, JSON text of a list) of function tools, each
    ``{"type": "function", "function": {"name", "description", "parameters"}}`` or the bare function
    ``{"name", "description", "parameters"}``; the function form both Ollama and ``/v1`` take comes back."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{where}: 'tools' is text that is not JSON ({e.msg})") from None
    if not isinstance(value, list):
        raise WorkloadError(f"{where}: 'tools' must be a list of function definitions")
    out, seen = [], set()
    for k, t in enumerate(value):
        fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" and \
            isinstance(t.get("function"), dict) else t
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise WorkloadError(f"{where}: tool {k} needs a 'name' (as {{\"type\": \"function\", \"function\": "
                                "{\"name\", \"description\", \"parameters\"}}, or the bare function)")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise WorkloadError(f"{where}: tool {fn['name']!r}: 'parameters' must be a JSON schema object")
        _check_schema(params, f"{where}: tool {fn['name']!r}")
        if fn["name"] in seen:
            raise WorkloadError(f"{where}: tool {fn['name']!r} is defined twice")
        seen.add(fn["name"])
        out.append({"type": "function", "function": {"name": fn["name"], "description": fn.get("description", ""),
                                                     "parameters": params}})
    return tuple(out)


def _check_schema(schema: dict, where: str) -> None:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise WorkloadError(f"{where}: 'parameters' is not a valid JSON schema ({e.message})") from None


def call_from_file(value: Any, where: str) -> ToolCall:
    """A call a file's assistant made: OpenAI or Ollama ``tool_calls`` entry, or ShareGPT's ``function_call``
    value (JSON text of ``{"name", "arguments"}``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise WorkloadError(f"{where}: a function call that is not JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise WorkloadError(f"{where}: a tool call must be an object with a function name")
    fn = value.get("function") if isinstance(value.get("function"), dict) else value
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise WorkloadError(f"{where}: a tool call without a function name")
    args = fn.get("arguments", {})
    return ToolCall(name, args if isinstance(args, str) else json.dumps(args), value.get("id"))


def stub_result(call: ToolCall) -> str:
    """What perfkit answers for a tool the file gives no result for: deterministic, and says it is a stand-in."""
    return json.dumps({"tool": call.name, "arguments": call.parsed_arguments(), "result": "ok",
                       "note": "stand-in result: the workload file gives none for this tool"}, sort_keys=True)


def judge(rec: dict, tools: Tools | None, expected: list[str] | None) -> dict[str, Any]:
    """A turn's verdict on the calls the server made: whether it called a tool, which, whether each call named an
    offered tool with arguments valid under that tool's schema (the first problem said), whether it called what
    the file's own answer called, and whether its answer text looks like a call the server failed to parse."""
    if tools is None:
        return {}
    calls = [ToolCall(**c) for c in rec.get("tool_calls") or []]
    out: dict[str, Any] = {"tools_offered": len(tools.definitions), "tool_called": bool(calls),
                           "tool_names": ",".join(c.name for c in calls) or None,
                           "tool_calls_n": len(calls), "tool_problem": None}
    for c in calls:
        problem = _problem(c, tools)
        if problem:
            out["tool_problem"] = problem
            break
    out["tool_valid"] = (out["tool_problem"] is None) if calls else None
    out["tool_expected"] = ",".join(expected) if expected is not None else None
    out["tool_as_expected"] = (sorted(c.name for c in calls) == sorted(expected)) if expected is not None else None
    out["tool_unparsed"] = not calls and looks_like_a_call(rec.get("text") or "")
    if not rec.get("ok") and _PARSE_FAILED.search(str(rec.get("error") or "")):
        # The server saw a call in the model's output and could not parse it: it failed the request (llama-server
        # answers HTTP 500 "Failed to parse tool call arguments as JSON").
        out["tool_unparsed"] = True
        out["tool_problem"] = "the server could not parse the tool call the model wrote, and failed the request"
    return out


_PARSE_FAILED = re.compile(r"pars\w* tool call|tool call\w* .*pars", re.I)


def _problem(call: ToolCall, tools: Tools) -> str | None:
    import jsonschema

    schema = tools.schema_of(call.name)
    if schema is None:
        return f"called {call.name!r}, which the request did not offer"
    args = call.parsed_arguments()
    if args is None:
        return f"{call.name}: arguments are not a JSON object"
    try:
        jsonschema.validate(args, schema)
    except jsonschema.ValidationError as e:
        return f"{call.name}: {e.message}"
    return None
