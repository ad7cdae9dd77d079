#!/usr/bin/env bash
# README command 2 — set up, then run the whole test suite (the fast tests and the ones that run the
# real embedded engine and the notebooks). Extra arguments go to pytest, e.g. -m "not engine and not notebooks".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -m "" "$@"
