#!/usr/bin/env python3
"""Bump llama.cpp in one command, with one Markdown report of what changed and what it breaks.

    python -m codegen.bump --source ~/llama.cpp --commit SHA      # report only: nothing in the checkout changes
    python -m codegen.bump --carrier 0.3.16                       # a known carrier sdist (build_lib.py fetches it)
    python -m codegen.bump --source DIR --build                   # also build the library and check its symbols
    python -m codegen.bump --source DIR --build --apply --tests   # write the bindings, then run the test suite
    python -m codegen.bump --carrier V --pin --build --tests      # move the pin to carrier V, then all of the above

Steps, each timed and reported (a failing step is reported and the later ones still run where they can):
diff (bindings -> new headers) -> the old bindings' guard verdict -> regenerate -> build -> symbols ->
scan of llamarcp's own code (names, call arity, struct fields, constants and C types against the new tree; uses
of changed items, hand copies, facts tied to llama.cpp sources) ->
chat templates (models/templates: added, removed, changed; new ones rendered) -> tests (ci/setup.sh, ruff,
mypy, ci/drift.sh, pytest: what `bash ci/test.sh` runs, each reported).
Without `--pin` the pin (`llamarcp/_pin.py`) stays where it is; `--pin` (a known carrier only) rewrites its two
lines, PINNED_CARRIER and TREE_SHA256, before regenerating, so the build and the suite are those of the new pin.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codegen import drift as checkout_drift  # noqa: E402
from codegen import generate, used  # noqa: E402
from llamarcp.drift import abi  # noqa: E402
from llamarcp.drift.diff import DiffReport, diff_manifests  # noqa: E402
from llamarcp.drift.inputs import pinned_manifest  # noqa: E402
from llamarcp.drift.scan import ApiIndex, scan_paths  # noqa: E402
from llamarcp.errors import LlamaError  # noqa: E402

PACKAGE = ROOT / "llamarcp"
SCANNED = [PACKAGE, ROOT / "codegen", ROOT / "benchmarks", ROOT / "build_lib.py"]


@dataclass(frozen=True)
class TiedFact:
    """A value llamarcp hard-codes that llama.cpp defines outside its headers (so the bindings cannot carry it)."""

    what: str
    source_file: str  # in the llama.cpp tree
    pattern: str  # regex whose group 1 is the value in that file
    module: str  # llamarcp module holding the copy
    attribute: str


#: Re-read from every new tree; a difference is a hand edit the bump needs (see tests/test_rpc.py).
TIED_FACTS = (
    TiedFact("RPC HELLO command number", "ggml/src/ggml-rpc/ggml-rpc.cpp", r"RPC_CMD_HELLO == (\d+)", "llamarcp.rpc",
             "_CMD_HELLO"),
    TiedFact("RPC connection capability bytes", "ggml/src/ggml-rpc/transport.h", r"RPC_CONN_CAPS_SIZE = (\d+);",
             "llamarcp.rpc", "_CONN_CAPS_SIZE"),
)  # fmt: skip


@dataclass
class Step:
    name: str
    status: str = "ok"  # ok | findings | failed | skipped
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


@dataclass
class Bump:
    """Everything the report says; filled step by step."""

    source: Path
    commit: str
    old: dict[str, Any]
    new: dict[str, Any] | None = None
    diff: DiffReport | None = None
    out_dir: Path | None = None
    lib_dir: Path | None = None
    pinned: bool = False  # --pin moved the pin to the new tree: build and test it as the pin
    steps: list[Step] = field(default_factory=list)

    def run(self, name: str, fn: Callable[[Step], None]) -> Step:
        step = Step(name)
        started = time.perf_counter()
        try:
            fn(step)
        except (LlamaError, OSError, RuntimeError, ValueError, ImportError) as exc:
            step.status = "failed"
            step.lines.append(f"**failed**: {type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - any other failure of a step is reported, not a traceback
            step.status = "failed"
            step.lines.append(f"**failed** (unexpected): {type(exc).__name__}: {exc}")
        step.seconds = time.perf_counter() - started
        self.steps.append(step)
        return step


def _demote(markdown: str) -> list[str]:
    """Embed another report: its headings one level down (# -> ###)."""
    return [("##" + line) if line.startswith("#") else line for line in markdown.splitlines()]


# ------------------------------------------------------------------------------------------------ steps


def step_diff(bump: Bump, step: Step) -> None:
    bump.new = checkout_drift.parse_source_tree(bump.source, bump.commit)
    bump.diff = diff_manifests(bump.old, bump.new, "bindings", str(bump.source))
    step.lines.append(f"{bump.diff.summary()}.")
    step.status = "findings" if bump.diff.breaking else "ok"
    step.lines += ["", "<details><summary>full API diff</summary>", "", *_demote(bump.diff.to_markdown()), "",
                   "</details>"]  # fmt: skip


def step_guard(bump: Bump, step: Step) -> None:
    if bump.new is None:
        raise RuntimeError("no manifest of the new tree (diff failed)")
    diff = abi.differences(abi.items(bump.old), abi.items(bump.new))
    if diff.compatible:
        step.lines.append(f"The old bindings would load the new library: ABI {diff.summary()}.")
        return
    step.status = "findings"
    step.lines.append(
        f"The runtime guard refuses the new library with the old bindings (`LibraryMismatchError`): {diff.summary()}."
    )
    step.lines += [f"- `{item}`" for item in diff.changed]


PIN_FILE = PACKAGE / "_pin.py"


def move_pin(version: str, tree: Path, pin_file: Path = PIN_FILE) -> tuple[str, str]:
    """Point `pin_file` at carrier `version` (its tree: `tree`); return the old and new PINNED_CARRIER values."""
    import importlib

    import build_lib
    from llamarcp import _pin

    if version not in _pin.KNOWN_CARRIERS:
        raise ValueError(f"unknown carrier {version!r}; known: {', '.join(sorted(_pin.KNOWN_CARRIERS))}")
    text = pin_file.read_text(encoding="utf-8")
    old = re.search(r'^PINNED_CARRIER = "([^"]*)"$', text, flags=re.M)
    text, n_carrier = re.subn(r'^PINNED_CARRIER = "[^"]*"$', f'PINNED_CARRIER = "{version}"', text, flags=re.M)
    tree_hash = build_lib.tree_sha256(tree)
    text, n_hash = re.subn(r'^TREE_SHA256 = "[0-9a-f]{64}"$', f'TREE_SHA256 = "{tree_hash}"', text, flags=re.M)
    if old is None or n_carrier != 1 or n_hash != 1:
        raise ValueError(f'{pin_file} has no single PINNED_CARRIER = "..." and TREE_SHA256 = "..." line to move')
    window = re.search(r"^WINDOW: tuple\[str, \.\.\.\] = \(\n(.*?)^\)$", text, flags=re.M | re.S)
    if window is None:
        raise ValueError(f"{pin_file} has no WINDOW = (...) tuple to add the new pin to")
    if f'"{version}"' not in window.group(1):  # the new pin joins the window (as its newest release)
        text = text[: window.end(1)] + f'    "{version}",\n' + text[window.end(1) :]
    pin_file.write_text(text, encoding="utf-8")
    if pin_file == PIN_FILE:
        importlib.reload(_pin)  # build_lib and the cache read `_pin.NAME` at call time
    return old.group(1), version


def step_pin(bump: Bump, step: Step, version: str) -> None:
    from llamarcp import _pin

    before, after = move_pin(version, bump.source)
    step.lines.append(
        f"`llamarcp/_pin.py`: PINNED_CARRIER {before} -> {after} (llama.cpp {_pin.LLAMA_CPP_COMMIT}, "
        f"{_pin.PINNED.package}=={_pin.PINNED.version}, sha256 {_pin.PINNED.sha256[:12]}...); "
        f"TREE_SHA256 = {_pin.TREE_SHA256}."
    )
    bump.pinned = True


def step_regenerate(bump: Bump, step: Step, apply: bool) -> None:
    result = generate.generate(bump.source, bump.commit)
    if bump.pinned:  # the window moved with the pin: every release's declarations again
        from codegen import releases

        result.files[releases.FILE_NAME] = releases.render_window(releases.window_releases())
    out = generate.DEFAULT_OUT if apply else Path(tempfile.mkdtemp(prefix="llamarcp-bump-"))
    changed = generate.differing(generate.DEFAULT_OUT, result.files)
    generate.write_if_changed(out, result.files)
    bump.out_dir = out
    where = "into llamarcp/_generated/" if apply else f"into {out} (report only; the checkout is unchanged)"
    step.lines.append(f"Generated {len(result.files)} files in {result.seconds:.2f} s {where}.")
    step.lines.append(f"Files that differ from the checked-in bindings: {', '.join(changed) or 'none'}.")
    notes = [d for d in result.api.diagnostics if d.startswith(("ERROR:", "WARN:"))]
    if notes:
        step.status = "findings" if any(d.startswith("ERROR:") for d in notes) else step.status
        step.lines += ["", "Generator diagnostics:", *[f"- {d}" for d in notes]]


def step_build(bump: Bump, step: Step) -> None:
    import build_lib

    try:
        if bump.pinned:
            bump.lib_dir = build_lib.build()
        else:
            known = bump.commit if bump.commit != "unknown" else None
            bump.lib_dir = build_lib.build(bump.source, commit=known)
    except build_lib.BuildError as exc:
        raise RuntimeError(f"{exc}{f' (log: {exc.log})' if exc.log else ''}") from exc
    stamp_fp = None
    from llamarcp import _guard

    stamp, _ = _guard.read_stamp(bump.lib_dir / "libllama.so")
    if stamp:
        stamp_fp = stamp.get("abi_fingerprint")
    expected = abi.fingerprint(abi.items(bump.new or {}))
    step.lines.append(f"Library: `{bump.lib_dir}`; stamp ABI fingerprint {stamp_fp} (new bindings: {expected}).")
    if stamp_fp != expected:
        step.status = "findings"
        step.lines.append("The stamp does not carry the new headers' fingerprint: the guard will probe instead.")


def step_symbols(bump: Bump, step: Step) -> None:
    from llamarcp.drift import symbols

    if bump.lib_dir is None or bump.new is None:
        step.status = "skipped"
        step.lines.append("No library built (run with `--build`).")
        return
    report = symbols.compare(bump.new, bump.lib_dir)
    step.status = "findings" if report.failed() else "ok"
    step.lines.append(report.summary())
    step.lines += [f"- {f.severity}: {f.message}" for f in report.findings if f.severity == "error"]


def _package_sources() -> list[Path]:
    return used.package_sources()


def _mentions(names: set[str]) -> dict[str, list[str]]:
    """name -> `file:line` of every use in llamarcp's own code (attribute or name; not comments or docstrings)."""
    found: dict[str, list[str]] = {}
    for path in _package_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                name, line = node.attr, node.lineno
            elif isinstance(node, ast.Name):
                name, line = node.id, node.lineno
            else:
                continue
            if name in names:
                found.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{line}")
    return {k: sorted(set(v), key=lambda loc: (loc.split(":")[0], int(loc.split(":")[1]))) for k, v in found.items()}


def _via_functions(manifest: dict[str, Any], struct: str) -> set[str]:
    """Declared functions whose signature passes or returns `struct` by name (how llamarcp reaches a struct)."""
    word = re.compile(rf"\b{re.escape(struct)}\b")
    return {
        f["name"]
        for f in manifest.get("functions", [])
        if word.search(f["return_type"]) or any(word.search(p["type"]) for p in f["params"])
    }


def hand_copies(constant_names: set[str]) -> list[str]:
    """`NAME = <int>` assignments in llamarcp whose name is a llama.cpp constant's (leading `_` ignored)."""
    out = []
    for path in _package_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
                continue
            if not isinstance(node.value.value, int) or isinstance(node.value.value, bool):
                continue
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.lstrip("_") in constant_names:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target.id} = {node.value.value}")
    return out


def step_own_code(bump: Bump, step: Step) -> None:
    if bump.new is None or bump.diff is None:
        raise RuntimeError("no manifest of the new tree (diff failed)")
    removed = {c.name: c.hint or "removed from llama.h; no replacement known" for c in bump.diff.sections["removed"]}
    # What the code does with the API, checked against the new tree: names, call arity, struct fields, constants
    # and C types; the bindings' manifest names what moved (`load_mode` -> `use_mmap`, ...).
    index = ApiIndex.from_manifest(bump.new, removed, reference=bump.old, label=str(bump.source))
    result = scan_paths(SCANNED, index)
    step.lines.append(f"Uses (names, arity, struct fields, constants, types): {result.summary()}.")
    for use in result.uses:
        location = Path(use.path).resolve()
        if location.is_relative_to(ROOT):
            use = dataclasses.replace(use, path=str(location.relative_to(ROOT)))
        step.lines.append(f"- {use.severity}: {use.render()}")
    step.lines += [f"- error: {e}" for e in result.errors]
    if result.failed():
        step.status = "findings"

    changed = abi.differences(abi.items(bump.old), abi.items(bump.new)).changed
    names = {item.split(" ")[-1] for item in changed}
    via = {
        item: _via_functions(bump.new, item.split(" ")[-1])
        for item in changed
        if item.startswith(("struct ", "union "))
    }
    mentions = _mentions(names | {f for functions in via.values() for f in functions})
    step.lines += ["", "Changed items llamarcp's own code uses (check each use):"]
    affected = 0
    for item in changed:
        name = item.split(" ")[-1]
        uses = [(name, mentions[name])] if name in mentions else []
        uses += [(f, mentions[f]) for f in sorted(via.get(item, ())) if f in mentions]
        if not uses:
            continue
        affected += 1
        shown = "; ".join(f"`{n}` at {', '.join(locs[:6])}{' ...' if len(locs) > 6 else ''}" for n, locs in uses)
        step.lines.append(f"- `{item}`: {shown}")
    if affected:
        step.status = "findings"
    else:
        step.lines.append("- none")

    constants = {c["name"] for e in bump.new.get("enums", []) for c in e["constants"]}
    constants |= {d["name"] for d in bump.new.get("defines", [])}
    copies = hand_copies(constants)
    step.lines += ["", "Hand copies of llama.cpp constants (should read `lib.NAME` from the bindings):"]
    step.lines += [f"- {c}" for c in copies] or ["- none"]
    if copies:
        step.status = "findings"

    step.lines += ["", "Facts llamarcp hard-codes from llama.cpp sources outside the headers:"]
    import importlib

    for fact in TIED_FACTS:
        ours = getattr(importlib.import_module(fact.module), fact.attribute)
        try:
            match = re.search(fact.pattern, (bump.source / fact.source_file).read_text(encoding="utf-8"))
        except OSError as exc:
            match, ours = None, f"{ours} (cannot read {fact.source_file}: {exc.strerror})"
        theirs = int(match.group(1)) if match else None
        ok = theirs == ours
        verdict = "same" if ok else "**differs**"
        step.lines.append(f"- {fact.what}: llamarcp `{fact.module}.{fact.attribute}` = {ours}, "
                          f"{fact.source_file} = {theirs if match else 'not found'}: {verdict}")  # fmt: skip
        if not ok:
            step.status = "findings"


def _templates(tree: Path) -> dict[str, str]:
    directory = tree / "models" / "templates"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.jinja"))}


CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


def step_templates(bump: Bump, step: Step, old_tree: Path | None) -> None:
    from llamarcp.chat import ChatFormatter

    new = _templates(bump.source)
    old = _templates(old_tree) if old_tree is not None else {}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(n for n in set(new) & set(old) if new[n] != old[n])
    step.lines.append(
        f"{len(old)} -> {len(new)} templates: {len(added)} added, {len(removed)} removed, "
        f"{len(changed)} changed (new ones need an entry in tests/data/chat_templates.json)."
    )
    for label, names in (("removed", removed), ("added", added), ("changed", changed)):
        for name in names:
            line = f"- {label}: `{name}`"
            if label != "removed":
                text = (bump.source / "models" / "templates" / name).read_text(encoding="utf-8")
                try:
                    prompt = ChatFormatter(text, "<s>", "</s>", name=name).render(
                        CONVERSATION, add_generation_prompt=True
                    )
                    line += f": renders the standard conversation ({len(prompt)} chars)"
                except LlamaError as exc:
                    step.status = "findings"
                    line += f": **does not render**: {type(exc).__name__}: {str(exc)[:200]}"
            step.lines.append(line)
    if added or removed:
        step.status = "findings"


def step_tests(bump: Bump, step: Step, run: bool, pytest_args: list[str]) -> None:
    """What `bash ci/test.sh` runs, one command at a time so that every result is reported."""
    if not run:
        step.status = "skipped"
        step.lines.append("Not run (pass `--apply --build --tests`: the suite runs against the written bindings).")
        return
    if bump.lib_dir is None:
        raise RuntimeError("the tests need the new library (--build)")
    env = dict(os.environ)
    if not bump.pinned:  # the bindings are not the pin's: every test and build follows the new tree instead
        env["LLAMARCP_LIB_PATH"] = str(bump.lib_dir / "libllama.so")
        env[generate.BINDINGS_SOURCE_ENV] = str(bump.source)
        step.lines.append(f"With LLAMARCP_LIB_PATH={env['LLAMARCP_LIB_PATH']} and "
                          f"{generate.BINDINGS_SOURCE_ENV}={bump.source}:")  # fmt: skip
    python = str(ROOT / ".venv" / "bin" / "python")
    commands = [
        ["bash", "ci/setup.sh", "dev"],
        [python, "-m", "ruff", "check", "."],
        [python, "-m", "mypy"],
        ["bash", "ci/drift.sh"],
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args],
    ]
    for cmd in commands:
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        out = (proc.stdout + proc.stderr).strip().splitlines()
        shown = " ".join(["python" if c == python else c for c in cmd])
        step.lines.append(f"- `{shown}`: exit {proc.returncode} in {seconds:.0f} s; {out[-1] if out else 'no output'}")
        if proc.returncode == 0:
            continue
        step.status = "findings"
        if cmd[0] == "bash" and cmd[1] == "ci/setup.sh":
            step.lines += [f"  - {ln}" for ln in out[-15:]]
            step.lines.append("  set-up failed: the later commands were not run")
            return
        failures = [ln for ln in out if ln.startswith(("FAILED ", "ERROR "))] or out[-15:]
        step.lines += [f"  - {ln}" for ln in failures]


# ----------------------------------------------------------------------------------------------- report


def render(bump: Bump, started: float, argv: list[str]) -> str:
    old_commit = bump.old.get("llama_cpp_commit", "unknown")
    lines = [
        f"# llama.cpp bump report: {old_commit[:12]} -> {bump.commit[:12] if bump.commit != 'unknown' else 'unknown'}",
        "",
        f"- command: `python -m codegen.bump {' '.join(argv)}`",
        f"- new tree: `{bump.source}`, commit `{bump.commit}`"
        + (" (**unknown**: pass `--commit SHA`)" if bump.commit == "unknown" else ""),
        f"- bindings before: llama.cpp `{old_commit}`",
        f"- machine: {platform.machine()} {platform.system()}, Python {platform.python_version()}",
        f"- wall time: {time.perf_counter() - started:.1f} s",
        "",
        "| step | result | seconds |",
        "|---|---|---|",
        *[f"| {s.name} | {s.status} | {s.seconds:.1f} |" for s in bump.steps],
    ]
    for number, s in enumerate(bump.steps, 1):
        lines += ["", f"## {number}. {s.name} ({s.status}, {s.seconds:.1f} s)", "", *s.lines]
    return "\n".join(lines) + "\n"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m codegen.bump", description=(__doc__ or "").split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, help="the new llama.cpp tree")
    where.add_argument("--carrier", help="a known carrier sdist version (llamarcp._pin.KNOWN_CARRIERS)")
    p.add_argument("--commit", help="llama.cpp commit of the tree (default: from its marker or git metadata)")
    p.add_argument("--build", action="store_true", help="build the library (build_lib.py --source) and check symbols")
    p.add_argument("--apply", action="store_true", help="write the bindings into llamarcp/_generated/")
    p.add_argument("--pin", action="store_true", help="move llamarcp/_pin.py to the --carrier (implies --apply)")
    p.add_argument(
        "--tests", action="store_true", help="run the test suite on the new bindings (needs --apply --build)"
    )
    p.add_argument("--pytest-args", default="", help="extra arguments for pytest (default: none, the whole suite)")
    p.add_argument("-o", "--output", type=Path, default=Path("bump-report.md"), help="report file (bump-report.md)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _args(argv)
    started = time.perf_counter()
    if args.pin and not args.carrier:
        print("codegen.bump: --pin needs --carrier (the pin is a carrier sdist with a sha256)", file=sys.stderr)
        return 2
    args.apply = args.apply or args.pin
    if args.tests and not (args.apply and args.build):
        print(
            "codegen.bump: --tests needs --apply and --build (the suite runs on the written bindings)", file=sys.stderr
        )
        return 2
    try:
        if args.carrier:
            source, commit = checkout_drift.carrier_source(args.carrier)
            commit = args.commit or commit
        else:
            source = args.source.expanduser().resolve()
            if not (source / "include" / "llama.h").is_file():
                print(f"codegen.bump: {source} is not a llama.cpp tree (no include/llama.h)", file=sys.stderr)
                return 2
            commit = generate.source_commit(source, args.commit)
        old_tree: Path | None = generate.bindings_source()
    except LlamaError as exc:
        print(f"codegen.bump: {exc}", file=sys.stderr)
        return 2
    except generate.parse.ParseError as exc:
        print(f"codegen.bump: {exc}; the template comparison is skipped", file=sys.stderr)
        old_tree = None
    bump = Bump(source=source, commit=commit, old=pinned_manifest())
    bump.run("API diff: bindings -> new headers", lambda s: step_diff(bump, s))
    bump.run("guard verdict for the old bindings", lambda s: step_guard(bump, s))
    if args.pin and bump.run("move the pin", lambda s: step_pin(bump, s, args.carrier)).status == "failed":
        args.build = args.tests = False  # nothing below would be the new pin's
    bump.run("regenerate", lambda s: step_regenerate(bump, s, args.apply))
    if args.build:
        bump.run("build", lambda s: step_build(bump, s))
    bump.run("symbols: new API vs new library", lambda s: step_symbols(bump, s))
    bump.run("llamarcp's own code", lambda s: step_own_code(bump, s))
    bump.run("chat templates (models/templates/)", lambda s: step_templates(bump, s, old_tree))
    bump.run("tests", lambda s: step_tests(bump, s, args.tests, args.pytest_args.split()))
    text = render(bump, started, argv)
    args.output.write_text(text, encoding="utf-8")
    print(f"codegen.bump: report written to {args.output}")
    for s in bump.steps:
        print(f"  {s.name}: {s.status} ({s.seconds:.1f} s)")
    return 1 if any(s.status == "failed" for s in bump.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
