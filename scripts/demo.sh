#!/usr/bin/env bash
# README command 1 — the main job: set up, then run every study on the embedded engine and publish
# HTML reports under results/ (open results/index.html). Extra arguments go to `perfkit run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/perfkit run params/demo.yaml "$@"
