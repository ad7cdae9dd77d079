#!/usr/bin/env python3
"""The runner child: what ``ollama runner --model <blob> ... --port P`` is to ``ollama serve``.

Started by serve.py as ``python runner.py runner --model <blob> [llama.cpp flags] --port P``; it
rewrites its own command line to ``/usr/local/bin/ollama runner --model <blob> ...`` and its process
name to ``ollama``, so /proc/PID/cmdline, ps and psutil see what they would see on a real host.

Protocol with serve.py (the real runner talks HTTP on its port; a pipe is enough here, the port is
still bound so the process shows a listening socket):
  stdin, first line: JSON settings (the "load request": context size, parallel, flash attention,
    the model's scripted behaviour); then nothing: EOF means the server is gone, so the runner exits
    (no orphan runners even if serve.py is SIGKILLed).
  stdout: JSON events: ``log`` (a line in llama.cpp's or the Go runner's format, for the server's log),
    ``progress`` while reading, ``ready`` once loaded.
  stderr: anything unplanned (a Python traceback); serve.py relays it into its log as is.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripted_ollama import FAKE_EXE, set_proctitle, slog_line, version_tuple  # noqa: E402

MiB = 1 << 20


def _arg(argv: list[str], flag: str, default: str | None = None) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else default


def _emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _log(line: str) -> None:
    # Log lines travel on the event channel so the server logs them in order with its own lines
    # ("llama runner started" after the load lines, as in a real log); stderr is for crashes only.
    _emit({"event": "log", "line": line})


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "runner":
        _log("usage: runner.py runner --model PATH --port PORT")
        return 2
    settings = json.loads(sys.stdin.readline() or "{}")
    if settings.get("proctitle", True):
        set_proctitle(" ".join([settings.get("exe", FAKE_EXE), *argv]), comm="ollama")
    model = _arg(argv, "--model")
    port = int(_arg(argv, "--port", "0") or 0)
    spec = settings.get("spec", {})
    version = settings.get("version", "0.12.11")
    # llama.cpp renamed llm_load_tensors to load_tensors in early 2025 (Ollama ~0.6).
    pfx = settings.get("tensors_prefix") or ("load_tensors" if version_tuple(version) >= (0, 6)
                                             else "llm_load_tensors")
    ctx_pfx = "llama_context" if pfx == "load_tensors" else "llama_new_context_with_model"

    # Bind the port the server chose, as the real runner's HTTP server does.
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(8)
    except OSError:
        pass

    sources = settings.get("sources", {})
    _log(slog_line("INFO", sources.get("runner_start", "runner.go:864"), "starting go runner"))
    if "runner_system" in sources:
        info = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | LLAMAFILE = 1 | cgo(gcc)"
        _log(slog_line("INFO", sources["runner_system"], "system", info=info, threads=settings.get("threads", 1)))
    # log.Println routed through slog carries no caller: Go prints the empty source as ".:0".
    _log(slog_line("INFO", ".:0", f"Server listening on 127.0.0.1:{port}"))

    blocks = int(spec.get("block_count", 24))
    total = blocks + 1
    off = int(settings.get("gpu_layers", total))
    size = os.path.getsize(model)
    _log(f"llama_model_loader: loaded meta data with 9 key-value pairs and 0 tensors from {model} "
         "(version GGUF V3 (latest))")
    mmap = "true" if settings.get("use_mmap", True) else "false"
    _log(f"{pfx}: loading model tensors, this can take a while... (mmap = {mmap})")

    # Read the whole file: a cold page cache makes this slower, exactly what cold_disk measures.
    t0 = time.monotonic()
    read = 0
    last = t0
    with open(model, "rb", buffering=0) as f:
        while True:
            chunk = f.read(4 * MiB)
            if not chunk:
                break
            read += len(chunk)
            now = time.monotonic()
            if now - last >= 0.1:
                _emit({"event": "progress", "progress": round(read / max(1, size), 2)})
                last = now
    read_s = time.monotonic() - t0
    _log(f"scripted_runner: read {read} bytes of {model} in {read_s:.6f} s")

    if spec.get("fail_load"):
        _log("llama_model_load: error loading model: error loading model vocabulary: "
             "unknown pre-tokenizer type: 'qwen9'")
        _log("llama_model_load_from_file_impl: failed to load model")
        _log(f"panic: unable to load model: {model}")
        return 2

    if off > 0:
        _log(f"{pfx}: offloading {min(off, blocks)} repeating layers to GPU")
        if off >= total:
            _log(f"{pfx}: offloading output layer to GPU")
    _log(f"{pfx}: offloaded {off}/{total} layers to GPU")
    mib = size / MiB
    gpu_mib = mib * off / total if off < total else mib * 0.98
    if off > 0:
        _log(f"{pfx}: {'CUDA0':>12} model buffer size = {gpu_mib:8.2f} MiB")
    _log(f"{pfx}: {'CPU_Mapped':>12} model buffer size = {mib - gpu_mib if off > 0 else mib:8.2f} MiB")

    load_sleep = float(spec.get("load_s", 0.0))
    t1 = time.monotonic()
    time.sleep(load_sleep)
    slept = time.monotonic() - t1

    _log(f"{ctx_pfx}: n_seq_max     = {settings.get('parallel', 1)}")
    _log(f"{ctx_pfx}: n_ctx         = {settings.get('ctx_size', 4096)}")
    _log(f"{ctx_pfx}: n_batch       = {settings.get('batch_size', 512)}")
    _log(f"{ctx_pfx}: flash_attn    = {1 if settings.get('flash_attn') else 0}")
    kv = settings.get("kv_cache_type") or "f16"
    _log(f"llama_kv_cache_unified: KV self size = {float(settings.get('kv_mib', 1.0)):7.2f} MiB, K ({kv}), V ({kv})")
    _emit({"event": "ready", "bytes_read": read, "read_s": read_s, "load_sleep_s": slept,
           "ready_mono": time.monotonic(), "ready_wall": time.time()})

    # Stay resident until the server goes away or kills us.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        while sys.stdin.readline():
            pass
    except (OSError, ValueError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
