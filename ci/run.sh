#!/usr/bin/env bash
# README's first command: set up, then generate text with the default real model (gemma-3-270m Q4_K_M).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh model
exec .venv/bin/python -m llamarcp -p "${1:-The three primary colors are}" -n "${2:-32}"
