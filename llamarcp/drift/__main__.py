"""`python -m llamarcp.drift symbols|diff|scan ...`: the drift checker's one entry point.

Reads api.json manifests (the installed package needs nothing else); in a checkout, `python -m codegen.drift`
runs the same commands and also reads headers, llama.cpp trees and carrier sdists.

Exit codes: 0 clean, 1 findings (errors; with --strict also warnings; for diff: breaking changes),
2 unusable input (missing file, unparsable header, unknown library format).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from llamarcp.drift.inputs import SourceParser, load_api
from llamarcp.errors import DriftError, LlamaError

EXIT_OK, EXIT_FINDINGS, EXIT_INPUT = 0, 1, 2

EXAMPLES = """\
examples:
  python -m llamarcp.drift symbols "$(python build_lib.py | tail -n 1)"   # generated API vs the built lib
  python -m llamarcp.drift diff old/api.json pinned -o api-diff.md      # what changed between two manifests
  python -m llamarcp.drift scan my_project/ --format github             # stale calls, arity, fields, constants
  python -m llamarcp.drift scan my_project/ --api release:b8672         # against an older release of the window
in a llamarcp checkout, headers, trees and carrier sdists too:
  python -m codegen.drift diff carrier:0.3.16 pinned -o api-diff.md     # what changed since an older llama.cpp
  python -m codegen.drift diff old/include/llama.h ~/llama.cpp --json   # headers, trees, api.json: any mix

exit codes: 0 clean, 1 findings (errors, breaking changes; --strict: warnings too), 2 unusable input
"""


def _write(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    else:
        print(text)


def _not_a_release(*specs: str) -> None:
    """`release:NAME` is read from declarations (no sizes, offsets or deprecation notes): good for scan only."""
    for spec in specs:
        if spec.startswith("release:") or spec == "loaded":
            raise DriftError(
                f"{spec}: a release read from the package's declarations has no layouts or deprecation notes; use "
                f"it with scan, or give its tree here (python -m codegen.drift ... carrier:VERSION)"
            )


def cmd_symbols(args: argparse.Namespace) -> int:
    from llamarcp.drift.symbols import compare

    library = args.library
    if library is None:
        from llamarcp._lib import find_library

        library = str(find_library())
    _not_a_release(args.api)
    manifest = args.load_api(args.api)
    report = compare(manifest, library, undeclared_prefixes=tuple(args.prefix), abi_check=not args.no_abi)
    _write(json.dumps(report.as_dict(), indent=2) if args.json else report.render_text(), args.output)
    return EXIT_FINDINGS if report.failed(strict=args.strict) else EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from llamarcp.drift.diff import API_BREAK, diff_manifests

    _not_a_release(args.old, args.new)
    report = diff_manifests(args.load_api(args.old), args.load_api(args.new), args.old, args.new)
    _write(report.to_json() if args.json else report.to_markdown(), args.output)
    if args.output:
        print(report.summary())
    if args.fail_on == "never":
        return EXIT_OK
    if args.fail_on == "api":
        return EXIT_FINDINGS if report.count(API_BREAK) else EXIT_OK
    return EXIT_FINDINGS if report.breaking else EXIT_OK


def cmd_scan(args: argparse.Namespace) -> int:
    from llamarcp.drift.scan import ApiIndex, scan_paths

    removed: dict[str, str] = {}
    if args.since:
        from llamarcp.drift.diff import diff_manifests

        for change in diff_manifests(args.load_api(args.since), args.load_api(args.api)).sections["removed"]:
            removed[change.name] = change.hint or "removed from llama.h; no replacement known"
    # The bindings' own API names what moved (`load_mode` -> `use_mmap`, ...) when the code is checked against
    # another tree.
    reference = args.load_api("pinned") if args.api != "pinned" else None
    index = ApiIndex.from_manifest(args.load_api(args.api), removed, reference, label=args.api)
    result = scan_paths(args.paths, index)
    fmt = "json" if args.json else args.format
    _write(result.render(fmt), args.output)
    return EXIT_FINDINGS if result.failed(strict=args.strict) else EXIT_OK


def build_parser(prog: str = "python -m llamarcp.drift") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="llamarcp drift checker: the pinned llama.cpp API vs built libraries, other versions, Python code.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    api_help = "API to check against: pinned (default) or an api.json (codegen.drift: also llama.h, a tree, carrier:V)"
    scan_api_help = (
        "API to check against: pinned (default), release:NAME (a release of the window: release:b8672), loaded "
        "(the release of the library llamarcp would load) or an api.json (codegen.drift: also llama.h, a tree, "
        "carrier:V)"
    )

    p = sub.add_parser("symbols", help="compare the API manifest with a built library's exported symbols")
    p.add_argument(
        "library", nargs="?", help="libllama file or the directory holding it (default: the one llamarcp loads)"
    )
    p.add_argument("--api", default="pinned", help=api_help)
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--prefix", action="append", default=None, help="prefix of exports that must be declared (llama_)")
    p.add_argument("--no-abi", action="store_true", help="skip the ABI check (stamp comparison, or probe via dlopen)")
    p.add_argument("-o", "--output", help="write the report to this file")
    p.set_defaults(func=cmd_symbols)

    p = sub.add_parser("diff", help="API diff between two llama.cpp versions (Markdown or --json)")
    p.add_argument("old", help="old API: pinned or an api.json (codegen.drift: also llama.h, a tree, carrier:V)")
    p.add_argument("new", help="new API, same forms")
    p.add_argument("--json", action="store_true", help="JSON report (keys removed, added, changed, ...)")
    p.add_argument("--fail-on", choices=("any", "api", "never"), default="any", help="which breaks exit 1")
    p.add_argument("-o", "--output", help="write the report to this file (the summary still goes to stdout)")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser(
        "scan", help="find uses of removed/deprecated functions, other arities, missing fields/constants in Python code"
    )
    p.add_argument("paths", nargs="+", help="files or directories")
    p.add_argument("--api", default="pinned", help=scan_api_help)
    p.add_argument("--since", help="also treat functions removed since this older API as removed (hints from it)")
    p.add_argument("--format", choices=("text", "json", "github"), default="text")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument("--strict", action="store_true", help="fail on warnings too (deprecated, field-gone)")
    p.add_argument("-o", "--output", help="write the report to this file")
    p.set_defaults(func=cmd_scan)

    return parser


def main(
    argv: list[str] | None = None, *, source_parser: SourceParser | None = None, prog: str = "python -m llamarcp.drift"
) -> int:
    """Run one command; `source_parser` reads header/tree/carrier specs (codegen.drift passes one)."""
    args = build_parser(prog).parse_args(argv)
    args.load_api = functools.partial(load_api, source_parser=source_parser)
    if getattr(args, "prefix", "unset") is None:
        args.prefix = ["llama_"]
    try:
        code: int = args.func(args)
    except LlamaError as exc:  # DriftError, LibraryNotFoundError (no library to check), ...
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    return code


if __name__ == "__main__":
    sys.exit(main())
