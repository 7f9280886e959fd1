#!/usr/bin/env python3
"""The release matrix: build each llama.cpp release of the window (cached) and run llamarcp's smoke on it.

    python ci/matrix.py                               # every release of the window, tiny model + gemma-3-270m
    python ci/matrix.py --releases oldest,middle,pin  # what CI runs
    python ci/matrix.py --write benchmarks/RESULTS.md # also replace the matrix table in that file

Each release's library is built with `build_lib.py --release NAME` (the cache makes reruns free) and loaded in a
child process through LLAMARCP_LIB_PATH, the way a user points llamarcp at their own build, so the release is
picked by llamarcp itself (`llamarcp._release`), not told. The smoke is ci/matrix_smoke.py. Exit status 1 when any
check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import build_lib  # noqa: E402
from llamarcp import _pin  # noqa: E402

CHECKS = (
    "greedy",
    "chat",
    "speculative",
    "server",
    "penalties",
    "state",
    "grammar",
    "batching",
    "embeddings",
    "image",
)
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"


def release_names() -> list[str]:
    """The window's releases, oldest first, as `llamarcp._release` names them."""
    from llamarcp import _release

    return list(_release.release_names())


def pick(spec: str) -> list[str]:
    names = release_names()
    aliases = {"oldest": names[0], "middle": names[len(names) // 2], "pin": names[-1], "newest": names[-1]}
    if spec == "all":
        return names
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name = aliases.get(part, part)
        if name not in names:
            raise SystemExit(f"matrix: {part!r} is not a release of the window ({', '.join(names)})")
        if name not in out:
            out.append(name)
    return out


def build(name: str) -> tuple[Path, float]:
    started = time.monotonic()
    carrier = build_lib.release_carrier(name)
    if _pin.KNOWN_CARRIERS[_pin.PINNED_CARRIER] == carrier:
        libs = build_lib.build(libraries=["mtmd"])
    else:
        libs = build_lib.build(build_lib.ensure_source(carrier), libraries=["mtmd"])
    return libs, time.monotonic() - started


def smoke(libs: Path, gemma: bool, timeout: float) -> dict[str, object]:
    env = {**os.environ, "LLAMARCP_LIB_PATH": str(libs)}
    env.pop("LLAMA_CPP_LIB_PATH", None)
    cmd = [sys.executable, str(ROOT / "ci" / "matrix_smoke.py"), *(["--gemma"] if gemma else [])]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"smoke timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"smoke exited {done.returncode} without a result: {' | '.join(tail)}"}
    result: dict[str, object] = json.loads(lines[-1])
    if done.returncode < 0:
        result["error"] = f"killed by signal {-done.returncode}"
    return result


def failed(result: dict[str, object]) -> list[str]:
    bad = [k for k, v in result.items() if isinstance(v, str) and v.startswith("FAIL")]
    return bad + (["error"] if "error" in result else [])


def table(rows: list[tuple[str, dict[str, object], float]], gemma: bool) -> str:
    pin = next((r for n, r, _ in rows if n == release_names()[-1]), {})
    pin_text, pin_steps = pin.get("gemma_text"), pin.get("gemma_steps")
    head = ["release", "carrier", "picked as", *CHECKS, *(["gemma greedy = pin"] if gemma else []), "build s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    from llamarcp._generated._releases import CARRIERS as carriers

    for name, result, seconds in rows:
        cells = [name, carriers[name], str(result.get("release", "-"))]
        for check in CHECKS:
            value = result.get(check)
            cells.append("ok" if value is not None and not str(value).startswith("FAIL") else "**fail**")
        if gemma:
            cells.append(gemma_cell(result, pin_text, pin_steps))
        cells.append(f"{seconds:.0f}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def gemma_cell(result: dict[str, object], pin_text: object, pin_steps: object) -> str:
    """ "yes", or where the greedy text leaves the pin's and how close the pin's choice was there."""
    text, steps = result.get("gemma_text"), result.get("gemma_steps")
    if text is None or pin_text is None:
        return "-"
    if text == pin_text:
        return "yes"
    if not isinstance(steps, list) or not isinstance(pin_steps, list):
        return "differs"
    for i, (mine, theirs) in enumerate(zip(steps, pin_steps)):
        if mine[0] != theirs[0]:
            return f"from token {i}: {mine[0]!r} vs {theirs[0]!r} (margins {mine[1]} / {theirs[1]})"
    return "differs in length"


def write_table(path: Path, text: str) -> None:
    content = path.read_text() if path.is_file() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in content and END in content:
        before, rest = content.split(BEGIN, 1)
        content = before + block + rest.split(END, 1)[1]
    else:
        content = content.rstrip() + "\n\n## Release matrix (ci/matrix.py)\n\n" + block + "\n"
    path.write_text(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--releases", default="all", help="all, or names/aliases: oldest,middle,pin,b9538,...")
    parser.add_argument("--no-gemma", dest="gemma", action="store_false", help="tiny model only")
    parser.add_argument("--write", type=Path, help="replace the matrix table in this markdown file")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per release's smoke")
    args = parser.parse_args(argv)
    rows = []
    for name in pick(args.releases):
        try:
            libs, seconds = build(name)
        except build_lib.BuildError as exc:
            rows.append((name, {"error": f"build failed: {exc}"}, 0.0))
            print(f"matrix: {name}: build failed: {exc}", file=sys.stderr)
            continue
        result = smoke(libs, args.gemma, args.timeout)
        rows.append((name, result, seconds))
        bad = failed(result)
        print(f"matrix: {name}: {'FAILED ' + ', '.join(bad) if bad else 'ok'} ({json.dumps(result)[:300]})")
    text = table(rows, args.gemma)
    print(text)
    if args.write:
        write_table(args.write, text)
    return 1 if any(failed(r) for _, r, _ in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
