import json
import os
import subprocess
import sys

from perfkit.core.secrets import REDACTED, redact
from perfkit.core.store import RunStore


def test_rows_are_on_disk_when_append_returns(tmp_path):
    s = RunStore(tmp_path)
    s.append_trial({"trial_id": "a", "ttft_s": 0.1})
    # Another process sees it at once: flushed, not buffered.
    out = subprocess.run([sys.executable, "-c", f"print(open({str(tmp_path / 'trials.jsonl')!r}).read())"],
                         capture_output=True, text=True).stdout
    assert json.loads(out.strip())["trial_id"] == "a"


def test_killed_writer_loses_only_the_torn_line(tmp_path):
    s = RunStore(tmp_path)
    s.append_trial({"trial_id": "a"})
    with open(tmp_path / "trials.jsonl", "a") as f:
        f.write('{"trial_id": "b", "ttf')  # what a kill mid-write leaves
    assert RunStore(tmp_path).done_ids() == {"a"}


def test_child_killed_mid_run_keeps_completed_trials(tmp_path):
    code = ("import time,sys; from perfkit.core.store import RunStore; s=RunStore(sys.argv[1])\n"
            "for i in range(1000):\n    s.append_trial({'trial_id': str(i)}); time.sleep(0.01)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    import time
    log = tmp_path / "trials.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not log.exists() or log.read_text().count("\n") < 10):
        time.sleep(0.05)
    p.kill()
    p.wait()
    done = RunStore(tmp_path).done_ids()
    assert 10 <= len(done) < 1000 and done == {str(i) for i in range(len(done))}


def test_redaction_of_secrets_at_any_depth():
    row = {"output_tokens": 3, "cached_tokens": 1, "params": {"backend": {"headers": {"X": "1"}, "api_key": "k",
                                                                         "url": "u"}},
           "note": "Bearer abc.def", "list": [{"OLLAMA_API_KEY": "z"}]}
    r = redact(row)
    assert r["output_tokens"] == 3 and r["cached_tokens"] == 1
    assert r["params"]["backend"] == {"headers": {"X": REDACTED}, "api_key": REDACTED, "url": "u"}
    assert r["note"] == REDACTED and r["list"][0]["OLLAMA_API_KEY"] == REDACTED
    assert redact({"url": "http://user:PASS@gpu:11434/v1"})["url"] == "http://***@gpu:11434/v1"
    assert redact({"cache_key": "$request_body"})["cache_key"] == "$request_body"  # a key name, not a secret


def test_manifest_merge_dataframes_and_parquet(tmp_path):
    s = RunStore(tmp_path)
    s.write_manifest(a=1)
    s.write_manifest(b=2)
    assert s.manifest() == {"a": 1, "b": 2, "store_format": 2}  # the manifest says its format
    s.append_trial({"trial_id": "x", "itl_s": [0.1, 0.2], "ok": True})
    s.append_samples([{"t_ns": 1, "source": "system", "host_cpu_pct": 5.0}])
    s.event("resume", skipped=1)
    s.finalize()
    assert (tmp_path / "trials.parquet").exists() and (tmp_path / "samples.parquet").exists()
    assert s.trials().loc[0, "itl_s"] == [0.1, 0.2]
    assert s.events().loc[0, "kind"] == "resume"
    assert not os.path.exists(tmp_path / "manifest.json.tmp")


def test_append_after_a_torn_line_moves_the_fragment_aside(tmp_path):
    s = RunStore(tmp_path)
    s.append_trial({"trial_id": "a"})
    with open(tmp_path / "trials.jsonl", "a") as f:
        f.write('{"trial_id": "b", "ttf')
    s.append_trial({"trial_id": "b"})
    assert [json.loads(x)["trial_id"] for x in (tmp_path / "trials.jsonl").read_text().splitlines()] == ["a", "b"]
    assert json.loads((tmp_path / "trials.jsonl.torn").read_text())["fragment"] == '{"trial_id": "b", "ttf'
    assert s.trials_log.repairs and s.trials_log.read() and s.trials_log.damage == []


def test_read_reports_damage(tmp_path):
    (tmp_path / "trials.jsonl").write_text('{"trial_id": "a"}\n{oops}\n[1]\n{"trial_id": "d"}\n{"trial_id": "e", "x')
    s = RunStore(tmp_path)
    assert s.done_ids() == {"a", "d"}
    dmg = s.trials_log.damage
    assert len(dmg) == 3 and "line 2" in dmg[0] and "line 3" in dmg[1] and "last line (line 5) is torn" in dmg[2]


def test_done_ids_and_latest_attempt_with_retries(tmp_path, monkeypatch):
    s = RunStore(tmp_path)
    for row in ({"trial_id": "a", "ok": True}, {"trial_id": "b", "ok": False, "error": "x"},
                {"trial_id": "c", "ok": False}, {"trial_id": "c", "ok": True}):
        s.append_trial(row)
    assert s.done_ids() == {"a", "b", "c"}  # a failed trial is done unless a retry is asked
    assert s.done_ids(retry_failed=True) == {"a", "c"}
    monkeypatch.setenv("PERFKIT_RETRY_FAILED", "1")  # what `perfkit run --retry-failed` gives the kernel
    assert s.done_ids() == {"a", "c"}
    assert len(s.trials(all_attempts=True)) == 4
    latest = s.trials()
    assert list(latest["trial_id"]) == ["a", "b", "c"] and list(latest["ok"]) == [True, False, True]


def test_rows_of_the_wrong_type_are_damage_not_data(tmp_path):
    """A row whose fields have the wrong types (``ok: "no"``, ``ttft_s: "fast"``) is listed as damage, like an
    unreadable line, instead of failing deep inside an analysis."""
    import json

    from perfkit.core.store import JsonlLog

    p = tmp_path / "trials.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in (
        {"trial_id": "a", "ok": True, "ttft_s": 0.1, "itl_s": [0.01, 0.02], "token_times_ns": [1, 2]},
        {"trial_id": "b", "ok": "no", "ttft_s": 0.1},
        {"trial_id": "c", "ok": True, "ttft_s": "fast"})))
    rows, damage = JsonlLog(p).scan()
    assert [r["trial_id"] for r in rows] == ["a"]
    assert "line 2: ok is 'no', not true or false" in damage[0] and "line 3: ttft_s is 'fast', not a number" in damage[1]
