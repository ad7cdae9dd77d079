#!/usr/bin/env bash
# Restart the scripted `ollama serve` of HOME with the caller's environment (its OLLAMA_* settings),
# the way a user's restart command restarts a real one. Usage:
#   bash tests/scripted_ollama/restart.sh HOME [--nohup]   (or SCRIPTED_OLLAMA_HOME=HOME bash restart.sh)
# --nohup: start it the way many users do, `nohup ollama serve &`, in the caller's session and process group
# (without it the server gets a session of its own, as systemd would give it).
# Stops the running server of HOME (SIGTERM; it kills its runners), starts a new one detached, its log
# appended to HOME/server.log, and exits 0 at once: the caller waits for readiness.
set -euo pipefail
home="${1:-${SCRIPTED_OLLAMA_HOME:-}}"
[ -n "$home" ] || { echo "usage: restart.sh HOME" >&2; exit 2; }
home=$(cd "$home" && pwd -P)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
py="${SCRIPTED_OLLAMA_PYTHON:-$(cat "$home/python" 2>/dev/null || command -v python3)}"

# A zombie (exited, not yet reaped by whoever started it) has released its port: it counts as gone.
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
ours() { tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | grep -qxF "SCRIPTED_OLLAMA_HOME=$home"; }

if [ -f "$home/serve.pid" ]; then
  pid=$(cat "$home/serve.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && alive "$pid" && ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do alive "$pid" || break; sleep 0.05; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.1; fi
  fi
fi

# The server's identity (port, model store) unless the caller set it; every setting is the caller's.
if [ -f "$home/base.env" ]; then
  while IFS='=' read -r k v; do
    [ -n "$k" ] && [ -z "${!k+x}" ] && export "$k=$v"
  done < "$home/base.env"
fi
export SCRIPTED_OLLAMA_HOME="$home" PYTHONUNBUFFERED=1
env | grep '^OLLAMA_' | sort | sed 's/^/[restart.sh] /' >&2 || true
if [ "${2:-}" = "--nohup" ]; then
  nohup "$py" "$here/serve.py" --home "$home" >>"$home/server.log" 2>&1 </dev/null &
else
  setsid nohup "$py" "$here/serve.py" --home "$home" >>"$home/server.log" 2>&1 </dev/null &
fi
exit 0
