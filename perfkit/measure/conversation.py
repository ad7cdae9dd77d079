"""One chat session's requests, each built from the answers before it: the user's questions in order with the
history the server answered, and, where the conversation offers tools, a turn that answers each tool the server
called (with the file's result for it, or a stand-in) so the conversation goes on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from perfkit.core.tools import ToolCall, Tools
from perfkit.core.records import RequestRecord
from perfkit.workloads import Conversation
from perfkit.workloads.tools import stub_result

QUESTION, TOOL_RESULT = "question", "tool_result"


@dataclass
class NextTurn:
    """The next request of a session: its messages (perfkit's neutral form), the tools it offers, and what the
    runner stores with its row (``turn_kind``: a user's question, or the answer to the server's tool calls)."""

    messages: list[dict]
    tools: Tools | None
    plan: dict[str, Any]
    new_words: int


@dataclass
class ChatSession:
    """``tag`` goes before the first question (the run's own: no earlier run's cache serves it); ``tool_choice``
    is sent with each question (a turn answering a tool leaves the choice to the model, so it can answer);
    ``max_tool_rounds``: tool-result turns per question at most, after which the next question follows."""

    conv: Conversation
    tag: str = ""
    tool_choice: str | None = None
    max_tool_rounds: int = 3
    history: list[dict] = field(default_factory=list)
    question: int = 0
    rounds: int = 0
    used: dict[str, int] = field(default_factory=dict)
    cut: bool = False  # the last turn's calls were answered, but no turn went back: the rounds ran out

    def next(self, recs: list[RequestRecord]) -> NextTurn | None:
        c = self.conv
        if not recs:
            self.history = [{"role": "system", "content": c.system}] if c.system else []
            return self._ask(0)
        last = recs[-1]
        calls = [ToolCall(**d) for d in last.tool_calls or []] if c.tools else []
        msg: dict[str, Any] = {"role": "assistant", "content": last.text or ""}
        if calls:
            msg["tool_calls"] = [k.as_dict() for k in calls]
        self.history.append(msg)
        if calls:
            words, sources = 0, []
            for k, call in enumerate(calls):
                text, source = self._result(call)
                self.history.append({"role": "tool", "content": text, "name": call.name,
                                     "tool_call_id": call.id or f"call_{k}", "call_index": k})
                words += len(text.split())
                sources.append(source)
            if self.rounds < self.max_tool_rounds:
                self.rounds += 1
                return NextTurn(list(self.history), self._tools(first=False),
                                {"question": self.question, "turn_kind": TOOL_RESULT, "tool_round": self.rounds,
                                 "tool_result_source": ",".join(sorted(set(sources)))}, words)
            self.cut = True
        if self.question + 1 >= len(c.questions):
            return None
        return self._ask(self.question + 1)

    def _ask(self, q: int) -> NextTurn:
        self.question, self.rounds = q, 0
        text = (self.tag if q == 0 else "") + self.conv.questions[q]
        self.history.append({"role": "user", "content": text})
        expected = self.conv.expected_tools[q] if q < len(self.conv.expected_tools) else None
        plan = {"question": q, "turn_kind": QUESTION, "tool_round": 0}
        if self.conv.tools:
            plan["tool_expected_list"] = expected
        return NextTurn(list(self.history), self._tools(first=True), plan, len(self.conv.questions[q].split()))

    def _tools(self, first: bool) -> Tools | None:
        if not self.conv.tools:
            return None
        choice = self.tool_choice if first or self.tool_choice == "none" else None
        return Tools(self.conv.tools, choice)

    def _result(self, call: ToolCall) -> tuple[str, str]:
        """The file's next result for this tool (the last again once they run out), else a stand-in."""
        results = self.conv.tool_results.get(call.name)
        if not results:
            return stub_result(call), "stand-in"
        k = self.used.get(call.name, 0)
        self.used[call.name] = k + 1
        return results[min(k, len(results) - 1)], "file"
