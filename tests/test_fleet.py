"""The fleet study: its parameters refused or accepted, a user's own fleet measured without perfkit
starting anything, the embedded fleet end to end (a killed server, a 504, a cache hit, nothing left
behind), and Ctrl-C leaving no nginx or engine running.

Tests that run nginx are skipped when it is not installed; the embedded ones are marked ``engine``."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from fake_openai import FakeOpenAI
from perfkit.studies import params
from perfkit.servers import nginx as proxy
from perfkit.core.errors import ConfigError

needs_nginx = pytest.mark.skipif(proxy.nginx_binary() is None,
                                 reason=f"nginx not installed ({proxy.install_hint()})")

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _procs_mentioning(*needles: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains any of ``needles``."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
                continue
            cmd = " ".join(p.info["cmdline"] or ())
        except psutil.Error:
            continue
        if any(n in cmd for n in needles):
            out.append((p.pid, cmd))
    return out


def _group_members(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return out


# ---- 1. parameters ----------------------------------------------------------------------------------
EMBEDDED = """\
name: f
studies:
  fleet:
    model: smollm2-135m-q4_1
{extra}"""


def _fleet_yaml(extra: str, backend: str = "") -> str:
    text = EMBEDDED.format(extra=textwrap.indent(textwrap.dedent(extra), "    "))
    return text.replace("studies:", f"{backend}\nstudies:", 1) if backend else text


@pytest.mark.parametrize("extra", [
    "proxy_url: http://127.0.0.1:8080\n",
    "server_urls: [http://127.0.0.1:8001, http://127.0.0.1:8002]\n",
], ids=["proxy_url-only", "server_urls-only"])
def test_proxy_url_and_server_urls_come_together(tmp_path, extra):
    with pytest.raises(ConfigError, match=re.escape("give both proxy_url and server_urls (a user's own fleet), "
                                                    "or neither (embedded)")) as ei:
        params.load(_write(tmp_path, _fleet_yaml(extra)), check_models=False)
    assert "studies.fleet" in str(ei.value)


@pytest.mark.parametrize("extra,n,got", [
    ("servers: 2\nweights: [1, 2, 3]\n", 2, "[1, 2, 3]"),
    ("servers: 3\nweights: [1]\n", 3, "[1]"),
    ("proxy_url: http://127.0.0.1:8080\nserver_urls: [http://127.0.0.1:8001, http://127.0.0.1:8002]\n"
     "weights: [1]\n", 2, "[1]"),  # a user's fleet: one weight per server url
])
def test_weights_of_the_wrong_length_are_refused(tmp_path, extra, n, got):
    with pytest.raises(ConfigError, match=re.escape(f"weights: one integer ≥ 1 per server ({n}), got {got}")):
        params.load(_write(tmp_path, _fleet_yaml(extra)), check_models=False)


@pytest.mark.parametrize("kill_after", [8, 9])
def test_failover_kill_after_must_come_before_the_last_request(tmp_path, kill_after):
    extra = f"failover_requests: 8\nfailover_kill_after: {kill_after}\n"
    with pytest.raises(ConfigError, match="failover_kill_after must be less than failover_requests"):
        params.load(_write(tmp_path, _fleet_yaml(extra)), check_models=False)


@pytest.mark.parametrize("backend", [
    'backend: {kind: openai, url: "http://127.0.0.1:8000"}',
    'backend: {kind: ollama, url: "http://127.0.0.1:11434"}',
    'backend: {kind: llama-server, url: "http://127.0.0.1:8080"}',
])
def test_a_server_of_your_own_needs_the_fleet_urls(tmp_path, backend):
    with pytest.raises(ConfigError, match=r"give fleet\.proxy_url and fleet\.server_urls; perfkit starts engines "
                                          r"and nginx only for the embedded backend") as ei:
        params.load(_write(tmp_path, _fleet_yaml("", backend)), check_models=False)
    assert "studies.fleet" in str(ei.value)


def test_a_valid_embedded_fleet_is_accepted(tmp_path):
    p = params.load(_write(tmp_path, _fleet_yaml("servers: 3\nweights: [3, 2, 1]\nfailover_requests: 8\n"
                                                 "failover_kill_after: 2\nproxy: {read_timeout_s: 60}\n")),
                    check_models=False)
    f = p.studies.fleet
    assert p.enabled() == ["fleet"] and f.server_urls == [] and f.proxy_url is None
    assert f.weight_list() == [3, 2, 1] and f.proxy.read_timeout_s == 60
    assert ("studies.fleet.model", "smollm2-135m-q4_1") in p.models_used()
    assert params.Params.model_validate(p.model_dump()).studies.fleet.servers == 3


def test_a_valid_user_fleet_is_accepted_and_names_no_local_model(tmp_path):
    text = _fleet_yaml("proxy_url: http://127.0.0.1:8080/\nserver_urls: [http://127.0.0.1:8001/, "
                       "http://127.0.0.1:8002]\nweights: [2, 1]\n", 'backend: {kind: openai, url: "http://127.0.0.1:8001"}')
    p = params.load(_write(tmp_path, text))  # models are checked only for the embedded backend
    f = p.studies.fleet
    assert f.proxy_url == "http://127.0.0.1:8080" and f.server_urls == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    assert f.weight_list() == [2, 1] and p.models_used() == []


# ---- 2. a user's own fleet --------------------------------------------------------------------------
USER_FLEET = """\
name: userfleet
backend: {{kind: openai, url: "{a}"}}
timeouts: {{request_s: 30, stall_s: 10}}
sampling: {{interval_s: 0.1}}
studies:
  fleet:
    model: good
    proxy_url: "{proxy}"
    server_urls: ["{a}", "{b}"]
    weights: [2, 1]
    api: openai
    concurrency: [1, 2]
    requests: 6
    overhead_reps: 3
    cache_reps: 2
    num_predict: 4
    prompt_words: 8
"""


def _descendants() -> set[int]:
    return {c.pid for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE}


@needs_nginx
def test_a_users_fleet_is_measured_and_nothing_is_started(tmp_path, monkeypatch):
    from perfkit.kinds.llamacpp import engine as engine_mod
    from perfkit.servers.nginx import Nginx, ProxyConfig, Upstream
    from perfkit.studies import fleet
    from perfkit.studies.base import StudyContext

    with FakeOpenAI(fixed_latency_s=0.02) as a, FakeOpenAI(fixed_latency_s=0.02) as b, \
            Nginx(ProxyConfig([Upstream(a.url, 2), Upstream(b.url, 1)]), tmp_path / "proxy") as ngx:
        ours = _descendants()  # the user's nginx (master and worker)
        assert ngx.pid in ours
        started = []

        def refuse(what):
            def start(self, *a, **k):
                started.append(what)
                raise AssertionError(f"perfkit started {what} for a user's fleet")
            return start

        monkeypatch.setattr(engine_mod.Engine, "start", refuse("an engine"))
        monkeypatch.setattr(proxy.Nginx, "start", refuse("nginx"))
        p = _write(tmp_path, USER_FLEET.format(a=a.url, b=b.url, proxy=ngx.url))
        t0 = time.monotonic()
        res = (_ctx := StudyContext(p, tmp_path / "run", "fleet")).study.run(_ctx)
        wall = time.monotonic() - t0
        assert started == []
        # nothing new runs under this process: only the user's nginx
        assert _descendants() <= ours, [psutil.Process(x).cmdline() for x in _descendants() - ours]
        assert a.requests and b.requests  # both servers were reached (through the proxy, a directly)
        assert ngx.proc.poll() is None  # the user's proxy was left running

    assert wall < 60, wall
    f = res.fleet
    assert f.managed is False and f.proxy_url == ngx.url
    assert [s.weight for s in f.servers] == [2, 1] and "conf" not in f.recorded

    # every scaling request answered, through the proxy and directly
    t = res.scaling
    # one server at c clients, the fleet of 2 at 2·c (the same load per server), each its own series
    assert sorted(zip(t["clients_per_server"], t["target"], t["clients"])) == [
        (1, "direct", 1), (1, "proxy", 2), (2, "direct", 2), (2, "proxy", 4)]
    assert (t["n_series"] == t["target"].map({"direct": 6, "proxy": 12})).all(), t
    assert not res.failures, res.failures

    # balance: from the proxy's X-Upstream-Addr header, over the 24 proxied scaling requests
    assert "X-Upstream-Addr" in res.balance_source
    bal = res.balance
    addrs = [u.split("://", 1)[1] for u in (a.url, b.url)]
    assert bal["server"].tolist() == addrs and bal["weight"].tolist() == [2, 1]
    assert int(bal["requests"].sum()) == 24 and abs(bal["share"].sum() - 1) < 1e-9
    assert bal["configured share"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert bal["matches weights"].all(), bal  # nginx's smooth weighted round robin: 16 and 8
    proxied = res.trials[(res.trials["target"] == "proxy") & (res.trials["phase"] == "scaling")]
    assert set(proxied["served_by"]) == set(addrs)

    # overhead: one mode, as the user's proxy is configured
    assert res.overhead["buffering"].tolist() == ["as configured"] and res.overhead["n"].iloc[0] == 3

    # phases that need control: skipped, each with its reason
    why = {s.phase: s.why for s in res.skipped}
    assert set(why) == {"cold_upstream", "cold_disk", "failover", "timeout"}, why
    assert "no server's host is seen" in why["cold_disk"] and "fleet.hosts" in why["cold_disk"]
    assert all(w.startswith("unknown, because") for w in why.values()), why
    assert "API can't unload" in why["cold_upstream"]
    assert "perfkit does not kill servers it did not start" in why["failover"]
    assert "can't unload" in why["timeout"]
    assert res.failover is None and res.cold_upstream.empty
    assert res.timeout.advice is None and not res.timeout.probes

    # cache: probed with identical requests; perfkit's nginx config without a cache sends no status
    cache = res.cache
    assert cache.requests == 2 and cache.status_header is False

    text = fleet.conclusions(res)
    assert "your proxy at " + ngx.url in text
    for w in why.values():
        assert w in text
    assert "**Balance** (from the X-Upstream-Addr header" in text
    assert "unknown, because the proxy sends no X-Cache-Status header" in text
    assert not (tmp_path / "run" / "fleet" / "nginx").exists()
    assert not (tmp_path / "run" / "fleet" / "fleet-models").exists()


# ---- 3. the embedded fleet end to end -----------------------------------------------------------------
EMBEDDED_RUN = """\
name: fleet-e2e
backend: {{kind: embedded, settings: {{num_thread: 2}}}}
timeouts: {{request_s: 120, stall_s: 60}}
sampling: {{interval_s: 0.1}}
seed: 1
studies:
  fleet:
    model: smollm2-135m-q4_1
    servers: 2
    weights: [3, 2]
    concurrency: [1, 2]
    requests: {requests}
    num_predict: 8
    prompt_words: 16
    overhead_reps: 3
    cold_reps: 2
    failover_requests: 8
    failover_kill_after: 2
    cache_reps: 2
    stale_model: gemma3-270m-q4_k_m
"""


@needs_nginx
@pytest.mark.engine
def test_the_embedded_fleet_end_to_end(tmp_path, store_dir, monkeypatch):
    from perfkit.kinds.llamacpp import engine as engine_mod
    from perfkit.servers.fleet import Fleet
    from perfkit.studies import fleet
    from perfkit.studies.base import StudyContext

    fleets, engine_pids = [], []
    embedded = Fleet.embedded
    start = engine_mod.Engine.start

    def spy_embedded(*a, **k):
        f = embedded(*a, **k)
        fleets.append(f)
        return f

    def spy_start(self):
        out = start(self)
        engine_pids.append(self.proc.pid)  # each start, revivals included
        return out

    monkeypatch.setattr(Fleet, "embedded", staticmethod(spy_embedded))
    monkeypatch.setattr(engine_mod.Engine, "start", spy_start)
    run_dir = tmp_path / "run"
    p = _write(tmp_path, EMBEDDED_RUN.format(requests=6))
    t0 = time.monotonic()
    res = (_ctx := StudyContext(p, run_dir, "fleet")).study.run(_ctx)
    wall = time.monotonic() - t0
    print(f"embedded fleet study: {wall:.1f} s")

    # the killed upstream is recorded, and every failover request was kept, ok or not
    from perfkit.core.store import RunStore

    events = RunStore(run_dir / "fleet").events()
    killed = events[events["kind"] == "server_killed"]
    assert len(killed) == 1, events["kind"].tolist()
    fo = res.failover
    assert fo is not None and fo.kill_reached and fo.victim == killed["server"].iloc[0], fo
    assert fo.requests == 8 and fo.ok + fo.failed == 8, fo
    rows = res.trials[res.trials["phase"] == "failover"]
    assert len(rows) == 8 and rows["trial_id"].is_unique
    assert (events["kind"] == "server_revived").any() and (events["kind"] == "fleet_server_killed").any()

    # a proxy timeout shorter than a cold start gives a 504
    to = res.timeout
    errors = res.trials[(res.trials["phase"] == "timeout") & (res.trials["target"] == "proxy")]["error"]
    assert errors.fillna("").str.startswith("proxy timeout: HTTP 504").any(), (errors.tolist(), to)
    assert to.advice is not None and to.advice.cold_n == 2 and to.advice.recommended_read_timeout_s > 0

    # the cache answered at least once from its store
    assert res.cache.status_counts.get("HIT", 0) >= 1, res.cache

    # everything ran on the fleet perfkit started, and it is all gone
    f = res.fleet
    assert f.managed is True and len(f.servers) == 2 and [s.weight for s in f.servers] == [3, 2]
    assert not res.skipped, res.skipped
    assert (run_dir / "fleet" / "nginx-access.log").exists() and (run_dir / "fleet" / "nginx-nginx.conf").exists()
    text = fleet.conclusions(res)
    assert "started by perfkit" in text and "**A server killed mid-run**" in text

    assert len(fleets) == 1
    fl = fleets[0]
    assert fl.nginx.proc is None and not _group_members(fl.nginx._pgid)
    assert not fl.nginx.leftover_pids()
    assert all(s.engine.proc is None or s.engine.proc.poll() is not None for s in fl.servers)
    assert len(engine_pids) >= 3  # two servers, one revived after the kill
    assert not [pid for pid in engine_pids if _alive(pid)]
    assert not [pg for pg in engine_pids if _group_members(pg)]
    left = _procs_mentioning(str(run_dir), str(run_dir.resolve()), str(fl.nginx.prefix))
    assert not left, left


# ---- 4. Ctrl-C ------------------------------------------------------------------------------------------
CTRL_C_SCRIPT = """\
import sys
from perfkit.studies import fleet
from perfkit.studies.base import StudyContext
(_ctx := StudyContext(sys.argv[1], sys.argv[2], "fleet")).study.run(_ctx)
print("FINISHED")
"""


@needs_nginx
@pytest.mark.engine
def test_ctrl_c_leaves_no_nginx_or_engine_behind(tmp_path, store_dir):
    run_dir = (tmp_path / "run").resolve()
    p = _write(tmp_path, EMBEDDED_RUN.format(requests=40))  # long enough to still run when interrupted
    prefix = run_dir / "fleet" / "nginx"
    models = run_dir / "fleet" / "fleet-models"
    log = open(tmp_path / "child.log", "wb")
    child = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(p), str(run_dir)], cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        master = None
        while time.monotonic() < deadline and child.poll() is None:
            try:
                master = int((prefix / "nginx.pid").read_text().strip())
                break
            except (OSError, ValueError):
                time.sleep(0.1)
        assert master is not None, (tmp_path / "child.log").read_text()[-3000:]
        time.sleep(1.0)  # into the measurements
        engines = [pid for pid, _ in _procs_mentioning(f"--models-dir {models}")]
        assert len(engines) >= 2, _procs_mentioning(str(run_dir))
        assert _procs_mentioning(f"-p {prefix}")
        child.send_signal(signal.SIGINT)
        try:
            rc = child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the study did not exit within 60 s of Ctrl-C:\n"
                        + (tmp_path / "child.log").read_text()[-3000:])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        log.close()
    out = (tmp_path / "child.log").read_text()
    assert rc != 0 and "FINISHED" not in out and "KeyboardInterrupt" in out, out[-3000:]
    time.sleep(0.5)
    left = _procs_mentioning(f"-p {prefix}", f"--models-dir {models}", str(run_dir))
    left += [(pid, "nginx group") for pid in _group_members(master)]
    left += [(pid, "engine") for pid in engines if _alive(pid)]
    left += [(pid, "engine group") for pg in engines for pid in _group_members(pg)]
    for pid, _ in left:  # do not leave them for the next test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, left


# ---- the production path: your nginx in front of two (scripted, local) Ollama servers -----------------
OLLAMA_FLEET = """\
name: ollamafleet
backend: {{kind: ollama, url: "{a}"}}
timeouts: {{request_s: 60, stall_s: 30}}
sampling: {{interval_s: 0.1}}
studies:
  fleet:
    model: qwen2.5:32b-instruct-q4_0
    proxy_url: "{proxy}"
    server_urls: ["{a}", "{b}"]
    weights: [3, 2]
    api: ollama
    concurrency: [2]
    requests: 6
    overhead_reps: 2
    cold_reps: 2
    cache_reps: 2
    num_predict: 4
    prompt_words: 8
"""


@needs_nginx
def test_a_users_nginx_in_front_of_ollama_servers(tmp_path, scripted_models_dir):
    """params/ollama-fleet.yaml's shape against real serve/runner processes: Ollama's own API through the
    proxy, cold upstreams and cold starts made with keep_alive 0, what needs control said to be unknown."""
    from scripted_ollama.harness import ScriptedOllama

    from perfkit.servers.nginx import Nginx, ProxyConfig, Upstream
    from perfkit.studies.base import StudyContext

    env = {"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_KEEP_ALIVE": "10m"}
    with ScriptedOllama(tmp_path / "o1", models_dir=scripted_models_dir, env=env) as a, \
            ScriptedOllama(tmp_path / "o2", models_dir=scripted_models_dir, env=env) as b, \
            Nginx(ProxyConfig([Upstream(a.url, 3), Upstream(b.url, 2)]), tmp_path / "proxy") as ngx:
        # As users name them: by host name (nginx's $upstream_addr is the resolved address).
        by_name = [u.replace("127.0.0.1", "localhost") for u in (a.url, b.url)]
        p = _write(tmp_path, OLLAMA_FLEET.format(a=by_name[0], b=by_name[1], proxy=ngx.url))
        res = (_ctx := StudyContext(p, tmp_path / "run", "fleet")).study.run(_ctx)
    assert not res.failures, res.failures
    t = res.scaling
    assert (t["n_series"] == t["target"].map({"direct": 6, "proxy": 12})).all() and set(t["target"]) == {"direct", "proxy"}
    assert "X-Upstream-Addr" in res.balance_source and res.balance["requests"].sum() == 12  # every request matched
    assert res.balance["server"].str.startswith("localhost:").all() and "matched no configured" not in res.balance_source
    cu = res.cold_upstream  # the last server unloaded through Ollama's API, then served through the proxy
    assert len(cu) and cu["cold"].any()
    assert res.timeout.advice.cold_n == 2 and res.timeout.advice.recommended_read_timeout_s >= 1
    skipped = {s.phase: s.why for s in res.skipped}
    assert skipped["failover"].startswith("unknown, because perfkit does not kill servers")
    assert skipped["timeout_504"].startswith("unknown, because perfkit does not change the timeout")
    trials = res.trials
    assert (trials["backend"] == "ollama").all()  # Ollama's own /api/chat, direct and proxied


def test_tries_on_a_killed_server_named_by_hostname_are_matched_by_its_addresses():
    """The victim's URL names a host (gpu-b.local:11434), nginx's log the address it connected to: every try
    after the kill on any address the name resolved to counts, none before it or after the revival."""
    import pandas as pd

    from perfkit.studies.fleet import failover_summary

    t_kill = 1000.0
    df = pd.DataFrame([{"phase": "failover", "ok": ok, "error": None if ok else "HTTP 502", "t_send_ns": i * 10**9}
                       for i, ok in enumerate([True, True, False, True])])
    ev = pd.DataFrame([{"kind": "server_killed", "server": "gpu-b.local:11434", "wall_unix_s": t_kill,
                        "server_addrs": ["10.0.0.7:11434", "gpu-b.local:11434"], "kill_t_ns": 2 * 10**9},
                       {"kind": "server_revived", "wall_unix_s": t_kill + 5}])
    access = [{"msec": t_kill - 1, "upstream_addrs": ["10.0.0.7:11434"], "status": 200},  # before the kill
              {"msec": t_kill + 0.5, "upstream_addrs": ["10.0.0.7:11434", "10.0.0.6:11434"], "status": 200},
              {"msec": t_kill + 1.0, "upstream_addrs": ["10.0.0.7:11434"], "status": 502},
              {"msec": t_kill + 2.0, "upstream_addrs": ["10.0.0.6:11434"], "status": 200},
              {"msec": t_kill + 6.0, "upstream_addrs": ["10.0.0.7:11434"], "status": 200}]  # revived
    fo = failover_summary(df, ev, access)
    assert fo.proxy_tries_on_dead_server == 2 and fo.retried_elsewhere_ok == 1
    assert fo.last_try_on_dead_server_s_after_kill == pytest.approx(1.0)
