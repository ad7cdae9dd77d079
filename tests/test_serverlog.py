"""perfkit.servers.serverlog: Ollama's and llama-server's log lines, in every source format, and reading a log's new part."""

from __future__ import annotations

import os
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from perfkit.core.errors import PerfkitError
from perfkit.servers.serverlog import KINDS, CommandLogSource, FileLogSource, parse, parse_go_duration, parse_go_map, parse_line, strip_prefix

LOGS = Path(__file__).parent / "data" / "logs"
UTC = timezone.utc
CET = timezone(timedelta(hours=1))


def _ts(*a, tz=UTC) -> float:
    return datetime(*a, tzinfo=tz).timestamp()


def _events(name: str, **kw):
    lines = (LOGS / name).read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# "), "each sample log says what it imitates on its first line"
    evs = parse(lines, **kw)
    assert all(e.kind in KINDS for e in evs)
    return evs


def _kind(evs, kind):
    return [e for e in evs if e.kind == kind]


# --- Go value formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("178.535µs", 178.535e-6), ("178.535μs", 178.535e-6), ("42.108us", 42.108e-6), ("123ns", 123e-9),
    ("12.5ms", 0.0125), ("9.79s", 9.79), ("3m9s", 189.0), ("1h2m3s", 3723.0), ("2m38.123s", 158.123),
    ("2m0s", 120.0), ("0s", 0.0), ("  7.792014411s ", 7.792014411), ("-1.5s", -1.5),
])
def test_go_duration(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("text", ["", "abc", "3x", "1h2", "s", "1..2s", "m5"])
def test_go_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_go_map():
    env = parse_go_map("map[CUDA_VISIBLE_DEVICES: OLLAMA_CONTEXT_LENGTH:4096 OLLAMA_HOST:http://127.0.0.1:11434 "
                       "OLLAMA_KEEP_ALIVE:5m0s OLLAMA_KV_CACHE_TYPE: OLLAMA_ORIGINS:[http://localhost "
                       "https://localhost app://*] OLLAMA_REMOTES:[ollama.com] http_proxy:]")
    assert env == {"CUDA_VISIBLE_DEVICES": "", "OLLAMA_CONTEXT_LENGTH": "4096",
                   "OLLAMA_HOST": "http://127.0.0.1:11434", "OLLAMA_KEEP_ALIVE": "5m0s", "OLLAMA_KV_CACHE_TYPE": "",
                   "OLLAMA_ORIGINS": "http://localhost https://localhost app://*", "OLLAMA_REMOTES": "ollama.com",
                   "http_proxy": ""}
    assert parse_go_map("map[]") == {}
    assert parse_go_map("map[A:[] B:x]") == {"A": "", "B": "x"}


def test_slog_quoted_values_and_escapes():
    ev = parse_line(r'time=2026-11-24T10:00:00.5Z level=WARN source=x.go:1 msg="say \"hi\"\tnow" '
                    r'path="C:\\Users\\ana" n=3 empty="" odd=µs')
    assert ev.kind == "warning"
    assert ev.fields["msg"] == 'say "hi"\tnow'
    assert ev.fields["attrs"]["path"] == "C:\\Users\\ana"
    assert ev.fields["attrs"]["n"] == "3" and ev.fields["attrs"]["empty"] == "" and ev.fields["attrs"]["odd"] == "µs"
    assert ev.wall_unix_s == _ts(2026, 11, 24, 10, 0, 0, 500000)


# --- source prefixes ------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    'Nov 24 10:00:00 host ollama[1234]: time=2026-11-24T10:00:00.123Z level=INFO msg=x',
    'Nov  4 10:00:00.123456 host ollama[1234]: time=2026-11-24T10:00:00.123Z level=INFO msg=x',
    '2026-11-24T10:00:00+0000 host ollama[1234]: time=2026-11-24T10:00:00.123Z level=INFO msg=x',
    '2026-11-24T10:00:00.123456+01:00 host ollama[1234]: time=2026-11-24T10:00:00.123Z level=INFO msg=x',
    'ollama  | time=2026-11-24T10:00:00.123Z level=INFO msg=x',
    'ollama-1  | 2026-11-24T10:00:00.123456789Z time=2026-11-24T10:00:00.123Z level=INFO msg=x',
    '2026-11-24T10:00:00.123456789Z time=2026-11-24T10:00:00.123Z level=INFO msg=x',
    '\x1b[32m2026-11-24T10:00:00.123456789Z\x1b[0m time=2026-11-24T10:00:00.123Z level=INFO msg=x',
])
def test_strip_prefix(line):
    assert strip_prefix(line) == "time=2026-11-24T10:00:00.123Z level=INFO msg=x"


@pytest.mark.parametrize("line", [
    '[GIN] 2026/11/24 - 10:03:14 | 200 |          3m9s |       127.0.0.1 | POST     "/api/generate"',
    'llama_model_loader: - kv   0:                       general.architecture str              = qwen2',
    '  Device 0: NVIDIA A100 80GB PCIe, compute capability 8.0, VMM: yes',
    '0.00.093.274 I srv    operator(): Available models (5):',
    '[53521] 0.00.001.067 I srv  llama_server: initializing ...',
    'INFO [main] model loaded | tid="1" timestamp=1795510812',
])
def test_strip_prefix_leaves_server_lines_alone(line):
    assert strip_prefix(line) == line


def test_journald_short_year_and_zone():
    line = 'Nov 24 10:00:02 gpu1 ollama[1234]: load_tensors: offloaded 60/81 layers to GPU'
    ev = parse_line(line, local_tz=CET, year=2025)
    assert ev.kind == "offload" and ev.line == "load_tensors: offloaded 60/81 layers to GPU"
    assert ev.wall_unix_s == _ts(2025, 11, 24, 10, 0, 2, tz=CET)
    assert ev.fields["time_resolution_s"] == 1.0


# --- sample logs, one per source format -----------------------------------------------------------


def test_ollama_057_journald_short():
    evs = _events("ollama-0.5.7-journald-short.log", local_tz=UTC, year=2026)
    (cfg,) = _kind(evs, "server_config")
    env = cfg.fields["env"]
    assert env["OLLAMA_FLASH_ATTENTION"] == "true" and env["OLLAMA_KV_CACHE_TYPE"] == "q8_0"
    assert env["OLLAMA_HOST"] == "http://0.0.0.0:11434" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["OLLAMA_ORIGINS"].startswith("http://localhost https://localhost ")
    assert env["OLLAMA_KEEP_ALIVE"] == "5m0s" and env["no_proxy"] == ""
    assert cfg.wall_unix_s == _ts(2026, 11, 24, 10, 0, 0)
    assert _kind(evs, "server_listening")[0].fields["version"] == "0.5.7"

    warnings = [e.fields["msg"] for e in _kind(evs, "warning")]
    assert "flash attention enabled but not supported by model" in warnings

    (start,) = _kind(evs, "runner_start")
    assert start.fields["runner_kind"] == "ollama-runner"
    assert start.fields["argv"][:2] == ["/usr/local/bin/ollama", "runner"]
    assert start.fields["model_path"] == ("/usr/share/ollama/.ollama/models/blobs/"
                                          "sha256-6e7fdda508e91cb0f63de5c15ff79ac63a1584ccafd751c07ca12b7f442101b8")
    assert start.fields["flags"]["--n-gpu-layers"] == "60" and start.fields["flags"]["--ctx-size"] == "8192"
    assert start.fields["port"] == 40751

    planned, actual = _kind(evs, "offload")
    for ev, stage in ((planned, "planned"), (actual, "actual")):
        assert (ev.fields["stage"], ev.fields["layers_gpu"], ev.fields["layers_total"]) == (stage, 60, 81)
    bufs = {e.fields["device"]: e.fields["mib"] for e in _kind(evs, "model_buffer")}
    assert bufs == {"CPU_Mapped": 12102.36, "CUDA0": 33106.42}
    assert {e.fields["device"] for e in _kind(evs, "kv_cache")} == {"CPU", "CUDA0"}
    assert _kind(evs, "gpu_init")[0].fields["count"] == 1
    dev = [e for e in _kind(evs, "gpu_device") if e.fields["index"] == 0][0]
    assert dev.fields["name"] == "NVIDIA A100 80GB PCIe"

    assert _kind(evs, "runner_ready")[0].fields["seconds"] == 178.52
    reqs = _kind(evs, "request")
    assert [r.fields["latency_s"] for r in reqs] == pytest.approx([189.0, 9.79, 178.535e-6])
    assert [r.fields["path"] for r in reqs] == ["/api/generate", "/api/chat", "/api/ps"]
    assert reqs[0].fields["method"] == "POST" and reqs[0].fields["status"] == 200
    assert reqs[0].fields["client"] == "127.0.0.1"
    assert reqs[0].wall_unix_s == _ts(2026, 11, 24, 10, 3, 14)
    assert reqs[0].fields["time_resolution_s"] == 1.0
    # In order, within each stamp's resolution (journald's whole seconds after slog's milliseconds).
    for prev, ev in zip(evs, evs[1:]):
        assert ev.wall_unix_s + ev.fields.get("time_resolution_s", 0.0) >= prev.wall_unix_s


def test_ollama_0314_plain_file_inherits_times():
    evs = _events("ollama-0.3.14-server-file.log", local_tz=CET)
    (cfg,) = _kind(evs, "server_config")  # the Go log + slog default handler form
    assert cfg.fields["env"]["OLLAMA_NUM_PARALLEL"] == "4" and cfg.fields["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert cfg.wall_unix_s == _ts(2026, 11, 24, 9, 59, 58, tz=CET)

    (start,) = _kind(evs, "runner_start")
    assert start.fields["runner_kind"] == "ollama-runner"
    assert start.fields["argv"][0].endswith("/runners/cuda_v12/ollama_llama_server")
    assert start.fields["flags"]["--embedding"] == "" and start.fields["flags"]["--parallel"] == "4"
    assert start.fields["model_path"].startswith("/home/ana/.ollama/models/blobs/sha256-ff8238")

    assert [e.fields["progress"] for e in _kind(evs, "load_progress")] == [0.21, 0.58, 1.0]
    # llm_load_tensors lines carry no time: they take the last timed line's ("progress 0.58").
    t_058 = _ts(2026, 11, 24, 10, 0, 11, 367000, tz=CET)
    bufs = _kind(evs, "model_buffer")
    assert [(b.fields["device"], b.fields["mib"]) for b in bufs] == [("CPU", 281.81), ("CUDA0", 4155.99)]
    assert all(b.fields["time_inherited"] and b.wall_unix_s == pytest.approx(t_058) for b in bufs)
    off = [e for e in _kind(evs, "offload") if e.fields["stage"] == "actual"][0]
    assert (off.fields["layers_gpu"], off.fields["layers_total"]) == (33, 33)
    # ggml_cuda_init follows an ext-server line stamped in whole seconds: it keeps the finer 10.614 stamp.
    assert _kind(evs, "gpu_init")[0].wall_unix_s == pytest.approx(_ts(2026, 11, 24, 10, 0, 10, 614000, tz=CET))

    (loaded,) = _kind(evs, "model_loaded")
    assert loaded.wall_unix_s == 1795510812.0 and "time_inherited" not in loaded.fields
    assert _kind(evs, "runner_ready")[0].fields["seconds"] == 2.26
    reqs = _kind(evs, "request")
    assert [(r.fields["method"], r.fields["path"], r.fields["status"]) for r in reqs] == [
        ("POST", "/api/chat", 200), ("HEAD", "/", 200), ("POST", "/api/show", 404)]
    assert reqs[0].wall_unix_s == _ts(2026, 11, 24, 10, 0, 14, tz=CET)
    assert reqs[1].fields["latency_s"] == pytest.approx(42.108e-6)
    assert [u.fields["reason"] for u in _kind(evs, "unload")] == ["timer expired, expiring to unload",
                                                                  "runner expired event received"]


def test_ollama_012_compose_with_docker_timestamps():
    evs = _events("ollama-0.12.0-compose-timestamps.log")
    env = _kind(evs, "server_config")[0].fields["env"]
    assert env["OLLAMA_CONTEXT_LENGTH"] == "8192" and env["OLLAMA_REMOTES"] == "ollama.com"
    (start,) = _kind(evs, "runner_start")
    assert start.fields["runner_kind"] == "ollama-engine-runner"
    assert start.fields["model_path"].endswith("/blobs/sha256-e8ad13eff07a78d89926e9e8b882317d082ef5bf9768ad7b50fcd"
                                               "bbcd63748de")
    assert start.fields["port"] == 38615
    (off,) = _kind(evs, "offload")
    assert (off.fields["layers_gpu"], off.fields["layers_total"], off.fields["stage"]) == (49, 49, "actual")
    weights = {e.fields["device"]: e.fields["mib"] for e in _kind(evs, "model_buffer")}
    assert weights == pytest.approx({"CUDA0": 17.3 * 1024, "CPU": 417.7})
    assert _kind(evs, "kv_cache")[0].fields["mib"] == pytest.approx(1.6 * 1024)
    assert [e.fields["backend"] for e in _kind(evs, "backend_loaded")] == ["CPU", "CUDA"]
    dev = [e for e in _kind(evs, "gpu_device") if e.fields.get("compute_capability")][0]
    assert dev.fields["id"] == "GPU-0c9d3b2a-1f7e-4a55-b0c4-7e2b5d6f8a90" and dev.fields["name"] == "NVIDIA L40S"
    assert _kind(evs, "runner_ready")[0].fields["seconds"] == 5.09
    ok, failed = _kind(evs, "request")
    # docker's nanosecond stamp of the GIN line is kept over GIN's whole local second.
    assert ok.wall_unix_s == pytest.approx(_ts(2026, 11, 24, 10, 1, 38, 7181))
    assert "time_resolution_s" not in ok.fields and ok.fields["client"] == "172.18.0.1"
    assert failed.fields["status"] == 500 and failed.fields["latency_s"] == pytest.approx(0.801221902)
    (unload,) = _kind(evs, "unload")
    assert unload.fields["name"] == "registry.ollama.ai/library/gpt-oss:20b"


def test_ollama_068_docker_timestamps_load_timeout():
    evs = _events("ollama-0.6.8-docker-timestamps-timeout.log")
    assert _kind(evs, "server_config")[0].fields["env"]["OLLAMA_LOAD_TIMEOUT"] == "2m0s"
    planned, actual = _kind(evs, "offload")
    assert (planned.fields["layers_gpu"], planned.fields["layers_total"]) == (38, 81)
    assert (actual.fields["layers_gpu"], actual.fields["layers_total"]) == (38, 81)
    assert actual.wall_unix_s == pytest.approx(_ts(2026, 11, 24, 10, 20, 12, 701252))
    (timeout,) = _kind(evs, "load_timeout")
    assert timeout.fields["progress"] == 0.0 and "timed out waiting for llama runner" in timeout.fields["error"]
    (req,) = _kind(evs, "request")
    assert req.fields["status"] == 500 and req.fields["latency_s"] == 120.0
    assert not _kind(evs, "runner_ready")


def test_ollama_033_journald_iso_llama_server_runner():
    evs = _events("ollama-0.33-journald-iso.log")
    env = _kind(evs, "server_config")[0].fields["env"]
    assert env["OLLAMA_FLASH_ATTENTION"] == "true" and env["OLLAMA_KEEP_ALIVE"] == "30m0s"
    (start,) = _kind(evs, "runner_start")
    f = start.fields["flags"]
    assert start.fields["runner_kind"] == "llama-server"
    assert (f["--ctx-size"], f["--parallel"], f["--flash-attn"], f["--cache-type-k"]) == ("32768", "1", "on", "q8_0")
    assert f["--no-log-timestamps"] == "" and start.fields["port"] == 41235
    assert _kind(evs, "runner_waiting")
    assert _kind(evs, "runner_ready")[0].fields["seconds"] == 1.76
    assert _kind(evs, "model_loaded")[0].wall_unix_s == _ts(2026, 11, 24, 11, 0, 11, tz=CET)
    dev = [e for e in _kind(evs, "gpu_device") if e.fields.get("free_mib")][0]
    assert dev.fields["name"] == "NVIDIA RTX 6000 Ada Generation"
    assert (dev.fields["free_mib"], dev.fields["index"], dev.fields["pci"]) == (48123.0, 0, "0000:41:00.0")
    phases = {e.fields["phase"]: e.fields for e in _kind(evs, "timing")}
    assert phases["prompt_eval"]["tokens"] == 1043 and phases["eval"]["tokens_per_s"] == 121.2
    assert phases["total"]["ms"] == 1862.52
    (req,) = _kind(evs, "request")
    # journald's zoned stamp wins over GIN's zone-less local time (no local_tz needed).
    assert req.wall_unix_s == _ts(2026, 11, 24, 11, 0, 13, tz=CET)


# --- llama-server (the embedded engine), real captures --------------------------------------------

ROUTER_T0 = 1795516125.210946043  # the start mark in llama-server-router.log


def test_llama_server_router_real_capture():
    evs = _events("llama-server-router.log")
    (listen,) = [e for e in _kind(evs, "server_listening") if "instance_port" not in e.fields]
    assert listen.fields["address"] == "http://127.0.0.1:18123"
    assert listen.fields["log_t_s"] == 0.093885
    assert listen.wall_unix_s == pytest.approx(ROUTER_T0 + 0.093885)

    (start,) = _kind(evs, "runner_start")
    assert start.fields["name"] == "smollm2-135m-q4_1" and start.fields["port"] == 42789
    assert start.fields["runner_kind"] == "llama-server"
    assert start.fields["argv"][0].endswith("/llama-server") and "--log-timestamps" in start.fields["argv"]
    assert start.fields["model_path"] == "/root/.cache/perfkit/models/smollm2-135m-q4_1.gguf"
    assert start.fields["flags"]["--threads"] == "2" and start.fields["flags"]["--log-verbosity"] == "4"
    spawn_rel = 2.001560
    assert start.wall_unix_s == pytest.approx(ROUTER_T0 + spawn_rel)

    (loading,) = _kind(evs, "model_loading")
    assert loading.fields["model_path"].endswith("smollm2-135m-q4_1.gguf")
    (buf,) = _kind(evs, "model_buffer")
    assert (buf.fields["device"], buf.fields["mib"]) == ("CPU_Mapped", 92.10)
    assert _kind(evs, "kv_cache")[0].fields["mib"] == 180.0
    (loaded,) = _kind(evs, "model_loaded")
    # Child lines count from the child's own start, placed at the router's spawn line.
    assert loaded.fields["instance_port"] == 42789 and loaded.fields["log_t_s"] == 0.437160
    assert loaded.fields["router_t_s"] == pytest.approx(spawn_rel + 0.437160)
    assert loaded.fields["t0_estimated"] is True
    assert loaded.wall_unix_s == pytest.approx(ROUTER_T0 + spawn_rel + 0.437160)

    (proxied,) = _kind(evs, "request_proxied")
    timing = {e.fields["phase"]: e for e in _kind(evs, "timing")}
    assert timing["prompt_eval"].fields["tokens"] == 31 and timing["prompt_eval"].fields["ms"] == 110.92
    assert timing["eval"].fields["tokens"] == 4 and timing["eval"].fields["slot"] == 3
    assert loaded.wall_unix_s < proxied.wall_unix_s < timing["prompt_eval"].wall_unix_s
    reasons = [e.fields["reason"] for e in _kind(evs, "unload")]
    assert reasons == ["server is entering sleeping state", "stopping model instance name=smollm2-135m-q4_1"]
    (exit_,) = _kind(evs, "runner_exit")
    assert exit_.fields == {**exit_.fields, "name": "smollm2-135m-q4_1", "exit_status": 0}
    assert [e.kind for e in _kind(evs, "warning")][:1] == ["warning"]  # the router's "security:" notices


def test_llama_server_default_verbosity_capture():
    evs = _events("llama-server-router-default-verbosity.log")
    assert not _kind(evs, "model_buffer")  # -lv 3 hides load_tensors lines: perfkit needs -lv 4 for them
    assert [e.fields["tokens"] for e in _kind(evs, "timing") if e.fields["phase"] == "prompt_eval"] == [31, 8]
    assert len(_kind(evs, "request_proxied")) == 2 and len(_kind(evs, "model_loaded")) == 1
    assert _kind(evs, "runner_exit")[0].fields["exit_status"] == 0


def test_llama_server_relative_clock_needs_t0():
    lines = [ln for ln in (LOGS / "llama-server-router.log").read_text().splitlines()
             if not ln.startswith("# perfkit:")]
    bare = parse(lines)
    assert bare and all(e.wall_unix_s is None for e in bare)  # relative stamps never borrow a wall time
    assert all("log_t_s" in e.fields for e in bare)
    given = parse(lines, t0_wall_unix_s=1000.0)
    loaded = _kind(given, "model_loaded")[0]
    assert loaded.wall_unix_s == pytest.approx(1000.0 + 2.001560 + 0.437160)


def test_llama_cpp_timestamp_format_minutes():
    ev = parse_line("12.34.567.890 W srv  some_func: something odd")
    assert ev.kind == "warning" and ev.fields["log_t_s"] == pytest.approx(12 * 60 + 34.567890)


# --- robustness -----------------------------------------------------------------------------------


GARBAGE = [
    "", " ", "\x00\x01\x02", "time=", "time=x level=\"", 'time=2026-11-24T10:00:00Z level=INFO msg="unterminated',
    "[GIN]", "[GIN] 2026/13/45 - 99:99:99 | 200 | 1s | x | GET \"/\"",
    "[GIN] 2026/11/24 - 10:00:00 | 200 | zz | x | GET \"/\"",
    "load_tensors: offloaded x/y layers to GPU", "load_tensors: CUDA0 model buffer size = lots MiB",
    "Nov 99 10:00:00 host ollama[1]: x", "2026-99-99T10:00:00Z hello", "{\"timestamp\": \"x\"",
    "{not json, \"timestamp\"",
    "INFO [main] model loaded | timestamp=abc", "  Device x: y", "[99999999999999999999] 0.00.000.001 I srv  a: b",
    "99999999999.99.999.999 I srv  x: model loaded", "map[", "\\x\\u12\\U", "time=2026-11-24T10:00:00Z msg=\"\\x4\"",
    "# perfkit: llama-server started at unix nope",
]


@pytest.mark.parametrize("line", GARBAGE)
def test_garbage_lines_never_raise(line):
    """The parser handles each garbage line itself: none reaches the safety net that skips a misread line."""
    from perfkit.servers import serverlog

    before = len(serverlog.MISREAD)
    parse_line(line)
    parse([line, line])
    assert serverlog.MISREAD[before:] == []


def test_fuzz_random_lines():
    rng = random.Random(1234)
    alphabet = "abcdefgxyz0123456789 =\"\\[]|:./-µ\t{}()#ITZ"
    seeds = [ln for ln in (LOGS / "ollama-0.5.7-journald-short.log").read_text().splitlines()]
    lines = []
    for _ in range(800):
        if rng.random() < 0.5:
            lines.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))))
        else:  # a real line, cut and mutated
            s = list(rng.choice(seeds))
            for _ in range(rng.randint(1, 6)):
                if s:
                    s[rng.randrange(len(s))] = rng.choice(alphabet)
            lines.append("".join(s[: rng.randint(0, len(s))]))
    for ln in lines:
        ev = parse_line(ln)
        assert ev is None or ev.kind in KINDS
    parse(lines)


def test_unknown_lines_give_none():
    for ln in ["llama_model_loader: - kv   0: general.architecture str = qwen2",
               'time=2026-11-24T10:00:00.512Z level=INFO source=images.go:757 msg="total blobs: 12"',
               "[GIN-debug] GET    /api/tags  --> handler (5 handlers)", "hello world"]:
        assert parse_line(ln) is None


# --- log sources ----------------------------------------------------------------------------------


def test_file_source_reads_only_new_bytes(tmp_path):
    p = tmp_path / "server.log"
    p.write_text("old line 1\nold line 2\n")
    src = FileLogSource(p)
    m = src.mark()
    assert m == p.stat().st_size
    with open(p, "a") as f:
        f.write("new 1\nnew 2\n")
    assert src.read_since(m) == ["new 1", "new 2"]
    assert src.notes == [] and "server.log" in src.describe()


def test_file_source_truncated_or_rotated(tmp_path):
    p = tmp_path / "server.log"
    p.write_text("a" * 100 + "\n")
    src = FileLogSource(p)
    m = src.mark()
    p.write_text("fresh\n")  # truncated and rewritten, shorter
    assert src.read_since(m) == ["fresh"]
    assert "shrank" in src.notes[-1]

    m = src.mark()
    new = tmp_path / "new.log"
    new.write_text("rotated 1\n" * 20)
    os.replace(new, p)  # logrotate: a new file, larger than the mark
    assert src.read_since(m) == ["rotated 1"] * 20
    assert "replaced" in src.notes[-1]


def test_file_source_missing_file(tmp_path):
    src = FileLogSource(tmp_path / "nope.log")
    assert src.mark() == 0
    assert src.read_since(0) == [] and "does not exist" in src.notes[-1]


def _docker_ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def test_command_source_keeps_lines_after_mark(tmp_path):
    script = tmp_path / "lines.txt"
    src = CommandLogSource([sys.executable, "-c", f"print(open({str(script)!r}).read(), end='')"])
    m = src.mark()
    assert abs(m - time.time()) < 5
    before, after = m - 30.0, m + 0.5
    script.write_text("\n".join([
        f"{_docker_ts(before)} time={_docker_ts(before)} level=INFO msg=x",
        "load_tensors: offloaded 1/2 layers to GPU",  # continuation of a dropped line: dropped
        f"{_docker_ts(after)} time={_docker_ts(after)} level=INFO msg=y",
        "load_tensors: offloaded 2/2 layers to GPU",  # continuation of a kept line: kept
        f"[GIN] {datetime.fromtimestamp(int(m)).strftime('%Y/%m/%d - %H:%M:%S')} | 200 | 1s | 127.0.0.1 | "
        'POST "/api/chat"',
    ]) + "\n")
    out = src.read_since(m)
    # a zoned source prefix is kept: it dates the line and tells the zone of the server's own stamps
    assert out[:2] == [f"{_docker_ts(after)} time={_docker_ts(after)} level=INFO msg=y",
                       "load_tensors: offloaded 2/2 layers to GPU"]
    assert len(out) == 3 and out[2].startswith("[GIN]")  # whole-second local stamp in the mark's second: kept


def test_command_source_failure_is_clear():
    src = CommandLogSource([sys.executable, "-c", "import sys; sys.stderr.write('no such unit\\n'); sys.exit(3)"])
    with pytest.raises(PerfkitError) as e:
        src.read_since(src.mark())
    assert "exit 3" in str(e.value) and "no such unit" in str(e.value) and sys.executable in str(e.value)
    with pytest.raises(PerfkitError, match="not found"):
        CommandLogSource(["/nonexistent/journalctl", "-u", "ollama"]).read_since(0.0)
    with pytest.raises(PerfkitError):
        CommandLogSource([])


def test_command_source_adds_since():
    j = CommandLogSource(["journalctl", "-u", "ollama", "--no-pager", "-o", "short-iso"])
    assert j.command_for(1795516100.7) == ["journalctl", "-u", "ollama", "--no-pager", "-o", "short-iso",
                                           "--since", "@1795516099"]
    d = CommandLogSource(["docker", "logs", "-t", "ollama"])
    assert d.command_for(1795516100.7) == ["docker", "logs", "--since", "1795516099", "-t", "ollama"]
    c = CommandLogSource("docker compose logs -t ollama")
    assert c.command_for(100.0) == ["docker", "compose", "logs", "--since", "99", "-t", "ollama"]
    given = CommandLogSource(["journalctl", "-u", "ollama", "--since", "today"])
    assert given.command_for(100.0) == given.argv
    other = CommandLogSource(["cat", "/var/log/ollama.log"])
    assert other.command_for(100.0) == other.argv


# ---- log clocks ------------------------------------------------------------------------------------------

def _gin(t: float, tz, latency: str = "1.2s") -> str:
    stamp = datetime.fromtimestamp(int(t), tz).strftime("%Y/%m/%d - %H:%M:%S")
    return f'[GIN] {stamp} | 200 | {latency} | 127.0.0.1 | POST "/api/chat"'


def test_docker_logs_get_timestamps_so_the_containers_zone_is_known():
    from perfkit.servers.serverlog import naive_times_zone

    assert "--timestamps" in CommandLogSource(["docker", "logs", "ollama"]).command_for(100.0)
    assert "--timestamps" in CommandLogSource(["podman", "logs", "ollama"]).command_for(100.0)
    # the container writes GIN in its own zone (UTC+2 here), docker stamps every line in UTC
    from datetime import timedelta, timezone

    plus2 = timezone(timedelta(hours=2))
    t = 1795516100.4
    lines = [f"{_docker_ts(t + i)} {_gin(t + i, plus2)}" for i in range(3)]
    tz, n = naive_times_zone(lines)
    assert n == 3 and tz.utcoffset(None) == timedelta(hours=2)


def test_a_gin_zone_is_found_from_the_runs_own_requests_and_ties_are_split_by_latency(tmp_path):
    """No zoned prefix (a plain docker logs capture): the request lines' zone is the one under which they land
    on this run's requests; two requests ending in the same second go to their own lines by latency."""
    from datetime import timedelta, timezone

    import pandas as pd

    from perfkit.analysis import timeline

    minus5 = timezone(timedelta(hours=-5))
    send = 1795516100.1
    trials = pd.DataFrame([
        {"trial_id": "a", "wall_send_unix_s": send, "e2e_s": 0.30, "cache_state": "warm"},
        {"trial_id": "b", "wall_send_unix_s": send + 0.55, "e2e_s": 0.20, "cache_state": "warm"},
        {"trial_id": "c", "wall_send_unix_s": send + 5.0, "e2e_s": 1.10, "cache_state": "warm"}])
    (tmp_path / "server.log").write_text("\n".join([
        _gin(send + 0.30, minus5, "300ms"), _gin(send + 0.75, minus5, "200ms"), _gin(send + 6.1, minus5, "1.1s")]) + "\n")
    acc = timeline.load_account(tmp_path, pd.DataFrame(), trials=trials)
    assert acc.zone.startswith("UTC-05:00 (detected") and len(acc.events) == 3
    sp = timeline.splits(acc, trials).set_index("trial_id")
    assert sp.loc["a", "server_latency_s"] == pytest.approx(0.3) and sp.loc["b", "server_latency_s"] == pytest.approx(0.2)
    assert sp.loc["c", "server_latency_s"] == pytest.approx(1.1)
    assert acc.clock_n == 3 and -1.0 <= acc.clock_offset_s <= 0.05  # whole-second stamps: up to 1 s early
    given = timeline.load_account(tmp_path, pd.DataFrame(), trials=trials, tz="-05:00")
    assert given.zone == "-05:00 (from the parameters)"
