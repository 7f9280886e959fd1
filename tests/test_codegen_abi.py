"""codegen/abi.py: the ABI record build_lib.py leaves beside every library it builds."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codegen.abi import stamp_library  # noqa: E402
from llamarcp.drift import abi  # noqa: E402


def test_stamp_of_the_bindings_tree_has_the_bindings_fingerprint(llama_cpp_source: Path, tmp_path: Path) -> None:
    from llamarcp._generated import _abi

    fields = stamp_library(llama_cpp_source, _abi.LLAMA_CPP_COMMIT, tmp_path)
    assert fields == {"abi_fingerprint": _abi.ABI_FINGERPRINT}
    document = json.loads((tmp_path / abi.ITEMS_FILE).read_text())
    assert document["items"] == _abi.ABI_ITEMS and document["commit"] == _abi.LLAMA_CPP_COMMIT
    assert not list(tmp_path.glob("*.tmp"))


def test_unparsable_tree_gives_no_fingerprint_and_the_reason(llama_cpp_source: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(llama_cpp_source / "include", tree / "include")
    shutil.copytree(llama_cpp_source / "ggml" / "include", tree / "ggml" / "include")
    (tree / "include" / "llama.h").write_text("int llama_broken(int x;\n")
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    fields = stamp_library(tree, "unknown", lib_dir)
    assert fields["abi_fingerprint"] is None
    assert str(fields["abi_error"]).startswith("ParseError: libclang reported")
    assert not (lib_dir / abi.ITEMS_FILE).exists()
