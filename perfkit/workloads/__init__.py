"""Traffic like the users': what each request of a load series says, and in which order and conversation.

A study names a ``workload:`` (:class:`WorkloadParams`); :func:`single_turn` makes a series' one-shot requests
(synthetic prompts, a dataset's first questions, prompts sharing a system prompt, a replayed trace with its
arrival times) and :func:`conversations` a series' chat sessions, whose later turns the runner builds from the
server's own answers. Datasets are JSONL in ShareGPT or OpenAI form, traces CSV or JSONL; a malformed file is a
:class:`WorkloadError` naming the file and the line.
"""

from perfkit.workloads.build import Request, check, conversations, single_turn
from perfkit.workloads.files import Conversation, TraceRow, read_conversations, read_trace
from perfkit.workloads.spec import KINDS, WorkloadError, WorkloadParams, resolve_file

__all__ = ["KINDS", "Conversation", "Request", "TraceRow", "WorkloadError", "WorkloadParams", "check",
           "conversations", "read_conversations", "read_trace", "resolve_file", "single_turn"]
