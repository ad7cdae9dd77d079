"""The interface every backend implements; a study never branches on the backend: what differs between
servers is a :class:`Capabilities` flag here or a capability of the backend's controller."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Union

from perfkit.core.errors import PerfkitError
from perfkit.core.records import RequestRecord
from perfkit.client.stream import StreamCall
from perfkit.core.tools import Tools

DEFAULT_TIMEOUT_S = 1800.0  # a 72B cold start can take many minutes: never cut off a 15-minute load
THINK_LEVELS = ("low", "medium", "high")  # Ollama's think levels (gpt-oss), and the /v1 reasoning_effort values


@dataclass
class Sampling:
    """Generation options by their Ollama names; each backend maps them to its own API.

    ``think``: whether a thinking model thinks, or how hard (Ollama's ``think``: true, false or a level in
    :data:`THINK_LEVELS`); None sends nothing, and the model does what it does by default (Ollama since v0.12.4:
    a thinking model thinks).
    """

    num_predict: int = 64
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    think: bool | str | None = None

    def __post_init__(self) -> None:
        if self.think is not None and not isinstance(self.think, bool) and self.think not in THINK_LEVELS:
            raise PerfkitError(f"think {self.think!r} is not allowed; allowed: true, false, {', '.join(THINK_LEVELS)}")

    @classmethod
    def greedy(cls, num_predict: int = 64, seed: int = 0) -> "Sampling":
        return cls(num_predict=num_predict, temperature=0.0, top_k=1, seed=seed)

    def present(self) -> dict[str, Any]:
        """Every option set, ``think`` included (what a record of the request says was asked)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def options(self) -> dict[str, Any]:
        """The generation options set (Ollama's ``options``): ``think`` is not one, it goes beside them."""
        return {k: v for k, v in self.present().items() if k != "think"}

    def think_requested(self) -> str | None:
        """``think`` as a record keeps it: "true", "false" or the level; None when it is not sent."""
        if self.think is None:
            return None
        return str(self.think).lower() if isinstance(self.think, bool) else self.think


@dataclass(frozen=True)
class Capabilities:
    """What a backend's API can do beyond streaming a generation.

    ``residency``: it says which models are resident and can load and unload one (every cold state needs
    it); ``keep_alive_per_request``: each request carries how long the model stays loaded after it (Ollama),
    else that is a server setting (``OLLAMA_KEEP_ALIVE``); ``load_seen_per_request``: a load during a request
    is observed (llama-server, polled), so a cache state can be confirmed by it; ``cached_tokens``: the server
    reports how much of a prompt came from its cache; ``started_by_perfkit``: perfkit starts and stops the
    server itself (the embedded engine), so any setting applies by a restart and it can start several;
    ``settings_by_restart_command``: a user's server whose settings a restart command can change (Ollama).
    """

    residency: bool = False
    keep_alive_per_request: bool = False
    load_seen_per_request: bool = False
    cached_tokens: bool = False
    started_by_perfkit: bool = False
    settings_by_restart_command: bool = False


@dataclass
class ModelFacts:
    """What the server says about a model (quantization from the model itself, never its name)."""

    name: str
    size_bytes: int | None = None
    parameter_count: int | None = None
    quantization: str | None = None
    family: str | None = None
    digest: str | None = None
    path: str | None = None  # local file, when the engine is local (enables cold_disk)
    extra: dict[str, Any] = field(default_factory=dict)


Prompt = Union[str, list]  # a user message's text, or chat messages [{"role": ..., "content": ...}, ...]


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """Chat messages of a prompt: a text becomes one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def as_text(prompt: Prompt, where: str) -> str:
    """The text of a one-message prompt, for an endpoint that takes text only; PerfkitError for a chat."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0].get("role") == "user":
        return prompt[0]["content"]
    raise PerfkitError(f"{where} takes one text prompt, not chat messages (a system prompt or a history): use the "
                       "chat endpoint for this workload")


class Backend(abc.ABC):
    """A server that loads models and streams generations.

    Every method that talks to the server raises ``perfkit.errors.PerfkitError`` subclasses or
    httpx errors for control calls; ``generate`` never raises for server trouble: it returns a
    failed ``RequestRecord`` carrying the reason.
    """

    name: str = "backend"
    capabilities = Capabilities()
    url: str = ""
    target = None  # perfkit.loadgen.HttpTarget: the engine's connection pool for this server
    _control = None

    @classmethod
    def create(cls, url: str, **opts: Any) -> "Backend":
        """Built from a parameter file's options (``perfkit.client.backends.create``); each backend takes the
        ones its API has and ignores the rest."""
        return cls(url)

    @property
    def control(self):
        """This server's ``perfkit.control.ServerControl``: restart, settings in effect, processes,
        model file, log, device. A backend without a richer one sees only the HTTP API."""
        if self._control is None:
            from perfkit.servers.control import RemoteControl

            self._control = RemoteControl(self.url)
        return self._control

    @control.setter
    def control(self, value) -> None:
        self._control = value

    @abc.abstractmethod
    def version(self) -> str: ...

    @abc.abstractmethod
    def models(self) -> list[str]: ...

    @abc.abstractmethod
    def model_facts(self, model: str) -> ModelFacts: ...

    @abc.abstractmethod
    def loaded(self) -> list[str]: ...

    def is_loaded(self, model: str) -> bool:
        return model in self.loaded()

    @abc.abstractmethod
    def load(self, model: str, timeout_s: float = DEFAULT_TIMEOUT_S, keep_alive: object = None) -> float:
        """Make ``model`` resident (for ``keep_alive`` where the server takes one per request); return the
        measured load time in seconds (verified residency)."""

    @abc.abstractmethod
    def unload(self, model: str, timeout_s: float = 120.0) -> None:
        """Make ``model`` not resident, and verify it."""

    @abc.abstractmethod
    def stream_call(self, model: str, prompt: Prompt, sampling: Sampling | None = None, *,
                    logprobs: bool = False, keep_alive: object = None, tools: Tools | None = None) -> StreamCall:
        """The streamed request for one generation, ready for the engine (``self.target``) to send. ``prompt``:
        a user message's text, or whole chat messages (``[{"role", "content"}, …]``: a system prompt, a
        conversation's history, tool calls and their results in the neutral form of
        ``perfkit.client.toolcalls``); ``tools``: the tools the request offers."""

    def generate(self, model: str, prompt: Prompt, sampling: Sampling | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, stall_timeout_s: float | None = None,
                 logprobs: bool = False, keep_alive: object = None, tools: Tools | None = None) -> RequestRecord:
        """Stream one generation and time it; failures come back as a record with ``ok=False``."""
        call = self.stream_call(model, prompt, sampling, logprobs=logprobs, keep_alive=keep_alive, tools=tools)
        return self.target.fetch(call, timeout_s=timeout_s, stall_timeout_s=stall_timeout_s)

    # A control request (which models are resident, a model's facts) that finds the server gone retries for
    # this long: a server restarting for a few seconds is not a failed study.
    control_retry_s: float = 15.0

    def control_get(self, path: str, **kwargs: Any) -> Any:
        """GET ``path`` on the server's control API and return its JSON. A refused or dropped connection is
        retried for ``control_retry_s``; what still fails, or answers something that is not JSON (an HTML
        page, an error), is a ``PerfkitError`` naming the URL and what came back, never a raw traceback."""
        import time as _time

        import httpx

        client = self._client  # type: ignore[attr-defined]
        url = f"{self.url}{path}"
        deadline = _time.monotonic() + self.control_retry_s
        while True:
            try:
                r = client.get(path, **kwargs)
                break
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
                if _time.monotonic() > deadline:
                    raise PerfkitError(f"the server at {self.url} stopped answering (GET {path}): "
                                       f"{type(e).__name__} for {self.control_retry_s:g} s") from None
                _time.sleep(0.25)
            except httpx.TimeoutException:
                raise PerfkitError(f"GET {url}: no answer within the control timeout") from None
        if r.status_code >= 400:
            raise PerfkitError(f"GET {url} answered HTTP {r.status_code}: {' '.join(r.text[:160].split())}")
        try:
            return r.json()
        except ValueError:
            what = "an HTML page" if r.text.lstrip()[:15].lower().startswith(("<!doctype", "<html")) else \
                f"{r.headers.get('content-type') or 'something'} that is not JSON"
            raise PerfkitError(f"GET {url} answered {what}: not the API perfkit expects there") from None

    def model_capabilities(self, model: str) -> set[str] | None:
        """What the server says ``model`` can do (Ollama's ``completion``, ``tools``, ``thinking`` …); None where
        it does not say (the first request then tells)."""
        return None

    def resident_memory(self, model: str) -> dict[str, int]:
        """What the resident ``model`` itself occupies (bytes), by whatever the server exposes; {} if nothing."""
        return {}

    def shared_prefix_tokens(self, model: str) -> int | None:
        """Prompt tokens every chat request shares (the template's head, which a prompt cache may serve
        in any state); None where the server reports no cached-token count to compare it with."""
        return None

    def metrics_urls(self, models: list[str]) -> list[str]:
        """The server's own ``/metrics`` pages to read during load, in the names its kind registered with
        ``perfkit.sampling.exposition``; [] where it has none perfkit knows."""
        return []

    def describe(self) -> dict[str, Any]:
        """Metadata for the run manifest (no secrets)."""
        return {"backend": self.name}

    def close(self) -> None:
        pass
