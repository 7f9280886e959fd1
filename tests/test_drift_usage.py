"""drift scan's usage checks: call arity, struct fields, constants and C types of one tree, with capability checks,
pragmas, the CLI, codegen.bump, and llamarcp's own code against every cached release of the window (slow)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from llamarcp.drift.__main__ import main
from llamarcp.drift.scan import ApiIndex, scan_paths, scan_source

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "drift"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """The two small headers, parsed with libclang once: "old" (b8672-like) and "new" (b10566-like)."""
    from codegen import parse

    return {name: parse.parse_header(DATA / f"release_{name}.h", name).to_manifest() for name in ("old", "new")}


@pytest.fixture(scope="module")
def old(manifests: dict[str, dict[str, Any]]) -> ApiIndex:
    """Code written against "new" (the bindings), checked against the "old" tree."""
    return ApiIndex.from_manifest(manifests["old"], reference=manifests["new"])


@pytest.fixture(scope="module")
def new(manifests: dict[str, dict[str, Any]]) -> ApiIndex:
    return ApiIndex.from_manifest(manifests["new"], reference=manifests["new"])


def scan(api: ApiIndex, code: str) -> list[tuple[int, str, str]]:
    return [(u.line, u.status, u.name) for u in scan_source(textwrap.dedent(code), "f.py", api)]


#: llamarcp's own ways of reaching the API (`_core.Model`, `sampling.sampler_chain`, compat's `model_params`).
OWN_CODE = """\
from llamarcp._backend import get_lib

def load(path, use_mmap, use_mlock):
    lib = get_lib()
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0
    if use_mmap:
        params.load_mode = lib.LLAMA_LOAD_MODE_MMAP_MLOCK if use_mlock else lib.LLAMA_LOAD_MODE_MMAP
    return lib.llama_model_load_from_file(path, params)

def penalties(model, p):
    lib = get_lib()
    return lib.llama_sampler_init_penalties(model.n_vocab, p.last_n, p.repeat, p.freq, p.present)

def compat_params(mode):
    from llamarcp import _backend
    params = _backend.get_lib().llama_model_default_params()
    params.load_mode = getattr(_backend.get_lib(), "LLAMA_LOAD_MODE_" + mode)
    return params
"""


def test_own_code_patterns_are_flagged_on_the_old_release(old: ApiIndex) -> None:
    uses = scan_source(OWN_CODE, "own.py", old)
    assert [(u.line, u.col, u.status, u.name, u.severity) for u in uses] == [
        (8, 16, "field", "load_mode", "error"),
        (8, 32, "constant", "LLAMA_LOAD_MODE_MMAP_MLOCK", "error"),
        (8, 81, "constant", "LLAMA_LOAD_MODE_MMAP", "error"),
        (13, 16, "arity", "llama_sampler_init_penalties", "error"),
        (18, 12, "field", "load_mode", "error"),
        (18, 52, "constant", "LLAMA_LOAD_MODE_*", "error"),
    ]
    hints = {u.status + " " + u.name: u.hint for u in uses}
    assert hints["field load_mode"] == (
        "struct llama_model_params has no field load_mode in llama.cpp old; it has use_mmap, use_direct_io, "
        "use_mlock instead"
    )
    assert hints["arity llama_sampler_init_penalties"] == (
        "takes 4 argument(s) in llama.cpp old, called with 5 (as the bindings' new declare it)"
    )
    assert hints["constant LLAMA_LOAD_MODE_MMAP"] == "enum constant or #define not declared by llama.cpp old"
    assert hints["constant LLAMA_LOAD_MODE_*"] == "llama.cpp old declares no constant named LLAMA_LOAD_MODE_*"


def test_own_code_is_clean_on_the_release_it_was_written_for(new: ApiIndex) -> None:
    assert scan(new, OWN_CODE) == []


def test_arity_counts_only_countable_calls(old: ApiIndex) -> None:
    code = """\
    import llama_cpp
    from llama_cpp import llama_sampler_init_dry as dry
    from llamarcp import lib
    dry(vocab, 1.0, 2.0)
    lib.llama_sampler_init_dry(vocab, 512, 1.0, 2.0)
    lib.llama_sampler_init_penalties(*args)
    lib.llama_sampler_init_penalties(64, **kw)
    llama_cpp.llama_sampler_init_penalties(64, 1.1, 0.0, 0.0)
    init = lib.llama_sampler_init_penalties
    init(32000, 64, 1.1, 0.0, 0.0)
    lib.llama_format_log(buf, b"%d %s", 1, b"x")
    lib.llama_format_log(buf)
    lib.llama_batch_init(512, n_seq_max=1, embd=0)
    """
    assert scan(old, code) == [(4, "arity", "llama_sampler_init_dry"), (10, "arity", "llama_sampler_init_penalties"),
                               (12, "arity", "llama_format_log")]  # fmt: skip
    assert scan_source(textwrap.dedent(code), "f.py", old)[2].hint.startswith("takes at least 2 argument(s)")


def test_hand_written_ctypes_bindings_are_checked_against_the_tree(old: ApiIndex) -> None:
    code = """\
    import ctypes
    @ctypes_function(
        "llama_sampler_init_penalties",
        [ctypes.c_int32, ctypes.c_int32, ctypes.c_float, ctypes.c_float, ctypes.c_float],
        ctypes.c_void_p,
    )
    def llama_sampler_init_penalties(n_vocab, last_n, repeat, freq, present): ...
    ctypes_function("llama_batch_init", [ctypes.c_int32, ctypes.c_int32, ctypes.c_int32], llama_batch)
    ctypes_function("llama_format_log", [ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int32)
    ctypes_function("llama_format_log", [ctypes.c_char_p], ctypes.c_int32)
    clib = ctypes.CDLL("libllama.so")
    clib.llama_sampler_init_dry.argtypes = [ctypes.c_void_p, ctypes.c_float, ctypes.c_float]
    clib.llama_batch_free.argtypes = [llama_batch]
    log.debug("llama_format_log", [1])
    """
    assert scan(old, code) == [
        (3, "arity", "llama_sampler_init_penalties"), (10, "arity", "llama_format_log"),
        (12, "arity", "llama_sampler_init_dry"),
    ]  # fmt: skip
    hints = [u.hint for u in scan_source(textwrap.dedent(code), "f.py", old)]
    assert hints[0] == "bound with 5 argument type(s); takes 4 in llama.cpp old"


def test_struct_types_from_ffi_strings_fields_indexing_and_loops(old: ApiIndex) -> None:
    code = """\
    from llamarcp import ffi, lib
    p = ffi.new("struct llama_model_params *")
    p.use_mmap = True
    p.load_mode = 1
    b = ffi.cast("llama_batch *", ptr)
    b.n_tokens = 3
    b.n_outputs = 3
    cand = ffi.new("llama_token_data[]", 8)
    cand[0].logit = 1.0
    cand[0].prob = 1.0
    arr = ffi.new("llama_token_data_array *")
    arr.data[0].bias = 0
    arr.sorted = True
    for item in cand:
        item.id = 1
        item.score = 0
    for i, item in enumerate(cand):
        item.weight = i
    for item, token in zip(cand, tokens):
        item.token = token
    batch = lib.llama_batch_init(8, 0, 1)
    batch.logits[0] = 1
    batch.seq_id[0][0] = 0
    batch.n_seq = 1
    """
    assert scan(old, code) == [
        (4, "field", "load_mode"), (7, "field", "n_outputs"), (10, "field", "prob"), (12, "field", "bias"),
        (16, "field", "score"), (18, "field", "weight"), (20, "field", "token"), (24, "field", "n_seq"),
    ]  # fmt: skip


def test_struct_types_from_annotations_classes_and_project_functions(old: ApiIndex) -> None:
    code = """\
    from typing import Any
    import llama_cpp
    from llamarcp import ffi, lib
    from llamarcp._managed import Managed

    def configure(params: "llama_context_params", other: llama_cpp.llama_model_params, free: Any) -> None:
        params.n_ctx = 512
        params.flash_attn = True
        other.load_mode = 0
        free.load_mode = 0

    def make_context_params():
        params = lib.llama_context_default_params()
        return params

    class Batch(Managed):
        def __init__(self, n):
            super().__init__(lib.llama_batch_init(n, 0, 1))
            self._cur = ffi.new("llama_token_data_array *")

        def fill(self):
            self.ptr.n_tokens = 0
            self.ptr.n_toks = 0
            self._cur.length = 0
            return self.ptr

        @property
        def model_params(self):
            return llama_cpp.llama_model_params()

    cp = make_context_params()
    cp.n_threads = 4
    filled = Batch(4).fill()
    filled.embd_size = 1
    llm.model_params.use_mmap = False
    llm.model_params.load_mode = 1
    """
    assert scan(old, code) == [
        (8, "field", "flash_attn"), (9, "field", "load_mode"), (10, "field-gone", "load_mode"),
        (23, "field", "n_toks"), (24, "field", "length"), (32, "field", "n_threads"), (34, "field", "embd_size"),
        (36, "field", "load_mode"),
    ]  # fmt: skip


def test_scopes_parameters_and_reassignments_shadow_outer_types(old: ApiIndex) -> None:
    code = """\
    from llamarcp import lib
    params = lib.llama_model_default_params()
    def f(params):
        params.load_mode = 1
    g = lambda params: params.load_mode
    def h():
        params = make()
        params.load_mode = 2
    params.load_mode = 3
    params = None
    params.load_mode = 4
    """
    assert scan(old, code) == [
        (4, "field-gone", "load_mode"), (5, "field-gone", "load_mode"), (8, "field-gone", "load_mode"),
        (9, "field", "load_mode"), (11, "field-gone", "load_mode"),
    ]  # fmt: skip


def test_reflection_literal_field_lists_and_the_fields_pragma(old: ApiIndex) -> None:
    code = """\
    from llamarcp import ffi, lib
    params = lib.llama_context_default_params()
    setattr(params, "n_batch", 8)
    setattr(params, "n_seq_max", 8)
    getattr(params, "swa_full")
    for name in ("n_ctx", "offload_kqv"):
        setattr(params, name, 1)
    CONTEXT_FIELDS = (  # drift: fields llama_context_params
        "n_ctx",
        "type_k",
    )
    OTHER = ("not", "checked")
    MODEL_FIELDS = ("vocab_only",)  # drift: fields of struct llama_missing_params
    ffi.offsetof("struct llama_model_params", "load_mode")
    ffi.integer_const("LLAMA_DEFAULT_SEED")
    ffi.integer_const("LLAMA_TOKEN_NULL")
    ffi.new("struct llama_model_params *", {"use_mmap": True, "load_mode": 1, **more})
    getattr(lib, "llama_sampler_init_penalties")(32000, 64, 1.1, 0.0, 0.0)
    """
    assert scan(old, code) == [
        (4, "field", "n_seq_max"), (5, "field", "swa_full"), (6, "field", "offload_kqv"), (10, "field", "type_k"),
        (13, "type", "llama_missing_params"), (14, "field", "load_mode"), (16, "constant", "LLAMA_TOKEN_NULL"),
        (17, "field", "load_mode"), (18, "arity", "llama_sampler_init_penalties"),
    ]  # fmt: skip


def test_constants_and_c_types(old: ApiIndex) -> None:
    code = """\
    import llama_cpp
    from llamarcp import ffi, lib
    lib.LLAMA_SPLIT_MODE_LAYER
    lib.LLAMA_SPLIT_MODE_ROW
    lib.LLAMA_DEFAULT_SEED
    llama_cpp.LLAMA_LOAD_MODE_NONE
    llama_cpp.LLAMA_MAX_DEVICES
    getattr(lib, "LLAMA_LOAD_MODE_NONE")
    getattr(lib, f"LLAMA_SPLIT_MODE_{name}")
    getattr(lib, f"LLAMA_POOLING_TYPE_{name}")
    ffi.new("struct llama_perf_data *")
    ffi.typeof("enum llama_load_mode")
    ffi.sizeof("llama_batch")
    ffi.new("int32_t[]", 4)
    ffi.callback("void(*)(struct llama_perf_data *)", fn)
    """
    assert scan(old, code) == [
        (4, "constant", "LLAMA_SPLIT_MODE_ROW"), (6, "constant", "LLAMA_LOAD_MODE_NONE"),
        (8, "constant", "LLAMA_LOAD_MODE_NONE"), (10, "constant", "LLAMA_POOLING_TYPE_*"),
        (11, "type", "llama_perf_data"), (12, "type", "llama_load_mode"), (15, "type", "llama_perf_data"),
    ]  # fmt: skip
    star = "from llama_cpp import *\nx = LLAMA_LOAD_MODE_MMAP\ny = LLAMA_SPLIT_MODE_NONE\nLLAMA_MAX_DEVICES\n"
    assert scan(old, star) == [(2, "constant", "LLAMA_LOAD_MODE_MMAP")]


CAPABILITY_CODE = """\
from llamarcp import lib
from llamarcp._release import caps

def set_mmap(params, use_mmap):
    if caps.has_field("llama_model_params", "load_mode"):
        params.load_mode = lib.LLAMA_LOAD_MODE_MMAP if use_mmap else lib.LLAMA_LOAD_MODE_NONE
    else:
        params.use_mmap = use_mmap

def penalties(n_vocab, last_n):
    if hasattr(lib, "LLAMA_LOAD_MODE_NONE"):
        return lib.llama_sampler_init_penalties(n_vocab, last_n, 1.1, 0.0, 0.0)
    return lib.llama_sampler_init_penalties(last_n, 1.1, 0.0, 0.0)

def mode(use_mmap):
    return lib.LLAMA_LOAD_MODE_MMAP if "LLAMA_LOAD_MODE_MMAP" in caps else None

def perf(model):
    if not caps.has("llama_perf"):
        raise RuntimeError("llama_perf needs a newer llama.cpp")
    return lib.llama_perf(model)

def labelled():
    params = lib.llama_model_default_params()
    if caps.has("load_mode_enum"):  # not a C name: both branches are checked
        params.load_mode = 1
    else:
        params.use_mlock = True

def and_chain(params):
    return caps.has("llama_perf") and lib.llama_perf(params)
"""


def test_code_behind_a_capability_check_is_not_flagged(old: ApiIndex, new: ApiIndex) -> None:
    # Each tree takes one branch of each evaluable check; the other is not checked. A label that is no C name
    # cannot be evaluated: both of its branches are.
    assert scan(old, CAPABILITY_CODE) == [(26, "field", "load_mode")]
    assert scan(new, CAPABILITY_CODE) == [(28, "field", "use_mlock")]


#: The shape of llamarcp's adapter module: the loaded declarations are asked for a field or a parameter count.
ADAPTER_CODE = """\
from typing import Any
from llamarcp._ffi import ffi

def has_field(struct: str, name: str) -> bool:
    return name in {n for n, _ in ffi.typeof(struct).fields}

def arity(lib: Any, function: str) -> int:
    return len(ffi.typeof(getattr(lib, function)).args)

def set_load_mode(lib: Any, params: Any, use_mmap: bool, use_mlock: bool) -> None:
    if has_field("struct llama_model_params", "load_mode"):
        params.load_mode = getattr(lib, "LLAMA_LOAD_MODE_" + ("MMAP" if use_mmap else "NONE"))
    else:
        params.use_mmap = bool(use_mmap)
        params.use_mlock = bool(use_mlock)

def load_mode(lib: Any, params: Any) -> bool:
    if not has_field("struct llama_model_params", "load_mode"):
        return bool(params.use_mmap)
    return int(params.load_mode) != lib.LLAMA_LOAD_MODE_NONE

def penalties(lib: Any, n_vocab: int, last_n: int) -> Any:
    if arity(lib, "llama_sampler_init_penalties") == 5:
        return lib.llama_sampler_init_penalties(n_vocab, last_n, 1.0, 0.0, 0.0)
    return lib.llama_sampler_init_penalties(last_n, 1.0, 0.0, 0.0)

def wrong(lib: Any, last_n: int) -> Any:
    if 5 <= arity(lib, "llama_sampler_init_penalties"):
        return lib.llama_sampler_init_penalties(last_n, 1.0, 0.0, 0.0)
    return None
"""


def test_the_adapter_shape_is_clean_on_every_release_and_its_mistakes_are_not(old: ApiIndex, new: ApiIndex) -> None:
    assert scan(old, ADAPTER_CODE) == []
    assert scan(new, ADAPTER_CODE) == [(29, "arity", "llama_sampler_init_penalties")]


def test_an_unevaluable_check_trusts_the_names_it_tests(old: ApiIndex) -> None:
    code = """\
    from llamarcp import lib
    def f(caps, feature):
        if caps.has(feature, "llama_perf"):  # a name the scan cannot resolve: the check cannot be evaluated
            lib.llama_perf(model)
        else:
            lib.llama_perf(model)
        if not caps.supports(feature, "llama_perf"):
            return None
        return lib.llama_perf(model)
    """
    assert scan(old, code) == [(6, "undeclared", "llama_perf")]


def test_duck_typing_is_no_capability_check(old: ApiIndex) -> None:
    code = """\
    from llamarcp import lib
    def f(obj, options):
        if hasattr(obj, "size"):  # "size" is a field of llama_token_data_array: still Python duck typing
            return None
        if "data" in options or options.has("n_ctx"):
            pass
        else:
            lib.llama_sampler_init_penalties(64, 1.1)
        return lib.llama_sampler_init_penalties(64, 1.1, 0.0)
    """
    assert scan(old, code) == [
        (8, "arity", "llama_sampler_init_penalties"),
        (9, "arity", "llama_sampler_init_penalties"),
    ]


def test_drift_adapted_pragma_silences_a_line_or_a_statement(old: ApiIndex) -> None:
    code = """\
    from llamarcp import lib
    params = lib.llama_model_default_params()
    params.load_mode = 1  # drift: adapted (set through the capability table)
    sampler = lib.llama_sampler_init_penalties(  # drift: adapted
        64, 1.1, 0.0, 0.0, 0.0
    )
    other = make(
        lib.llama_sampler_init_penalties(64, 1.1, 0.0, 0.0, 0.0),
    )  # drift: adapted
    if params.n_gpu_layers:  # drift: adapted
        params.load_mode = 2
    text = "# drift: adapted"; params.load_mode = 3
    """
    assert scan(old, code) == [(11, "field", "load_mode"), (12, "field", "load_mode")]


def test_cli_formats_and_exit_codes(
    manifests: dict[str, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llamarcp.drift.inputs import pinned_manifest

    api = tmp_path / "old.json"
    api.write_text(json.dumps(manifests["old"]))
    code = tmp_path / "own.py"
    code.write_text(OWN_CODE)
    assert main(["scan", str(code), "--api", str(api)]) == 1
    out = capsys.readouterr().out.splitlines()
    pin = pinned_manifest()["llama_cpp_commit"]
    arity_hint = f"takes 4 argument(s) in llama.cpp old, called with 5 (as the bindings' {pin} declare it)"
    assert f"{code}:13:16: arity llama_sampler_init_penalties -> {arity_hint}" in out
    assert out[-1] == (
        "scan: 1 file(s); 0 removed, 0 undeclared, 0 deprecated use(s); 1 call(s) with another arity, "
        "2 missing struct field(s), 3 undeclared constant(s)"
    )
    assert main(["scan", str(code), "--api", str(api), "--format", "github"]) == 1
    github = capsys.readouterr().out.splitlines()
    assert f"::error file={code},line=8,col=16::field load_mode -> struct llama_model_params has no field" in github[0]
    assert main(["scan", str(code), "--api", str(api), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["arity"] == 1 and data["summary"]["field"] == 2 and data["summary"]["constant"] == 3
    arity = next(u for u in data["uses"] if u["status"] == "arity")
    assert arity == {
        "path": str(code), "line": 13, "col": 16, "name": "llama_sampler_init_penalties", "status": "arity",
        "hint": arity_hint, "how": "call", "severity": "error",
    }  # fmt: skip
    assert "use_mmap, use_direct_io, use_mlock instead" in github[0]  # named from the pinned bindings' struct
    clean = tmp_path / "clean.py"
    clean.write_text("from llamarcp import lib\nlib.llama_sampler_init_penalties(64, 1.1, 0.0, 0.0)\n")
    assert main(["scan", str(clean), "--api", str(api)]) == 0
    capsys.readouterr()


def test_warnings_fail_only_with_strict(old: ApiIndex, tmp_path: Path) -> None:
    (tmp_path / "w.py").write_text("def f(x):\n    x.load_mode = 1\n")
    result = scan_paths([tmp_path], old)
    assert [u.status for u in result.uses] == ["field-gone"] and result.uses[0].severity == "warning"
    assert not result.failed() and result.failed(strict=True)
    assert result.render("github").startswith(f"::warning file={tmp_path / 'w.py'},line=2,col=7::field-gone load_mode")
    assert result.render("text").splitlines()[-1].endswith("; 1 field(s) no struct has")


def test_codegen_drift_reads_a_header_and_labels_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from codegen import drift

    code = tmp_path / "own.py"
    code.write_text(OWN_CODE)
    header = DATA / "release_old.h"
    assert drift.main(["scan", str(code), "--api", str(header)]) == 1
    out = capsys.readouterr().out
    assert f"takes 4 argument(s) in llama.cpp {header}, called with 5" in out


def _pin_with_upstream_like_changes() -> dict[str, Any]:
    """The pinned API with two changes llamarcp's code does not adapt to: `llama_batch_init` loses a parameter,
    `llama_context_params` loses `n_batch` and `swa_full`."""
    from llamarcp.drift.inputs import pinned_manifest

    tree = json.loads(json.dumps(pinned_manifest()))
    tree["llama_cpp_commit"] = "unknown"
    batch_init = next(f for f in tree["functions"] if f["name"] == "llama_batch_init")
    batch_init["params"] = batch_init["params"][:2]
    cparams = next(s for s in tree["structs"] if s["name"] == "llama_context_params")
    cparams["fields"] = [f for f in cparams["fields"] if f["name"] not in ("n_batch", "swa_full")]
    return tree


def test_bump_own_code_step_reports_usage_findings(tmp_path: Path) -> None:
    from codegen import bump
    from llamarcp.drift.diff import diff_manifests
    from llamarcp.drift.inputs import pinned_manifest

    pinned, tree = pinned_manifest(), _pin_with_upstream_like_changes()
    tree["llama_cpp_commit"] = "c" * 40
    state = bump.Bump(source=tmp_path, commit="c" * 40, old=pinned, new=tree, diff=diff_manifests(pinned, tree))
    step = bump.Step("own code")
    bump.step_own_code(state, step)
    text = "\n".join(step.lines)
    assert step.status == "findings"
    assert "Uses (names, arity, struct fields, constants, types): scan: " in text
    assert (
        "- error: llamarcp/_core.py:" in text and "arity llama_batch_init -> takes 2 argument(s) in llama.cpp" in text
    )
    assert (
        "- error: llamarcp/engine.py:" in text and "field n_batch -> struct llama_context_params has no field" in text
    )


def test_scan_llamarcp_checks_the_package_against_a_tree() -> None:
    """What build_lib.py --source prints for a user's tree: here the pin with two upstream-like changes."""
    from llamarcp.drift.inputs import pinned_manifest
    from llamarcp.drift.scan import scan_llamarcp

    result = scan_llamarcp(_pin_with_upstream_like_changes(), label="~/my-llama.cpp")
    found = {(Path(u.path).name, u.status, u.name) for u in result.uses}
    assert {("_core.py", "arity", "llama_batch_init"), ("engine.py", "field", "n_batch")} <= found
    # set by name: loading.CONTEXT_FIELDS (`# drift: fields llama_context_params`), compat's literal loop
    assert {("loading.py", "field", "swa_full"), ("llama_api.py", "field", "swa_full")} <= found
    hint = next(u.hint for u in result.uses if u.name == "llama_batch_init")
    pin = pinned_manifest()["llama_cpp_commit"]
    assert hint == f"takes 2 argument(s) in llama.cpp ~/my-llama.cpp, called with 3 (as the bindings' {pin} declare it)"
    assert result.failed()
    assert not scan_llamarcp(pinned_manifest()).failed()


def test_project_scan_is_clean_against_the_pinned_api() -> None:
    """llamarcp's own code fits the API it is generated from: no arity, field, constant or type finding."""
    from llamarcp.drift.inputs import pinned_manifest

    pinned = pinned_manifest()
    result = scan_paths(
        [ROOT / "llamarcp", ROOT / "codegen", ROOT / "benchmarks", ROOT / "build_lib.py"],
        ApiIndex.from_manifest(pinned, reference=pinned),
    )
    assert not result.failed(strict=False), result.render("text")
    assert not [u for u in result.uses if u.status not in ("deprecated",)], result.render("text")


def _window() -> list[str]:
    from llamarcp import _pin

    return list(getattr(_pin, "WINDOW", ()))


def _cached_tree(version: str, tmp: Path) -> tuple[Path, str] | None:
    """The verified tree of carrier `version` from llamarcp's cache (what build_lib.py extracted), else its headers
    from the cached sdist, extracted under `tmp`; None when neither is on this machine (no download in a test)."""
    import tarfile

    from llamarcp import _cache, _pin

    carrier = _pin.KNOWN_CARRIERS[version]
    tree = _cache.cache_root() / "src" / carrier.commit
    if (tree / ".llamarcp-verified").is_file():
        return tree, carrier.commit
    sdist = _cache.cache_root() / "downloads" / carrier.filename
    if not sdist.is_file():
        return None
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/{carrier.subdir}/"
    with tarfile.open(sdist) as tar:
        wanted = tuple(prefix + sub for sub in ("include/", "ggml/include/", "tools/mtmd/"))
        tar.extractall(tmp, members=[m for m in tar.getmembers() if m.name.startswith(wanted)], filter="data")
    return tmp / prefix, carrier.commit


@pytest.fixture(scope="module")
def release_index(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """version -> ApiIndex of that cached carrier's tree (pinned bindings as reference), parsed once each."""
    from codegen import drift
    from llamarcp.drift.inputs import pinned_manifest

    parsed: dict[str, ApiIndex] = {}

    def index(version: str) -> ApiIndex:
        if version not in parsed:
            found = _cached_tree(version, tmp_path_factory.mktemp(version))
            if found is None:
                pytest.skip(f"carrier {version} is not cached (python build_lib.py --print-source --carrier {version})")
            tree, commit = found
            parsed[version] = ApiIndex.from_manifest(drift.parse_source_tree(tree, commit), reference=pinned_manifest())
        return parsed[version]

    return index


def _before(version: str, release: str) -> bool:
    window = _window()  # ordered by release
    return window.index(version) < window.index(release)


@pytest.mark.slow
@pytest.mark.parametrize("version", _window())
def test_real_releases_flag_the_unadapted_shape_and_pass_the_adapter(version: str, release_index: Any) -> None:
    """Issue 27 on real trees: before b10229 `load_mode` / `LLAMA_LOAD_MODE_*` are flagged, before b10566 the
    5-argument penalty sampler; the adapter shape is clean on every release except its deliberate mistake,
    which only releases with the 5-argument sampler reach."""
    index = release_index(version)
    expected = set()
    if _before(version, "2026.8.10229"):
        expected |= {
            (8, "field", "load_mode"), (8, "constant", "LLAMA_LOAD_MODE_MMAP_MLOCK"),
            (8, "constant", "LLAMA_LOAD_MODE_MMAP"), (18, "field", "load_mode"), (18, "constant", "LLAMA_LOAD_MODE_*"),
        }  # fmt: skip
    if _before(version, "2026.8.10566"):
        expected.add((13, "arity", "llama_sampler_init_penalties"))
    assert set(scan(index, OWN_CODE)) == expected
    adapter = [] if _before(version, "2026.8.10566") else [(29, "arity", "llama_sampler_init_penalties")]
    assert scan(index, ADAPTER_CODE) == adapter


@pytest.mark.slow
@pytest.mark.parametrize("version", _window())
def test_own_code_fits_every_release_of_the_window(version: str, release_index: Any) -> None:
    """llamarcp's own code against each release of the window: its release differences (load_mode, penalties
    arity) go through llamarcp._adapt's capability checks, which the scan evaluates, so nothing is flagged."""
    result = scan_paths([ROOT / "llamarcp"], release_index(version))
    assert not result.uses, result.render("text")


@pytest.mark.parametrize(
    ("section", "entry", "message"),
    [
        ("structs", {"name": "s", "fields": [{"name": "x"}]}, "struct s field #0 lacks a name or type"),
        ("enums", {"name": "e", "constants": [{"value": 1}]}, "enum e constant #0 lacks a name"),
    ],
)
def test_malformed_nested_entries_are_clear_errors(
    section: str, entry: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = tmp_path / "api.json"
    api.write_text(json.dumps({"llama_cpp_commit": "x", "functions": [], section: [entry]}))
    (tmp_path / "a.py").write_text("x = 1\n")
    assert main(["scan", str(tmp_path / "a.py"), "--api", str(api)]) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------- releases of the window, from the package


def _facts_summary(manifest: dict[str, Any]) -> tuple[Any, ...]:
    from llamarcp.drift.facts import TreeFacts

    facts = TreeFacts.from_manifest(manifest)
    fields = {name: set(members) for name, members in facts.fields.items()}
    return facts.arity, fields, facts.constants, facts.types


def test_declarations_give_the_same_facts_as_the_headers() -> None:
    """The pin's cffi declarations, read with pycparser, say what its libclang manifest says (for the scan)."""
    from llamarcp.drift.cdef import manifest_from_cdef
    from llamarcp.drift.inputs import pinned_manifest

    cdef = (ROOT / "llamarcp" / "_generated" / "llama.cdef.h").read_text(encoding="utf-8")
    assert _facts_summary(manifest_from_cdef(cdef, "pin")) == _facts_summary(pinned_manifest())


def test_bad_declarations_are_a_clear_error() -> None:
    from llamarcp.drift.cdef import manifest_from_cdef
    from llamarcp.errors import DriftError

    with pytest.raises(DriftError, match="cannot parse the declarations of broken"):
        manifest_from_cdef("struct llama_batch { int32_t n_tokens; ", "broken")


def test_release_spec_scans_against_a_release_of_the_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = tmp_path / "own.py"
    code.write_text(OWN_CODE)
    assert main(["scan", str(code), "--api", "release:b8672"]) == 1
    out = capsys.readouterr().out
    assert f"{code}:13:16: arity llama_sampler_init_penalties -> takes 4 argument(s) in llama.cpp b8672" in out
    assert "field load_mode -> struct llama_model_params has no field load_mode in llama.cpp b8672" in out
    assert main(["scan", str(code), "--api", "release:b10566"]) == 0
    capsys.readouterr()
    assert main(["scan", str(code), "--api", "release:b1"]) == 2
    assert "release:b1 is not a release of llamarcp's window (known: b8672, " in capsys.readouterr().err
    assert main(["diff", "release:b8672", "pinned"]) == 2  # declarations only: no layouts, no deprecation notes
    assert "release:b8672: a release read from the package's declarations" in capsys.readouterr().err


def _release_names() -> list[Any]:
    """Every release of the window; the oldest, the middle one and the pin run always, the others are slow."""
    from llamarcp import _release

    names = list(_release.release_names())
    always = {names[0], names[len(names) // 2], names[-1]}
    return [name if name in always else pytest.param(name, marks=pytest.mark.slow) for name in names]


@pytest.mark.parametrize("name", _release_names())
def test_own_code_fits_every_release_from_the_package(name: str) -> None:
    """No tree, no libclang: llamarcp's own code against each release's declarations the package carries."""
    from llamarcp.drift.cdef import release_manifest
    from llamarcp.drift.inputs import pinned_manifest

    index = ApiIndex.from_manifest(release_manifest(name, pinned_manifest()), reference=pinned_manifest())
    result = scan_paths([ROOT / "llamarcp"], index)
    assert not result.uses, result.render("text")


@pytest.mark.slow
@pytest.mark.parametrize("version", _window())
def test_declarations_of_each_release_match_its_tree(version: str, release_index: Any) -> None:
    from llamarcp import _pin
    from llamarcp.drift.cdef import release_manifest
    from llamarcp.drift.inputs import pinned_manifest

    commit = _pin.KNOWN_CARRIERS[version].commit
    name = commit[:12] if len(commit) == 40 else commit
    tree = release_index(version)
    from_package = ApiIndex.from_manifest(release_manifest(name, pinned_manifest()))
    assert from_package.facts is not None and tree.facts is not None
    assert from_package.facts.arity == tree.facts.arity
    assert {k: set(v) for k, v in from_package.facts.fields.items()} == {
        k: set(v) for k, v in tree.facts.fields.items()
    }
    assert from_package.facts.constants == tree.facts.constants


def _cached_build(commit: str) -> Path | None:
    """A library build_lib.py built (and stamped) from `commit`'s tree, if this machine has one."""
    from llamarcp import _cache

    for stamp in sorted((_cache.cache_root() / "builds").glob("*/lib/llamarcp-build.json")):
        try:
            if json.loads(stamp.read_text(encoding="utf-8")).get("commit") == commit:
                return stamp.parent
        except (OSError, ValueError):
            continue
    return None


def _scan_loaded(code: Path, library: str) -> Any:
    import os
    import subprocess

    env = {**os.environ, "LLAMARCP_LIB_PATH": library, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "llamarcp.drift", "scan", str(code), "--api", "loaded"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def test_loaded_spec_checks_code_against_the_library_llamarcp_would_load(tmp_path: Path) -> None:
    """`--api loaded`: the release llamarcp picks for LLAMARCP_LIB_PATH's library (here an old b8672 build)."""
    code = tmp_path / "app.py"
    code.write_text("from llamarcp import lib\nlib.llama_sampler_init_penalties(32000, 64, 1.1, 0.0, 0.0)\n")
    missing = _scan_loaded(code, str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "--api loaded: $LLAMARCP_LIB_PATH=" in missing.stderr
    old_build = _cached_build("b8672")
    if old_build is None:
        pytest.skip("no b8672 build in the cache (python build_lib.py --release oldest)")
    proc = _scan_loaded(code, str(old_build))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "arity llama_sampler_init_penalties -> takes 4 argument(s) in llama.cpp b8672, called with 5" in proc.stdout
