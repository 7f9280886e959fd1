"""ABI digests of a manifest: what changes a digest and what does not, the probe table, the generated `_abi.py`."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from llamarcp.drift import abi
from llamarcp.drift.inputs import pinned_manifest


def manifest() -> dict[str, Any]:
    return {
        "llama_cpp_commit": "test",
        "functions": [
            {"name": "llama_f", "return_type": "int32_t", "params": [{"name": "x", "type": "const llama_pos"}]},
            {"name": "llama_p_default", "return_type": "struct llama_p", "params": []},
            {"name": "llama_small_default", "return_type": "struct llama_small", "params": []},
        ],
        "structs": [
            {
                "name": "llama_p",
                "kind": "struct",
                "opaque": False,
                "size": 24,
                "align": 8,
                "fields": [
                    {"name": "n", "type": "int32_t", "offset": 0, "bitwidth": None},
                    {"name": "mode", "type": "enum llama_mode", "offset": 4, "bitwidth": None},
                    {"name": "ptr", "type": "void *", "offset": 8, "bitwidth": None},
                    {"name": "flag", "type": "bool", "offset": 16, "bitwidth": None},
                ],
            },
            {
                "name": "llama_small",
                "kind": "struct",
                "opaque": False,
                "size": 1,
                "align": 1,
                "fields": [{"name": "b", "type": "bool", "offset": 0, "bitwidth": None}],
            },
        ],
        "enums": [
            {
                "name": "llama_mode",
                "constants": [{"name": "LLAMA_MODE_A", "value": -1}, {"name": "LLAMA_MODE_B", "value": 2}],
            }
        ],
        "typedefs": [{"name": "llama_pos", "type": "int32_t"}],
        "defines": [{"name": "LLAMA_V", "value": 3}],
        "callbacks": [],
    }


def test_spelling_that_keeps_the_abi_keeps_the_digest() -> None:
    base = abi.items(manifest())
    other = manifest()
    other["functions"][0]["params"][0] = {"name": "renamed", "type": "int32_t"}  # typedef resolved, const dropped
    other["functions"][0]["return_type"] = "const int32_t"
    assert abi.items(other) == base
    reordered = manifest()
    reordered["functions"].reverse()
    assert abi.fingerprint(abi.items(reordered)) == abi.fingerprint(base)


@pytest.mark.parametrize(
    ("edit", "item"),
    [
        (lambda m: m["structs"][0]["fields"][3].update(offset=17), "struct llama_p"),
        (lambda m: m["structs"][0].update(size=32), "struct llama_p"),
        (lambda m: m["structs"][0]["fields"][0].update(type="int64_t"), "struct llama_p"),
        (lambda m: m["enums"][0]["constants"][1].update(value=3), "enum constant LLAMA_MODE_B"),
        (lambda m: m["defines"][0].update(value=4), "define LLAMA_V"),
        (lambda m: m["functions"][0]["params"].append({"name": "y", "type": "float"}), "function llama_f"),
        (lambda m: m["typedefs"][0].update(type="int64_t"), "typedef llama_pos"),
    ],
)
def test_each_abi_change_changes_exactly_its_item(edit: Any, item: str) -> None:
    base = abi.items(manifest())
    changed = manifest()
    edit(changed)
    diff = abi.differences(base, abi.items(changed))
    # a typedef change also changes the signatures spelled with it
    assert item in diff.changed and not diff.added and not diff.removed
    assert not diff.compatible and diff.summary().startswith(f"{len(diff.changed)} item(s) changed:")
    if item != "typedef llama_pos":
        assert diff.changed == [item]


def test_additions_and_removals_are_compatible() -> None:
    base = abi.items(manifest())
    grown = manifest()
    grown["functions"].append({"name": "llama_new", "return_type": "void", "params": []})
    grown["enums"][0]["constants"].append({"name": "LLAMA_MODE_C", "value": 5})
    diff = abi.differences(base, abi.items(grown))
    assert diff.added == ["enum constant LLAMA_MODE_C", "function llama_new"] and diff.compatible
    assert abi.differences(abi.items(grown), base).removed == diff.added


def test_probe_table_takes_argless_functions_returning_big_structs() -> None:
    (entry,) = abi.probes(manifest())  # llama_small (1 byte) comes back in a register: not probed
    assert entry == {
        "function": "llama_p_default",
        "struct": "llama_p",
        "size": 24,
        "align": 8,
        "last_field_offset": 16,
        "bool_fields": [("flag", 16)],
        "enum_fields": [("mode", 4, [-1, 2])],
    }


def test_probe_does_not_run_on_other_abis() -> None:
    result = abi.probe(object(), None, abi.probes(manifest()), "aarch64")
    assert result.skipped == "the struct-size probe needs an x86-64 ABI (this machine: aarch64)"
    assert not result.verified and not result.problems


def test_generated_abi_module_is_the_pinned_manifest_s() -> None:
    from llamarcp._generated import _abi

    pinned = pinned_manifest()
    assert abi.items(pinned) == _abi.ABI_ITEMS
    assert _abi.ABI_FINGERPRINT == abi.fingerprint(_abi.ABI_ITEMS) == abi.document(pinned)["fingerprint"]
    generated = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()} for p in _abi.PROBES]
    expected = copy.deepcopy(abi.probes(pinned))
    for p in generated:
        p["bool_fields"] = [tuple(b) for b in p["bool_fields"]]
        p["enum_fields"] = [(n, o, list(v)) for n, o, v in p["enum_fields"]]
    assert generated == expected
    assert {p["struct"] for p in _abi.PROBES} >= {"llama_context_params", "llama_model_params"}
