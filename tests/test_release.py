"""llamarcp._release: the library picks its bindings among the window's releases, or is refused naming why.

Real libraries: the pin's build, the previous pin's (0c1e57, llama-cpp-python 0.3.36's tree) and the oldest
release of the window, all built by `ci/setup.sh dev` (nothing is built here), loaded in child processes through
LLAMARCP_LIB_PATH as a user would. Changed layouts: small gcc-compiled libraries (a stamped one from a header tree
whose llama_perf_context_data grew, and a shim over the real pinned library whose llama_perf_context writes 8
bytes more than the bindings' struct).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llamarcp import _release
from llamarcp.drift import abi

ROOT = Path(__file__).resolve().parent.parent
x86_64_only = pytest.mark.skipif(
    platform.machine().lower() not in abi.PROBE_MACHINES, reason="the probe needs an x86-64 ABI"
)


def release_library(name: str) -> Path:
    """The built libllama of a release of the window (ci/setup.sh builds oldest, middle and the pin)."""
    import build_lib

    carrier = build_lib.release_carrier(name)
    try:
        if carrier.commit == _release.pin().name:
            return build_lib.build(allow_build=False) / "libllama.so"
        return build_lib.build(build_lib.ensure_source(carrier), allow_build=False) / "libllama.so"
    except build_lib.BuildError as exc:
        pytest.fail(f"{exc}: run `bash ci/setup.sh` (it builds the oldest, middle and pinned releases)")


def unstamped_copy(library: Path, dest: Path) -> Path:
    """The libraries of a build without its stamp and ABI items: what a user's own or a distribution's build is."""
    dest.mkdir(parents=True, exist_ok=True)
    for lib in library.parent.glob("*.so*"):
        shutil.copy2(lib, dest / lib.name, follow_symlinks=True)
    return dest / library.name


CHILD = """
import json, sys, warnings
sys.path.insert(0, {tests!r})
from llamarcp import _release
sel = _release.selection()
out = {{"release": sel.bindings.name, "how": sel.how, "error": str(sel.error) if sel.error else None}}
if sel.error is None and {generate!r}:
    from llamarcp import Llama
    llm = Llama({model!r}, n_ctx=128, verbose=False)
    out["text"] = llm("Once upon a time", max_tokens=6, temperature=0)["choices"][0]["text"]
    out["penalised"] = llm("Once upon a time", max_tokens=6, temperature=0.5, repeat_penalty=1.3, seed=2)["usage"]
print(json.dumps(out))
"""


def run_child(library: Path, model: Path | None = None) -> dict[str, object]:
    code = CHILD.format(tests=str(ROOT / "tests"), generate=model is not None, model=str(model))
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_LIB_PATH", "LLAMARCP_SKIP_GUARD")}
    env["LLAMARCP_LIB_PATH"] = str(library)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ----------------------------------------------------------------------------------------- the sets


def test_window_is_ordered_and_holds_the_pin() -> None:
    names = _release.release_names()
    assert names[-1] == _release.pin().name and len(names) >= 10
    assert [r.name for r in _release.window()] == list(names)
    fingerprints = [r.fingerprint for r in _release.window()]
    assert len(set(fingerprints)) == len(fingerprints), "two releases with one ABI fingerprint"


def test_every_release_builds_an_ffi_with_its_own_layouts() -> None:
    sizes = {}
    for release in _release.window():
        ffi = _release.ffi_for(release)
        sizes[release.name] = ffi.sizeof("struct llama_context_params")
        fields = {name for name, _ in ffi.typeof("struct llama_model_params").fields}
        assert ("load_mode" in fields) != ("use_mmap" in fields), release.name  # one spelling or the other
    assert sizes[_release.pin().name] == 168
    assert sizes["0c1e57098bba"] == 160  # b11549 added moe_cache_size


def test_first_release_with_names_where_a_function_appears() -> None:
    pin_only = sorted(_release.pin().functions - _release.release(_release.release_names()[0]).functions)
    assert pin_only, "the oldest release should lack some of the pin's functions"
    first = _release.first_release_with(pin_only[0])
    assert first is not None and first != _release.release_names()[0]
    assert _release.first_release_with("llama_no_such_function") is None


# ----------------------------------------------------------------------------------------- real libraries


def test_the_pinned_build_is_picked_by_its_stamp() -> None:
    selection = _release.choose(release_library("pin"))
    assert selection.error is None and selection.bindings.is_pin
    assert selection.how.startswith("build stamp")


@x86_64_only
def test_an_unstamped_pinned_build_is_picked_by_symbols_and_probes(tmp_path: Path) -> None:
    selection = _release.choose(unstamped_copy(release_library("pin"), tmp_path))
    assert selection.error is None and selection.bindings.is_pin, selection.how
    assert "struct llama_context_params (168 bytes)" in selection.how


@x86_64_only
def test_the_previous_pin_is_served_stamped_and_unstamped(tiny_model_path: Path, tmp_path: Path) -> None:
    library = release_library("0c1e57098bba")
    stamped = run_child(library, tiny_model_path)
    unstamped = run_child(unstamped_copy(library, tmp_path), tiny_model_path)
    assert stamped["release"] == unstamped["release"] == "0c1e57098bba", (stamped, unstamped)
    assert str(unstamped["how"]).startswith("exported functions and probes")
    pinned = run_child(release_library("pin"), tiny_model_path)
    assert stamped["text"] == unstamped["text"] == pinned["text"]  # the same model, greedy, on another llama.cpp


@x86_64_only
def test_the_oldest_release_runs_llama(tiny_model_path: Path, tmp_path: Path) -> None:
    """b8672: no load_mode (use_mmap/use_mlock) and a 4-argument penalties sampler, served by llamarcp._adapt."""
    result = run_child(unstamped_copy(release_library("oldest"), tmp_path), tiny_model_path)
    assert result["release"] == _release.release_names()[0] and result["error"] is None, result
    assert isinstance(result["text"], str) and result["text"]


# ----------------------------------------------------------------------------------------- refusals


#: One 8-byte field: 48 -> 56 bytes (an int32 would fit the padding and change no size).
GROWN_PERF = "        int64_t llamarcp_test_extra;\n"


def grown_perf_tree(dest: Path, source: Path) -> Path:
    shutil.copytree(source / "include", dest / "include")
    shutil.copytree(source / "ggml" / "include", dest / "ggml" / "include")
    header = dest / "include" / "llama.h"
    text = header.read_text()
    start = text.index("struct llama_perf_context_data {")
    end = text.index("};", start)
    header.write_text(text[:end] + GROWN_PERF + "    " + text[end:])
    return dest


def test_a_stamped_library_with_a_grown_perf_struct_is_refused_naming_it(
    llama_cpp_source: Path, tmp_path: Path
) -> None:
    from codegen.abi import stamp_library

    tree = grown_perf_tree(tmp_path / "tree", llama_cpp_source)
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    src = tmp_path / "perf.c"
    src.write_text('#include "llama.h"\nint32_t llama_n_threads(struct llama_context * c) { return 0; }\n')
    out = lib_dir / "libllama.so"
    includes = [f"-I{tree / 'include'}", f"-I{tree / 'ggml' / 'include'}"]
    subprocess.run(["gcc", "-shared", "-fPIC", *includes, "-o", str(out), str(src)], check=True, capture_output=True)
    fields = stamp_library(tree, "patched", lib_dir)
    (lib_dir / "llamarcp-build.json").write_text(json.dumps({"commit": "patched", **fields}))
    selection = _release.choose(out)
    assert selection.error is not None
    message = str(selection.error)
    assert "nearest: b11549" in message and "1 item(s) changed: struct llama_perf_context_data" in message


SHIM = r"""
#include <string.h>
#include <stdint.h>
struct grown_perf { double t[4]; int32_t n[3]; int32_t extra; int64_t more; };
struct grown_perf llama_perf_context(const void * ctx) {
    struct grown_perf p; memset(&p, 0, sizeof p); (void) ctx; p.extra = 1; p.more = 2; return p;
}
"""


@x86_64_only
def test_an_unstamped_library_with_a_grown_perf_struct_is_refused_at_its_first_context(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """A shim over the real pinned library whose llama_perf_context returns 56 bytes (the bindings: 48)."""
    real = release_library("pin")
    src = tmp_path / "shim.c"
    src.write_text(SHIM)
    shim = tmp_path / "libllama-patched.so"
    link = ["-Wl,--no-as-needed", "-L", str(real.parent), "-l:libllama.so", f"-Wl,-rpath,{real.parent}"]
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(shim), str(src), *link], check=True, capture_output=True, text=True
    )
    code = (
        "from llamarcp import Llama\n"
        "from llamarcp.errors import LibraryMismatchError\n"
        "try:\n"
        f"    Llama({str(tiny_model_path)!r}, n_ctx=64, verbose=False)\n"
        "except LibraryMismatchError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_LIB_PATH", "LLAMARCP_SKIP_GUARD")}
    env["LLAMARCP_LIB_PATH"] = str(shim)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSED" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "struct llama_perf_context_data: llama_perf_context() wrote 56 bytes" in done.stdout


def test_a_library_of_no_known_release_is_refused_naming_the_nearest(tmp_path: Path) -> None:
    src = tmp_path / "odd.c"
    src.write_text("int llama_backend_init(void) { return 0; }\nint llama_something_else(void) { return 1; }\n")
    out = tmp_path / "libllama.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True)
    selection = _release.choose(out)
    assert selection.error is not None
    message = str(selection.error)
    assert "matches no llama.cpp release llamarcp knows" in message and "nearest by exported functions" in message
    assert "lacks" in message


def test_a_found_but_unloadable_library_is_its_own_error(tmp_path: Path) -> None:
    bogus = tmp_path / "libllama.so"
    bogus.write_bytes(b"\x7fELF not really a library")
    code = "from llamarcp import lib\nlib.llama_backend_init()\n"
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    env["LLAMARCP_LIB_PATH"] = str(bogus)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "LibraryLoadError: libllama was found at" in done.stderr and "could not load it" in done.stderr
    assert "LLAMARCP_LIB_PATH" not in done.stderr.splitlines()[-1]


@x86_64_only
def test_a_newer_library_is_served_by_the_newest_release_when_its_probes_pass(tmp_path: Path) -> None:
    """A build past the pin (one function the window does not know) is accepted with the pin's bindings."""
    real = release_library("pin")
    src = tmp_path / "newer.c"
    src.write_text("int llama_brand_new_function(void) { return 42; }\n")
    shim = tmp_path / "libllama-newer.so"
    link = ["-Wl,--no-as-needed", "-L", str(real.parent), "-l:libllama.so", f"-Wl,-rpath,{real.parent}"]
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(shim), str(src), *link], check=True, capture_output=True)
    selection = _release.choose(shim)
    assert selection.error is None and selection.bindings.is_pin, selection.how
    assert selection.how.startswith("exported functions and probes")


def test_the_ctypes_face_follows_the_loaded_release(tmp_path: Path) -> None:
    """llama-cpp-python's low level on the oldest release: its own arity and struct fields, not the pin's."""
    code = (
        "import llamarcp\n"
        "llamarcp.install_as_llama_cpp()\n"
        "import llama_cpp\n"
        "low = llama_cpp.llama_cpp\n"
        "low.llama_sampler_free(low.llama_sampler_init_penalties(64, 1.1, 0.0, 0.0))\n"
        "fields = [name for name, *_ in low.llama_model_default_params()._fields_]\n"
        "print('use_mmap' in fields, 'load_mode' in fields)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_LIB_PATH", "LLAMARCP_SKIP_GUARD")}
    env["LLAMARCP_LIB_PATH"] = str(release_library("oldest"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "False"]


def test_a_function_the_loaded_release_lacks_names_the_first_release_with_it() -> None:
    oldest = _release.release_names()[0]
    missing = sorted(n for n in _release.pin().functions - _release.release(oldest).functions if n.startswith("llama_"))
    assert missing, "the oldest release should lack some of the pin's llama_* functions"
    name = missing[0]
    first = _release.first_release_with(name)
    code = (
        "from llamarcp import lib\n"
        "from llamarcp.errors import MissingSymbolError\n"
        "try:\n"
        f"    lib.{name}()\n"
        "except MissingSymbolError as exc:\n"
        "    print('MISSING', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMA_CPP_LIB_PATH", "LLAMARCP_SKIP_GUARD")}
    env["LLAMARCP_LIB_PATH"] = str(release_library("oldest"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"MISSING {name}" in done.stdout and f"llama.cpp {oldest}, which does not have it" in done.stdout
    assert f"{first} is the first release" in done.stdout
