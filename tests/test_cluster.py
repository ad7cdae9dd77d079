"""Beyond one machine, on Ray: agents on server hosts, load from client nodes, one clock.

The fast tests check the parts (clock offsets, the version check, the split of a series, parameters). The
``cluster`` tests run a real Ray cluster of three nodes on this machine (tests/ray_cluster.py), each "host"
with its own scripted Ollama started by its agent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from perfkit.client import loadgen
from perfkit.cluster import ClusterError, check_version, measure_offset
from perfkit.core.errors import ConfigError
from perfkit.studies import params

ROOT = Path(__file__).resolve().parent.parent
MODEL = "qwen2.5:32b-instruct-q4_0"


# ---- the parts ---------------------------------------------------------------------------------------
def test_a_nodes_clock_offset_is_found_within_its_uncertainty():
    """A node 0.25 s ahead whose answers take a varying time: the tightest round trip finds the offset within
    half of it, and the uncertainty says so."""
    import random

    rng = random.Random(1)

    def probe():
        time.sleep(rng.uniform(0, 0.004))
        t = time.perf_counter_ns() + 250_000_000
        w = time.time_ns() + 250_000_000
        time.sleep(rng.uniform(0, 0.004))
        return t, w

    c = measure_offset("n1", probe, 25)
    assert abs(c.offset_ns - 250_000_000) <= c.uncertainty_ns
    assert abs(c.wall_offset_s - 0.25) <= c.uncertainty_ns * 1e-9 + 1e-4
    assert c.uncertainty_ns == c.rtt_min_ns // 2 + 1 and c.rtt_min_ns <= c.rtt_median_ns and c.round_trips == 25
    assert c.to_run(c.to_node(123)) == 123


def test_a_node_with_another_perfkit_is_refused():
    check_version({"node": "gpu-a", "perfkit_version": "0.1.0"}, "0.1.0")
    with pytest.raises(ClusterError, match=r"node gpu-a \(h\) runs perfkit 0\.0\.9, this driver perfkit 0\.1\.0: "
                                           r"install the same perfkit on every node"):
        check_version({"node": "gpu-a", "hostname": "h", "perfkit_version": "0.0.9"}, "0.1.0")


class _Target:
    url, headers = "http://x", {}


def _jobs(offsets):
    from perfkit.client.stream import StreamCall

    return [loadgen.Job(_Target(), StreamCall("/p", b"{}", None, None), o) for o in offsets]  # type: ignore[arg-type]


def test_an_open_loop_split_over_clients_keeps_the_schedule_asked_for():
    from perfkit.measure.runner import schedule

    offsets = schedule("poisson", 50.0, 101, seed=3)
    shares, streams, specs = loadgen.share_specs(_jobs(offsets), None, 10.0, None, 3)
    assert streams == [None] * 3 and sorted(i for s in shares for i in s) == list(range(101))
    merged = sorted(off for spec in specs for (_, _, _, off) in spec["jobs"])
    assert merged == sorted(offsets)  # every send at its own offset: the merged schedule is the one asked for


def test_a_closed_loop_split_over_clients_divides_its_streams():
    shares, streams, specs = loadgen.share_specs(_jobs([0.0] * 30), 5, 10.0, None, 2)
    assert streams == [3, 2] and [len(s) for s in shares] == [18, 12] and [s["concurrency"] for s in specs] == [3, 2]


def test_perfkit_agent_joins_with_the_resource_that_names_the_host(capsys, monkeypatch):
    from perfkit.cli import main
    from perfkit.cluster import join

    ran = []
    monkeypatch.setattr(join, "run", lambda args: ran.append(args) or 0)
    assert main(["agent", "join", "--address", "head:6379", "--host", "gpu-a", "--server", "http://127.0.0.1:1"]) == 0
    out = capsys.readouterr().out
    assert "NOTHING listens on port 1" in out and "GPUs (NVML)" in out
    assert ran[0][1:] == ["start", "--disable-usage-stats", "--address=head:6379",
                          '--resources={"perfkit-host:gpu-a": 1}']
    assert main(["agent", "join", "--client", "c1"]) == 2
    assert "give --head, or --address HEAD:PORT" in capsys.readouterr().err
    assert main(["agent", "join", "--address", "h:1", "--host", "bad name"]) == 2


class _FakeView:
    """A host view as an agent gives it: samples on the run's clock, the host's GPUs 0 (the server's) and 1."""

    host, interval_s, unavailable, server_gpus = "gpu-a", 0.05, {}, [0]

    def __init__(self, t0: int):
        self.t0, self.k = t0, 0

    def drain(self):
        rows = []
        for _ in range(10):
            t = self.t0 + self.k * 50_000_000
            rows.append({"source": "system", "t_ns": t, "host": "gpu-a", "server_cpu_pct": 150.0,
                         "server_rss_bytes": 1 << 30, "host_cpu_pct": 40.0})
            for gpu, watts in ((0, 300.0), (1, 100.0)):
                rows.append({"source": "gpu", "t_ns": t, "host": "gpu-a", "gpu": gpu, "gpu_util_pct": 90.0 if gpu == 0
                             else 5.0, "power_w": watts, "energy_j": watts * self.k * 0.05})
            self.k += 1
        return rows


def test_an_agents_samples_give_the_windows_the_server_hosts_cpu_and_its_own_gpus_energy():
    from perfkit.core.clock import now_ns
    from perfkit.sampling import Monitor
    from perfkit.sampling.view import ViewSampler

    t0 = now_ns()
    view = _FakeView(t0)
    m = Monitor(0.05, None, gpu=False, system=False, telemetry=[ViewSampler(view, 0.02)]).start()
    try:
        deadline = time.monotonic() + 5
        while view.k < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        w = m.measure("w", t0 + 500_000_000, t0 + 2_500_000_000)
    finally:
        m.stop()
    assert w.gpu_source == "agent" and w.stats["server_cpu_pct_mean"] == pytest.approx(150.0)
    assert w.stats["gpu_util_pct_mean"] == pytest.approx(90.0)  # GPU 1 is not the server's: not averaged in
    assert w.energy_j == pytest.approx(300.0 * 2.0, rel=1e-6)  # 300 W × 2 s from GPU 0's counter alone


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


HOSTS_YAML = """\
name: hostsfleet
{cluster}studies:
  fleet:
    model: {model}
    api: {api}
    hosts:
      - {{host: gpu-a, url: "http://10.0.0.5:11434", command: [ollama, serve]}}
      - {{host: gpu-b, url: "http://10.0.0.6:11434", restart_command: [systemctl, restart, ollama]}}
"""


@pytest.mark.parametrize("cluster,api,match", [
    ("", "ollama", r"studies\.fleet\.hosts: servers on other hosts are driven by perfkit's agent on each host: add a "
                   r"cluster: section"),
    ("cluster: {address: auto}\n", "openai", r"hosts: perfkit.s agents drive ollama servers; set api to one of them"),
    ("cluster: {address: 'nowhere'}\n", "ollama", r"cluster\.address.*use auto, HOST:PORT"),
    ("cluster: {address: auto, clients: [c1, c1]}\n", "ollama", r"cluster\.clients.*c1"),
])
def test_hosts_and_cluster_parameters_are_checked_before_anything_runs(tmp_path, cluster, api, match):
    with pytest.raises(ConfigError, match=match):
        params.load(_write(tmp_path, HOSTS_YAML.format(cluster=cluster, model=MODEL, api=api)), check_models=False)


def test_a_valid_hosts_fleet_is_accepted(tmp_path):
    p = params.load(_write(tmp_path, HOSTS_YAML.format(cluster="cluster: {address: 'head:6379', clients: 2}\n",
                                                        model=MODEL, api="ollama")), check_models=False)
    f = p.studies.fleet
    assert [h.host for h in f.hosts] == ["gpu-a", "gpu-b"] and f.weight_list() == [1, 1] and p.models_used() == []
    assert p.cluster.address == "head:6379" and p.cluster.client_count() == 2


# ---- a real three-node cluster ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'ray>=2.40' (scripts/setup.sh does)")
    import ray
    import ray_cluster as rc

    c = rc.start()
    yield c
    ray.shutdown()
    c.shutdown()


def _scripted(home: Path, models_dir: Path) -> tuple[str, dict]:
    """A scripted Ollama's home, configured, not started: the url and the hosts[] entry an agent starts it from."""
    from scripted_ollama.harness import SERVE_PY, ScriptedOllama

    so = ScriptedOllama(home, models_dir=models_dir)
    so.write_config()
    return so.url, {"kind": "ollama", "url": so.url, "command": [sys.executable, str(SERVE_PY), "--home", str(so.home)],
                    "env": {"OLLAMA_MODELS": str(so.models_dir), "SCRIPTED_OLLAMA_HOME": str(so.home)}}


def _ours(home: Path) -> list[int]:
    mark = f"SCRIPTED_OLLAMA_HOME={home.resolve()}".encode()
    out = []
    for p in psutil.process_iter():
        try:
            if mark in Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0") and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (OSError, psutil.Error):
            continue
    return out


@pytest.mark.cluster
def test_a_series_from_two_client_nodes_merges_on_one_clock(ray_cluster, tmp_path, scripted_models_dir):
    """Closed and open loop from client nodes c1 and c2 against a scripted Ollama: every request measured once,
    stamped on the driver's clock (each send before the server's own arrival stamp, within the clocks'
    uncertainty), streams unique, the open loop's sends on the schedule asked for."""
    from scripted_ollama.harness import ScriptedOllama

    from perfkit import kinds as backends
    from perfkit.client.backends import Sampling
    from perfkit.cluster import Cluster
    from perfkit.core.schema import ClusterParams
    from perfkit.core.store import RunStore
    from perfkit.measure.runner import Runner, schedule

    with ScriptedOllama(tmp_path / "o", models_dir=scripted_models_dir, env={"OLLAMA_NUM_PARALLEL": "4"}) as so, \
            Cluster(ClusterParams(address=ray_cluster.address, clients=2)) as cl:
        b = backends.create("ollama", so.url, inspect_host=False)
        store = RunStore(tmp_path / "run")
        r = Runner(b, store, timeout_s=60)
        r.shares = cl.clients()
        df = r.closed_loop(MODEL, 4, 16, series="closed", sampling=Sampling(4), prompt_words=8)
        od = r.open_loop(MODEL, 8.0, 12, series="open", seed=5, sampling=Sampling(4), prompt_words=8)
        truth = [t for t in so.truth() if t.get("endpoint") == "/api/chat"]
        unc_s = max(c["clock"]["uncertainty_s"] for c in cl.describe()["nodes"].values())
    assert len(df) == 16 and df["ok"].all() and sorted(df["stream"].unique()) == [0, 1, 2, 3]
    assert (df["clients"] == 2).all()
    ev = store.events()
    done = ev[(ev["kind"] == "series_done") & (ev["series"] == "closed")].iloc[0]
    assert done["client_workers"] == 2 and not done["client_lost_requests"]
    assert (df["t_send_ns"] >= done["t_start_ns"]).all() and (df["t_send_ns"] <= done["t_end_ns"]).all()
    # The server's own arrival stamps, against the clients' sends put on the driver's clock (all on one host
    # here, so the wall clocks agree): no request arrives before it was sent.
    arrivals = sorted(t["arrival_wall"] for t in truth)
    sends = sorted(df["wall_send_unix_s"].tolist() + od["wall_send_unix_s"].tolist())
    assert len(arrivals) >= len(sends)
    assert all(a >= s - unc_s - 1e-3 for s, a in zip(sends, arrivals[-len(sends):]))
    assert len(od) == 12 and od["ok"].all()
    base = int((od["t_scheduled_ns"] - (od["scheduled_s"] * 1e9).round().astype("int64")).median())
    got = sorted(((od["t_scheduled_ns"] - base) * 1e-9).round(6))
    assert got == pytest.approx(sorted(schedule("poisson", 8.0, 12, seed=5)), abs=2e-3)


@pytest.mark.cluster
def test_a_client_node_lost_mid_series_is_recorded_and_the_series_goes_on(ray_cluster, tmp_path,
                                                                          scripted_models_dir):
    import ray
    from scripted_ollama.harness import ScriptedOllama

    from perfkit import kinds as backends
    from perfkit.client.backends import Sampling
    from perfkit.cluster import Cluster
    from perfkit.core.schema import ClusterParams
    from perfkit.core.store import RunStore
    from perfkit.measure.runner import Runner

    with ScriptedOllama(tmp_path / "o", models_dir=scripted_models_dir, env={"OLLAMA_NUM_PARALLEL": "2"}) as so, \
            Cluster(ClusterParams(address=ray_cluster.address, clients=["c1", "c2"])) as cl:
        store = RunStore(tmp_path / "run")
        r = Runner(backends.create("ollama", so.url, inspect_host=False), store, timeout_s=60)
        r.shares = cl.clients()
        victim = cl.client_actors[1][1]
        threading.Timer(3.0, lambda: ray.kill(victim)).start()  # after the agreed start: mid-series
        df = r.closed_loop(MODEL, 2, 40, series="s", sampling=Sampling(24), prompt_words=8)
        after = r.closed_loop(MODEL, 2, 6, series="after", sampling=Sampling(4), prompt_words=8)
    ev = store.events()
    lost = ev[ev["kind"] == "client_lost"]
    assert len(lost) == 1 and lost.iloc[0]["series"] == "s"
    assert "client node c2 lost" in lost.iloc[0]["because"] and len(lost.iloc[0]["requests"]) == 20
    assert len(df) == 20 and df["ok"].all() and set(df["index"]).isdisjoint(lost.iloc[0]["requests"])
    assert (df["clients"] == 2).all()
    # The next series is not dealt to the dead node: every request measured, from c1 alone.
    assert len(after) == 6 and after["ok"].all() and (after["clients"] == 1).all()
    (was,) = store.manifest()["client_nodes_lost"]
    assert was["requests_lost"] == 20 and was["series"] == "s"


@pytest.mark.cluster
def test_an_agent_on_a_host_answers_like_a_local_server_and_says_when_it_is_lost(ray_cluster, tmp_path,
                                                                                 scripted_models_dir):
    """The controller interface through an agent (a server it started on gpu-a): settings confirmed from that
    host's log, the model file evicted from that host's page cache, a kill and a revival on the run's clock,
    samples from there; then the agent dies, and every question says the host is lost instead of answering."""
    import httpx
    import ray

    from perfkit.cluster import Cluster
    from perfkit.core.clock import now_ns
    from perfkit.core.schema import ClusterParams
    from perfkit.servers.control import Unknown

    url, spec = _scripted(tmp_path / "a", scripted_models_dir)
    with Cluster(ClusterParams(address=ray_cluster.address)) as cl:
        ctl = cl.agent("gpu-a", spec, {"OLLAMA_NUM_PARALLEL": 3})
        view = ctl.view(0.05)
        assert httpx.post(url + "/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False},
                          timeout=60).status_code == 200
        chk = ctl.settings_in_effect({"OLLAMA_NUM_PARALLEL": 3}, MODEL)["OLLAMA_NUM_PARALLEL"]
        assert chk.status == "confirmed" and "on host gpu-a" in chk.evidence
        assert ctl.model_file(MODEL).name.startswith("sha256-") and ctl.file_cache(MODEL) > 0.9
        assert ctl.file_cache(MODEL, "evict") < 0.05
        assert ctl.device(MODEL).kind in ("gpu", "gpu+cpu", "cpu")
        t0 = now_ns()
        t_kill = ctl.kill()
        assert t0 - 2 * ctl.clock.uncertainty_ns <= t_kill <= now_ns() + 2 * ctl.clock.uncertainty_ns
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/api/version", timeout=2)
        info = ctl.revive()
        assert info.t_ready_ns > t_kill and httpx.get(url + "/api/version", timeout=5).status_code == 200
        time.sleep(0.3)
        rows = view.drain()
        assert rows and all(r["host"] == "gpu-a" for r in rows) and max(r["t_ns"] for r in rows) <= now_ns()
        ray.kill(ctl.actor)
        time.sleep(1.0)
        with pytest.raises(Unknown, match="host gpu-a is lost"):
            ctl.file_cache(MODEL)
        assert view.drain() == [] and view.lost
    deadline = time.monotonic() + 20
    while _ours(tmp_path / "a") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ours(tmp_path / "a"), "the server outlived its agent"


@pytest.mark.cluster
def test_a_killed_driver_leaves_no_agent_and_no_server(ray_cluster, tmp_path, scripted_models_dir):
    """kill -9 of the driver: Ray ends its actors, and the server an agent started dies with its agent."""
    url, spec = _scripted(tmp_path / "k", scripted_models_dir)
    script = tmp_path / "driver.py"
    script.write_text(f"""
import json, sys, time
sys.path.insert(0, {str(ROOT / 'tests')!r})
from perfkit.cluster import Cluster
from perfkit.core.schema import ClusterParams
cl = Cluster(ClusterParams(address={ray_cluster.address!r})).connect()
ctl = cl.agent("gpu-b", json.loads({json.dumps(json.dumps(spec))}), {{}})
print(json.dumps({{"agent_pid": cl.nodes["gpu-b"]["pid"]}}), flush=True)
time.sleep(600)
""")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         cwd=ROOT)
    try:
        agent_pid = json.loads(p.stdout.readline())["agent_pid"]
        assert _ours(tmp_path / "k") and psutil.pid_exists(agent_pid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (_ours(tmp_path / "k") or _alive(agent_pid)):
            time.sleep(0.5)
        assert not _ours(tmp_path / "k"), "the agent's server outlived the driver"
        assert not _alive(agent_pid), "the agent outlived the driver"
    finally:
        if p.poll() is None:
            p.kill()
        for pid in _ours(tmp_path / "k"):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.cluster
@pytest.mark.notebooks
def test_a_fleet_on_two_hosts_seen_through_their_agents(ray_cluster, tmp_path, scripted_models_dir):
    """``perfkit run`` with fleet.hosts: each host's agent starts its scripted Ollama; nginx here in front. The
    report shows each server's own CPU and memory, its log on the run's clock, a cold-disk first request per
    host, failover and 504 probes driven through the agents; the scaling series come from two client nodes;
    nothing perfkit placed is left running."""
    from conftest import perfkit_run

    from perfkit.servers.nginx import nginx_binary

    if nginx_binary() is None:
        pytest.skip("nginx is not installed")
    homes = [tmp_path / "gpu-a", tmp_path / "gpu-b"]
    hosts = []
    for name, home in zip(("gpu-a", "gpu-b"), homes):
        _, spec = _scripted(home, scripted_models_dir)
        hosts.append({"host": name, **{k: v for k, v in spec.items() if k != "kind"}})  # the fleet's api names it
    run_dir = perfkit_run({
        "name": "hosts", "timeouts": {"request_s": 60, "stall_s": 30}, "sampling": {"interval_s": 0.1},
        "backend": {"settings": {"OLLAMA_NUM_PARALLEL": 2}},  # the hosts' servers get these settings
        "cluster": {"address": ray_cluster.address, "clients": 2},
        "studies": {"fleet": {"model": MODEL, "api": "ollama", "hosts": hosts, "concurrency": [1], "requests": 4,
                              "overhead_reps": 2, "cold_reps": 1, "cache_reps": 2, "failover_requests": 8,
                              "failover_kill_after": 2, "num_predict": 4, "prompt_words": 8}}}, tmp_path)
    d = run_dir / "fleet"
    manifest = json.loads((d / "manifest.json").read_text())
    nodes = manifest["cluster"]["nodes"]
    assert {"gpu-a", "gpu-b", "c1", "c2"} <= set(nodes)
    assert all(n["clock"]["uncertainty_s"] < 0.05 and abs(n["clock"]["offset_ns"]) <= n["clock"]["uncertainty_ns"] + 1e6
               for n in nodes.values())  # one machine: one monotonic clock, so the offset is ~0
    assert "resources" not in manifest.get("sampling_unavailable", {})
    from perfkit.core.store import RunStore

    store = RunStore(d)
    trials, ev, samples = store.trials(), store.events(), store.samples()
    # each host sampled by its agent
    assert set(samples["host"].dropna()) == {"gpu-a", "gpu-b"}
    own = samples[samples["host"].notna() & (samples["source"] == "system")]
    assert (own.groupby("host")["server_rss_bytes"].median() > 0).all()  # (0 while the failover's victim was dead)
    # cold disk on each host, through its agent
    cd = trials[trials["phase"] == "cold_disk"]
    assert sorted(cd["server"]) == ["gpu-a", "gpu-b"] and cd["ok"].all()
    assert (cd["file_resident_before"] < 0.05).all()
    # failover: the last host's server killed and revived by its agent
    killed = ev[ev["kind"] == "fleet_server_killed"]
    assert len(killed) == 1 and (ev["kind"] == "fleet_server_revived").any()
    # Responses from client nodes come back after the series: the kill was set on the run's clock, and landed while
    # requests were in flight; the tries on the dead server that the report gives are those nginx's log shows.
    from perfkit.servers.nginx import parse_access_log

    k = ev[ev["kind"] == "server_killed"].iloc[0]
    assert "after the series was set off" in k["scheduled_by"]
    t_rev = float(ev[ev["kind"] == "server_revived"]["wall_unix_s"].iloc[0])
    tries = [a for a in parse_access_log(d / "nginx-access.log")
             if float(k["wall_unix_s"]) - 1.0 <= a["msec"] <= t_rev and set(k["server_addrs"]) & set(a["upstream_addrs"])]
    assert tries, "the kill landed after every request"
    fo_text = re.search(r"the proxy tried the dead server (\d+) time", (run_dir / "fleet.html").read_text())
    assert fo_text and int(fo_text.group(1)) == len(tries)
    assert not any(s["phase"] in ("failover", "timeout_504", "cold_disk") for s in
                   ev[ev["kind"] == "phase_skipped"].to_dict("records"))
    probes = trials[(trials["phase"] == "timeout") & (trials["target"] == "proxy")]
    assert len(probes) and (~probes["ok"].astype(bool)).all()
    # the scaling series from the two client nodes
    sc = trials[trials["phase"] == "scaling"]
    assert (sc["clients"] == 2).all()
    # each server's own log, kept per host
    logs = ev[ev["kind"] == "host_log"]
    assert set(logs["server"]) == {"gpu-a", "gpu-b"} and logs["available"].all()
    html = (run_dir / "fleet.html").read_text()
    for needle in ("Each server", "gpu-a", "gpu-b", "cold disk per host", "cluster clocks", "runner",
                   "Settings on each host"):
        assert needle in html, needle
    assert "another host" not in html
    # nothing left: no server an agent started, no agent
    for home in homes:
        assert not _ours(home), f"a server of {home.name} outlived the run"
    assert not any(_alive(n["pid"]) for n in nodes.values() if n["role"] == "host")
    assert re.search(r"A cold disk on each server", html)


@pytest.mark.cluster
@pytest.mark.notebooks
def test_a_users_ollama_on_another_host_seen_through_its_agent(ray_cluster, tmp_path, scripted_models_dir):
    """backend.host: cold start and config tuning against a user's Ollama on host gpu-a, through its agent: the
    processes sampled there, cold_disk on that host's page cache with a load floor, settings confirmed from that
    host's log, the server's own timeline, and the user's settings given back — none of it "unknown, because the
    server is on another host"."""
    import yaml
    from conftest import perfkit_run
    from scripted_ollama.harness import ScriptedOllama
    from test_production_run import text

    with ScriptedOllama(tmp_path / "ollama", models_dir=scripted_models_dir,
                        env={"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_KEEP_ALIVE": "5m"}) as so:
        p = yaml.safe_load((ROOT / "params" / "ollama-qwen2.5.yaml").read_text())
        p["backend"].update(url=so.url, host="gpu-a", restart_command=so.restart_command,
                            server_log={"file": str(so.log_path)}, ready_timeout_s=30)
        p["cluster"] = {"address": ray_cluster.address}
        p["sampling"] = {"interval_s": 0.05}
        p["timeouts"] = {"request_s": 60, "stall_s": 30}
        s = p["studies"]
        p["studies"] = {"cold_start": s["cold_start"], "config_tuning": s["config_tuning"]}
        s["cold_start"].update(reps=2, num_predict=8, prompt_words=24, strategy_reps=1, keep_alive_s=2,
                               idle_gaps_s=[1], keep_warm_interval_s=0.5, scheme_a_delays_s=[0], scheme_a_reps=1)
        s["config_tuning"].update(concurrency=[1], requests=2, num_predict=8, prompt_words=24, rates_rps=[],
                                  rate_requests=2, model="qwen2.5:32b-instruct-q4_0",
                                  settings=[{"OLLAMA_NUM_PARALLEL": 2, "OLLAMA_FLASH_ATTENTION": 1}])
        run_dir = perfkit_run(p, tmp_path, name="ollama-on-gpu-a.yaml", timeout_s=900)
        last = so.log_text().split('msg="server config"')[-1]
    assert "OLLAMA_NUM_PARALLEL:1 " in last or "OLLAMA_NUM_PARALLEL:1]" in last  # given back by the agent
    assert not so.leftover_processes() or so.serve_pid()  # only the user's own server, which stays
    cold = text(run_dir / "cold_start.html")
    assert "another host" not in cold and "No samples recorded" not in cold
    assert "Load floor:" in cold and "unknown, because" not in cold.split("Load floor:")[1][:60]
    assert "runner started in" in cold and "server config" in cold  # the server's own timeline, from gpu-a
    manifest = json.loads((run_dir / "cold_start" / "manifest.json").read_text())
    assert manifest["control"]["control"] == "agent" and manifest["control"]["host"] == "gpu-a"
    samples = [json.loads(x) for x in (run_dir / "cold_start" / "samples.jsonl").read_text().splitlines()]
    assert any(x.get("host") == "gpu-a" and x.get("server_processes", 0) >= 2 for x in samples)
    trials = [json.loads(x) for x in (run_dir / "cold_start" / "trials.jsonl").read_text().splitlines()]
    disk = [t for t in trials if t.get("cache_state") == "cold_disk" and not t.get("warmup")]
    assert disk and all(t.get("state_verified") and t.get("state_file_resident_fraction", 1) < 0.05 for t in disk)
    tuning = text(run_dir / "config_tuning.html")
    assert "confirmed" in tuning and "not applied" in tuning and "on host gpu-a" in tuning


# ---- a user's server, never harmed ------------------------------------------------------------------------
def _parallel(so) -> str | None:
    """OLLAMA_NUM_PARALLEL in the server's latest `server config` log line (what it runs on now)."""
    m = re.findall(r"OLLAMA_NUM_PARALLEL:(\d+)", so.log_text())
    return m[-1] if m else None


def _settles(check, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return bool(check())


@pytest.mark.cluster
def test_a_users_nohup_server_is_alive_and_on_its_own_settings_after_every_end(ray_cluster, tmp_path,
                                                                               scripted_models_dir):
    """A user's Ollama restarted by `nohup … &` (no session of its own) through the agent on gpu-a: after the
    agent is released, after the agent dies, after a kill -9 of the driver, and after a driver and the watchdog
    both die followed by the next run, the server is alive and runs on NUM_PARALLEL=1, the user's own setting."""
    import ray
    from scripted_ollama.harness import ScriptedOllama

    from perfkit.cluster import Cluster
    from perfkit.core.schema import ClusterParams

    with ScriptedOllama(tmp_path / "u", models_dir=scripted_models_dir, env={"OLLAMA_NUM_PARALLEL": "1"}) as so:
        spec = {"kind": "ollama", "url": so.url, "restart_command": so.nohup_restart_command, "ready_timeout_s": 30,
                "server_log": {"file": str(so.log_path)}}
        user_is_back = lambda: so.serve_pid() is not None and _parallel(so) == "1"  # noqa: E731
        with Cluster(ClusterParams(address=ray_cluster.address)) as cl:
            # 1. The study ends: the agent gives the settings back and is released.
            cl.agent("gpu-a", spec, {"OLLAMA_NUM_PARALLEL": 3})
            assert _parallel(so) == "3"
            out = cl.release("gpu-a")
            assert out.get("restored") and user_is_back()
            time.sleep(2.0)  # the actor's process is gone by now: the server must not have gone with it
            assert user_is_back(), "the user's server died with its agent"
            # 2. The agent dies mid-study: its watchdog gives the settings back.
            ctl = cl.agent("gpu-a", spec, {"OLLAMA_NUM_PARALLEL": 3})
            assert _parallel(so) == "3" and ctl.described["restore_watchdog_pid"]
            ray.kill(ctl.actor)
            assert _settles(user_is_back), "no one gave the user's settings back after the agent died"
            cl.agents.pop("gpu-a")

        # 3. kill -9 of the driver (Ray ends its actors): the watchdog on the host restores.
        def driver(settings):
            script = tmp_path / "driver.py"
            script.write_text(f"""
import json, sys, time
from perfkit.cluster import Cluster
from perfkit.core.schema import ClusterParams
cl = Cluster(ClusterParams(address={ray_cluster.address!r})).connect()
ctl = cl.agent("gpu-a", json.loads({json.dumps(json.dumps(spec))}), {settings!r})
print(json.dumps(ctl.described), flush=True)
time.sleep(600)
""")
            p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, cwd=ROOT)
            return p, json.loads(p.stdout.readline())

        p, described = driver({"OLLAMA_NUM_PARALLEL": 3})
        assert _parallel(so) == "3"
        p.kill()
        p.wait()
        assert _settles(user_is_back), "the user's server stayed on the run's settings after the driver's kill -9"
        # 4. The driver and its watchdog both die: the server stays on the run's settings until the next run, which
        #    gives the user's own back before it does anything, and keeps them as the user's.
        p, described = driver({"OLLAMA_NUM_PARALLEL": 3})
        os.kill(described["restore_watchdog_pid"], signal.SIGKILL)
        p.kill()
        p.wait()
        time.sleep(3.0)
        assert so.serve_pid() is not None and _parallel(so) == "3"  # no one left to restore it, but it lives
        with Cluster(ClusterParams(address=ray_cluster.address)) as cl:
            ctl = cl.agent("gpu-a", spec, {"OLLAMA_NUM_PARALLEL": 2})
            assert ctl.described.get("recovered") and _parallel(so) == "2"
        assert user_is_back(), "the next run took the dead run's settings for the user's"
        assert "PERFKIT_RUN_DIR" not in Path(f"/proc/{so.serve_pid()}/environ").read_text()


def test_an_agents_samples_are_sent_once_each_in_time_order_and_resent_until_acknowledged():
    """Two samplers' rows, one late: each row reaches the driver once, in time order, none lost; an answer that
    never arrived (the same cursor asked again) is sent again; nothing piles up on the host."""
    from perfkit.cluster.agent import HostAgent

    class FakeSampler:
        def __init__(self):
            self.pending = []

        def drain(self):
            out, self.pending = self.pending, []
            return out

        def stop(self):
            pass

    import tempfile

    stale = Path(tempfile.mkdtemp(prefix="perfkit-agent-dead-"))  # an agent killed without its shutdown
    (stale / "owner.json").write_text(json.dumps({"pid": 2**22 + 7, "start_time": 1, "host": os.uname().nodename}))
    a = HostAgent("gpu-a")
    assert not stale.exists(), "a dead agent's temp directory was left"
    sys_s, gpu_s = FakeSampler(), FakeSampler()
    a.samplers = [sys_s, gpu_s]
    sys_s.pending = [{"t_ns": 10, "s": "sys"}, {"t_ns": 30, "s": "sys"}]
    gpu_s.pending = [{"t_ns": 20, "s": "gpu"}]
    rows, cur, _ = a.samples(0)
    assert [r["t_ns"] for r in rows] == [10, 20, 30]
    gpu_s.pending = [{"t_ns": 25, "s": "gpu", "power_w": 400}]  # late: taken before the last row sent
    again, cur2, _ = a.samples(0)  # the first answer was lost: everything not acknowledged comes again
    assert [r["t_ns"] for r in again] == [10, 20, 25, 30]
    rows, cur3, _ = a.samples(cur2)
    assert rows == [] and cur3 == cur2 and len(a._outbox) == 0
    sys_s.pending = [{"t_ns": 40, "s": "sys"}]
    rows, _, _ = a.samples(cur3)
    assert [r["t_ns"] for r in rows] == [40]
    a.shutdown()
    assert not a.dir.exists()


class _GpuClock:
    """A controller (built in the test) with a question that is not on the agent's list."""

    @staticmethod
    def control():
        from perfkit.servers.control import RestartInfo, ServerControl, Unknown

        class GpuClockControl(ServerControl):
            name = "gpu-clock"

            def gpu_clock_mhz(self, gpu: int, boost: bool = False) -> float:
                """The GPU's clock (MHz)."""
                if gpu > 1:
                    raise Unknown(f"no GPU {gpu} on this host")
                return 1980.0 if boost else 1410.0

            def restart(self, settings):
                return RestartInfo(1_000, 5_000, 1700000000.0, 10, 11)

            def slots(self, model):
                raise Unknown("the server does not say its slots")

        return GpuClockControl


def test_a_method_added_to_the_remote_list_is_asked_through_the_agents_dispatch_and_one_not_on_it_is_refused():
    """A proxy and an agent built from one list: a method added to it is asked through the agent's dispatch (a
    fake transport calls it directly), its arguments and answer crossing as plain data and an Unknown as
    itself; an agent whose list lacks it refuses it by name, and a controller method left off a proxy's list
    is refused there, not answered by the base class as if the server were local."""
    from perfkit.cluster.agent import HostAgent
    from perfkit.cluster.remote import METHODS, NotRemote, RemoteProxy, remote_methods
    from perfkit.servers.control import RestartInfo, Unknown

    control_cls = _GpuClock.control()
    extended = METHODS + remote_methods(control_cls, "gpu_clock_mhz")
    agent = HostAgent("gpu-a")
    agent.control, agent.methods = control_cls(), extended
    try:
        class Proxy(RemoteProxy, methods=extended):
            def send(self, name, kwargs):
                return agent.call(name, kwargs)

        p = Proxy()
        assert p.gpu_clock_mhz(0) == 1410.0 and p.gpu_clock_mhz(1, boost=True) == 1980.0
        assert "The GPU's clock" in Proxy.gpu_clock_mhz.__doc__
        with pytest.raises(Unknown, match=r"^no GPU 3 on this host$"):
            p.gpu_clock_mhz(3)
        info = p.restart({"OLLAMA_NUM_PARALLEL": 2})
        assert isinstance(info, RestartInfo) and info.ready_s == pytest.approx(4e-6)
        with pytest.raises(Unknown, match="does not say its slots") as e:
            p.slots(MODEL)
        assert type(e.value) is Unknown

        agent.methods = METHODS  # the agent of today's list: the new question is refused by name
        with pytest.raises(NotRemote, match=r"not asked gpu_clock_mhz\(\).*perfkit\.cluster\.remote\.METHODS"):
            p.gpu_clock_mhz(0)

        class WithoutSlots(RemoteProxy, methods=[m for m in METHODS if m.name != "slots"]):
            def send(self, name, kwargs):
                raise AssertionError(f"{name} was sent")

        with pytest.raises(NotRemote, match=r"WithoutSlots\.slots\(\): not a remote method"):
            WithoutSlots().slots(MODEL)
        with pytest.raises(TypeError, match="GpuClockControl.gpu_clock is not a method"):
            remote_methods(control_cls, "gpu_clock")
    finally:
        agent.shutdown()


def test_an_agents_answers_reach_the_driver_as_the_controllers_types_on_the_runs_clock():
    """``AgentControl`` over a fake transport to a real ``HostAgent``: a restart on the run's clock, settings
    evidence named by its host, a path, the log in pieces, a device the host can't tell turned into an unknown
    device, and a kill refused for a server the agent did not start. Every controller method is either asked
    or answered on the driver."""
    from perfkit.cluster import AgentControl, ClockOffset
    from perfkit.cluster.agent import HostAgent
    from perfkit.cluster.remote import refused_methods
    from perfkit.servers.control import SettingCheck, Unknown

    class Control(_GpuClock.control()):
        def settings_in_effect(self, wanted, model=None):
            return {k: SettingCheck(k, str(v), "confirmed", str(v), "server config line") for k, v in wanted.items()}

        def model_file(self, model):
            return Path("/models/blobs/sha256-abc")

        def device(self, model, backend=None):
            raise Unknown(f"no NVML here (asked with {backend.name})")

        def log_source(self):
            class Log:
                def mark(self):
                    return 7

                def read_since(self, mark):
                    return iter([f"line after {mark}"])

                def describe(self):
                    return "server.log"

            return Log()

    class HostClient:
        name = "the host's client"

        def close(self):
            pass

    class Wired(AgentControl):
        def send(self, name, kwargs):
            return agent.call(name, kwargs)

    agent = HostAgent("gpu-b")
    try:
        ctl = Wired("gpu-b", None, ClockOffset("gpu-b", 400, 2.5, 10, 20, 20, 15), described={"log": "server.log"})
        with pytest.raises(Unknown, match="host gpu-b: no server opened"):
            ctl.model_file(MODEL)
        agent.control = Control()
        info = ctl.restart({"OLLAMA_NUM_PARALLEL": 2})
        assert (info.t_restart_ns, info.t_ready_ns, info.wall_restart_unix_s) == (600, 4_600, 1700000000.0 - 2.5)
        chk = ctl.settings_in_effect({"OLLAMA_NUM_PARALLEL": 2}, MODEL)["OLLAMA_NUM_PARALLEL"]
        assert chk.status == "confirmed" and chk.evidence == "server config line (on host gpu-b)"
        assert ctl.model_file(MODEL) == Path("/models/blobs/sha256-abc")
        log = ctl.log_source()
        assert log.read_since(log.mark()) == ["line after 7"] and log.describe() == "server.log on host gpu-b"
        agent.backend = HostClient()
        dev = ctl.device(MODEL, backend=object())  # the driver's client stays here; the host's own asks
        assert dev.kind == "unknown" and dev.unknown_because == "no NVML here (asked with the host's client)"
        assert ctl.can_restart() is False and ctl.can_kill() is False
        with pytest.raises(Unknown, match="does not kill a server it did not start"):
            ctl.kill()
        assert refused_methods(AgentControl) == [], "a controller method the agent is neither asked nor answers"
    finally:
        agent.shutdown()


def test_the_method_note_names_a_lost_client_node_and_what_the_driver_sent():
    from perfkit.analysis.requests import method_note

    clock = {"offset_ns": 0, "uncertainty_ns": 100_000, "uncertainty_s": 1e-4, "round_trips": 20}
    note = method_note({"client_nodes": [{"node": "c1", "clock": clock}, {"node": "c2", "clock": clock}],
                        "sent_from_driver": "chat sessions (each answer goes into the next question)",
                        "client_nodes_lost": [{"series": "u4", "because": "client node c2 lost: actor died",
                                               "requests_lost": 5, "requests": 10}]})
    assert "load sent from client nodes c1, c2 except chat sessions" in note and "sent from the driver" in note
    assert "client node c2 lost: actor died during series u4: 5 of its 10 requests never measured" in note
