"""drift diff: classification on hand-made manifests, report formats, CLI, and the real 0.3.16 -> pin diff.

Manifests go through the package's CLI (`llamarcp.drift`); headers, trees and carriers through the checkout's
`codegen.drift`, which parses them.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from llamarcp.drift.__main__ import main
from llamarcp.drift.diff import ABI_BREAK, API_BREAK, COMPATIBLE, diff_manifests
from llamarcp.errors import DriftError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from codegen import drift as checkout_drift  # noqa: E402


def p(name: str, type_: str) -> dict[str, str]:
    return {"name": name, "type": type_}


def func(name: str, ret: str, *params: dict[str, str], deprecated: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "return_type": ret,
        "params": list(params),
        "variadic": False,
        "deprecated": deprecated,
        "doc": None,
        "header": "llama.h",
    }


def field(name: str, type_: str, offset: int) -> dict[str, Any]:
    return {"name": name, "type": type_, "offset": offset, "bitwidth": None}


def struct(name: str, size: int, *fields: dict[str, Any], opaque: bool = False) -> dict[str, Any]:
    return {"name": name, "kind": "struct", "opaque": opaque, "size": size, "align": 4, "fields": list(fields)}


OLD: dict[str, Any] = {
    "llama_cpp_commit": "old000",
    "headers": ["llama.h"],
    "functions": [
        func("llama_kv_self_clear", "void", p("ctx", "struct llama_context *"), deprecated="Use llama_memory_clear()"),
        func("llama_gone_quietly", "int"),
        func("llama_same", "int32_t", p("n", "int32_t")),
        func("llama_sampler_init_dry", "struct llama_sampler *", p("vocab", "const struct llama_vocab *"),
             p("n_ctx_train", "int32_t"), p("mult", "float")),
        func("llama_sampler_init_pen", "struct llama_sampler *", p("last_n", "int32_t")),
        func("llama_iface", "void", p("iface", "const struct llama_sampler_i *")),
        func("llama_renamed_param", "void", p("a", "int")),
        func("llama_pos_user", "llama_pos", p("x", "llama_pos")),
        func("llama_widen", "void", p("n", "int32_t")),
        func("llama_ret", "int"),
        func("llama_swap", "void", p("a", "int"), p("b", "float")),
        func("llama_soon_deprecated", "void"),
    ],
    "structs": [
        struct("llama_params", 12, field("a", "int32_t", 0), field("flag", "bool", 4), field("b", "float", 8)),
        struct("llama_reordered", 8, field("x", "int32_t", 0), field("y", "int32_t", 4)),
        struct("llama_opaque", 0, opaque=True),
        struct("llama_dropped", 4, field("v", "int", 0)),
    ],
    "enums": [
        {"name": "llama_mode", "constants": [{"name": "M_A", "value": 0}, {"name": "M_B", "value": 1},
                                             {"name": "M_OLD", "value": 2}]},
    ],
    "callbacks": [{"name": "llama_cb", "return_type": "bool", "params": [p("p", "float")]}],
    "typedefs": [{"name": "llama_pos", "type": "int32_t"}, {"name": "llama_id", "type": "int32_t"}],
    "defines": [{"name": "LLAMA_VERSION", "value": 9, "expr": "9"}, {"name": "LLAMA_GONE", "value": 1, "expr": "1"}],
}  # fmt: skip

NEW: dict[str, Any] = {
    "llama_cpp_commit": "new111",
    "headers": ["llama.h"],
    "functions": [
        func("llama_memory_clear", "void", p("mem", "llama_memory_t"), p("data", "bool")),
        func("llama_same", "int32_t", p("n", "int32_t")),
        func("llama_sampler_init_dry", "struct llama_sampler *", p("vocab", "const struct llama_vocab *"),
             p("mult", "float")),
        func("llama_sampler_init_pen", "struct llama_sampler *", p("n_vocab", "int32_t"), p("last_n", "int32_t")),
        func("llama_iface", "void", p("iface", "struct llama_sampler_i *")),
        func("llama_renamed_param", "void", p("b", "int")),
        func("llama_pos_user", "int32_t", p("x", "int32_t")),
        func("llama_widen", "void", p("n", "int64_t")),
        func("llama_ret", "const char *"),
        func("llama_swap", "void", p("b", "float"), p("a", "int")),
        func("llama_soon_deprecated", "void", deprecated="use llama_same instead"),
    ],
    "structs": [
        struct("llama_params", 16, field("a", "int32_t", 0), field("c", "uint32_t", 4), field("flag", "bool", 8),
               field("b", "const char *", 12)),
        struct("llama_reordered", 8, field("y", "int32_t", 0), field("x", "int32_t", 4)),
        struct("llama_opaque", 0, opaque=True),
        struct("llama_new_struct", 4, field("z", "int", 0)),
    ],
    "enums": [
        {"name": "llama_mode", "constants": [{"name": "M_A", "value": 0}, {"name": "M_NEW", "value": 1},
                                             {"name": "M_B", "value": 2}]},
    ],
    "callbacks": [{"name": "llama_cb", "return_type": "bool", "params": [p("p", "float"), p("ud", "void *")]}],
    "typedefs": [{"name": "llama_pos", "type": "int32_t"}, {"name": "llama_id", "type": "int64_t"}],
    "defines": [{"name": "LLAMA_VERSION", "value": 10, "expr": "10"}, {"name": "LLAMA_NEW", "value": 2, "expr": "2"}],
}  # fmt: skip


@pytest.fixture(scope="module")
def report() -> Any:
    return diff_manifests(OLD, NEW, "old.json", "new.json")


def by_name(report: Any, section: str) -> dict[str, Any]:
    return {c.name: c for c in report.sections[section]}


def test_removed_and_added_functions(report: Any) -> None:
    removed = by_name(report, "removed")
    assert set(removed) == {"llama_kv_self_clear", "llama_gone_quietly"}
    assert all(c.classification == API_BREAK for c in removed.values())
    # The reviewed table wins over the old header's hint; an unknown name keeps no hint.
    assert removed["llama_kv_self_clear"].hint == "use llama_memory_clear"
    assert removed["llama_kv_self_clear"].old == "void llama_kv_self_clear(struct llama_context *ctx)"
    assert removed["llama_gone_quietly"].hint is None
    added = by_name(report, "added")
    assert set(added) == {"llama_memory_clear"} and added["llama_memory_clear"].classification == COMPATIBLE


def test_parameter_removed_and_added_are_api_breaks(report: Any) -> None:
    changed = by_name(report, "changed")
    dry = changed["llama_sampler_init_dry"]
    assert dry.classification == API_BREAK
    assert dry.details == ["parameter removed: `int32_t n_ctx_train` (was position 2)"]
    assert "n_ctx_train" in dry.old and "n_ctx_train" not in dry.new
    pen = changed["llama_sampler_init_pen"]
    assert pen.classification == API_BREAK
    assert pen.details == ["parameter added: `int32_t n_vocab` at position 1"]


def test_compatible_changes(report: Any) -> None:
    changed = by_name(report, "changed")
    assert changed["llama_iface"].classification == COMPATIBLE
    assert "qualifier change only" in changed["llama_iface"].details[0]
    assert changed["llama_renamed_param"].classification == COMPATIBLE
    assert changed["llama_renamed_param"].details == ["parameter 1 renamed `a` -> `b`"]
    # llama_pos -> int32_t is the same type through the typedef.
    assert changed["llama_pos_user"].classification == COMPATIBLE
    assert "llama_same" not in changed


def test_type_changes(report: Any) -> None:
    changed = by_name(report, "changed")
    assert changed["llama_widen"].classification == ABI_BREAK
    assert changed["llama_ret"].classification == API_BREAK
    assert changed["llama_ret"].details[0].startswith("return type: `int` -> `const char *`")
    assert changed["llama_swap"].classification == API_BREAK
    assert any("moved from position" in d for d in changed["llama_swap"].details)


def test_newly_deprecated(report: Any) -> None:
    dep = by_name(report, "deprecated")
    assert set(dep) == {"llama_soon_deprecated"}
    assert dep["llama_soon_deprecated"].hint == "use llama_same instead"
    assert dep["llama_soon_deprecated"].classification == COMPATIBLE


def test_struct_changes(report: Any) -> None:
    structs = by_name(report, "structs")
    params = structs["llama_params"]
    assert params.classification == API_BREAK  # b: float -> const char * is a retype
    text = "\n".join(params.details)
    assert "field added: `uint32_t c` at offset 4" in text
    assert "offset changed for 2 field(s): flag 4->8, b 8->12" in text
    assert "field `b`: `float` -> `const char *` (type changed)" in text
    assert "size 12 -> 16 bytes" in text
    assert params.extra["old_size"] == 12 and params.extra["new_size"] == 16
    reordered = structs["llama_reordered"]
    assert reordered.classification == ABI_BREAK
    assert any(d.startswith("fields reordered: x, y -> y, x") for d in reordered.details)
    assert structs["llama_dropped"].status == "removed" and structs["llama_dropped"].classification == API_BREAK
    assert structs["llama_new_struct"].status == "added"
    assert "llama_opaque" not in structs


def test_enum_define_typedef_callback_changes(report: Any) -> None:
    mode = by_name(report, "enums")["llama_mode"]
    assert mode.classification == API_BREAK  # M_OLD removed
    assert "constant removed: `M_OLD = 2`" in mode.details
    assert "value changed for 1 constant(s): M_B 1->2" in mode.details
    assert "constant added: `M_NEW = 1`" in mode.details
    defines = by_name(report, "defines")
    assert defines["LLAMA_VERSION"].classification == ABI_BREAK
    assert defines["LLAMA_GONE"].classification == API_BREAK
    assert defines["LLAMA_NEW"].classification == COMPATIBLE
    assert by_name(report, "typedefs")["llama_id"].classification == ABI_BREAK
    assert "llama_pos" not in by_name(report, "typedefs")
    cb = by_name(report, "callbacks")["llama_cb"]
    assert cb.classification == API_BREAK and cb.details == ["parameter added: `void *ud` at position 2"]


def test_json_shape(report: Any) -> None:
    data = json.loads(report.to_json())
    for key in ("removed", "added", "changed", "deprecated", "structs", "enums"):
        assert isinstance(data[key], list) and data[key], key
        assert all(isinstance(item["name"], str) for item in data[key])
    assert data["summary"]["breaking"] is True
    assert data["old"] == {"source": "old.json", "llama_cpp_commit": "old000"}
    dry = next(c for c in data["changed"] if c["name"] == "llama_sampler_init_dry")
    assert dry["old"].startswith("struct llama_sampler *llama_sampler_init_dry(")
    assert dry["classification"] == "api_break"


def test_markdown_is_grouped_with_summary_and_side_by_side(report: Any) -> None:
    md = report.to_markdown()
    assert md.startswith("# llama.cpp API diff\n")
    assert "**Summary:** 2 removed, 1 added, " in md
    order = [md.index(h) for h in ("## Removed functions", "## Changed function signatures", "## Structs", "## Added")]
    assert order == sorted(order)
    assert "- `llama_kv_self_clear` (removed, API break) -> use llama_memory_clear" in md
    block = md[md.index("### `llama_sampler_init_dry`") :]
    assert block.index("old: struct llama_sampler *llama_sampler_init_dry(") < block.index("new: struct")


def test_identical_manifests_are_clean() -> None:
    report = diff_manifests(OLD, copy.deepcopy(OLD))
    assert not report.breaking and not report.all_changes()
    assert report.summary().startswith("0 removed, 0 added, 0 changed")


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(OLD))
    new.write_text(json.dumps(NEW))
    assert main(["diff", str(old), str(new)]) == 1
    assert "## Removed functions (2)" in capsys.readouterr().out
    assert main(["diff", str(old), str(old)]) == 0
    assert main(["diff", str(old), str(new), "--fail-on", "never"]) == 0
    out = tmp_path / "report.json"
    assert main(["diff", str(old), str(new), "--json", "-o", str(out)]) == 1
    assert json.loads(out.read_text())["summary"]["removed"] == 2
    capsys.readouterr()
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["diff", str(tmp_path / "bad.json"), str(new)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert main(["diff", str(tmp_path / "missing.json"), str(new)]) == 2
    assert main(["diff", "carrier:9.9.9", str(new)]) == 2
    assert "needs a llamarcp checkout" in capsys.readouterr().err
    assert checkout_drift.main(["diff", "carrier:9.9.9", str(new)]) == 2
    assert "unknown carrier" in capsys.readouterr().err


def test_manifest_diff_of_the_pinned_api() -> None:
    from llamarcp.drift.inputs import pinned_manifest

    pinned = pinned_manifest()
    older = copy.deepcopy(pinned)
    older["functions"] = older["functions"][1:]
    report = diff_manifests(older, pinned)
    assert [c.name for c in report.sections["added"]] == [pinned["functions"][0]["name"]]


def test_header_parse_error_is_clear(tmp_path: Path) -> None:
    header = tmp_path / "broken.h"
    header.write_text("int llama_broken(int x;\n")
    with pytest.raises(DriftError, match=r"broken\.h"):
        checkout_drift.load_api(str(header))


# ---------------------------------------------------------------------------------- real llama.cpp data


@pytest.fixture(scope="module")
def real_report() -> Any:
    load_api = checkout_drift.load_api
    return diff_manifests(load_api("carrier:0.3.16"), load_api("pinned"), "carrier:0.3.16", "pinned")


def test_real_diff_reports_kv_self_family_removed(real_report: Any) -> None:
    removed = by_name(real_report, "removed")
    kv_self = {
        "llama_get_kv_self", "llama_kv_self_clear", "llama_kv_self_seq_rm", "llama_kv_self_seq_cp",
        "llama_kv_self_seq_keep", "llama_kv_self_seq_add", "llama_kv_self_seq_div", "llama_kv_self_seq_pos_min",
        "llama_kv_self_seq_pos_max", "llama_kv_self_can_shift", "llama_kv_self_n_tokens",
        "llama_kv_self_used_cells", "llama_kv_self_defrag", "llama_kv_self_update",
    }  # fmt: skip
    assert kv_self <= set(removed)
    assert removed["llama_kv_self_clear"].hint == "use llama_memory_clear"
    assert removed["llama_get_kv_self"].hint == "use llama_get_memory"
    assert all(removed[n].classification == API_BREAK for n in kv_self)
    assert real_report.old_commit == "4227c9be4268ac844921b90f31595f81236bd317"


def test_real_diff_catches_sampler_init_signature_changes(real_report: Any) -> None:
    changed = by_name(real_report, "changed")
    assert changed["llama_sampler_init_dry"].details == ["parameter removed: `int32_t n_ctx_train` (was position 2)"]
    assert changed["llama_sampler_init_penalties"].details == ["parameter added: `int32_t n_vocab` at position 1"]
    assert changed["llama_sampler_init"].classification == COMPATIBLE  # const dropped from iface only
    assert "llama_sampler_init_softmax" in by_name(real_report, "removed")
    assert "llama_sampler_init_adaptive_p" in by_name(real_report, "added")


def test_real_diff_catches_param_struct_layout_changes(real_report: Any) -> None:
    structs = by_name(real_report, "structs")
    cparams = structs["llama_context_params"]
    assert cparams.classification == API_BREAK
    assert "field removed: `bool flash_attn`" in cparams.details
    assert cparams.extra["old_size"] != cparams.extra["new_size"]


def test_header_diff_cli(tmp_path: Path) -> None:
    """A header of an older llama.cpp tree parsed and diffed against the pin (sources come from build_lib)."""
    old_dir, _ = checkout_drift.carrier_source("0.3.16")
    out = str(tmp_path / "d.json")
    code = checkout_drift.main(["diff", str(old_dir / "include" / "llama.h"), "pinned", "--json", "-o", out])
    assert code == 1
    data = json.loads((tmp_path / "d.json").read_text())
    assert "llama_kv_self_clear" in {c["name"] for c in data["removed"]}


def test_two_standalone_headers(tmp_path: Path) -> None:
    """Headers outside a llama.cpp tree are parsed on their own (libclang via codegen/parse.py)."""
    old = tmp_path / "old" / "api.h"
    new = tmp_path / "new" / "api.h"
    old.parent.mkdir()
    new.parent.mkdir()
    old.write_text(
        "#include <stdint.h>\n#include <stdbool.h>\n"
        "struct llama_p { int32_t a; bool b; };\n"
        "enum llama_e { LLAMA_E_A = 0, LLAMA_E_B = 1 };\n"
        "int32_t llama_f(int32_t x);\nvoid llama_gone(void);\n"
    )
    new.write_text(
        "#include <stdint.h>\n#include <stdbool.h>\n"
        "struct llama_p { int32_t a; int64_t c; bool b; };\n"
        "enum llama_e { LLAMA_E_A = 0, LLAMA_E_NEW = 1, LLAMA_E_B = 2 };\n"
        "int32_t llama_f(int32_t x, float y);\n"
    )
    out = tmp_path / "d.json"
    assert checkout_drift.main(["diff", str(old), str(new), "--json", "-o", str(out)]) == 1
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["removed"]] == ["llama_gone"]
    assert data["changed"][0]["details"] == ["parameter added: `float y` at position 2"]
    p_change = next(c for c in data["structs"] if c["name"] == "llama_p")
    assert p_change["old_size"] == 8 and p_change["new_size"] == 24
    assert "field added: `int64_t c` at offset 8" in p_change["details"]
    e_change = next(c for c in data["enums"] if c["name"] == "llama_e")
    assert "value changed for 1 constant(s): LLAMA_E_B 1->2" in e_change["details"]


@pytest.fixture(scope="module")
def b11549_report() -> Any:
    """The 0c1e57098bba -> b11549 bump (llama-cpp-python 0.3.36's llama.cpp -> xllamacpp 2026.10.11549's): the
    pin's move, kept as history whatever the pin is now."""
    load_api = checkout_drift.load_api
    return diff_manifests(
        load_api("carrier:0.3.36"), load_api("carrier:2026.10.11549"), "carrier:0.3.36", "carrier:2026.10.11549"
    )


def test_b11549_diff_names_the_grown_context_params(b11549_report: Any) -> None:
    assert b11549_report.old_commit == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    assert b11549_report.new_commit == "b11549"
    cparams = by_name(b11549_report, "structs")["llama_context_params"]
    assert cparams.classification == ABI_BREAK
    assert "field added: `size_t moe_cache_size` at offset 112" in cparams.details
    assert (cparams.extra["old_size"], cparams.extra["new_size"]) == (160, 168)


def test_b11549_diff_lists_the_version_defines_and_the_new_vocab_type(b11549_report: Any) -> None:
    defines = by_name(b11549_report, "defines")
    for name, old, new in (("LLAMA_SESSION_VERSION", 10, 11), ("LLAMA_STATE_SEQ_VERSION", 3, 4),
                           ("RPC_PROTO_MAJOR_VERSION", 7, 8)):  # fmt: skip
        assert defines[name].details == [f"value {old} -> {new} (compiled into callers)"], name
    vocab_types = by_name(b11549_report, "enums")["llama_vocab_type"]
    assert "constant added: `LLAMA_VOCAB_TYPE_PLAMO3 = 8`" in vocab_types.details
    assert not b11549_report.sections["removed"] and not b11549_report.sections["changed"]
