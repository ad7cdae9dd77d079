"""The tuned settings written out to deploy: an Ollama environment file, a systemd drop-in, a docker compose
``environment:`` block, the llama-server command line, and an nginx snippet whose read timeout covers the
measured cold start. Each file says which run found it."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from perfkit.core.settings import to_llama_server_flags, to_ollama_env


def write(out: Path, res: Any, kind: str, run_id: str, model: str) -> dict[str, str]:
    """Write the files under ``out``; returns name → path relative to the run directory (for the report)."""
    out.mkdir(parents=True, exist_ok=True)
    settings = res.winner_settings
    env = to_ollama_env(settings)
    if res.cold.get("cold_e2e") is not None:
        env.setdefault("OLLAMA_KEEP_ALIVE", "-1")  # the cold start measured is what a warm model avoids
    head = (f"# perfkit tune, run {run_id}: {res.winner} was the best for {res.objective} of the candidates "
            "measured\n# (see tuning.html in that run for the evidence and the before/after proof).\n")
    files = {
        "ollama.env": head + "".join(f"{k}={v}\n" for k, v in env.items()),
        "ollama.service.d/override.conf": head + "[Service]\n" + "".join(f'Environment="{k}={v}"\n'
                                                                      for k, v in env.items()),
        "docker-compose.environment.yml": head + "environment:\n" + "".join(f'  {k}: "{v}"\n' for k, v in env.items()),
        "llama-server.sh": head + "llama-server " + " ".join(shlex.quote(x) for x in to_llama_server_flags(
            settings)) + f" -m {shlex.quote(model + '.gguf')}\n",
    }
    timeout = res.cold.get("proxy_read_timeout_s")
    if timeout:
        files["nginx.conf"] = (head + f"# The slowest cold start measured took {res.cold['worst_cold_s']:.1f} s: the "
                               "proxy waits three times that before giving up.\n"
                               f"proxy_read_timeout {timeout}s;\nproxy_send_timeout {timeout}s;\n"
                               "proxy_buffering off;  # tokens reach the client as they are made\n")
    written = {}
    for name, text in files.items():
        p = out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        written[name] = str(p.relative_to(out.parent.parent))
    return written
