#!/usr/bin/env bash
# Set up a fresh checkout: venv in .venv, the package with its extras, and the pinned libllama (cached).
# Usage: bash ci/setup.sh [extras]   (default extras: dev = codegen,drift,model,server,test)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python3 -m venv .venv
# Reinstall only when pyproject.toml or the extras changed; pip is slow even when nothing is to do.
stamp=".venv/.llamarcp-installed"
want="$(sha256sum pyproject.toml | cut -c1-16) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --disable-pip-version-check -q --upgrade pip
    .venv/bin/python -m pip install --disable-pip-version-check -q -e ".[$extras]"
    case ",$extras," in *,dev,*|*,compat,*)  # its only other requirement is llama-cpp-python, which llamarcp replaces
        .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps "llama-index-llms-llama-cpp>=0.4" \
            "llama-cpp-haystack>=3.0" ;;
    esac
    echo "$want" > "$stamp"
fi
.venv/bin/python build_lib.py >/dev/null
if [ "$extras" = dev ]; then
    # What the tests use beyond the default library is built or installed here, once (cached), never inside a test.
    # Of the tree the bindings describe: the pin, or (bindings regenerated from another tree) that tree.
    bindings_tree="$(.venv/bin/python -c 'from codegen.generate import bindings_build_source as s; print(s() or "")')"
    .venv/bin/python build_lib.py --rpc ${bindings_tree:+--source "$bindings_tree"} >/dev/null  # tests/test_rpc.py
    .venv/bin/python build_lib.py --mtmd ${bindings_tree:+--source "$bindings_tree"} >/dev/null  # tests/test_mtmd.py
    .venv/bin/python benchmarks/run.py --prepare         # llama-bench + llama-cpp-python for the benchmark smoke test
    # The release window: every tree fetched (generate.py --check compares _releases.py with them), the oldest and
    # middle releases built (tests/test_release.py, ci/matrix.py; the pin is built above).
    .venv/bin/python -c 'import build_lib, llamarcp._pin as p; [build_lib.ensure_source(p.KNOWN_CARRIERS[v]) for v in p.WINDOW]'
    .venv/bin/python build_lib.py --release oldest --mtmd >/dev/null
    .venv/bin/python build_lib.py --release middle --mtmd >/dev/null
fi
