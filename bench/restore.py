"""How fast a user's server gets its own settings back when the perfkit that changed them is killed with -9.

A scripted Ollama (real processes, a real restart command) runs on the user's settings (OLLAMA_NUM_PARALLEL=1); a
process does what a study does (restarts it on NUM_PARALLEL=3 through ``LocalOllamaControl``) and is killed with
SIGKILL. Measured per trial: from the kill to the server answering as a new process on the user's settings
(its watchdog noticed, ran the restart command, the server came up), and the watchdog's own share (kill → the
restart command started). Also: the restart command alone, for scale.

    .venv/bin/python bench/restore.py --trials 5

Prints the figures; check ``uptime`` first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("PERFKIT_STATE_DIR", tempfile.mkdtemp(prefix="perfkit-state-"))

from scripted_ollama.harness import ScriptedOllama  # noqa: E402


def parallel(so) -> str | None:
    m = re.findall(r"OLLAMA_NUM_PARALLEL:(\d+)", so.log_text())
    return m[-1] if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    a = ap.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
    tmp = Path(tempfile.mkdtemp(prefix="bench-restore-"))
    with ScriptedOllama(tmp / "ollama", env={"OLLAMA_NUM_PARALLEL": "1"}) as so:
        t0 = time.monotonic()
        so.restart({"OLLAMA_NUM_PARALLEL": "1"})
        restart_alone_s = time.monotonic() - t0
        script = tmp / "study_like.py"
        script.write_text(f"""
import json, time
from perfkit.kinds.ollama import LocalOllamaControl
c = LocalOllamaControl({so.url!r}, restart_command={so.restart_command!r}, ready_timeout_s=30)
c.restart({{"OLLAMA_NUM_PARALLEL": 3}})
print(json.dumps(c.describe()), flush=True)
time.sleep(600)
""")
        back_s, left = [], 0
        for _ in range(a.trials):
            p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
            json.loads(p.stdout.readline())
            assert parallel(so) == "3"
            pid_run = so.serve_pid()
            t_kill = time.monotonic()
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            while time.monotonic() - t_kill < 60:
                pid = so.serve_pid()
                if pid and pid != pid_run and parallel(so) == "1":
                    break
                time.sleep(0.005)
            else:
                left += 1
                continue
            back_s.append(time.monotonic() - t_kill)
    print(f"restart command alone (scripted server up and answering): {restart_alone_s * 1e3:.0f} ms")
    if back_s:
        print(f"kill -9 → the user's settings back, n={len(back_s)}: median {statistics.median(back_s) * 1e3:.0f} ms, "
              f"min {min(back_s) * 1e3:.0f} ms, max {max(back_s) * 1e3:.0f} ms")
    print(f"trials where the server stayed on the run's settings for 60 s: {left}")


if __name__ == "__main__":
    main()
