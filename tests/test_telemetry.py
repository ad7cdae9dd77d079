"""Telemetry from where the server's host already publishes it: the exposition format read through
prometheus_client, a direct scrape of exporter endpoints, and a real Prometheus (Debian's) scraping a real node
exporter and a stand-in DCGM exporter with known readings. The values that reach a report must equal what was
exported."""

from __future__ import annotations

import html as htmllib
import json
import re
import time
from pathlib import Path

import pytest

from conftest import perfkit_run
from dcgm_standin import DEFAULT_GPUS, DcgmStandin
from perfkit.core.clock import now_ns
from perfkit.core.errors import ConfigError
from perfkit.sampling import Monitor
from perfkit.sampling.exposition import Converter, parse
from perfkit.sampling.prometheus import PrometheusClient, PrometheusSampler, discover, selector
from perfkit.sampling.scrape import ScrapeSampler, ScrapeTarget
import telemetry_stack

HERE = Path(__file__).resolve().parent
POWER_W = sum(g.power_w for g in DEFAULT_GPUS)  # the stand-in's two GPUs: 250 W + 100 W
UTIL_PCT = sum(g.util_pct for g in DEFAULT_GPUS) / len(DEFAULT_GPUS)  # 62 % and 38 %: 50 % averaged


# ---- the exposition format --------------------------------------------------------------------------------------

NODE_PAGE = """# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} %s
node_cpu_seconds_total{cpu="0",mode="user"} %s
node_cpu_seconds_total{cpu="1",mode="idle"} %s
node_cpu_seconds_total{cpu="1",mode="iowait"} 0
# TYPE node_memory_MemTotal_bytes gauge
node_memory_MemTotal_bytes 1.6e+10
# TYPE node_memory_MemAvailable_bytes gauge
node_memory_MemAvailable_bytes 1.2e+10
# TYPE node_disk_read_bytes_total counter
node_disk_read_bytes_total{device="nvme0n1"} 1000
node_disk_read_bytes_total{device="sda"} 24
"""


def test_dcgm_page_becomes_one_row_per_gpu_in_perfkit_units():
    d = DcgmStandin()
    rows = Converter("scrape", 1.0, "x").rows(5, parse(d.page(d.t0 + 2.0)))
    assert [r["gpu"] for r in rows] == [0, 1]
    g0 = rows[0]
    assert g0["gpu_util_pct"] == 62 and g0["power_w"] == 250 and g0["temperature_c"] == 55
    assert g0["gpu_mem_used_bytes"] == 40_000 * 2**20 and g0["gpu_mem_total_bytes"] == 81_000 * 2**20
    # the energy counter is in mJ; its _total-less counter name is still read
    assert g0["energy_j"] == pytest.approx((d.energy0_mj + 250 * 2.0 * 1000) / 1000, abs=1e-3)
    assert g0["source"] == "scrape" and g0["resolution_s"] == 1.0 and g0["t_ns"] == 5


def test_node_exporter_cpu_busy_is_a_rate_between_two_readings():
    conv = Converter("scrape", 1.0)
    first = conv.rows(0, parse(NODE_PAGE % (100, 50, 100)))
    assert "server_host_cpu_pct" not in first[0]  # one reading: no rate yet
    assert first[0]["server_host_mem_used_bytes"] == 4e9 and first[0]["server_host_read_bytes"] == 1024
    # 2 s later: cpu0 idle +0.5, user +1.5; cpu1 idle +2 → 4 s of CPU time, 2.5 idle → 37.5 % busy
    (row,) = conv.rows(1, parse(NODE_PAGE % (100.5, 51.5, 102)))
    assert row["server_host_cpu_pct"] == pytest.approx(37.5)


def test_llama_server_and_vllm_metrics_become_server_columns():
    page = """# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 40
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="a"} 1
vllm:num_requests_waiting{model_name="b"} 4
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="a"} 0.25
vllm:gpu_cache_usage_perc{model_name="b"} 0.5
"""
    (row,) = Converter("engine", 0.5).rows(0, parse(page))
    assert row["server_requests_running"] == 3
    assert row["server_requests_waiting"] == 2 + 1 + 4  # requests add up across models
    assert row["server_kv_cache_usage_ratio"] == 0.5  # a ratio does not: the fullest cache
    assert row["server_prompt_tokens_cached_total"] == 40


def test_a_page_that_is_not_the_exposition_format_is_refused():
    with pytest.raises(ValueError):
        parse("<html><body>Not found</body></html>")


def test_selector_escapes_label_values():
    s = selector(["a", "b:c"], {"instance": 'h"1'})
    assert s == '{__name__=~"a|b:c",instance="h\\"1"}'


# ---- direct scrape ----------------------------------------------------------------------------------------------

def test_direct_scrape_windows_give_the_exported_gpu_readings_and_refuse_short_windows():
    with DcgmStandin() as d:
        sampler = ScrapeSampler([ScrapeTarget([d.url])], interval_s=0.25)
        with Monitor(0.1, None, gpu=False, system=False, telemetry=[sampler]) as m:
            time.sleep(0.3)
            t0 = now_ns()
            time.sleep(1.5)
            t1 = now_ns()
            w = m.measure("load", t0, t1)
            short = m.measure("request", t1 - int(0.3e9), t1)
    assert w.gpu_source == "scrape" and w.energy_method == "counter"
    assert w.stats["gpu_util_pct_mean"] == UTIL_PCT and w.stats["power_w_mean"] == POWER_W
    assert w.per_gpu[0]["gpu_util_pct_mean"] == 62 and w.per_gpu[1]["gpu_util_pct_mean"] == 38
    # The counter grows at exactly the exported power: the window's energy is power × duration (the stand-in
    # stamps its reading a few ms after perfkit's tick: 2 %).
    assert w.energy_j == pytest.approx(POWER_W * w.duration_s, rel=0.02)
    assert short.energy_j is None and "gpu_util_pct_mean" not in short.stats
    assert short.unknown == {"scrape": "too short for the scrape interval (250 ms) of scrape"}


def test_a_scrape_target_that_fails_is_recorded_and_the_others_go_on():
    with DcgmStandin() as d:
        sampler = ScrapeSampler([ScrapeTarget(["http://127.0.0.1:9/metrics"]), ScrapeTarget([d.url])], interval_s=0.2)
        rows = sampler.sample_once()
    assert {r["gpu"] for r in rows} == {0, 1}
    assert any("127.0.0.1:9" in k for k in sampler.unavailable)


def test_bad_telemetry_parameters_name_the_key():
    from perfkit.studies.params import load

    base = "name: t\nstudies: {cold_start: {model: smollm2-135m-q4_1}}\n"
    cases = {"telemetry: {prometheus: {url: 'http://p:9090'}}": "labels",
             "telemetry: {prometheus: {url: 'ftp://p', labels: {instance: a}}}": "url",
             "telemetry: {prometheus: {url: 'http://p:9090', labels: {'bad-name': a}}}": "bad-name",
             "telemetry: {scrape: ['not a url']}": "scrape",
             "telemetry: {scrap: []}": "scrap"}
    for text, key in cases.items():
        p = Path(pytest.importorskip("tempfile").mkdtemp()) / "p.yaml"
        p.write_text(base + text + "\n")
        with pytest.raises(ConfigError) as e:
            load(p, check_models=False)
        assert key in str(e.value) and "p.yaml" in str(e.value), (text, str(e.value))


def test_preflight_refuses_a_dead_scrape_url_and_a_page_with_nothing_to_read(tmp_path):
    from perfkit.run.preflight import check_telemetry
    from perfkit.studies.params import load

    with DcgmStandin() as d:
        p = tmp_path / "p.yaml"
        p.write_text("name: t\nstudies: {cold_start: {model: smollm2-135m-q4_1}}\n"
                     f"telemetry: {{scrape: ['{d.url}', 'http://127.0.0.1:9/metrics', '{d.url.replace('/metrics', '/x')}']}}\n")
        problems = check_telemetry(load(p, check_models=False), p)
    assert len(problems) == 2, problems
    assert "telemetry.scrape[1]" in problems[0] and "did not answer" in problems[0]
    assert "telemetry.scrape[2]" in problems[1]


# ---- a real Prometheus and node exporter ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    why = telemetry_stack.missing()
    if why:
        pytest.skip(why)
    with DcgmStandin(hostname="gpu-a") as dcgm, \
            telemetry_stack.TelemetryStack(tmp_path_factory.mktemp("prom"), {"dcgm": dcgm.address}) as st:
        yield st, dcgm


def test_discover_finds_each_group_and_the_scrape_interval(stack):
    st, _ = stack
    c = PrometheusClient(st.prometheus_url)
    try:
        found = discover(c, {"gpu": {"Hostname": "gpu-a"}, "host": {"job": "node"}, "server": {"job": "nothing"}})
    finally:
        c.close()
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" in found["gpu"].series and found["gpu"].instances == ["gpu-a"]
    assert found["gpu"].gpus == {"0": "NVIDIA H100 80GB HBM3", "1": "NVIDIA H100 80GB HBM3"}
    assert found["gpu"].interval_s == pytest.approx(st.scrape_interval_s, rel=0.1)
    assert "node_cpu_seconds_total" in found["host"].series
    assert found["server"].series == []


def test_prometheus_readings_are_the_exported_ones_on_the_run_clock(stack):
    st, dcgm = stack
    s = PrometheusSampler(st.prometheus_url, {"gpu": {"Hostname": "gpu-a"}, "host": {"job": "node"}},
                          resolution_s=st.scrape_interval_s)
    with Monitor(0.1, None, gpu=False, system=False, telemetry=[s]) as m:
        t0 = now_ns()
        time.sleep(2.0)
        t1 = now_ns()
        w = m.measure("series", t0, t1)
    assert w.gpu_source == "prometheus" and w.energy_method == "counter"
    assert w.stats["gpu_util_pct_mean"] == UTIL_PCT and w.stats["power_w_mean"] == POWER_W
    assert w.energy_j == pytest.approx(POWER_W * w.duration_s, rel=0.02)
    assert "server_host_cpu_pct_mean" in w.stats and w.stats["server_host_mem_used_bytes_max"] > 0
    # Each reading sits at its scrape's instant: consecutive GPU readings are one scrape interval apart.
    gpu0 = sorted(r["t_ns"] for r in s.samples if r.get("gpu") == 0)
    gaps = [(b - a) / 1e9 for a, b in zip(gpu0, gpu0[1:])]
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(st.scrape_interval_s, rel=0.1)


def test_preflight_names_labels_that_select_nothing_and_a_prometheus_that_does_not_answer(stack, tmp_path):
    from perfkit.run.preflight import check_telemetry
    from perfkit.studies.params import load

    st, _ = stack
    p = tmp_path / "p.yaml"
    p.write_text("name: t\nstudies: {cold_start: {model: smollm2-135m-q4_1}}\n"
                 f"telemetry: {{prometheus: {{url: '{st.prometheus_url}', gpu_labels: {{Hostname: gpu-z}}, "
                 "host_labels: {job: node}}}\n")
    (problem,) = check_telemetry(load(p, check_models=False), p)
    assert problem.startswith("telemetry.prometheus.gpu_labels") and "gpu-z" in problem
    p.write_text("name: t\nstudies: {cold_start: {model: smollm2-135m-q4_1}}\n"
                 "telemetry: {prometheus: {url: 'http://127.0.0.1:9', labels: {job: node}}}\n")
    (problem,) = check_telemetry(load(p, check_models=False), p)
    assert problem.startswith("telemetry.prometheus.url") and "did not answer" in problem


def _text(page: Path) -> str:
    t = re.sub(r"<(style|script).*?</\1>", "", page.read_text(), flags=re.S)
    return htmllib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t)))


@pytest.mark.notebooks
def test_a_server_on_another_host_reports_its_gpus_from_prometheus(stack, tmp_path, scripted_models_dir):
    """The scripted Ollama as a GPU server perfkit sees only through its API (every host remote), its host's
    readings from Prometheus: GPU utilization, power and energy per token reach the reports with their source,
    equal to what the DCGM stand-in exported, and a comparison has GPU-utilization rows."""
    from scripted_ollama.harness import ScriptedOllama
    from perfkit import compare as cmp

    st, _ = stack
    models = {"tiny": {"itl_s": 0.08}, "small": {"itl_s": 0.06}}  # requests of 1–2 s: ≥ two 0.5 s scrapes
    with ScriptedOllama(tmp_path / "ollama", models_dir=scripted_models_dir, models=models) as so:
        params = {"name": "remote-gpu", "backend": {"kind": "ollama", "url": so.url},
                  "telemetry": {"prometheus": {"url": st.prometheus_url, "gpu_labels": {"Hostname": "gpu-a"},
                                               "host_labels": {"job": "node"}, "token": "s3cret-token"}},
                  "studies": {"model_size": {"models": ["tiny", "small"], "reps": 3, "cold_reps": 1,
                                             "num_predict": 16, "prompt_words": 16},
                              "config_tuning": {"model": "tiny", "settings": [{}], "concurrency": [1, 2],
                                                "requests": 6, "num_predict": 16, "prompt_words": 16}}}
        run_dir = perfkit_run(params, tmp_path, name="remote.yaml", timeout_s=900,
                              env={"PYTHONPATH": str(HERE / "remote_shim"), "PERFKIT_TEST_EVERY_HOST_REMOTE": "1"})
    manifest = json.loads((run_dir / "model_size" / "manifest.json").read_text())
    assert "another host" in json.dumps(manifest["control"])  # perfkit saw the server as remote
    assert "s3cret-token" not in "".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())

    figs = {f["key"]: f for f in json.loads((run_dir / "model_size" / "figures.json").read_text())["figures"]}
    util = figs["model_size/gpu_util/tiny"]
    assert util["estimate"]["value"] == pytest.approx(UTIL_PCT / 100)
    trials = [json.loads(x) for x in (run_dir / "model_size" / "trials.jsonl").read_text().splitlines()]
    warm = [t for t in trials if t.get("cache_state") == "warm" and not t.get("warmup") and t.get("res_energy_j")]
    assert warm, "no request had an energy reading"
    for t in warm:  # energy = exported power × the request's window, within the counter's stamping error
        assert t["res_energy_j"] == pytest.approx(POWER_W * t["res_duration_s"], rel=0.03)
        assert t["res_energy_per_token_j"] == pytest.approx(t["res_energy_j"] / t["output_tokens"])
    ept = figs["model_size/energy_per_token/tiny"]["estimate"]["value"]
    assert ept == pytest.approx(POWER_W * 0.08, rel=0.25)  # 350 W × 80 ms per token

    page = _text(run_dir / "model_size.html")
    assert "GPU utilization" in page and "50%" in page
    assert "Telemetry (Prometheus)" in page and "Hostname=gpu-a" in page and "NVIDIA H100 80GB HBM3" in page
    # The GPU model the exporter names gives the decode's bandwidth limit (datasheet), where it was "unknown".
    dev = [json.loads(x) for x in (run_dir / "model_size" / "events.jsonl").read_text().splitlines()]
    dev = [e for e in dev if e.get("kind") == "device" and e.get("model") == "tiny"]
    assert dev and dev[-1]["device"] == "gpu" and dev[-1]["memory_bandwidth_bytes_s"] == 3.35e12, dev
    assert "datasheet: H100 SXM" in page

    ct = _text(run_dir / "config_tuning.html")
    assert "What the server and its host did under load" in ct
    assert "350 W" in ct and "GPU 0: 62%, GPU 1: 38%" in ct
    cfigs = {f["key"]: f for f in json.loads((run_dir / "config_tuning" / "figures.json").read_text())["figures"]}
    assert cfigs["config_tuning/series_gpu_util/defaults/2"]["estimate"]["value"] == pytest.approx(0.5)

    c = cmp.compare(run_dir, run_dir)
    labels = [r.label for r in c.rows]
    assert any("GPU utilization" in x for x in labels), labels
    assert any("energy per output token" in x for x in labels), labels


# ---- the device of a model on another host ----------------------------------------------------------------------

def test_a_remote_gpu_named_by_its_exporter_gives_a_datasheet_bandwidth():
    from perfkit.servers.control.device import telemetry_device
    from perfkit.servers.gpu_specs import datasheet_bandwidth

    assert datasheet_bandwidth("NVIDIA H100 80GB HBM3")[0] == 3.35e12
    assert datasheet_bandwidth("NVIDIA H100 PCIe")[0] == 2.0e12
    assert datasheet_bandwidth("NVIDIA A100-SXM4-80GB")[0] == 2.039e12
    assert datasheet_bandwidth("NVIDIA L4")[0] == 300e9 and datasheet_bandwidth("NVIDIA L40S")[0] == 864e9
    assert datasheet_bandwidth("Imaginary GPU 9000")[0] is None

    d = telemetry_device(100, 100, {0: "NVIDIA H200", 1: "NVIDIA H200"}, "prometheus", "ps")
    assert d.kind == "gpu" and d.memory_bandwidth_bytes_s == 4.8e12 and "datasheet" in d.bandwidth_source
    partial = telemetry_device(100, 60, {0: "NVIDIA H200"}, "prometheus", "ps")
    assert partial.kind == "gpu+cpu" and partial.cpu_share == pytest.approx(0.4)
    assert partial.memory_bandwidth_bytes_s is None and "partial offload" in partial.unknown_because
    mixed = telemetry_device(100, 100, {0: "NVIDIA H200", 1: "NVIDIA L4"}, "scrape", "ps")
    assert mixed.memory_bandwidth_bytes_s is None and "different models" in mixed.unknown_because
    assert telemetry_device(100, 0, {0: "NVIDIA H200"}, "scrape", "ps").kind == "cpu"


def test_a_window_too_short_for_the_scrape_interval_says_so_in_the_request_row():
    with DcgmStandin() as d:
        sampler = ScrapeSampler([ScrapeTarget([d.url])], interval_s=1.0)
        with Monitor(0.1, None, gpu=False, system=False, telemetry=[sampler]) as m:
            from perfkit.core.records import RequestRecord

            t = now_ns()
            rec = RequestRecord(backend="ollama", model="m", t_send_ns=t - int(0.4e9), t_end_ns=t, ok=True, output_tokens=10)
            row = m.request_summary(rec)
    assert "res_energy_j" not in row or row["res_energy_j"] is None
    assert row["res_energy_unknown_because"] == "scrape: too short for the scrape interval (1.00 s) of scrape"


def test_an_exporter_that_stops_answering_mid_run_is_said_in_the_windows_after_it():
    """The samples taken before the exporter went away stay; a later window says it had no reading and why."""
    d = DcgmStandin().__enter__()
    sampler = ScrapeSampler([ScrapeTarget([d.url])], interval_s=0.2, timeout_s=0.5)
    with Monitor(0.1, None, gpu=False, system=False, telemetry=[sampler]) as m:
        t0 = now_ns()
        time.sleep(1.0)
        before = m.measure("before", t0, now_ns())
        d.__exit__(None, None, None)
        time.sleep(0.3)
        t1 = now_ns()
        time.sleep(1.0)
        after = m.measure("after", t1, now_ns())
    assert before.stats["power_w_mean"] == POWER_W and not before.unknown
    assert "power_w_mean" not in after.stats
    assert after.unknown["scrape"].startswith("no reading from scrape in this window (")


# ---- a fleet's exporters as they are: several hosts, several GPUs, a collect interval ---------------------------

@pytest.fixture(scope="module")
def fleet_stack(tmp_path_factory):
    """Two hosts × 4 GPUs behind one Prometheus (job ``dcgm``), dcgm-exporter-like: readings refreshed every
    1 s (its collect interval) and scraped every 0.25 s; GPU 2 of gpu-a busy (73 %, 412.5 W), every other idle."""
    from dcgm_standin import IDLE, Gpu, one_busy

    why = telemetry_stack.missing()
    if why:
        pytest.skip(why)
    busy = Gpu(73, 412.5, fb_used_mib=61_000, fb_free_mib=20_000)
    with DcgmStandin(one_busy(busy, 4, 2), hostname="gpu-a", collect_interval_s=1.0) as a, \
            DcgmStandin((IDLE,) * 4, hostname="gpu-b", collect_interval_s=1.0) as b, \
            telemetry_stack.TelemetryStack(tmp_path_factory.mktemp("fleetprom"),
                                           {"dcgm": {"targets": [a.address, b.address]}},
                                           scrape_interval_s=0.25) as st:
        time.sleep(4.5)  # a few collections in Prometheus's history: the collect interval can be seen
        yield st


def test_labels_that_select_two_hosts_gpus_are_refused_naming_the_hosts(fleet_stack, tmp_path):
    from perfkit.run.preflight import check_telemetry
    from perfkit.studies.params import load

    p = tmp_path / "p.yaml"
    p.write_text("name: t\nstudies: {cold_start: {model: smollm2-135m-q4_1}}\n"
                 f"telemetry: {{prometheus: {{url: '{fleet_stack.prometheus_url}', gpu_labels: {{job: dcgm}}}}}}\n")
    problems = check_telemetry(load(p, check_models=False), p)
    assert len(problems) == 1, problems
    assert problems[0].startswith("telemetry.prometheus.gpu_labels") and "2 hosts (gpu-a, gpu-b)" in problems[0]
    assert "Hostname: gpu-a" in problems[0]


def test_the_busy_gpu_is_reported_never_an_average_over_idle_ones(fleet_stack):
    """{Hostname: gpu-a} selects 4 GPUs, the server on GPU 2: the window's figures are that GPU's own (73 %,
    412.5 W, its energy), found by the memory it holds; the idle GPUs keep their own figures beside it."""
    c = PrometheusClient(fleet_stack.prometheus_url)
    try:
        found = discover(c, {"gpu": {"Hostname": "gpu-a"}})
    finally:
        c.close()
    assert found["gpu"].gpu_hosts == ["gpu-a"]
    assert found["gpu"].collect_interval_s == pytest.approx(1.0, abs=0.3)
    s = PrometheusSampler(fleet_stack.prometheus_url, {"gpu": {"Hostname": "gpu-a"}}, resolution_s=0.25,
                          collect_interval_s=found["gpu"].collect_interval_s)
    with Monitor(0.1, None, gpu=False, system=False, telemetry=[s]) as m:
        t0 = now_ns()
        time.sleep(5.0)
        t1 = now_ns()
        w = m.measure("series", t0, t1)
        short = m.measure("request", t1 - int(1.5e9), t1)
    assert w.server_gpus == "2" and "memory" in w.server_gpus_how
    assert w.stats["gpu_util_pct_mean"] == 73 and w.stats["power_w_mean"] == 412.5
    assert w.energy_j == pytest.approx(412.5 * w.duration_s, rel=0.15)
    assert w.per_gpu[2]["gpu_util_pct_mean"] == 73 and w.per_gpu[0]["gpu_util_pct_mean"] == 0
    # 1.5 s is shorter than two collections (2 s): no figure, and the reason names the collect interval.
    assert short.energy_j is None and "gpu_util_pct_mean" not in short.stats
    assert "collect interval" in short.unknown["prometheus"], short.unknown


def test_gpus_named_in_the_parameters_and_gpus_of_which_none_is_known(fleet_stack):
    """telemetry.gpus names the server's GPU; where none holds a model's memory and none is named, each GPU keeps
    its own figures and the window has no sum or mean, with the reason."""
    s = PrometheusSampler(fleet_stack.prometheus_url, {"gpu": {"Hostname": "gpu-b"}}, resolution_s=0.25,
                          collect_interval_s=1.0)
    with Monitor(0.1, None, gpu=False, system=False, telemetry=[s]) as m:
        t0 = now_ns()
        time.sleep(3.0)
        t1 = now_ns()
        unknown = m.measure("w", t0, t1)
        m.server_gpus = [1]
        named = m.measure("w", t0, t1)
    assert "gpu_util_pct_mean" not in unknown.stats and unknown.energy_j is None
    assert "telemetry.gpus" in unknown.unknown["gpu"] and len(unknown.per_gpu) == 4
    assert named.server_gpus == "1" and named.server_gpus_how.startswith("named")
    assert named.stats["power_w_mean"] == 61.0
