#!/usr/bin/env python3
"""Generate llamarcp/_generated/ from the pinned llama.h: parse -> model -> render -> write.

python codegen/generate.py                    # regenerate from the pinned llama.cpp (writes changed files)
python codegen/generate.py --check            # exit 1 listing files that differ from a fresh generation
python codegen/generate.py --source DIR       # generate from another llama.cpp tree (bumping)
python codegen/generate.py --header llama.h   # ... or from one llama.h (ggml headers from --source/pin)
python codegen/generate.py --update-golden    # rewrite the expected outputs of tests/data/codegen/
python codegen/generate.py --releases         # also every release of the window (_pin.WINDOW) -> _releases.py
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codegen import parse, releases, render, used  # noqa: E402
from codegen.model import Api  # noqa: E402

DEFAULT_OUT = ROOT / "llamarcp" / "_generated"
GOLDEN_DIR = ROOT / "tests" / "data" / "codegen"
#: Golden outputs per test header (the ffi module is left out: it is cffi's byte format, covered by layout tests).
GOLDEN_FILES = ("api.json", "llama.cdef.h", "lib.pyi", "lib_types.pyi", "_abi.py")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class Generated:
    api: Api
    files: dict[str, str]
    seconds: float


def pinned_source() -> tuple[Path, str]:
    """The verified pinned tree (fetched once by build_lib.py) and its commit."""
    import build_lib
    from llamarcp import _pin

    return build_lib.ensure_source(_pin.PINNED), _pin.LLAMA_CPP_COMMIT


#: Set (by codegen/bump.py, or by hand) to the llama.cpp tree regenerated bindings came from, when it is not a
#: known carrier; tests compile, count and render against that tree.
BINDINGS_SOURCE_ENV = "LLAMARCP_BINDINGS_SOURCE"


def bindings_source() -> Path:
    """The llama.cpp tree the checked-in bindings were generated from: the pin, a known carrier, or the env var."""
    import os

    from llamarcp._generated._symbols import LLAMA_CPP_COMMIT
    from llamarcp._pin import KNOWN_CARRIERS

    explicit = os.environ.get(BINDINGS_SOURCE_ENV)
    if explicit:
        tree = Path(explicit).expanduser()
        if not (tree / "include" / "llama.h").is_file():
            raise parse.ParseError(f"${BINDINGS_SOURCE_ENV}={explicit} is not a llama.cpp tree (no include/llama.h)")
        return tree
    for carrier in KNOWN_CARRIERS.values():
        if carrier.commit == LLAMA_CPP_COMMIT:
            import build_lib

            return Path(build_lib.ensure_source(carrier))
    raise parse.ParseError(
        f"the bindings describe llama.cpp {LLAMA_CPP_COMMIT}, which no known carrier vendors: "
        f"set ${BINDINGS_SOURCE_ENV} to the tree they were generated from"
    )


def bindings_build_source() -> Path | None:
    """`source` for `build_lib.build()` that gives a library of the bindings' tree: None (the pin) unless bumped."""
    import os

    from llamarcp._generated._symbols import LLAMA_CPP_COMMIT
    from llamarcp._pin import LLAMA_CPP_COMMIT as PINNED

    if LLAMA_CPP_COMMIT == PINNED and not os.environ.get(BINDINGS_SOURCE_ENV):
        return None
    return bindings_source()


def source_commit(source: Path, explicit: str | None) -> str:
    """Commit of a llama.cpp tree: --commit, build_lib's verified marker, the directory name, or git."""
    if explicit:
        return explicit
    marker = source / ".llamarcp-verified"
    if marker.is_file():
        return str(json.loads(marker.read_text())["commit"])
    if _SHA.match(source.name):
        return source.name
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        out = None
    if out is not None and out.returncode == 0 and _SHA.match(out.stdout.strip()):
        return out.stdout.strip()
    return "unknown"


def generate(
    source: Path,
    commit: str,
    header: Path | None = None,
    groups: tuple[parse.Group, ...] = parse.GROUPS,
) -> Generated:
    """Every generated file's text, keyed by file name, from one llama.cpp tree (nothing is written)."""
    start = time.perf_counter()
    api = parse.parse_source(source, commit, groups=groups, header=header)
    if commit == "unknown":
        api.diagnostics.insert(0, "WARN: llama.cpp commit unknown (pass --commit SHA)")
    files = render_all(api, groups, used_names=used.compute(f.name for f in api.functions))
    if header is None:  # a whole tree: its example grammars too (llama_grammar.*_GBNF)
        files[GRAMMARS_FILE] = render.render_grammars(api, example_grammars(source))
    return Generated(api, files, time.perf_counter() - start)


GRAMMARS_FILE = "grammars.py"


def example_grammars(source: Path) -> dict[str, str]:
    """`grammars/*.gbnf` of a llama.cpp tree, by file stem (none: {})."""
    folder = source / "grammars"
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.gbnf"))} if folder.is_dir() else {}


def render_all(
    api: Api, groups: tuple[parse.Group, ...] = parse.GROUPS, used_names: list[str] | None = None
) -> dict[str, str]:
    """Every generated file; `_used.py` only with `used_names` (the package's own calls; not for golden APIs)."""
    hints = {g.name: g.hint for g in groups if g.hint}
    cdef = render.render_cdef(api)
    files = {
        "__init__.py": f'{render.hash_notice(api)}\n"""Files written by codegen/generate.py only."""\n',
        "llama.cdef.h": cdef,
        "_llama_ffi.py": render.render_ffi_module(api, cdef),
        "_llama_ffi.pyi": render.render_ffi_stub(api),
        "lib.pyi": render.render_stub(api),
        "api.json": render.render_manifest(api),
        "_symbols.py": render.render_symbols(api, hints),
        "codegen_report.md": render.render_report(api, groups),
        "_abi.py": render.render_abi(api),
        "lib_types.pyi": render.render_protocol(api),
        "_ctypes_face.py": render.render_ctypes_face(api),
    }
    if used_names is not None:
        files[used.FILE_NAME] = render.render_used(api, used_names)
    return files


def write_if_changed(out: Path, files: dict[str, str]) -> list[str]:
    """Write only files whose content differs (timestamps and diffs stay quiet); return their names."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(files.items()):
        path = out / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(name)
    return written


def differing(out: Path, files: dict[str, str]) -> list[str]:
    """Names of generated files missing from `out` or differing from it."""
    bad = []
    for name, text in sorted(files.items()):
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            bad.append(name)
    return bad


# --------------------------------------------------------------------------------------------- golden


def golden_headers() -> list[Path]:
    return sorted(GOLDEN_DIR.glob("*.h"))


def golden_outputs(header: Path) -> dict[str, str]:
    """Expected files for one golden header (its own small API, commit 'golden')."""
    api = parse.parse_header(header, commit="golden")
    files = render_all(api, ())
    return {name: files[name] for name in GOLDEN_FILES}


def stale_golden() -> list[str]:
    bad = []
    for header in golden_headers():
        out = GOLDEN_DIR / "expected" / header.stem
        bad += [str((out / name).relative_to(ROOT)) for name in differing(out, golden_outputs(header))]
    return bad


def update_golden() -> list[str]:
    written = []
    for header in golden_headers():
        out = GOLDEN_DIR / "expected" / header.stem
        written += [f"{out.relative_to(ROOT)}/{name}" for name in write_if_changed(out, golden_outputs(header))]
    return written


# --------------------------------------------------------------------------------------------- cli


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="codegen/generate.py", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--check", action="store_true", help="regenerate in memory; exit 1 listing differing files")
    p.add_argument("--source", type=Path, help="llama.cpp source tree (default: the pinned one)")
    p.add_argument("--header", type=Path, help="llama.h to use instead of the tree's include/llama.h")
    p.add_argument("--commit", help="llama.cpp commit of --source/--header (default: detected)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--update-golden", action="store_true", help="rewrite tests/data/codegen/expected/*")
    p.add_argument(
        "--releases",
        action="store_true",
        help=f"also (re)generate {releases.FILE_NAME} from every release of the window (fetches their trees once)",
    )
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    try:
        if args.update_golden:
            for name in update_golden():
                print(f"updated {name}")
            return 0
        if args.source is not None:
            source = args.source.resolve()
            commit = source_commit(source, args.commit)
        else:
            source, commit = pinned_source()
            commit = args.commit or commit
        result = generate(source, commit, header=args.header)
    except parse.ParseError as exc:
        print(f"codegen: error: {exc}", file=sys.stderr)
        return 2
    errors = [d for d in result.api.diagnostics if d.startswith("ERROR:")]
    if args.releases and args.source is None and args.header is None:
        try:
            result.files[releases.FILE_NAME] = releases.render_window(releases.window_releases())
        except parse.ParseError as exc:
            print(f"codegen: error: {exc}", file=sys.stderr)
            return 2
    elif args.check and args.out == DEFAULT_OUT and args.source is None and args.header is None:
        window = releases.window_releases_if_cached()
        if window is not None:
            result.files[releases.FILE_NAME] = releases.render_window(window)
        else:
            print(
                f"codegen: {releases.FILE_NAME} cannot be checked: the window's llama.cpp trees are not all fetched "
                "(`bash ci/setup.sh` or `python codegen/generate.py --releases` fetches them)",
                file=sys.stderr,
            )
            return 1
    if args.check:
        bad = differing(args.out, result.files)
        if args.out == DEFAULT_OUT and args.source is None and args.header is None:
            bad += stale_golden()  # the checked-in golden outputs must follow the generator too
        if bad:
            print(f"codegen: {len(bad)} generated file(s) are stale (in {args.out} unless named):", file=sys.stderr)
            for name in bad:
                why = ""
                if name == used.FILE_NAME:
                    old = args.out / name
                    old_text = old.read_text(encoding="utf-8") if old.is_file() else ""
                    why = ": " + used.describe_difference(old_text, used.parse_names(result.files[name]))
                print(f"  {name}{why}", file=sys.stderr)
            fix = (
                "python codegen/generate.py --update-golden"
                if all("/" in n for n in bad)
                else "python codegen/generate.py --releases"
                if releases.FILE_NAME in bad
                else "python codegen/generate.py"
            )
            print(f"run: {fix}", file=sys.stderr)
            return 1
        if not args.quiet:
            print(f"codegen: generated files and golden outputs up to date ({result.seconds:.2f} s)")
        return 1 if errors else 0
    written = write_if_changed(args.out, result.files)
    if not args.quiet:
        api = result.api
        print(
            f"codegen: {len(api.functions)} functions, {len(api.structs)} structs, {len(api.enums)} enums, "
            f"{len(api.callbacks)} callbacks, {len(api.typedefs)} typedefs, {len(api.defines)} defines "
            f"from llama.cpp {commit[:12]} in {result.seconds:.2f} s; "
            f"wrote {', '.join(written) if written else 'nothing (up to date)'}"
        )
        for line in api.diagnostics:
            if line.startswith(("WARN:", "ERROR:")):
                print(f"codegen: {line}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
