"""The ABI fingerprint: one digest per item that crosses the C boundary, computed from an api.json manifest.

Items are struct/union layouts, enum constants, #defines, function and callback signatures and typedefs,
keyed like "struct llama_context_params" or "function llama_decode". Spellings that do not change the ABI
(parameter names, `const`, a typedef name instead of its type) do not change a digest.

Recorded twice: in the bindings (`_generated/_abi.py`, by codegen/generate.py) and beside every library
build_lib.py builds (`llamarcp-abi.json`, plus the fingerprint in the build stamp, by codegen/abi.py). The
runtime guard and `drift symbols` compare the two; a library without them gets the probe below.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Written next to a built library; its fingerprint is also in the build stamp (`abi_fingerprint`).
ITEMS_FILE = "llamarcp-abi.json"
#: By-value results at most this large come back in registers; larger ones through a caller buffer (probed).
REGISTER_RETURN_MAX = 16

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\S")
_QUALIFIERS = frozenset({"const", "volatile", "restrict", "__restrict"})


class TypeCanon:
    """Canonical spelling of a C type: qualifiers dropped, scalar/function typedefs replaced by what they name."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.typedefs: dict[str, str] = {}
        for t in manifest.get("typedefs", []):
            if not re.fullmatch(r"(struct|union|enum)\s+\w+", t["type"].replace("const ", "").strip()):
                self.typedefs[t["name"]] = t["type"]  # struct/enum aliases keep their own name (the tag may differ)

    def __call__(self, text: str, depth: int = 0) -> str:
        out: list[str] = []
        for tok in _TOKEN.findall(text):
            if tok in _QUALIFIERS:
                continue
            if tok in self.typedefs and depth < 16:
                out.append(self(self.typedefs[tok], depth + 1))
            else:
                out.append(tok)
        return " ".join(out)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


#: Libraries of the generated API that libllama does not link (`codegen.parse.GROUPS` rows with library "mtmd"):
#: the runtime dlopens each from beside libllama, and their items are not part of libllama's ABI. Kept here, in a
#: module importing nothing of llamarcp, because the loader, the guard and the generator all need it.
COMPANION_LIBRARIES: tuple[str, ...] = ("mtmd",)


def companion_headers(manifest: dict[str, Any]) -> frozenset[str]:
    """Headers of the libraries libllama does not link (mtmd.h, mtmd-helper.h: libmtmd).

    Their items describe another library than the one the build stamp fingerprints, so they stay out of
    `items` and `probes`; their layouts are checked against the compiler by the tests instead.
    """
    functions = manifest.get("functions", [])
    return frozenset(f["header"] for f in functions if f.get("library") in COMPANION_LIBRARIES and f.get("header"))


def _without_companions(manifest: dict[str, Any]) -> dict[str, Any]:
    skip = companion_headers(manifest)
    if not skip:
        return manifest
    kinds = ("structs", "enums", "defines", "functions", "callbacks", "typedefs")
    kept = {kind: [x for x in manifest.get(kind, []) if x.get("header") not in skip] for kind in kinds}
    return {**manifest, **kept}


def items(manifest: dict[str, Any]) -> dict[str, str]:
    """Item key -> short digest, for every ABI-relevant declaration of a manifest (libllama's, see below)."""
    manifest = _without_companions(manifest)
    canon = TypeCanon(manifest)
    out: dict[str, str] = {}
    for s in manifest.get("structs", []):
        fields = [[f["name"], canon(f["type"]), f["offset"], f["bitwidth"]] for f in s["fields"]]
        out[f"{s.get('kind', 'struct')} {s['name']}"] = _digest(
            [s.get("opaque"), s.get("size"), s.get("align"), fields]
        )
    for e in manifest.get("enums", []):
        for c in e["constants"]:
            out[f"enum constant {c['name']}"] = _digest(c["value"])
    for d in manifest.get("defines", []):
        out[f"define {d['name']}"] = _digest(d["value"])
    for f in manifest.get("functions", []):
        out[f"function {f['name']}"] = _digest(
            [canon(f["return_type"]), [canon(p["type"]) for p in f["params"]], bool(f.get("variadic"))]
        )
    for c in manifest.get("callbacks", []):
        out[f"callback {c['name']}"] = _digest([canon(c["return_type"]), [canon(p["type"]) for p in c["params"]]])
    for t in manifest.get("typedefs", []):
        out[f"typedef {t['name']}"] = _digest(canon(t["type"]))
    return dict(sorted(out.items()))


def fingerprint(item_digests: dict[str, str]) -> str:
    """One digest over all items (what the build stamp and the bindings carry)."""
    text = "".join(f"{key}={value}\n" for key, value in sorted(item_digests.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_INTEGER_TYPES = frozenset(
    ("bool", "char", "int", "short", "long", "size_t", "unsigned", "signed")
    + tuple(f"{sign}int{bits}_t" for sign in ("", "u") for bits in (8, 16, 32, 64))
)


def _probe_arg(canon: TypeCanon, text: str, structs: dict[str, Any]) -> str | None:
    """How the probe passes a parameter: "int", "buffer" (pointer to scalars), "live <type>" (pointer to an
    opaque object it needs a real one of), or None (a parameter the probe cannot fake: the function is left out)."""
    spelled = canon(text)
    if spelled.endswith("*"):
        target = spelled[:-1].strip()
        if target in structs:
            return f"live {target} *" if structs[target].get("opaque") else None
        return "buffer" if all(tok in _INTEGER_TYPES or tok == "float" for tok in target.split()) else None
    if spelled in structs or "(" in spelled:
        return None
    if all(tok in _INTEGER_TYPES for tok in spelled.split()) or spelled in ("enum",):
        return "int"
    if spelled.startswith("enum "):
        return "int"
    return None


def probes(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Functions returning a struct by value through a caller buffer, with what to expect of what they write.

    Covers every struct libllama passes or returns by value that some function returns and the probe can call:
    argument-less ones (`*_default_params`), ones taking integers or scalar buffers (`llama_batch_init`,
    `llama_batch_get_one`), and ones needing a live object (`llama_perf_context(ctx)`: probed when llamarcp has
    made the first such object). The guard calls each into a sentinel-filled buffer and measures how many bytes
    were written; bool fields must read 0 or 1 and enum fields one of their constants. Only libllama's.
    """
    manifest = _without_companions(manifest)
    canon = TypeCanon(manifest)
    structs = {f"{s.get('kind', 'struct')} {s['name']}": s for s in manifest.get("structs", [])}
    for t in manifest.get("typedefs", []):
        if t["type"] in structs:
            structs[t["name"]] = structs[t["type"]]
    enums: dict[str, list[int]] = {}
    for e in manifest.get("enums", []):
        values = sorted({c["value"] for c in e["constants"]})
        enums[f"enum {e['name']}"] = enums[e["name"]] = values  # tagged, or named by its typedef only
    for t in manifest.get("typedefs", []):
        if t["type"] in enums:
            enums[t["name"]] = enums[t["type"]]
    frees = {}
    for f in manifest.get("functions", []):
        if len(f["params"]) == 1 and f["return_type"] == "void" and f["name"].endswith("_free"):
            frees[f["params"][0]["type"].replace("const ", "").strip()] = f["name"]
    out = []
    for f in manifest.get("functions", []):
        if f.get("variadic"):
            continue
        returned = f["return_type"].replace("const ", "").strip()
        s = structs.get(returned)
        if s is None or s.get("opaque") or not s.get("size") or s["size"] <= REGISTER_RETURN_MAX or not s["fields"]:
            continue
        args = [_probe_arg(canon, p["type"], structs) for p in f["params"]]
        if any(a is None for a in args) or sum(1 for a in args if a and a.startswith("live")) > 1:
            continue
        bools = [(fl["name"], fl["offset"]) for fl in s["fields"] if fl["type"] == "bool" and fl["bitwidth"] is None]
        enum_fields = [(fl["name"], fl["offset"], enums[fl["type"]]) for fl in s["fields"] if fl["type"] in enums]
        entry: dict[str, Any] = {
            "function": f["name"],
            "struct": s["name"],
            "size": s["size"],
            "align": s["align"],
            "last_field_offset": max(fl["offset"] for fl in s["fields"]),
            "bool_fields": bools,
            "enum_fields": enum_fields,
        }
        if args:
            entry["args"] = args
            free = frees.get(returned) or frees.get(f"struct {s['name']}")
            if free and all(a == "int" for a in args):  # a constructor: what it allocated is given back
                entry["free"] = free
        out.append(entry)
    return sorted(out, key=lambda p: p["function"])


def by_value_structs(manifest: dict[str, Any]) -> list[str]:
    """Names of the structs libllama's functions take or return by value (what the probe must cover)."""
    manifest = _without_companions(manifest)
    canon = TypeCanon(manifest)
    structs = {f"{s.get('kind', 'struct')} {s['name']}": s for s in manifest.get("structs", [])}
    names = set()
    for f in manifest.get("functions", []):
        for text in [f["return_type"], *(p["type"] for p in f["params"])]:
            s = structs.get(canon(text).strip())
            if s is not None and not s.get("opaque"):
                names.add(s["name"])
    return sorted(names)


def document(manifest: dict[str, Any]) -> dict[str, Any]:
    """The `ITEMS_FILE` content for a manifest: its commit, fingerprint and item digests."""
    digests = items(manifest)
    return {"commit": manifest.get("llama_cpp_commit"), "fingerprint": fingerprint(digests), "items": digests}


# ----------------------------------------------------------------------------------------- comparing


@dataclass
class AbiDiff:
    """Items whose digest differs (refused: silent corruption), and items only one side has."""

    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # in the bindings, not in the library's headers
    added: list[str] = field(default_factory=list)  # in the library's headers only

    @property
    def compatible(self) -> bool:
        """Only additions and removals: nothing the bindings describe is laid out differently.

        A removed function is caught by the used-function check (and fails clearly when called).
        """
        return not self.changed

    def summary(self, limit: int = 12) -> str:
        more = len(self.changed) - limit
        shown = ", ".join(self.changed[:limit]) + (f", and {more} more" if more > 0 else "")
        return f"{len(self.changed)} item(s) changed: {shown}; {len(self.removed)} removed, {len(self.added)} added"


def differences(expected: dict[str, str], found: dict[str, str]) -> AbiDiff:
    """Compare the bindings' item digests (`expected`) with a library's (`found`)."""
    return AbiDiff(
        changed=sorted(k for k in expected if k in found and found[k] != expected[k]),
        removed=sorted(k for k in expected if k not in found),
        added=sorted(k for k in found if k not in expected),
    )


def read_items_file(lib_dir: Path) -> dict[str, Any] | None:
    """The `ITEMS_FILE` beside a library, or None when absent or unreadable."""
    try:
        data = json.loads((lib_dir / ITEMS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("items"), dict):
        return None
    return data


# ------------------------------------------------------------------------------------------ probing

#: Bytes handed to a probed function; far larger than any params struct, so a grown struct cannot overflow it.
PROBE_BUFFER = 4096
#: Where a struct result > 16 bytes is returned through a buffer whose address is passed as the first
#: integer argument (System V x86-64 in %rdi, Windows x64 in %rcx), so `void f(unsigned char *out)` is the
#: same call. On other ABIs (AArch64 passes it in x8) the probe cannot run.
PROBE_MACHINES = frozenset({"x86_64", "amd64"})


@dataclass
class ProbeResult:
    verified: list[str] = field(default_factory=list)  # "struct llama_context_params (160 bytes)"
    problems: list[str] = field(default_factory=list)  # each names the struct and what differs
    skipped: str | None = None  # why nothing ran


def _probe_call(ffi: Any, raw: Any, entry: dict[str, Any], live: Any) -> Any:
    """A callable `f(buffer)` running the entry's function with its result written into `buffer`."""
    args = entry.get("args", [])
    c_args = ["unsigned char *"] + ["void *" if a != "int" else "int64_t" for a in args]
    function = ffi.cast(f"void(*)({', '.join(c_args)})", getattr(raw, entry["function"]))
    scratch = ffi.new("unsigned char[]", PROBE_BUFFER)  # zeroed: a harmless token/position array

    def call(buf: Any) -> None:
        values = [1 if a == "int" else live if a.startswith("live") else scratch for a in args]
        function(buf, *values)

    return call


def probe(raw: Any, ffi: Any, probe_table: Any, machine: str, live: tuple[str, Any] | None = None) -> ProbeResult:
    """Call each table entry's function into a sentinel-filled buffer (twice) and check what it wrote.

    Without `live`, entries needing a live object are left out; with `live=(type, pointer)` only those taking
    that type run (llamarcp calls this with its first context and sampler chain).
    """
    result = ProbeResult()
    if machine.lower() not in PROBE_MACHINES:
        result.skipped = f"the struct-size probe needs an x86-64 ABI (this machine: {machine})"
        return result
    # not exported, not callable in ABI mode, or not a C function at all (a test stand-in)
    lookup_errors: tuple[type[BaseException], ...] = (AttributeError, ffi.error, NotImplementedError, TypeError)
    for entry in probe_table:
        needs = next((a[5:] for a in entry.get("args", []) if a.startswith("live ")), None)
        if (live is None and needs is not None) or (live is not None and needs != live[0]):
            continue
        try:
            call = _probe_call(ffi, raw, entry, live[1] if live else None)
        except lookup_errors:
            continue
        buf = ffi.new("unsigned char[]", PROBE_BUFFER)
        extent = 0
        passes = []
        for fill in (0xA5, 0x5A):
            ffi.memmove(buf, bytes([fill]) * PROBE_BUFFER, PROBE_BUFFER)
            call(buf)
            data = bytes(ffi.buffer(buf))
            passes.append(data)
            extent = max(extent, len(data.rstrip(bytes([fill]))))  # bytes up to the last one the call wrote
            if entry.get("free") and extent == entry["size"]:
                _free_result(ffi, raw, entry, data)
        data = passes[0]
        name, size = f"struct {entry['struct']}", entry["size"]
        where = f"{entry['function']}()"
        problems = []
        if extent > size:
            problems.append(f"{name}: {where} wrote {extent} bytes, the bindings' struct has {size} (fields added?)")
        elif extent <= entry["last_field_offset"]:
            problems.append(
                f"{name}: {where} wrote {extent} bytes, the bindings' last field is at offset "
                f"{entry['last_field_offset']} of {size} (fields removed?)"
            )
        for field_name, offset in entry["bool_fields"]:
            if offset < extent and data[offset] not in (0, 1):
                problems.append(f"{name}: bool field {field_name} at offset {offset} reads {data[offset]:#x}")
        for field_name, offset, allowed in entry["enum_fields"]:
            value = int.from_bytes(data[offset : offset + 4], "little", signed=True)
            if offset + 4 <= extent and value not in allowed:
                problems.append(f"{name}: enum field {field_name} at offset {offset} reads {value}, not a known value")
        if problems:
            result.problems.extend(problems)
        else:
            result.verified.append(f"{name} ({size} bytes)")
    if not result.verified and not result.problems:
        result.skipped = "the library exports none of the probed functions"
    return result


def _free_result(ffi: Any, raw: Any, entry: dict[str, Any], data: bytes) -> None:
    """Give back what a probed constructor allocated (`llama_batch_free(batch)`), when the layout is the bindings'."""
    struct = f"struct {entry['struct']}"
    try:
        if ffi.sizeof(struct) != entry["size"]:
            return
        value = ffi.new(f"{struct} *")
        ffi.memmove(value, data[: entry["size"]], entry["size"])
        getattr(raw, entry["free"])(value[0])
    except (AttributeError, ffi.error, TypeError):
        return
