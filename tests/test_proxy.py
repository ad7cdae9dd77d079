"""perfkit.servers.nginx: configs nginx accepts, bad parameters refused, and a real nginx in front of tiny
local servers (balance by weight, streaming, 504 on a read timeout, retries, the response cache, stop).

Tests that run nginx are skipped when it is not installed (scripts/setup.sh installs it when it can)."""

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psutil
import pytest

from perfkit.core import children
from perfkit.servers import nginx as proxy
from perfkit.servers.nginx import Nginx, ProxyConfig, ProxyError, Upstream, check_config, parse_access_log, render

needs_nginx = pytest.mark.skipif(proxy.nginx_binary() is None,
                                 reason=f"nginx not installed ({proxy.install_hint()})")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream keepalive expects
    disable_nagle_algorithm = True  # else the second small write waits ~40 ms for a delayed ACK

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        s = self.server
        time.sleep(s.delay_s)
        self.send_response(200)
        self.send_header("X-Served-By", s.name)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, part in enumerate((f"{s.name}:first\n".encode(), b"rest:" + body[:16] + b"\n")):
            time.sleep(s.gap_s if i else 0)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # nginx hanging up on a slow handler (the 504 test) is expected


@pytest.fixture
def serve():
    """serve(name, delay_s=0, gap_s=0) -> http://127.0.0.1:PORT of a server answering POSTs in two chunks:
    after delay_s the headers and the first chunk, after gap_s the second."""
    servers = []

    def start(name, delay_s=0.0, gap_s=0.0):
        s = _Server(("127.0.0.1", 0), _Handler)
        s.name, s.delay_s, s.gap_s = name, delay_s, gap_s
        threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(s)
        return f"http://127.0.0.1:{s.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _post(client, url, body=b"{}"):
    return client.post(url + "/v1/chat/completions", content=body, timeout=10)


def _nginx_pids(prefix) -> list[int]:
    """Our own scan, independent of Nginx.leftover_pids: the master names the prefix on its command line."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and str(prefix) in " ".join(p.info["cmdline"] or ()):
            out.append(p.pid)
    return out


# --- parameters and the config text ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(upstreams=[]), "at least one upstream"),
    (dict(upstreams=[Upstream("http://127.0.0.1:1")], proxy_read_timeout_s=0), "proxy_read_timeout_s"),
    (dict(upstreams=[Upstream("http://127.0.0.1:1")], proxy_connect_timeout_s=-1), "proxy_connect_timeout_s"),
    (dict(upstreams=[Upstream("http://127.0.0.1:1")], fail_timeout_s=1.5), "whole number"),
    (dict(upstreams=[Upstream("http://127.0.0.1:1")], next_upstream=["bogus"]), "next_upstream"),
    (dict(upstreams=[Upstream("http://127.0.0.1:1")], cache=True), "needs buffering=True"),
    (dict(upstreams=[Upstream("http://127.0.0.1:1")], cache_max_body_bytes=1 << 20), "64 KiB"),
    (dict(upstreams=[Upstream("http://127.0.0.1:1")], cache_key='$request_uri"'), "cache_key"),
])
def test_bad_config_is_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProxyConfig(**kwargs)


@pytest.mark.parametrize("url, weight, match", [
    ("http://127.0.0.1:8080", 0, "weight"),
    ("https://127.0.0.1:8080", 1, "http://host:port"),
    ("http://127.0.0.1", 1, "http://host:port"),
    ("http://127.0.0.1:8080/v1", 1, "http://host:port"),
    ("127.0.0.1:8080", 1, "http://host:port"),
])
def test_bad_upstream_is_a_value_error(url, weight, match):
    with pytest.raises(ValueError, match=match):
        Upstream(url, weight)


def test_a_field_changed_after_construction_is_checked_at_render(tmp_path):
    cfg = ProxyConfig([Upstream("http://127.0.0.1:1")])
    cfg.upstreams[0].weight = 0
    with pytest.raises(ValueError, match="weight"):
        render(cfg, tmp_path, 8080)


def test_rendered_config_keeps_every_file_under_the_prefix(tmp_path):
    text = render(ProxyConfig([Upstream("http://127.0.0.1:9001", 3), Upstream("http://[::1]:9002", 2)],
                              cache=True, buffering=True), tmp_path, 8080)
    assert "server 127.0.0.1:9001 weight=3 max_fails=1 fail_timeout=10s;" in text
    assert "server [::1]:9002 weight=2" in text
    assert "listen 127.0.0.1:8080;" in text and "proxy_request_buffering on;" in text
    for line in text.splitlines():
        if line.strip().startswith(("pid ", "error_log", "access_log", "lock_file")) or "_path " in line:
            assert str(tmp_path.resolve()) in line, line
    assert ("user root" in text) == (os.geteuid() == 0)


@needs_nginx
@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(weights=(3, 2)),
    dict(weights=(1, 1, 1), proxy_read_timeout_s=0.5, keepalive=0, next_upstream=["error"]),
    dict(buffering=True),
    dict(buffering=True, cache=True, cache_valid_s=60),
    dict(buffering=True, cache=True, cache_key="$request_method$request_uri", next_upstream_tries=2),
    dict(weights=(2, 1, 1), max_fails=0, next_upstream=["error", "timeout", "non_idempotent", "http_503"]),
])
def test_nginx_accepts_the_rendered_config(kwargs):
    weights = kwargs.pop("weights", (1,))
    ups = [Upstream(f"http://127.0.0.1:{9000 + i}", w) for i, w in enumerate(weights)]
    check_config(ProxyConfig(ups, **kwargs))


@needs_nginx
def test_check_config_reports_nginx_own_message():
    cfg = ProxyConfig([Upstream("http://127.0.0.1:9000")], cache=True, buffering=True,
                      cache_key="$no_such_variable")
    with pytest.raises(ProxyError, match="unknown .no_such_variable. variable"):
        check_config(cfg)


def test_access_log_parses_retries_and_cache_hits(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        "1700000000.123\t200\t0.250\t127.0.0.1:1, 127.0.0.1:2\t502, 200\t0.001, 0.240\t0.000, 0.001\t-, 0.010"
        "\t-\tPOST\t/v1/chat/completions\t300\t900\n"
        "1700000001.000\t200\t0.000\t-\t-\t-\t-\t-\tHIT\tPOST\t/v1\t10\t20\n"
        "garbage line\n")
    first, hit = parse_access_log(log)
    assert first["upstream_addrs"] == ["127.0.0.1:1", "127.0.0.1:2"] and first["upstream_addr"] == "127.0.0.1:2"
    assert first["upstream_statuses"] == [502, 200] and first["upstream_status"] == 200
    assert first["upstream_header_s"] == [None, 0.010] and first["request_time_s"] == 0.25
    assert first["msec"] == 1700000000.123 and first["status"] == 200 and first["cache_status"] is None
    assert hit["upstream_addrs"] == [] and hit["upstream_addr"] is None and hit["cache_status"] == "HIT"


# --- a real nginx ----------------------------------------------------------------------------------

@needs_nginx
def test_requests_split_by_weight_and_headers_name_the_upstream(tmp_path, serve):
    a, b = serve("a"), serve("b")
    cfg = ProxyConfig([Upstream(a, 3), Upstream(b, 1)])
    with Nginx(cfg, tmp_path) as n, httpx.Client() as c:
        assert n.url.startswith("http://127.0.0.1:") and n.version and n.pid
        served = []
        for _ in range(40):
            r = _post(c, n.url)
            assert r.status_code == 200
            served.append(r.headers["x-served-by"])
            assert r.headers["x-upstream-addr"] == (a if served[-1] == "a" else b).removeprefix("http://")
    assert 25 <= served.count("a") <= 35, served
    log = parse_access_log(n.access_log)
    assert len(log) == 40 and {e["upstream_addr"] for e in log} == {a[7:], b[7:]}
    assert all(e["status"] == 200 and e["upstream_status"] == 200 and e["request_time_s"] >= 0 for e in log)


@needs_nginx
def test_streamed_chunks_are_not_held_back(tmp_path, serve):
    up = serve("a", gap_s=0.5)
    with Nginx(ProxyConfig([Upstream(up)]), tmp_path) as n, httpx.Client() as c:
        t0 = time.monotonic()
        with c.stream("POST", n.url + "/v1/chat/completions", content=b"{}", timeout=10) as r:
            chunks = r.iter_raw()
            first = next(chunks)
            t_first = time.monotonic() - t0
            rest = b"".join(chunks)
        t_all = time.monotonic() - t0
    assert first.startswith(b"a:first") and b"rest" in first + rest
    assert t_first < 0.4 and t_all >= 0.5, (t_first, t_all)


@needs_nginx
def test_read_timeout_gives_504_and_reload_changes_it(tmp_path, serve):
    slow = serve("slow", delay_s=1.0)
    with Nginx(ProxyConfig([Upstream(slow)], proxy_read_timeout_s=0.3), tmp_path) as n, httpx.Client() as c:
        t0 = time.monotonic()
        assert _post(c, n.url).status_code == 504
        assert time.monotonic() - t0 < 0.9
        port = n.port
        n.reload(ProxyConfig([Upstream(slow)], proxy_read_timeout_s=5))
        assert n.port == port and "proxy_read_timeout 5000ms" in n.conf_path.read_text()
        assert _post(c, n.url).status_code == 200
    e504, e200 = parse_access_log(n.access_log)
    assert e504["status"] == 504 and e504["upstream_status"] == 504 and e200["status"] == 200


@needs_nginx
def test_reload_keeps_the_running_config_when_nginx_rejects_the_new_one(tmp_path, serve):
    up = serve("a")
    with Nginx(ProxyConfig([Upstream(up)]), tmp_path) as n, httpx.Client() as c:
        before = n.conf_path.read_text()
        bad = ProxyConfig([Upstream(up)], cache=True, buffering=True, cache_key="$no_such_variable")
        with pytest.raises(ProxyError, match="no_such_variable"):
            n.reload(bad)
        assert n.conf_path.read_text() == before and _post(c, n.url).status_code == 200


@needs_nginx
def test_post_retried_only_when_it_was_never_sent(tmp_path, serve):
    """A refused connection moves the POST to the next server; a POST that timed out after it was
    sent is not re-sent (no "non_idempotent"), and the timed-out server is then left out (max_fails=1)."""
    dead = f"http://127.0.0.1:{proxy.free_port()}"
    live = serve("live")
    with Nginx(ProxyConfig([Upstream(dead), Upstream(live)]), tmp_path / "refused") as n, httpx.Client() as c:
        assert [_post(c, n.url).status_code for _ in range(4)] == [200] * 4
    log = parse_access_log(n.access_log)
    assert log[0]["upstream_addrs"] == [dead[7:], live[7:]] and log[0]["upstream_statuses"] == [502, 200]
    assert all(e["upstream_addrs"] == [live[7:]] for e in log[1:])

    slow = serve("slow", delay_s=1.0)
    cfg = ProxyConfig([Upstream(slow), Upstream(live)], proxy_read_timeout_s=0.3)
    with Nginx(cfg, tmp_path / "timeout") as n, httpx.Client() as c:
        codes = [(r.status_code, r.headers.get("x-upstream-addr")) for r in (_post(c, n.url) for _ in range(4))]
    assert codes.count((504, slow[7:])) == 1 and codes.count((200, live[7:])) == 3, codes


@needs_nginx
def test_cache_hits_repeat_bodies_only(tmp_path, serve):
    up = serve("a")
    cfg = ProxyConfig([Upstream(up)], cache=True, buffering=True)
    long_a, long_b = b'{"p": "' + b"x" * 40_000 + b'a"}', b'{"p": "' + b"x" * 40_000 + b'b"}'
    with Nginx(cfg, tmp_path) as n, httpx.Client() as c:
        def status(body):
            r = _post(c, n.url, body)
            assert r.status_code == 200
            return r.headers["x-cache-status"], "x-upstream-addr" in r.headers

        assert status(b'{"p": "one"}') == ("MISS", True)
        assert status(b'{"p": "one"}') == ("HIT", False)
        assert status(b'{"p": "two"}') == ("MISS", True)
        # past nginx's 4k default header buffer, which would bypass the cache without a word
        assert [status(long_a)[0], status(long_a)[0], status(long_b)[0]] == ["MISS", "HIT", "MISS"]
        # a body too large to be in the key is refused, never served from another body's entry
        assert _post(c, n.url, b"x" * (proxy.MAX_CACHED_BODY_BYTES + 1)).status_code == 413
    assert [e["cache_status"] for e in parse_access_log(n.access_log)][:3] == ["MISS", "HIT", "MISS"]


@needs_nginx
def test_nothing_left_after_stop_error_or_ctrl_c(tmp_path, serve):
    up = serve("a")
    cfg = ProxyConfig([Upstream(up)], buffering=True, cache=True)  # cache: two more child processes
    n = Nginx(cfg, tmp_path / "stop").start()
    assert len(n.leftover_pids()) >= 3 and n.pid in _nginx_pids(n.prefix)
    n.stop()
    n.stop()  # twice is fine
    assert n.leftover_pids() == [] and _nginx_pids(n.prefix) == []

    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with Nginx(cfg, tmp_path / exc.__name__) as n:
                assert _nginx_pids(n.prefix)
                raise exc()
        assert n.leftover_pids() == [] and _nginx_pids(n.prefix) == []


@needs_nginx
def test_start_failure_says_why_and_a_later_start_in_that_run_dir_works(tmp_path, serve):
    up = serve("a")
    with Nginx(ProxyConfig([Upstream(up)]), tmp_path / "one") as busy:
        with pytest.raises(ProxyError, match="Address already in use"):
            Nginx(ProxyConfig([Upstream(up)]), tmp_path / "two", port=busy.port).start()
        assert _nginx_pids(tmp_path / "two") == []
    with Nginx(ProxyConfig([Upstream(up)]), tmp_path / "two") as n, httpx.Client() as c:  # same prefix
        assert "Address already in use" in (n.prefix / "error.log").read_text()
        assert _post(c, n.url).status_code == 200


def test_the_lifeline_takes_nginx_and_its_workers_with_it(tmp_path):
    """kill -9 of perfkit during the fleet study: the kernel's lifeline kills every server in the one registry,
    nginx's workers included (they would otherwise carry the run's environment and block --resume)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    if proxy.nginx_binary() is None:
        pytest.skip("nginx is not installed")
    owner = subprocess.Popen(["sleep", "60"])
    code = ("import sys, time\n"
            "from perfkit.core import children\n"
            "from perfkit.servers.nginx import Nginx, ProxyConfig, Upstream\n"
            f"n = Nginx(ProxyConfig([Upstream('http://127.0.0.1:9', 1)]), {str(tmp_path)!r}).start()\n"
            "print(n.pid, flush=True)\n"
            "children.start_lifeline(0.05)\n"
            "time.sleep(60)\n")
    env = {**os.environ, children.ENV_OWNER: f"{owner.pid}:{children.start_time(owner.pid)}"}
    kernel = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)
    try:
        master = int(kernel.stdout.readline())
        group = [p.pid for p in psutil.process_iter() if _pgid(p.pid) == master]
        assert len(group) >= 2  # master and at least one worker
        owner.kill()  # perfkit dies without unwinding
        owner.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(children.start_time(p) for p in group):
            time.sleep(0.05)
        assert not any(children.start_time(p) for p in group)
        assert kernel.wait(timeout=10) == 137
    finally:
        for p in (owner, kernel):
            if p.poll() is None:
                p.kill()
        try:
            os.killpg(master, signal.SIGKILL)
        except (OSError, UnboundLocalError):
            pass


def _pgid(pid: int) -> int | None:
    import os

    try:
        return os.getpgid(pid)
    except OSError:
        return None
