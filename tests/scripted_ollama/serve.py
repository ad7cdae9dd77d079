#!/usr/bin/env python3
"""The ``ollama serve`` stand-in: Ollama's HTTP API, scheduler and log, with known injected delays.

Run: ``python tests/scripted_ollama/serve.py --home DIR`` with OLLAMA_* in the environment (read once
at start, like Ollama). DIR holds ``scripted.json`` (version, log style, model specs: written by the
harness), ``serve.pid`` and ``truth.jsonl`` (the server's own account of every generate/chat request).
The log goes to stderr; the harness and restart.sh append it to DIR/server.log.

Scripted-only knobs, in the environment (they win) or scripted.json: SCRIPTED_OLLAMA_VERSION,
SCRIPTED_OLLAMA_LOG_STYLE (slog | journald | docker), SCRIPTED_OLLAMA_MODELS (JSON: model name →
fields of models.ModelSpec to override, e.g. delays).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripted_ollama import (  # noqa: E402
    DEFAULT_VERSION, FAKE_EXE, GO_MAX_DURATION_NS, LogWriter, env_keep_alive_ns, gin_line, go_bool, go_duration,
    go_map, keep_alive_ns, new_runner_style, now_pair, rfc3339, set_proctitle, supports_logprobs, version_tuple,
)
from scripted_ollama.models import (  # noqa: E402
    ModelSpec, StoredModel, merge_models, resolve, scan_store, specs_from_file,
)

RUNNER_PY = Path(__file__).resolve().parent / "runner.py"
TEMPLATE_TOKENS = ["<|im_start|>", "system", "You", "are", "Qwen,", "created", "by", "Alibaba", "Cloud.",
                   "You", "are", "a"]  # 12: the fixed chat-template prefix every templated prompt starts with
VOCAB = ("the of and to in is that it for as with was on be by this are from at or an which one can have "
         "all their there when more into time some these would other will about two like only new way such "
         "first also after use work each where well make them many then most how over just made through "
         "system data model light water energy cache memory layer value point order state change process "
         "result number form part level line rule test answer example idea question reason simple clear "
         "small large fast slow early late high low long short good main basic common general local often "
         "always never because while since until before after during under above between across against "
         "people world place hand head side house room word name fact case group area power field force "
         "shape color sound voice music paper story river ocean earth plant tree leaf seed bread yeast dough "
         "wheel frame speed balance motion signal orbit satellite clock distance angle chess piece board king "
         "queen pawn move check vaccine cell body immune train learn memory compiler code parse token tree "
         "print press book page letter ink type history").split()

# Source positions of the log lines (file:line in Ollama's source), by the first version they hold for;
# a version takes the newest table at or below it.
SOURCES: list[tuple[tuple[int, ...], dict[str, str]]] = [
    ((0, 0), {"config": "routes.go:1187", "listen": "routes.go:1238", "compute": "types.go:131",
              "fa": "server.go:216", "fa_on": "server.go:223", "kv": "server.go:234", "start": "server.go:376",
              "loaded": "sched.go:449", "wait": "server.go:555", "status": "server.go:583",
              "progress": "server.go:600", "started": "server.go:594", "gone": "server.go:475",
              "error": "sched.go:455", "abort": "server.go:869", "vram": "sched.go:631",
              "runner_start": "runner.go:936", "runner_system": "runner.go:937"}),
    ((0, 12, 0), {"config": "routes.go:1475", "listen": "routes.go:1528", "compute": "types.go:131",
                  "fa": "server.go:210", "fa_on": "server.go:217", "kv": "server.go:228", "start": "server.go:399",
                  "loaded": "sched.go:470", "wait": "server.go:1251", "status": "server.go:1285",
                  "progress": "server.go:1295", "started": "server.go:1289", "gone": "server.go:1171",
                  "error": "sched.go:476", "abort": "server.go:1420", "vram": "sched.go:345",
                  "runner_start": "runner.go:864"}),
    ((0, 12, 11), {"config": "routes.go:1544", "listen": "routes.go:1597", "compute": "types.go:131",
                   "fa": "server.go:202", "fa_on": "server.go:209", "kv": "server.go:220", "start": "server.go:392",
                   "loaded": "sched.go:517", "wait": "server.go:1294", "status": "server.go:1328",
                   "progress": "server.go:1338", "started": "server.go:1332", "gone": "server.go:1214",
                   "error": "sched.go:523", "abort": "server.go:1497", "vram": "sched.go:349",
                   "runner_start": "runner.go:963"}),
]


def sources_for(version: str) -> dict[str, str]:
    v = version_tuple(version)
    return next(table for first, table in reversed(SOURCES) if v >= first)


# ---- configuration -----------------------------------------------------------------------------
@dataclass
class Config:
    """The effective settings, defaults included, read once at start like envconfig."""

    home: Path
    host: str
    port: int
    keep_alive_ns: int
    num_parallel: int
    flash_attention: bool
    kv_cache_type: str
    context_length: int
    max_loaded: int
    max_queue: int
    load_timeout_s: float
    models_dir: Path
    debug: bool
    version: str
    log_style: str
    exe: str
    proctitle: bool
    env_map: dict[str, str]
    specs: dict[str, ModelSpec]
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def sources(self) -> dict[str, str]:
        return sources_for(self.version)


def _uint(env: dict[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip().strip("\"'")
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


def load_config(home: Path, env: dict[str, str]) -> Config:
    scripted: dict[str, Any] = {}
    try:
        scripted = json.loads((home / "scripted.json").read_text())
    except (OSError, ValueError):
        pass
    version = env.get("SCRIPTED_OLLAMA_VERSION") or scripted.get("version") or DEFAULT_VERSION
    log_style = env.get("SCRIPTED_OLLAMA_LOG_STYLE") or scripted.get("log_style") or "slog"
    specs = specs_from_file(home / "scripted.json")
    if env.get("SCRIPTED_OLLAMA_MODELS"):
        specs = {m.name: m for m in merge_models(specs.values(), json.loads(env["SCRIPTED_OLLAMA_MODELS"]))}
    new = version_tuple(version) >= (0, 6)

    host_raw = env.get("OLLAMA_HOST", "").strip().strip("\"'")
    scheme, _, hostport = host_raw.rpartition("://") if "://" in host_raw else ("http", "", host_raw)
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "11434")
    host = host or "127.0.0.1"
    port = port or "11434"

    ka_ns = env_keep_alive_ns(env.get("OLLAMA_KEEP_ALIVE", ""))
    fa = go_bool(env.get("OLLAMA_FLASH_ATTENTION", ""))
    kv = env.get("OLLAMA_KV_CACHE_TYPE", "").strip()
    ctx = _uint(env, "OLLAMA_CONTEXT_LENGTH", 4096) if new else 2048
    num_parallel = _uint(env, "OLLAMA_NUM_PARALLEL", 1 if new else 0)
    max_loaded = _uint(env, "OLLAMA_MAX_LOADED_MODELS", 0)
    max_queue = _uint(env, "OLLAMA_MAX_QUEUE", 512)
    models_dir = Path(env.get("OLLAMA_MODELS") or home / "models")
    debug_raw = env.get("OLLAMA_DEBUG", "").strip()
    debug = (_uint(env, "OLLAMA_DEBUG", 0) > 0) if debug_raw.lstrip("-").isdigit() else go_bool(debug_raw)
    load_timeout = env_keep_alive_ns(env.get("OLLAMA_LOAD_TIMEOUT", "") or "5m")

    def flag(key: str) -> str:
        return "true" if go_bool(env.get(key, "")) else "false"

    def go_list(items: list[str]) -> str:
        return "[" + " ".join(items) + "]"

    origins = [o for o in env.get("OLLAMA_ORIGINS", "").split(",") if o]
    for o in ("localhost", "127.0.0.1", "0.0.0.0"):
        origins += [f"http://{o}", f"https://{o}", f"http://{o}:*", f"https://{o}:*"]
    origins += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
    # envconfig.Values(): every variable Ollama knows, as fmt prints its parsed value.
    env_map = {k: env.get(k, "") for k in (
        "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
        "HSA_OVERRIDE_GFX_VERSION", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
        "no_proxy", "OLLAMA_LLM_LIBRARY")}
    env_map.update({k: flag(k) for k in ("OLLAMA_NOHISTORY", "OLLAMA_NOPRUNE", "OLLAMA_SCHED_SPREAD",
                                         "OLLAMA_MULTIUSER_CACHE", "OLLAMA_INTEL_GPU")})
    env_map.update({
        # v0.7+ prints the slog level; before, OLLAMA_DEBUG was a plain bool.
        "OLLAMA_DEBUG": ("DEBUG" if debug else "INFO") if new else ("true" if debug else "false"),
        "OLLAMA_FLASH_ATTENTION": "true" if fa else "false", "OLLAMA_KV_CACHE_TYPE": kv,
        "OLLAMA_GPU_OVERHEAD": str(_uint(env, "OLLAMA_GPU_OVERHEAD", 0)),
        "OLLAMA_HOST": f"{scheme}://{host}:{port}", "OLLAMA_KEEP_ALIVE": go_duration(ka_ns),
        "OLLAMA_LOAD_TIMEOUT": go_duration(load_timeout), "OLLAMA_MAX_LOADED_MODELS": str(max_loaded),
        "OLLAMA_MAX_QUEUE": str(max_queue), "OLLAMA_MODELS": str(models_dir),
        "OLLAMA_NUM_PARALLEL": str(num_parallel), "OLLAMA_ORIGINS": go_list(origins),
    })
    if new:
        remotes = env.get("OLLAMA_REMOTES", "")
        env_map.update({"OLLAMA_CONTEXT_LENGTH": str(ctx), "OLLAMA_NEW_ENGINE": flag("OLLAMA_NEW_ENGINE"),
                        "OLLAMA_REMOTES": go_list(remotes.split(",") if remotes else ["ollama.com"])})
    return Config(home=home, host=host, port=int(port), keep_alive_ns=ka_ns,
                  # 0 ("auto", before v0.6) → 1: the scripted GPU never has room for more
                  num_parallel=max(1, num_parallel), flash_attention=fa, kv_cache_type=kv, context_length=ctx,
                  max_loaded=max_loaded or 3,  # 0 = 3 × GPUs; the scripted host has one
                  max_queue=max_queue, load_timeout_s=load_timeout / 1e9, models_dir=models_dir, debug=debug,
                  version=version, log_style=log_style, exe=scripted.get("exe", FAKE_EXE),
                  proctitle=bool(scripted.get("proctitle", True)), env_map=env_map, specs=specs)


# ---- the model's "behaviour" -------------------------------------------------------------------
def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def generate_words(spec: ModelSpec, prompt: list[str], n: int, seed: object) -> list[tuple[str, float, list]]:
    """Deterministic "greedy" output: words depend on the weights, the prompt and the previous word, so
    quantization variants (same ``weights``) agree until a drift point, then diverge like real ones."""
    ph = _h(*prompt)
    out: list[tuple[str, float, list]] = []
    prev = ""
    for i in range(n):
        h = _h(spec.weights, ph, seed, i, prev)
        idx = h % len(VOCAB)
        logprob = -((h >> 16) % 2000) / 1000.0
        if spec.weights != spec.name:
            logprob = min(0.0, logprob + ((_h(spec.name, ph, i) % 101) - 50) / 1000.0)
        if spec.drift_per_mille and _h(spec.name, "drift", ph, seed, i, prev) % 1000 < spec.drift_per_mille:
            idx = (idx + 1 + (h >> 40) % (len(VOCAB) - 1)) % len(VOCAB)
            logprob = min(logprob, -1.2)
        word = VOCAB[idx]
        alts = [(VOCAB[(idx + k * 7) % len(VOCAB)], round(logprob - 0.5 * k - 0.3, 4)) for k in range(1, 6)]
        out.append((word, round(logprob, 4), alts))
        prev = word
    return out


# ---- runners and the scheduler -----------------------------------------------------------------
class LoadError(Exception):
    pass


@dataclass(frozen=True)
class LoadOpts:
    """The request options that are runner settings: changing one forces a reload (reference: ollama.md)."""

    num_ctx: int
    num_batch: int
    num_gpu: int
    num_thread: int
    use_mmap: bool | None
    main_gpu: int


class Runner:
    """A loaded (or loading) model: the child process and the per-runner state Ollama keeps."""

    def __init__(self, spec: ModelSpec, stored: StoredModel, opts: LoadOpts, cfg: Config):
        self.spec, self.stored, self.opts, self.cfg = spec, stored, opts, cfg
        self.state = "loading"  # loading → ready → gone
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.port = 0
        self.refcount = 0
        self.session_ns = cfg.keep_alive_ns
        self.expires_wall = time.time() + 3600
        self.expires_mono = float("inf")
        self.last_used = time.monotonic()
        self.parallel = cfg.num_parallel
        self.fa = cfg.flash_attention and spec.fa_supported
        self.kv_type = (cfg.kv_cache_type or "f16") if self.fa else "f16"
        self.gpu_layers = spec.offloaded_layers if opts.num_gpu < 0 else min(opts.num_gpu, spec.total_layers)
        self.slots: list[list[str]] = [[] for _ in range(self.parallel)]
        self.slot_busy = [False] * self.parallel
        self.slot_used = [0.0] * self.parallel
        self.cond = threading.Condition()
        self.load_info: dict[str, Any] = {}
        self.alive = True

    @property
    def kv_bytes(self) -> int:
        per = {"q8_0": 128, "q4_0": 64}.get(self.kv_type, 256)  # scripted KV cache: bytes per context token
        return self.opts.num_ctx * self.parallel * per

    @property
    def size(self) -> int:
        return self.stored.size + self.kv_bytes

    @property
    def size_vram(self) -> int:
        return self.size * self.gpu_layers // self.spec.total_layers

    def touch(self, session_ns: int) -> None:
        self.session_ns = session_ns
        self.last_used = time.monotonic()
        self._set_expiry()

    def _set_expiry(self) -> None:
        now_w, now_m = time.time(), time.monotonic()
        if self.session_ns >= GO_MAX_DURATION_NS:
            self.expires_wall, self.expires_mono = now_w + GO_MAX_DURATION_NS / 1e9, float("inf")
        else:
            self.expires_wall, self.expires_mono = now_w + self.session_ns / 1e9, now_m + self.session_ns / 1e9

    # Slots: OLLAMA_NUM_PARALLEL sequences, each with its own prompt cache, like the runner's.
    def take_slot(self, tokens: list[str]) -> tuple[int, int, float]:
        t0 = time.monotonic()
        with self.cond:
            while all(self.slot_busy):
                self.cond.wait(0.05)
            free = [i for i, b in enumerate(self.slot_busy) if not b]

            def lcp(i: int) -> int:
                n = 0
                for a, b in zip(self.slots[i], tokens):
                    if a != b:
                        break
                    n += 1
                return n

            best = max(free, key=lambda i: (lcp(i), -self.slot_used[i]))
            # The last prompt token is always evaluated again (numPast == len(prompt) → numPast--).
            cached = min(lcp(best), len(tokens) - 1)
            self.slot_busy[best] = True
            return best, max(0, cached), time.monotonic() - t0

    def active(self) -> int:
        with self.cond:
            return sum(self.slot_busy)

    def free_slot(self, i: int, cache: list[str]) -> None:
        with self.cond:
            self.slots[i] = cache
            self.slot_busy[i] = False
            self.slot_used[i] = time.monotonic()
            self.cond.notify_all()

    def kill(self) -> None:
        self.alive = False
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Scheduler:
    """One runner per model; loads one at a time; LRU eviction; keep_alive expiry; VRAM release delay."""

    def __init__(self, cfg: Config, log: LogWriter):
        self.cfg, self.log = cfg, log
        self.cond = threading.Condition()
        self.load_lock = threading.Lock()
        self.runners: dict[str, Runner] = {}
        self.terminating: set[Runner] = set()
        self.stopping = False
        threading.Thread(target=self._reap, name="reaper", daemon=True).start()

    def ready(self, name: str, opts: LoadOpts) -> Runner | None:
        with self.cond:
            r = self.runners.get(name)
            return r if r and r.state == "ready" and r.opts == opts else None

    def acquire(self, spec: ModelSpec, stored: StoredModel, opts: LoadOpts, session_ns: int
                ) -> tuple[Runner, dict[str, Any] | None]:
        """A ready runner for the model, loading it if needed; returns (runner, load info or None)."""
        with self.cond:
            r = self.runners.get(spec.name)
            if r and r.state == "ready" and r.opts == opts and r.alive:
                r.refcount += 1
                r.touch(session_ns)
                return r, None
        t_wait = time.monotonic()
        with self.load_lock:  # Ollama's scheduler loads one model at a time
            while True:
                with self.cond:
                    r = self.runners.get(spec.name)
                    if r and r.state == "ready" and r.opts == opts and r.alive:
                        r.refcount += 1
                        r.touch(session_ns)
                        return r, None
                    if r and (r.opts != opts or not r.alive):
                        if r.refcount == 0:
                            self._drop(r, "reload")
                            continue
                        self.cond.wait(0.02)
                        continue
                    if len(self.runners) >= self.cfg.max_loaded:
                        idle = [x for x in self.runners.values() if x.refcount == 0]
                        if idle:
                            self._drop(min(idle, key=lambda x: x.last_used), "evict")
                            continue
                        self.cond.wait(0.02)
                        continue
                    if self.terminating:  # an unloaded runner still holds its VRAM: wait for it to exit
                        self.cond.wait(0.02)
                        continue
                    r = Runner(spec, stored, opts, self.cfg)
                    self.runners[spec.name] = r
                    break
            wait_s = time.monotonic() - t_wait
            try:
                info = self._load(r)
            except LoadError:
                with self.cond:
                    if self.runners.get(spec.name) is r:
                        del self.runners[spec.name]
                    self.cond.notify_all()
                raise
            info["load_wait_s"] = wait_s
            with self.cond:
                r.state = "ready"
                r.refcount += 1
                r.touch(session_ns)
                r.load_info = info
                self.cond.notify_all()
            return r, info

    def release(self, r: Runner) -> None:
        # The keep-alive is the one of the request scheduled last (acquire/unload set it), as in Ollama.
        with self.cond:
            r.refcount -= 1
            r.last_used = time.monotonic()
            if r.refcount == 0:
                if r.session_ns == 0:
                    self._drop(r, "keep_alive 0")
                else:
                    r._set_expiry()
            self.cond.notify_all()

    def unload(self, name: str) -> None:
        """keep_alive 0 on an empty request: drop now if idle, else as soon as its requests finish."""
        with self.cond:
            r = self.runners.get(name)
            if r is None:
                return
            r.session_ns = 0
            if r.refcount == 0:
                self._drop(r, "keep_alive 0")

    def _drop(self, r: Runner, why: str) -> None:
        # Caller holds self.cond. /api/ps stops listing it now; the process (and its VRAM) goes later.
        if self.runners.get(r.spec.name) is r:
            del self.runners[r.spec.name]
        r.state = "gone"
        self.terminating.add(r)
        self.log.log("DEBUG", self.cfg.sources["vram"], "starting background wait for VRAM recovery",
                     runner=r.spec.name, reason=why)

        def finish() -> None:
            time.sleep(r.spec.vram_release_s)
            r.kill()
            with self.cond:
                self.terminating.discard(r)
                self.cond.notify_all()

        threading.Thread(target=finish, name=f"unload-{r.pid}", daemon=True).start()

    def _reap(self) -> None:
        while not self.stopping:
            time.sleep(0.02)
            now = time.monotonic()
            with self.cond:
                for r in list(self.runners.values()):
                    if r.state == "ready" and r.refcount == 0 and now >= r.expires_mono:
                        self._drop(r, "expired")

    def _load(self, r: Runner) -> dict[str, Any]:
        cfg, spec, src = self.cfg, r.spec, self.cfg.sources
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        r.port = s.getsockname()[1]
        s.close()
        if cfg.flash_attention and not spec.fa_supported:
            self.log.log("WARN", src["fa"], "flash attention enabled but not supported by model")
        if r.fa:
            self.log.log("INFO", src["fa_on"], "enabling flash attention")
        elif cfg.kv_cache_type and cfg.kv_cache_type != "f16":
            self.log.log("WARN", src["kv"], "quantized kv cache requested but flash attention disabled",
                         type=cfg.kv_cache_type)
        blob = str(r.stored.blob)
        if new_runner_style(cfg.version):
            args = ["runner", "--model", blob, "--port", str(r.port)]
        else:
            args = ["runner", "--model", blob, "--ctx-size", str(r.opts.num_ctx * r.parallel),
                    "--batch-size", str(r.opts.num_batch), "--n-gpu-layers", str(r.gpu_layers),
                    "--threads", str(r.opts.num_thread or cfg.threads)]
            if r.fa:
                args.append("--flash-attn")
                if r.kv_type != "f16":
                    args += ["--kv-cache-type", r.kv_type]
            if r.opts.use_mmap is False:
                args.append("--no-mmap")
            args += ["--parallel", str(r.parallel), "--port", str(r.port)]
        settings = {"spec": spec.to_json(), "version": cfg.version, "sources": src, "exe": cfg.exe,
                    "proctitle": cfg.proctitle,
                    "ctx_size": r.opts.num_ctx * r.parallel, "batch_size": r.opts.num_batch,
                    "gpu_layers": r.gpu_layers, "threads": r.opts.num_thread or cfg.threads, "parallel": r.parallel,
                    "flash_attn": r.fa, "kv_cache_type": r.kv_type, "use_mmap": r.opts.use_mmap is not False,
                    "kv_mib": r.kv_bytes / (1 << 20)}
        t0w, t0 = now_pair()
        self.log.log("INFO", src["start"],
                     "starting runner" if new_runner_style(cfg.version) else "starting llama server",
                     cmd=" ".join([cfg.exe, *args]))
        proc = subprocess.Popen([sys.executable, str(RUNNER_PY), *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                close_fds=True, env={**os.environ, "OLLAMA_LIBRARY_PATH": "/usr/local/lib/ollama"})
        r.proc, r.pid = proc, proc.pid
        assert proc.stdin and proc.stdout and proc.stderr
        proc.stdin.write(json.dumps(settings) + "\n")
        proc.stdin.flush()
        last_err: list[str] = []

        def relay() -> None:
            for line in proc.stderr:  # type: ignore[union-attr]
                line = line.rstrip("\n")
                if "error" in line.lower() or line.startswith("panic:"):
                    last_err.append(line)
                self.log.raw(line)

        relay_t = threading.Thread(target=relay, name=f"relay-{proc.pid}", daemon=True)
        relay_t.start()
        with self.cond:
            count = len(self.runners)
        self.log.log("INFO", src["loaded"], "loaded runners", count=count)
        self.log.log("INFO", src["wait"], "waiting for llama runner to start responding")
        self.log.log("INFO", src["status"], "waiting for server to become available", status="llm server loading model")
        ready: dict[str, Any] | None = None
        # OLLAMA_LOAD_TIMEOUT is a stall timeout: it runs from the last sign of progress.
        stall = {"t": time.monotonic(), "p": 0.0, "timed_out": False}
        loading = threading.Event()
        loading.set()

        def watchdog() -> None:
            while loading.is_set() and proc.poll() is None:
                if time.monotonic() - stall["t"] > cfg.load_timeout_s:
                    stall["timed_out"] = True
                    proc.kill()
                    return
                time.sleep(0.02)

        threading.Thread(target=watchdog, name=f"load-timeout-{proc.pid}", daemon=True).start()
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "log":
                text = str(ev.get("line", ""))
                if "error" in text.lower() or text.startswith("panic:"):
                    last_err.append(text)
                self.log.raw(text)
            elif ev.get("event") == "progress":
                stall["t"], stall["p"] = time.monotonic(), float(ev.get("progress", 0))
                self.log.log("DEBUG", src["progress"], f"model load progress {ev.get('progress', 0):0.2f}")
            elif ev.get("event") == "ready":
                ready = ev
                break
        loading.clear()
        if ready is None:
            code = proc.wait()
            relay_t.join(2)
            if stall["timed_out"]:
                msg = f"timed out waiting for llama runner to start - progress {stall['p']:0.2f} - "
                self.log.log("ERROR", src["error"], "error loading llama server", error=msg)
                raise LoadError(msg)
            detail = next((ln.split("error loading model:", 1)[1].strip() for ln in last_err
                           if "error loading model:" in ln), "")
            msg = f"llama runner process has terminated: exit status {code}"
            if detail:
                msg = f"llama runner process has terminated: error loading model: {detail}"
            self.log.log("ERROR", src["error"], "error loading llama server", error=msg)
            raise LoadError(msg)
        t1w, t1 = now_pair()
        self.log.log("INFO", src["started"], f"llama runner started in {t1 - t0:0.2f} seconds")

        def later_lines() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == "log":
                    self.log.raw(str(ev.get("line", "")))

        threading.Thread(target=later_lines, name=f"events-{proc.pid}", daemon=True).start()
        threading.Thread(target=self._watch, args=(r,), name=f"watch-{proc.pid}", daemon=True).start()
        return {"load_s": t1 - t0, "spawn_wall": t0w, "spawn_mono": t0, "ready_wall": t1w, "ready_mono": t1,
                "runner_pid": proc.pid, "runner_bytes_read": ready.get("bytes_read"),
                "runner_read_s": ready.get("read_s"), "runner_load_sleep_s": ready.get("load_sleep_s")}

    def _watch(self, r: Runner) -> None:
        """A runner that dies on its own (crash, OOM killer, a test's kill) is noticed, like Ollama does."""
        assert r.proc
        r.proc.wait()
        r.alive = False
        with self.cond:
            if self.runners.get(r.spec.name) is r and r.state == "ready":
                self.log.log("WARN", self.cfg.sources["gone"], "llama runner process no longer running",
                             sys=r.proc.returncode, string=f"exit status {r.proc.returncode}")
                del self.runners[r.spec.name]
                r.state = "gone"
                self.cond.notify_all()

    def ps(self) -> list[Runner]:
        with self.cond:
            rs = [r for r in self.runners.values() if r.state == "ready"]
        return sorted(rs, key=lambda r: -r.expires_wall)

    def shutdown(self) -> None:
        self.stopping = True
        with self.cond:
            everything = list(self.runners.values()) + list(self.terminating)
            self.runners.clear()
        for r in everything:
            r.kill()


# ---- HTTP ---------------------------------------------------------------------------------------
class Truth:
    """truth.jsonl: one line per generate/chat request, the server's own account."""

    def __init__(self, path: Path):
        self.path, self._lock, self._seq = path, threading.Lock(), 0

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, default=str) + "\n"
        with self._lock, open(self.path, "a") as f:
            f.write(line)


class ClientGone(Exception):
    pass


class App:
    """Everything a request handler needs."""

    def __init__(self, cfg: Config, log: LogWriter):
        self.cfg, self.log = cfg, log
        self.sched = Scheduler(cfg, log)
        self.truth = Truth(cfg.home / "truth.jsonl")
        self.queued = 0
        self.qlock = threading.Lock()

    def store(self) -> dict[str, StoredModel]:
        return scan_store(self.cfg.models_dir)

    def spec_for(self, stored: StoredModel) -> ModelSpec:
        # A model on disk with no scripted spec behaves like tiny's defaults.
        return self.cfg.specs.get(stored.name) or ModelSpec(stored.name)


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    cfg, log = app.cfg, app.log

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # TCP_NODELAY, as Go's net/http sets on every connection

        def log_message(self, *a: Any) -> None:
            pass  # the GIN line is the access log

        def parse_request(self) -> bool:
            # Called as soon as the request line has arrived: the earliest moment the server knows of
            # the request. Truth's arrival (and GIN's latency start) is taken here, before Python's
            # comparatively slow header parsing, so it is not counted as client-side time.
            self._arrival = (time.time(), time.monotonic(), time.monotonic_ns())
            return super().parse_request()

        def send_response(self, code: int, message: str | None = None) -> None:
            self._status = code
            self.send_response_only(code, message)
            self.send_header("Date", self.date_time_string())

        # -- plumbing --
        def _begin(self) -> None:
            self._t0 = self._arrival[2]
            self._status = 0

        def _end(self) -> None:
            log.raw(gin_line(self._status or 200, time.monotonic_ns() - self._t0, self.client_address[0],
                             self.command, self.path.split("?")[0]))

        def _json(self, code: int, obj: Any) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _text(self, code: int, text: str) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            if not raw:
                raise EOFError
            return json.loads(raw)

        def do_GET(self) -> None:
            self._begin()
            try:
                path = self.path.split("?")[0]
                if path in ("/", ""):
                    self._text(200, "Ollama is running")
                elif path == "/api/version":
                    self._json(200, {"version": cfg.version})
                elif path == "/api/tags":
                    self._tags()
                elif path == "/api/ps":
                    self._ps()
                else:
                    self._text(404, "404 page not found")
            finally:
                self._end()

        do_HEAD = do_GET

        def do_POST(self) -> None:
            self._begin()
            try:
                path = self.path.split("?")[0]
                if path == "/api/show":
                    self._show()
                elif path in ("/api/generate", "/api/chat"):
                    self._generate(chat=path == "/api/chat")
                else:
                    self._text(404, "404 page not found")
            except ClientGone:
                self.close_connection = True
            finally:
                self._end()

        # -- listing endpoints --
        def _tags(self) -> None:
            models = []
            for m in sorted(app.store().values(), key=lambda m: -m.modified_at):
                spec = app.spec_for(m)
                models.append({"name": m.name, "model": m.name, "modified_at": rfc3339(m.modified_at),
                               "size": m.size, "digest": m.digest, "details": spec.details()})
            self._json(200, {"models": models})

        def _ps(self) -> None:
            out = []
            for r in app.sched.ps():
                out.append({"name": r.spec.name, "model": r.spec.name, "size": r.size, "digest": r.stored.digest,
                            "details": r.spec.details(), "expires_at": rfc3339(r.expires_wall),
                            "size_vram": r.size_vram, "context_length": r.opts.num_ctx})
            self._json(200, {"models": out})

        def _show(self) -> None:
            try:
                req = self._body()
            except (EOFError, ValueError):
                return self._json(400, {"error": "missing request body"})
            name = req.get("model") or req.get("name") or ""
            store = app.store()
            key = resolve(name, store)
            if key is None:
                return self._json(404, {"error": f"model '{name}' not found"})
            m = store[key]
            spec = app.spec_for(m)
            modelfile = (f'# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this, '
                         f'replace FROM with:\n# FROM {m.name}\n\nFROM {m.blob}\nTEMPLATE """{spec.template}"""\n'
                         + "".join(f"PARAMETER {line}\n" for line in spec.parameters.splitlines()))
            self._json(200, {"license": "Apache License 2.0", "modelfile": modelfile, "parameters": spec.parameters,
                             "template": spec.template, "details": spec.details(), "model_info": spec.model_info(),
                             **({"tensors": []} if req.get("verbose") else {}),
                             "capabilities": ["completion", "tools"] + (["thinking"] if spec.thinking_tokens else []),
                             "modified_at": rfc3339(m.modified_at)})

        # -- generation --
        def _write_chunk(self, obj: Any) -> None:
            data = (json.dumps(obj) + "\n").encode()
            try:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            except (BrokenPipeError, ConnectionResetError, OSError) as e:
                raise ClientGone() from e

        def _stream_headers(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def _generate(self, chat: bool) -> None:
            arrival_wall, arrival_mono, t0_ns = self._arrival
            endpoint = "/api/chat" if chat else "/api/generate"
            truth: dict[str, Any] = {"seq": app.truth.next_seq(), "endpoint": endpoint, "arrival_wall": arrival_wall,
                                     "arrival_mono": arrival_mono, "version": cfg.version}
            try:
                req = self._body()
            except EOFError:
                return self._fail(truth, 400, "missing request body")
            except ValueError as e:
                return self._fail(truth, 400, str(e))
            name = req.get("model", "")
            truth["model"] = name
            store = app.store()
            key = resolve(name, store) if name else None
            if key is None:
                return self._fail(truth, 404, f"model '{name}' not found")
            stored = store[key]
            spec = app.spec_for(stored)
            truth["model"] = key
            try:
                session_ns = keep_alive_ns(req.get("keep_alive"), cfg.keep_alive_ns)
            except ValueError as e:
                return self._fail(truth, 400, str(e))
            truth["keep_alive_s"] = session_ns / 1e9 if session_ns < GO_MAX_DURATION_NS else -1
            options = req.get("options") or {}
            if req.get("think") not in (None, False) and not spec.thinking_tokens:
                return self._fail(truth, 400, f'"{name}" does not support thinking')
            if chat:
                messages = req.get("messages") or []
                text = " ".join(str(m.get("content") or "") for m in messages)
                empty = not messages
                # what a conversation sent (its history), for tests of multi-turn clients
                truth["messages"] = [{"role": str(m.get("role")), "content": str(m.get("content") or "")}
                                     for m in messages]
            else:
                text = str(req.get("prompt") or "")
                empty = not text
            truth["prompt_head"] = text[:60]
            created = rfc3339(time.time(), utc=True)
            if empty and session_ns == 0:
                app.sched.unload(key)
                truth.update(kind="unload", status=200, end_wall=time.time(), end_mono=time.monotonic())
                app.truth.write(truth)
                return self._json(200, self._final_base(key, chat, created, "unload"))
            opts = LoadOpts(num_ctx=int(options.get("num_ctx") or cfg.context_length),
                            num_batch=int(options.get("num_batch") or 512),
                            num_gpu=int(options["num_gpu"]) if options.get("num_gpu") is not None else -1,
                            num_thread=int(options.get("num_thread") or 0),
                            use_mmap=options.get("use_mmap"), main_gpu=int(options.get("main_gpu") or 0))
            truth["loaded_at_arrival"] = app.sched.ready(key, opts) is not None
            with app.qlock:
                if app.queued >= cfg.max_queue:
                    over = True
                else:
                    app.queued += 1
                    over = False
            if over:
                return self._fail(truth, 503, "server busy, please try again.  maximum pending requests exceeded")
            try:
                try:
                    runner, info = app.sched.acquire(spec, stored, opts, session_ns)
                except LoadError as e:
                    truth["loaded_during"] = True
                    return self._fail(truth, 500, str(e))
            finally:
                with app.qlock:
                    app.queued -= 1
            load_ns = time.monotonic_ns() - t0_ns
            # joined_load: not loaded at arrival, but another request's load made it ready (we waited for it).
            truth.update(loaded_during=info is not None, runner_pid=runner.pid, load_duration_s=load_ns / 1e9,
                         joined_load=info is None and not truth["loaded_at_arrival"],
                         flash_attention=runner.fa, kv_cache_type=runner.kv_type, num_parallel=runner.parallel,
                         num_ctx=runner.opts.num_ctx)
            if info:
                truth.update({k: v for k, v in info.items() if k not in ("spawn_wall", "ready_wall")})
                truth["injected_load_s"] = spec.load_s
            try:
                if empty:
                    # The truth line goes out before the reply, so a client that has its answer can read it.
                    truth.update(kind="load", status=200, end_wall=time.time(), end_mono=time.monotonic())
                    app.truth.write(truth)
                    self._json(200, self._final_base(key, chat, created, "load"))
                    return
                truth["kind"] = "generate"
                self._run_generation(req, chat, key, spec, runner, text, options, t0_ns, load_ns, truth)
            finally:
                app.sched.release(runner)

        def _final_base(self, model: str, chat: bool, created: str, reason: str) -> dict[str, Any]:
            if chat:
                return {"model": model, "created_at": created, "message": {"role": "assistant", "content": ""},
                        "done_reason": reason, "done": True}
            return {"model": model, "created_at": created, "response": "", "done": True, "done_reason": reason}

        def _fail(self, truth: dict[str, Any], code: int, msg: str) -> None:
            truth.update(kind="error", status=code, error=msg, end_wall=time.time(), end_mono=time.monotonic())
            app.truth.write(truth)
            self._json(code, {"error": msg})

        def _run_generation(self, req: dict, chat: bool, model: str, spec: ModelSpec, runner: Runner, text: str,
                            options: dict, t0_ns: int, load_ns: int, truth: dict[str, Any]) -> None:
            raw = bool(req.get("raw")) and not chat
            tokens = ([] if raw else list(TEMPLATE_TOKENS)) + text.split()
            n_predict = options.get("num_predict")
            n_out = spec.default_tokens if n_predict is None or int(n_predict) < 0 else int(n_predict)
            reason = "stop" if n_predict is None or int(n_predict) < 0 else "length"
            temp = options.get("temperature")
            seed = options.get("seed")
            if seed is None and temp not in (None, 0, 0.0):
                seed = random.random()  # sampling without a seed: a different answer each time
            words = generate_words(spec, tokens, n_out, seed if seed is not None else "greedy")
            # A thinking model thinks unless told not to (Ollama since v0.12.4); thoughts count in num_predict.
            n_think = min(spec.thinking_tokens, n_out) if req.get("think") is not False else 0
            truth["thinking_tokens"] = n_think
            want_lp = bool(req.get("logprobs")) and supports_logprobs(cfg.version)
            top_k = int(req.get("top_logprobs") or 0) if want_lp else 0
            stream = req.get("stream", True) is not False
            created = lambda: rfc3339(time.time(), utc=True)  # noqa: E731

            slot, cached, queue_s = runner.take_slot(tokens)
            uncached = len(tokens) - cached
            gaps: list[float] = []
            sent_at: list[float] = []
            decode_sleep = 0.0
            pieces: list[str] = []
            client_gone = False
            prefill_plan = spec.prefill_s_per_token * uncached * (spec.fa_prefill_factor if runner.fa else 1.0)
            prefill_s: float | None = None
            t_first_tok: float | None = None
            t_last = time.monotonic()
            written = False

            def write_truth() -> None:
                # Once, before the stream's terminating chunk (or the non-streamed body): a client that
                # has seen the end of its response can read this line. "end" is the final object written.
                nonlocal written
                if written:
                    return
                written = True
                end_wall, end_mono = now_pair()
                truth.update(status=truth.get("status", 200), end_wall=end_wall, end_mono=end_mono,
                             client_gone=client_gone, slot=slot, queue_s=queue_s,
                             prompt_tokens=len(tokens), template_tokens=0 if raw else len(TEMPLATE_TOKENS),
                             cached_tokens=cached, uncached_tokens=uncached,
                             prefill_s_per_token=spec.prefill_s_per_token,
                             prefill_s_planned=prefill_plan, prefill_s=prefill_s, itl_s=spec.itl_s,
                             decode_s=(t_last - t_first_tok) if t_first_tok is not None else None,
                             decode_sleep_s=decode_sleep, eval_count=len(pieces), done_reason=reason,
                             gaps_s=[round(g, 6) for g in gaps], logprobs=want_lp, output="".join(pieces))
                app.truth.write(truth)

            try:
                # Prefill: the injected cost of every uncached prompt token.
                t_proc = time.monotonic()
                time.sleep(prefill_plan)
                if stream:
                    self._stream_headers()
                t_first_tok = time.monotonic()  # first token sampled: prompt eval ends, generation starts
                prefill_s = t_first_tok - t_proc
                t_last = t_first_tok
                for i, (word, lp, alts) in enumerate(words):
                    if i:
                        itl = spec.itl_s * (1 + spec.parallel_itl_penalty * max(0, runner.active() - 1))
                        t_s = time.monotonic()
                        time.sleep(itl)
                        decode_sleep += time.monotonic() - t_s
                    t_last = time.monotonic()
                    if not runner.alive:
                        if stream:
                            self._write_chunk({"error": "an error was encountered while running the model: "
                                                        "unexpected EOF"})
                        truth.update(status=200, error="runner died")
                        break
                    piece = word + " "
                    pieces.append(piece)
                    if stream:
                        obj = self._piece(model, chat, created(), piece, thinking=i < n_think)
                        if want_lp:
                            obj["logprobs"] = [self._lp(piece, lp, alts, top_k)]
                        self._write_chunk(obj)
                        now_m = time.monotonic()
                        if sent_at:
                            gaps.append(now_m - sent_at[-1])
                        sent_at.append(now_m)
                        if i == 0:
                            truth["first_token_wall"], truth["first_token_mono"] = time.time(), now_m
                eval_ns = int((t_last - t_first_tok) * 1e9)
                total_ns = time.monotonic_ns() - t0_ns
                final: dict[str, Any] = self._final_base(model, chat, created(), reason)
                if not chat:
                    final["context"] = [(_h(t) % 150000) for t in tokens + [p.strip() for p in pieces]]
                    if not stream:  # thoughts are not the answer (eval_count counts both)
                        final["response"] = "".join(pieces[n_think:])
                        final.update({"thinking": "".join(pieces[:n_think])} if n_think else {})
                elif not stream:
                    final["message"]["content"] = "".join(pieces[n_think:])
                    final["message"].update({"thinking": "".join(pieces[:n_think])} if n_think else {})
                if want_lp and not stream:
                    final["logprobs"] = [self._lp(p, lp, alts, top_k) for p, (_, lp, alts) in zip(pieces, words)]
                metrics = {"total_duration": total_ns, "load_duration": load_ns, "prompt_eval_count": len(tokens),
                           "prompt_eval_duration": int(prefill_s * 1e9), "eval_count": len(pieces),
                           "eval_duration": eval_ns}
                final.update({k: v for k, v in metrics.items() if v})  # omitempty
                if stream:
                    self._write_chunk(final)
                    write_truth()
                    try:
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError as e:
                        raise ClientGone() from e
                else:
                    # Not streamed: the first token reaches the client with everything else.
                    truth["first_token_wall"], truth["first_token_mono"] = now_pair()
                    write_truth()
                    self._json(200, final)
            except ClientGone:
                client_gone = True
                log.log("INFO", cfg.sources["abort"],
                        "aborting completion request due to client closing the connection")
            finally:
                runner.free_slot(slot, tokens + [p.strip() for p in pieces])
                write_truth()
            if client_gone:
                raise ClientGone()

        def _piece(self, model: str, chat: bool, created: str, piece: str, thinking: bool = False) -> dict[str, Any]:
            if chat:
                msg = {"role": "assistant", "content": "", "thinking": piece} if thinking else \
                    {"role": "assistant", "content": piece}
                return {"model": model, "created_at": created, "message": msg, "done": False}
            return {"model": model, "created_at": created, "done": False,
                    **({"thinking": piece, "response": ""} if thinking else {"response": piece})}

        def _lp(self, piece: str, lp: float, alts: list, top_k: int) -> dict[str, Any]:
            out: dict[str, Any] = {"token": piece, "logprob": lp, "bytes": list(piece.encode())}
            if top_k:
                top = [{"token": piece, "logprob": lp, "bytes": list(piece.encode())}]
                top += [{"token": w + " ", "logprob": a, "bytes": list((w + " ").encode())} for w, a in alts]
                out["top_logprobs"] = top[:top_k]
            return out

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True, type=Path)
    a = ap.parse_args()
    home = a.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = load_config(home, dict(os.environ))
    if cfg.proctitle:
        set_proctitle(f"{cfg.exe} serve", comm="ollama")
    log = LogWriter(sys.stderr, cfg.log_style, debug=cfg.debug)
    src = cfg.sources
    if version_tuple(cfg.version) >= (0, 7):
        log.log("INFO", src["config"], "server config", env=go_map(cfg.env_map))
    else:
        # Before v0.7 this line was written before Ollama installed its slog handler: Go's default
        # handler through the log package (LstdFlags | Lshortfile).
        log.raw(f"{time.strftime('%Y/%m/%d %H:%M:%S')} {src['config']}: INFO server config "
                f"env={json.dumps(go_map(cfg.env_map), ensure_ascii=False)}")
    app = App(cfg, log)
    try:
        httpd = Server((cfg.host, cfg.port), make_handler(app))
    except OSError as e:
        log.log("ERROR", "routes.go:1500", f"Error: listen tcp {cfg.host}:{cfg.port}: bind: {e.strerror}")
        return 1
    (home / "serve.pid").write_text(str(os.getpid()))
    log.log("INFO", src["listen"], f"Listening on {cfg.host}:{httpd.server_address[1]} (version {cfg.version})")
    log.log("INFO", src["compute"], "inference compute", id="GPU-5c0a7a1e-7c2d-4f2e-9d4e-1b2c3d4e5f60",
            library="cuda", variant="v12", compute="9.0", driver="12.4", name="NVIDIA H100 80GB HBM3",
            total="79.1 GiB", available="78.6 GiB")

    def on_term(*_: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        httpd.serve_forever(poll_interval=0.05)
    finally:
        app.sched.shutdown()  # a restart of `ollama serve` kills every runner
        httpd.server_close()
        try:
            if (home / "serve.pid").read_text().strip() == str(os.getpid()):
                (home / "serve.pid").unlink()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

