#!/usr/bin/env bash
# Restart a local `ollama serve` with the OLLAMA_* settings perfkit put in this environment.
# perfkit's config-tuning study runs this once per setting. Adapt it to how your Ollama runs
# (systemd drop-in, docker run -e ..., a tmux session); keep it quick and make it exit 0.
set -euo pipefail
pkill -x ollama || true
for _ in $(seq 50); do pgrep -x ollama >/dev/null || break; sleep 0.2; done
env | grep '^OLLAMA_' >&2 || true
nohup ollama serve >>"${OLLAMA_LOG:-/tmp/ollama.log}" 2>&1 &  # append: perfkit reads the part written during its run
