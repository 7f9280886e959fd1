"""Property tests: generated enum/define values equal C's arithmetic, and the stub type mapping matches
what cffi really returns and accepts."""

from __future__ import annotations

from pathlib import Path

import cffi
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from codegen import parse, render
from codegen.model import Api, Typedef

INT32 = (-(2**31), 2**31 - 1)

# ------------------------------------------------------------------------------------ integer expressions


@st.composite
def expressions(draw: st.DrawFn, names: dict[str, int], depth: int = 3) -> tuple[str, int]:
    """(C expression text, value under C int arithmetic), staying inside int32 so C and Python agree."""
    if depth == 0 or draw(st.booleans()):
        choice = draw(st.sampled_from(["dec", "hex", "name"] if names else ["dec", "hex"]))
        if choice == "name":
            name = draw(st.sampled_from(sorted(names)))
            return name, names[name]
        value = draw(st.integers(0, 5000))
        return (hex(value) if choice == "hex" else str(value)), value
    op = draw(st.sampled_from(["+", "-", "*", "|", "&", "^", "<<", "neg", "~"]))
    left, lv = draw(expressions(names, depth - 1))
    if op == "neg":
        text, value = f"(-{left})", -lv
    elif op == "~":
        text, value = f"(~{left})", ~lv
    elif op == "<<":
        assume(lv >= 0)
        shift = draw(st.integers(0, 12))
        text, value = f"({left} << {shift})", lv << shift
    else:
        right, rv = draw(expressions(names, depth - 1))
        value = {
            "+": lv + rv, "-": lv - rv, "*": lv * rv, "|": lv | rv, "&": lv & rv, "^": lv ^ rv,
        }[op]  # fmt: skip
        text = f"({left} {op} {right})"
    assume(INT32[0] <= value <= INT32[1])
    return text, value


@st.composite
def constant_headers(draw: st.DrawFn) -> tuple[str, dict[str, int]]:
    """A header with chained #defines and an enum whose constants use them and each other."""
    known: dict[str, int] = {}
    lines = ["#pragma once"]
    for i in range(draw(st.integers(1, 5))):
        text, value = draw(expressions(dict(known)))
        lines.append(f"#define HX_D{i} {text}")
        known[f"HX_D{i}"] = value
    enum_lines = []
    for i in range(draw(st.integers(1, 6))):
        text, value = draw(expressions(dict(known)))
        enum_lines.append(f"    HX_E{i} = {text},")
        known[f"HX_E{i}"] = value
    lines += ["enum hx_values {", *enum_lines, "};", "int hx_use(enum hx_values v);"]
    return "\n".join(lines) + "\n", known


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(constant_headers())
def test_enum_and_define_values_follow_c_arithmetic(tmp_path: Path, case: tuple[str, dict[str, int]]) -> None:
    text, expected = case
    header = tmp_path / "hx.h"
    header.write_text(text)
    api = parse.parse_header(header, commit="hypothesis")
    got = {d.name: d.value for d in api.defines}
    got.update({c.name: c.value for e in api.enums for c in e.constants})
    assert got == expected
    ffi = cffi.FFI()
    ffi.cdef(render.render_cdef(api))
    lib = ffi.dlopen(None)
    assert {name: getattr(lib, name) for name in expected} == expected


# ------------------------------------------------------------------------------------ stub type mapping

SCALARS = [
    "int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t", "int",
    "unsigned int", "long", "size_t", "float", "double", "bool", "char",
]  # fmt: skip
FFI = cffi.FFI()
PY_TYPES = {"int": int, "float": float, "bool": bool, "bytes": bytes, "CData": FFI.CData}


@st.composite
def c_types(draw: st.DrawFn) -> tuple[str, str, Api]:
    """(C type as a header spells it, its typedef alias, an Api declaring the alias chain)."""
    base = draw(st.sampled_from(SCALARS))
    spelled = ("const " if draw(st.booleans()) else "") + base + " *" * draw(st.integers(0, 2))
    api = Api(llama_cpp_commit="hypothesis")
    alias = spelled
    for i in range(draw(st.integers(0, 2))):
        api.typedefs.append(Typedef(f"hx_alias{i}", alias))
        alias = f"hx_alias{i}"
    return spelled, alias, api


def _samples(py_type: str) -> list[object]:
    return {
        "int": [0, 1, 100],
        "float": [0.0, 1.5, -2.25],
        "bool": [True, False],
        "bytes": [b"x"],  # one byte: also a valid `char` value
        "CData": [FFI.NULL],
    }[py_type]


@settings(max_examples=60, deadline=None)
@given(c_types())
def test_stub_types_match_what_cffi_returns_and_accepts(case: tuple[str, str, Api]) -> None:
    spelled, alias, api = case
    types = render.StubTypes(api)
    c_type = spelled.replace("const ", "")

    # Reading a value of this type (a return value or a field) gives exactly the stubbed Python type.
    value_type = types.value(alias)
    read = FFI.new(f"{c_type} *")[0]
    assert isinstance(read, PY_TYPES[value_type]), (spelled, value_type, read)

    # Every Python type the stub allows for a parameter is accepted by cffi's argument conversion
    # (exercised through a C callback, which converts exactly like a library call).
    seen: list[object] = []
    callback = FFI.callback(f"void({c_type})", seen.append)
    options = [t.strip() for t in types.param(alias).split("|")]
    for option in options:
        for sample in _samples(option):
            callback(sample)
    assert len(seen) == sum(len(_samples(o)) for o in options)
    if c_type.endswith("*"):
        with pytest.raises(TypeError):
            callback(None)  # why the stubs say CData, not CData | None


def test_char_pointer_parameters_accept_bytes() -> None:
    api = Api(llama_cpp_commit="x")
    assert render.StubTypes(api).param("const char *") == "bytes | CData"
    assert render.StubTypes(api).param("char **") == "CData"


@pytest.mark.parametrize("name", ["class", "lambda", "None", "", "from"])
def test_python_keywords_become_valid_parameter_names(name: str) -> None:
    fixed = render.py_name(name, 3)
    assert fixed.isidentifier() and fixed not in {"class", "lambda", "None", "from"}
