#!/usr/bin/env bash
# The whole test suite on a fresh checkout (README's second command; .ci/run calls exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh dev
.venv/bin/python -m ruff check .
.venv/bin/python -m mypy
bash ci/drift.sh
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
# Llama on the oldest and middle releases of the window besides the pin, each picked by llamarcp from its library.
.venv/bin/python ci/matrix.py --releases oldest,middle,pin
