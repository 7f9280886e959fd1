"""codegen.bump in report-only mode on a changed copy of the bindings' tree: what the report names, and that the
checkout is left alone. (A real bump with --build --apply --tests compiles llama.cpp; see README "Bumping".)"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codegen import bump  # noqa: E402

GENERATED = ROOT / "llamarcp" / "_generated"
NEW_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|a|>{% endif %}"
)


@pytest.fixture(scope="module")
def new_tree(llama_cpp_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The headers, RPC sources and templates of the bindings' tree, with upstream-like changes."""
    tree = tmp_path_factory.mktemp("bumped")
    for sub in ("include", "ggml/include", "models/templates"):
        shutil.copytree(llama_cpp_source / sub, tree / sub)
    (tree / "ggml/src/ggml-rpc").mkdir(parents=True)
    for name in ("ggml-rpc.cpp", "transport.h"):
        shutil.copy(llama_cpp_source / "ggml/src/ggml-rpc" / name, tree / "ggml/src/ggml-rpc" / name)
    header = tree / "include" / "llama.h"
    anchor = "        ggml_abort_callback abort_callback;\n"
    assert anchor in header.read_text()
    header.write_text(header.read_text().replace(anchor, "        size_t llamarcp_test_grown;\n" + anchor))
    transport = tree / "ggml/src/ggml-rpc/transport.h"
    assert "RPC_CONN_CAPS_SIZE = 24;" in transport.read_text()
    transport.write_text(transport.read_text().replace("RPC_CONN_CAPS_SIZE = 24;", "RPC_CONN_CAPS_SIZE = 32;"))
    (tree / "models/templates/new-model.jinja").write_text(NEW_TEMPLATE)
    (tree / "models/templates/raising-model.jinja").write_text("{{ raise_exception('system role is not supported') }}")
    return tree


@pytest.fixture(scope="module")
def report(new_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    before = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.is_file()}
    out = tmp_path_factory.mktemp("report") / "bump.md"
    assert bump.main(["--source", str(new_tree), "--commit", "a" * 40, "-o", str(out)]) == 0
    after = {p.name: p.read_bytes() for p in GENERATED.iterdir() if p.is_file()}
    assert after == before, "report-only mode must not touch llamarcp/_generated/"
    return out.read_text()


def test_report_header_and_step_table(report: str) -> None:
    assert report.startswith(
        f"# llama.cpp bump report: {bump.pinned_manifest()['llama_cpp_commit'][:12]} -> aaaaaaaaaaaa"
    )
    rows = [
        "| API diff: bindings -> new headers | findings |",
        "| guard verdict for the old bindings | findings |",
        "| regenerate | ok |",
        "| symbols: new API vs new library | skipped |",
        "| tests | skipped |",
    ]
    for row in rows:
        assert row in report, row
    assert "- wall time: " in report


def test_report_names_the_struct_change_and_the_guard_refusal(report: str) -> None:
    cparams = next(s for s in bump.pinned_manifest()["structs"] if s["name"] == "llama_context_params")
    offset = next(f["offset"] for f in cparams["fields"] if f["name"] == "abort_callback")
    assert f"- field added: `size_t llamarcp_test_grown` at offset {offset}" in report
    assert "The runtime guard refuses the new library with the old bindings (`LibraryMismatchError`)" in report
    assert "- `struct llama_context_params`" in report
    assert "Files that differ from the checked-in bindings: __init__.py, _abi.py," in report


def test_report_lists_affected_own_code_and_tied_facts(report: str) -> None:
    own = report.split("Changed items llamarcp's own code uses")[1]
    assert "- `struct llama_context_params`: `llama_context_default_params` at llamarcp/" in own
    assert (
        "- RPC connection capability bytes: llamarcp `llamarcp.rpc._CONN_CAPS_SIZE` = 24, "
        "ggml/src/ggml-rpc/transport.h = 32: **differs**"
    ) in own
    assert "- RPC HELLO command number: llamarcp `llamarcp.rpc._CMD_HELLO` = 14, " in own and ": same" in own


def test_report_renders_new_templates(report: str, llama_cpp_source: Path) -> None:
    count = len(list((llama_cpp_source / "models/templates").glob("*.jinja")))
    assert f"{count} -> {count + 2} templates: 2 added, 0 removed, 0 changed" in report
    assert "- added: `new-model.jinja`: renders the standard conversation" in report
    assert "- added: `raising-model.jinja`: **does not render**: ChatTemplateError:" in report
    assert "system role is not supported" in report


def test_tests_step_needs_written_bindings_and_a_library(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bump.main(["--source", str(tmp_path), "--tests"]) == 2
    assert "--tests needs --apply and --build" in capsys.readouterr().err
    assert bump.main(["--source", str(tmp_path)]) == 2
    assert "is not a llama.cpp tree" in capsys.readouterr().err


def test_hand_copies_finds_assignments_of_llama_cpp_constant_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "mod.py"
    module.write_text("_LLAMA_X = 3\nLLAMA_Y = True\nOTHER = 4\nLLAMA_Z = lib.LLAMA_Z\n")
    monkeypatch.setattr(bump, "_package_sources", lambda: [module])
    monkeypatch.setattr(bump, "ROOT", tmp_path)
    assert bump.hand_copies({"LLAMA_X", "LLAMA_Y", "LLAMA_Z"}) == ["mod.py:1: _LLAMA_X = 3"]


def test_pin_needs_a_carrier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bump.main(["--source", str(tmp_path), "--pin"]) == 2
    assert "--pin needs --carrier" in capsys.readouterr().err


def test_move_pin_rewrites_only_the_carrier_and_tree_hash_lines(tmp_path: Path) -> None:
    import build_lib
    from llamarcp import _pin

    tree = tmp_path / "tree"
    (tree / "include").mkdir(parents=True)
    (tree / "include" / "llama.h").write_text("/* another llama.cpp */\n")
    pin_file = tmp_path / "_pin.py"
    original = bump.PIN_FILE.read_text()
    pin_file.write_text(original)
    other = next(v for v in _pin.KNOWN_CARRIERS if v != _pin.PINNED_CARRIER)
    assert bump.move_pin(other, tree, pin_file) == (_pin.PINNED_CARRIER, other)
    moved = pin_file.read_text()
    changed = [(a, b) for a, b in zip(original.splitlines(), moved.splitlines()) if a != b]
    assert changed == [
        (f'PINNED_CARRIER = "{_pin.PINNED_CARRIER}"', f'PINNED_CARRIER = "{other}"'),
        (f'TREE_SHA256 = "{_pin.TREE_SHA256}"', f'TREE_SHA256 = "{build_lib.tree_sha256(tree)}"'),
    ]
    namespace: dict[str, object] = {"__name__": "moved_pin"}
    exec(compile(moved, str(pin_file), "exec"), namespace)  # the moved file still defines a consistent pin
    assert namespace["LLAMA_CPP_COMMIT"] == _pin.KNOWN_CARRIERS[other].commit
    assert str(namespace["ARCHIVE_URL"]).endswith(f"/{_pin.KNOWN_CARRIERS[other].commit}.tar.gz")
    assert bump.PIN_FILE.read_text() == original  # the checkout's pin is untouched


def test_move_pin_adds_a_new_carrier_to_the_window(tmp_path: Path) -> None:
    from llamarcp import _pin

    tree = tmp_path / "tree"
    (tree / "include").mkdir(parents=True)
    (tree / "include" / "llama.h").write_text("/* a later llama.cpp */\n")
    pin_file = tmp_path / "_pin.py"
    pin_file.write_text(bump.PIN_FILE.read_text())
    newcomer = next(v for v in _pin.KNOWN_CARRIERS if v not in _pin.WINDOW)
    bump.move_pin(newcomer, tree, pin_file)
    namespace: dict[str, object] = {"__name__": "moved_pin"}
    exec(compile(pin_file.read_text(), str(pin_file), "exec"), namespace)
    assert namespace["WINDOW"] == (*_pin.WINDOW, newcomer)  # the new pin is the window's newest release


def test_move_pin_refuses_unknown_carriers_and_files_without_the_lines(tmp_path: Path) -> None:
    pin_file = tmp_path / "_pin.py"
    pin_file.write_text("PINNED = 'somewhere'\n")
    with pytest.raises(ValueError, match="unknown carrier 'nope'"):
        bump.move_pin("nope", tmp_path, pin_file)
    from llamarcp import _pin

    with pytest.raises(ValueError, match="no single PINNED_CARRIER"):
        bump.move_pin(_pin.PINNED_CARRIER, tmp_path, pin_file)
    assert pin_file.read_text() == "PINNED = 'somewhere'\n"
