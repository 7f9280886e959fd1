"""API diff of two llama.cpp versions, from their API manifests (the `api.json` schema).

Every change is classified:
- "api_break": code written against the old API must change (removed, retyped, re-parametered),
- "abi_break": the source still compiles, but binaries/bindings built for the old layout are wrong
  (struct size/offset/order, enum or define values, numeric parameter width),
- "compatible": additions, renamed parameters, qualifier-only or typedef-spelling changes.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llamarcp.drift.replacements import REMOVED_FUNCTIONS

API_BREAK = "api_break"
ABI_BREAK = "abi_break"
COMPATIBLE = "compatible"
_RANK = {API_BREAK: 0, ABI_BREAK: 1, COMPATIBLE: 2}
_LABEL = {API_BREAK: "API break", ABI_BREAK: "ABI break", COMPATIBLE: "compatible"}

_TOKEN = re.compile(r"[A-Za-z_]\w*|\.\.\.|\d+|\S")
_QUALIFIERS = frozenset({"const", "volatile", "restrict", "__restrict", "__restrict__"})
_TAGS = frozenset({"struct", "union", "enum"})
#: Size (LP64, the manifests' target) and class of the scalar spellings the headers use.
_SCALARS: dict[str, tuple[str, int]] = {
    "bool": ("bool", 1), "_Bool": ("bool", 1),
    "char": ("int", 1), "signed char": ("int", 1), "unsigned char": ("uint", 1),
    "short": ("int", 2), "unsigned short": ("uint", 2),
    "int": ("int", 4), "signed": ("int", 4), "unsigned": ("uint", 4), "unsigned int": ("uint", 4),
    "long": ("int", 8), "unsigned long": ("uint", 8), "long long": ("int", 8), "unsigned long long": ("uint", 8),
    "int8_t": ("int", 1), "int16_t": ("int", 2), "int32_t": ("int", 4), "int64_t": ("int", 8),
    "uint8_t": ("uint", 1), "uint16_t": ("uint", 2), "uint32_t": ("uint", 4), "uint64_t": ("uint", 8),
    "size_t": ("uint", 8), "ssize_t": ("int", 8), "intptr_t": ("int", 8), "uintptr_t": ("uint", 8),
    "float": ("float", 4), "double": ("float", 8),
}  # fmt: skip


def _scalar(tokens: tuple[str, ...]) -> tuple[str, int] | None:
    words = [t for t in tokens if t != "int" or len(tokens) == 1]  # "unsigned long int" == "unsigned long"
    return _SCALARS.get(" ".join(words))


def worst(classes: list[str]) -> str:
    return min(classes, key=_RANK.__getitem__) if classes else COMPATIBLE


class TypeResolver:
    """Compares C type spellings modulo typedef names (and, on request, qualifiers)."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.typedefs = {t["name"]: t["type"] for t in manifest.get("typedefs", [])}

    def tokens(self, text: str, *, qualifiers: bool = True, depth: int = 0) -> tuple[str, ...]:
        out: list[str] = []
        prev = ""
        for tok in _TOKEN.findall(text):
            if not qualifiers and tok in _QUALIFIERS:
                continue
            target = self.typedefs.get(tok)
            if target is not None and prev not in _TAGS and depth < 8 and target != tok:
                out.extend(self.tokens(target, qualifiers=qualifiers, depth=depth + 1))
            else:
                out.append(tok)
            prev = tok
        return tuple(out)


def compare_types(old: str, new: str, old_r: TypeResolver, new_r: TypeResolver) -> tuple[str, str] | None:
    """None when identical, else (classification, note)."""
    if " ".join(_TOKEN.findall(old)) == " ".join(_TOKEN.findall(new)):
        return None
    if old_r.tokens(old) == new_r.tokens(new):
        return COMPATIBLE, "same type, spelled through a typedef"
    old_bare, new_bare = old_r.tokens(old, qualifiers=False), new_r.tokens(new, qualifiers=False)
    if old_bare == new_bare:
        return COMPATIBLE, "qualifier change only"
    old_scalar, new_scalar = _scalar(old_bare), _scalar(new_bare)
    if old_scalar and new_scalar:
        if old_scalar == new_scalar:
            return COMPATIBLE, "same width and signedness"
        return ABI_BREAK, "scalar width or signedness changed"
    return API_BREAK, "type changed"


def signature(fn: dict[str, Any]) -> str:
    """One-line C prototype of a function or callback entry."""
    params = [_param_text(p) for p in fn.get("params", [])]
    if fn.get("variadic"):
        params.append("...")
    ret = fn.get("return_type", "void")
    sep = "" if ret.endswith("*") else " "
    return f"{ret}{sep}{fn['name']}({', '.join(params) or 'void'})"


def _param_text(p: dict[str, Any]) -> str:
    type_, name = p.get("type", ""), p.get("name", "")
    if not name:
        return type_
    return f"{type_}{name}" if type_.endswith("*") else f"{type_} {name}"


# ------------------------------------------------------------------------------------------- entries


@dataclass
class Change:
    """One finding in a section (functions, structs, enums, ...); `name` is what changed."""

    name: str
    status: str  # "removed" | "added" | "changed" | "deprecated"
    classification: str
    kind: str = "function"
    old: str | None = None
    new: str | None = None
    details: list[str] = field(default_factory=list)
    hint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "classification": self.classification,
            "old": self.old,
            "new": self.new,
            "details": self.details,
        }
        if self.hint is not None:
            data["hint"] = self.hint
        data.update(self.extra)
        return data


SECTIONS = ("removed", "added", "changed", "deprecated", "structs", "enums", "defines", "typedefs", "callbacks")


@dataclass
class DiffReport:
    old_label: str
    new_label: str
    old_commit: str | None
    new_commit: str | None
    sections: dict[str, list[Change]] = field(default_factory=lambda: {s: [] for s in SECTIONS})

    def all_changes(self) -> list[Change]:
        return [c for s in SECTIONS for c in self.sections[s]]

    def count(self, classification: str) -> int:
        return sum(1 for c in self.all_changes() if c.classification == classification)

    @property
    def breaking(self) -> bool:
        return self.count(API_BREAK) + self.count(ABI_BREAK) > 0

    def summary(self) -> str:
        n = {s: len(self.sections[s]) for s in SECTIONS}
        return (
            f"{n['removed']} removed, {n['added']} added, {n['changed']} changed, "
            f"{n['deprecated']} newly deprecated functions; "
            f"{n['structs']} structs, {n['enums']} enums, {n['defines']} defines, "
            f"{n['typedefs']} typedefs, {n['callbacks']} callbacks changed; "
            f"{self.count(API_BREAK)} API breaks, {self.count(ABI_BREAK)} ABI breaks"
        )

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "old": {"source": self.old_label, "llama_cpp_commit": self.old_commit},
            "new": {"source": self.new_label, "llama_cpp_commit": self.new_commit},
            "summary": {
                **{s: len(self.sections[s]) for s in SECTIONS},
                "api_breaks": self.count(API_BREAK),
                "abi_breaks": self.count(ABI_BREAK),
                "breaking": self.breaking,
                "text": self.summary(),
            },
        }
        for s in SECTIONS:
            data[s] = [c.as_dict() for c in self.sections[s]]
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def to_markdown(self) -> str:
        return _render_markdown(self)


def _sorted(changes: list[Change]) -> list[Change]:
    return sorted(changes, key=lambda c: (_RANK[c.classification], c.name))


# ------------------------------------------------------------------------------------------- engine


def _by_name(manifest: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in manifest.get(key, [])}


def _compare_params(
    old: dict[str, Any], new: dict[str, Any], old_r: TypeResolver, new_r: TypeResolver
) -> tuple[list[str], list[str]]:
    """(details, classifications) for return type, parameters and variadic-ness."""
    details: list[str] = []
    classes: list[str] = []
    if "return_type" in old or "return_type" in new:
        verdict = compare_types(old.get("return_type", ""), new.get("return_type", ""), old_r, new_r)
        if verdict:
            classes.append(verdict[0])
            details.append(f"return type: `{old.get('return_type')}` -> `{new.get('return_type')}` ({verdict[1]})")
    old_p, new_p = old.get("params", []), new.get("params", [])
    # Align by name so one inserted parameter reads as "added", not as every later one retyped.
    removed: list[int] = []
    added: list[int] = []
    matcher = difflib.SequenceMatcher(a=[p["name"] for p in old_p], b=[p["name"] for p in new_p], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            for i, j in zip(range(i1, i2), range(j1, j2)):
                po, pn = old_p[i], new_p[j]
                label = f"parameter {j + 1} `{pn['name'] or '?'}`"
                verdict = compare_types(po["type"], pn["type"], old_r, new_r)
                if verdict:
                    classes.append(verdict[0])
                    details.append(f"{label}: `{po['type']}` -> `{pn['type']}` ({verdict[1]})")
                if po["name"] != pn["name"]:
                    classes.append(COMPATIBLE)
                    details.append(f"parameter {j + 1} renamed `{po['name']}` -> `{pn['name']}`")
            continue
        removed.extend(range(i1, i2))
        added.extend(range(j1, j2))
    moved = {old_p[i]["name"] for i in removed} & {new_p[j]["name"] for j in added} - {""}
    for i in removed:
        if old_p[i]["name"] in moved:
            j = next(j for j in added if new_p[j]["name"] == old_p[i]["name"])
            classes.append(API_BREAK)
            details.append(f"parameter `{old_p[i]['name']}` moved from position {i + 1} to {j + 1}")
            verdict = compare_types(old_p[i]["type"], new_p[j]["type"], old_r, new_r)
            if verdict:
                classes.append(verdict[0])
                details.append(f"parameter `{new_p[j]['name']}`: `{old_p[i]['type']}` -> `{new_p[j]['type']}`")
        else:
            classes.append(API_BREAK)
            details.append(f"parameter removed: `{_param_text(old_p[i])}` (was position {i + 1})")
    for j in added:
        if new_p[j]["name"] not in moved:
            classes.append(API_BREAK)
            details.append(f"parameter added: `{_param_text(new_p[j])}` at position {j + 1}")
    if bool(old.get("variadic")) != bool(new.get("variadic")):
        classes.append(API_BREAK)
        details.append("variadic: " + ("now takes `...`" if new.get("variadic") else "no longer takes `...`"))
    return details, classes


def _removed_hint(name: str, old_fn: dict[str, Any]) -> str | None:
    if name in REMOVED_FUNCTIONS:
        return REMOVED_FUNCTIONS[name]
    if old_fn.get("deprecated"):
        return f"old header said: {old_fn['deprecated']}"
    return None


def _diff_functions(report: DiffReport, old: dict[str, Any], new: dict[str, Any], old_r: TypeResolver,
                    new_r: TypeResolver) -> None:  # fmt: skip
    old_fns, new_fns = _by_name(old, "functions"), _by_name(new, "functions")
    for name in sorted(old_fns.keys() - new_fns.keys()):
        fn = old_fns[name]
        report.sections["removed"].append(
            Change(name, "removed", API_BREAK, old=signature(fn), hint=_removed_hint(name, fn))
        )
    for name in sorted(new_fns.keys() - old_fns.keys()):
        fn = new_fns[name]
        report.sections["added"].append(
            Change(name, "added", COMPATIBLE, new=signature(fn), hint=fn.get("deprecated") or None)
        )
    for name in sorted(old_fns.keys() & new_fns.keys()):
        fo, fn = old_fns[name], new_fns[name]
        details, classes = _compare_params(fo, fn, old_r, new_r)
        if details:
            report.sections["changed"].append(
                Change(name, "changed", worst(classes), old=signature(fo), new=signature(fn), details=details)
            )
        if fn.get("deprecated") is not None and fo.get("deprecated") is None:
            report.sections["deprecated"].append(
                Change(name, "deprecated", COMPATIBLE, old=signature(fo), new=signature(fn), hint=fn["deprecated"])
            )


def _removed_and_added(
    out: list[Change],
    olds: dict[str, dict[str, Any]],
    news: dict[str, dict[str, Any]],
    kind_of: Callable[[dict[str, Any]], str],
    text_of: Callable[[dict[str, Any]], str],
) -> None:
    """Entities only in the old version are API breaks; entities only in the new one are compatible."""
    for name in sorted(olds.keys() - news.keys()):
        out.append(Change(name, "removed", API_BREAK, kind=kind_of(olds[name]), old=text_of(olds[name])))
    for name in sorted(news.keys() - olds.keys()):
        out.append(Change(name, "added", COMPATIBLE, kind=kind_of(news[name]), new=text_of(news[name])))


def _struct_title(s: dict[str, Any]) -> str:
    return f"{s.get('kind', 'struct')} {s['name']}"


def _diff_structs(report: DiffReport, old: dict[str, Any], new: dict[str, Any], old_r: TypeResolver,
                  new_r: TypeResolver) -> None:  # fmt: skip
    olds, news = _by_name(old, "structs"), _by_name(new, "structs")
    out = report.sections["structs"]
    _removed_and_added(out, olds, news, lambda s: s.get("kind", "struct"), _layout)
    for name in sorted(olds.keys() & news.keys()):
        so, sn = olds[name], news[name]
        details: list[str] = []
        classes: list[str] = []
        if so.get("kind") != sn.get("kind"):
            classes.append(API_BREAK)
            details.append(f"kind: {so.get('kind')} -> {sn.get('kind')}")
        if so.get("opaque") != sn.get("opaque"):
            classes.append(API_BREAK if sn.get("opaque") else COMPATIBLE)
            details.append("now opaque (fields hidden)" if sn.get("opaque") else "now defined (was opaque)")
        if not so.get("opaque") and not sn.get("opaque"):
            _diff_fields(so, sn, old_r, new_r, details, classes)
        if details:
            out.append(
                Change(
                    name,
                    "changed",
                    worst(classes),
                    kind=sn.get("kind", "struct"),
                    old=_layout(so),
                    new=_layout(sn),
                    details=details,
                    extra={
                        "old_size": so.get("size"),
                        "new_size": sn.get("size"),
                        "old_fields": so.get("fields", []),
                        "new_fields": sn.get("fields", []),
                    },
                )
            )


def _layout(s: dict[str, Any]) -> str:
    if s.get("opaque"):
        return f"{_struct_title(s)} (opaque)"
    size = f"size {s['size']}, " if s.get("size") is not None else ""
    return f"{_struct_title(s)} /* {size}{len(s.get('fields', []))} fields */"


def _diff_fields(so: dict[str, Any], sn: dict[str, Any], old_r: TypeResolver, new_r: TypeResolver,
                 details: list[str], classes: list[str]) -> None:  # fmt: skip
    fo = {f["name"]: f for f in so.get("fields", [])}
    fn = {f["name"]: f for f in sn.get("fields", [])}
    for name in [f["name"] for f in so.get("fields", []) if f["name"] not in fn]:
        classes.append(API_BREAK)
        details.append(f"field removed: `{fo[name]['type']} {name}`")
    for name in [f["name"] for f in sn.get("fields", []) if f["name"] not in fo]:
        classes.append(ABI_BREAK)
        where = f" at offset {fn[name]['offset']}" if fn[name].get("offset") is not None else ""
        details.append(f"field added: `{fn[name]['type']} {name}`{where}")
    common_old = [f["name"] for f in so.get("fields", []) if f["name"] in fn]
    common_new = [f["name"] for f in sn.get("fields", []) if f["name"] in fo]
    if common_old != common_new:
        classes.append(ABI_BREAK)
        details.append(f"fields reordered: {', '.join(common_old)} -> {', '.join(common_new)}")
    moved: list[str] = []
    for name in common_new:
        a, b = fo[name], fn[name]
        verdict = compare_types(a["type"], b["type"], old_r, new_r)
        if verdict:
            classes.append(verdict[0])
            details.append(f"field `{name}`: `{a['type']}` -> `{b['type']}` ({verdict[1]})")
        if a.get("bitwidth") != b.get("bitwidth"):
            classes.append(ABI_BREAK)
            details.append(f"field `{name}`: bit width {a.get('bitwidth')} -> {b.get('bitwidth')}")
        if a.get("offset") is not None and b.get("offset") is not None and a["offset"] != b["offset"]:
            moved.append(f"{name} {a['offset']}->{b['offset']}")
    if moved:
        classes.append(ABI_BREAK)
        details.append(f"offset changed for {len(moved)} field(s): {', '.join(moved)}")
    if so.get("size") is not None and sn.get("size") is not None and so["size"] != sn["size"]:
        classes.append(ABI_BREAK)
        details.append(f"size {so['size']} -> {sn['size']} bytes")
    if so.get("align") is not None and sn.get("align") is not None and so["align"] != sn["align"]:
        classes.append(ABI_BREAK)
        details.append(f"alignment {so['align']} -> {sn['align']}")


def _diff_enums(report: DiffReport, old: dict[str, Any], new: dict[str, Any]) -> None:
    olds, news = _by_name(old, "enums"), _by_name(new, "enums")
    out = report.sections["enums"]
    _removed_and_added(out, olds, news, lambda _: "enum", _enum_text)
    for name in sorted(olds.keys() & news.keys()):
        co = {c["name"]: c["value"] for c in olds[name].get("constants", [])}
        cn = {c["name"]: c["value"] for c in news[name].get("constants", [])}
        details: list[str] = []
        classes: list[str] = []
        for c in sorted(co.keys() - cn.keys(), key=co.__getitem__):
            classes.append(API_BREAK)
            details.append(f"constant removed: `{c} = {co[c]}`")
        moved = [f"{c} {co[c]}->{cn[c]}" for c in sorted(cn.keys() & co.keys(), key=cn.__getitem__) if co[c] != cn[c]]
        if moved:
            classes.append(ABI_BREAK)
            details.append(f"value changed for {len(moved)} constant(s): {', '.join(moved)}")
        for c in sorted(cn.keys() - co.keys(), key=cn.__getitem__):
            classes.append(COMPATIBLE)
            details.append(f"constant added: `{c} = {cn[c]}`")
        if details:
            out.append(
                Change(
                    name,
                    "changed",
                    worst(classes),
                    kind="enum",
                    old=f"enum {name} /* {len(co)} constants */",
                    new=f"enum {name} /* {len(cn)} constants */",
                    details=details,
                    extra={
                        "old_constants": olds[name].get("constants", []),
                        "new_constants": news[name].get("constants", []),
                    },
                )
            )


def _enum_text(e: dict[str, Any]) -> str:
    consts = ", ".join(f"{c['name']} = {c['value']}" for c in e.get("constants", []))
    return f"enum {e['name']} {{ {consts} }}"


def _diff_defines(report: DiffReport, old: dict[str, Any], new: dict[str, Any]) -> None:
    olds, news = _by_name(old, "defines"), _by_name(new, "defines")
    out = report.sections["defines"]
    _removed_and_added(out, olds, news, lambda _: "define", _define_text)
    for name in sorted(olds.keys() & news.keys()):
        a, b = olds[name], news[name]
        if a.get("value") != b.get("value"):
            out.append(
                Change(
                    name,
                    "changed",
                    ABI_BREAK,
                    kind="define",
                    old=_define_text(a),
                    new=_define_text(b),
                    details=[f"value {a.get('value')!r} -> {b.get('value')!r} (compiled into callers)"],
                )
            )


def _define_text(d: dict[str, Any]) -> str:
    return f"#define {d['name']} {d.get('expr', d.get('value'))}"


def _diff_typedefs(report: DiffReport, old: dict[str, Any], new: dict[str, Any], old_r: TypeResolver,
                   new_r: TypeResolver) -> None:  # fmt: skip
    olds, news = _by_name(old, "typedefs"), _by_name(new, "typedefs")
    out = report.sections["typedefs"]
    _removed_and_added(out, olds, news, lambda _: "typedef", lambda t: f"typedef {t['type']} {t['name']}")
    for name in sorted(olds.keys() & news.keys()):
        verdict = compare_types(olds[name]["type"], news[name]["type"], old_r, new_r)
        if verdict:
            out.append(
                Change(
                    name,
                    "changed",
                    verdict[0],
                    kind="typedef",
                    old=f"typedef {olds[name]['type']} {name}",
                    new=f"typedef {news[name]['type']} {name}",
                    details=[f"underlying type: `{olds[name]['type']}` -> `{news[name]['type']}` ({verdict[1]})"],
                )
            )


def _callback_text(cb: dict[str, Any]) -> str:
    params = [_param_text(p) for p in cb.get("params", [])] + (["..."] if cb.get("variadic") else [])
    return f"typedef {cb.get('return_type', 'void')} (*{cb['name']})({', '.join(params) or 'void'})"


def _diff_callbacks(report: DiffReport, old: dict[str, Any], new: dict[str, Any], old_r: TypeResolver,
                    new_r: TypeResolver) -> None:  # fmt: skip
    olds, news = _by_name(old, "callbacks"), _by_name(new, "callbacks")
    out = report.sections["callbacks"]
    _removed_and_added(out, olds, news, lambda _: "callback", _callback_text)
    for name in sorted(olds.keys() & news.keys()):
        details, classes = _compare_params(olds[name], news[name], old_r, new_r)
        if details:
            out.append(
                Change(
                    name,
                    "changed",
                    worst(classes),
                    kind="callback",
                    old=_callback_text(olds[name]),
                    new=_callback_text(news[name]),
                    details=details,
                )
            )


def diff_manifests(
    old: dict[str, Any], new: dict[str, Any], old_label: str = "old", new_label: str = "new"
) -> DiffReport:
    """Everything that changed from `old` to `new`, classified; sections sorted breaks-first, then by name."""
    report = DiffReport(old_label, new_label, old.get("llama_cpp_commit"), new.get("llama_cpp_commit"))
    old_r, new_r = TypeResolver(old), TypeResolver(new)
    _diff_functions(report, old, new, old_r, new_r)
    _diff_structs(report, old, new, old_r, new_r)
    _diff_enums(report, old, new)
    _diff_defines(report, old, new)
    _diff_typedefs(report, old, new, old_r, new_r)
    _diff_callbacks(report, old, new, old_r, new_r)
    for s in SECTIONS:
        report.sections[s] = _sorted(report.sections[s])
    return report


# ---------------------------------------------------------------------------------------- markdown

_HEADINGS = {
    "removed": "Removed functions",
    "changed": "Changed function signatures",
    "structs": "Structs and unions",
    "enums": "Enums",
    "defines": "Defines",
    "typedefs": "Typedefs",
    "callbacks": "Callback types",
    "deprecated": "Newly deprecated functions",
    "added": "Added functions",
}


def _short(commit: str | None) -> str:
    return f" (llama.cpp {commit[:10]})" if commit else ""


def _bullet(c: Change) -> list[str]:
    text = c.old if c.status == "removed" else c.new
    hint = f" -> {c.hint}" if c.hint else ""
    return [f"- `{c.name}` ({c.status}, {_LABEL[c.classification]}){hint}  ", f"  `{text}`"]


def _render_markdown(report: DiffReport) -> str:
    lines = [
        "# llama.cpp API diff",
        "",
        f"- old: `{report.old_label}`{_short(report.old_commit)}",
        f"- new: `{report.new_label}`{_short(report.new_commit)}",
        "",
        f"**Summary:** {report.summary()}.",
    ]
    # Breaking sections first: a maintainer reads what must change before what was added.
    for section in (
        "removed",
        "changed",
        "structs",
        "enums",
        "defines",
        "typedefs",
        "callbacks",
        "deprecated",
        "added",
    ):
        changes = report.sections[section]
        if not changes:
            continue
        lines += ["", f"## {_HEADINGS[section]} ({len(changes)})", ""]
        for c in (c for c in changes if c.status != "changed"):
            lines += _bullet(c)
        for c in (c for c in changes if c.status == "changed"):
            lines += ["", f"### `{c.name}`: {_LABEL[c.classification]}", "", "```c", f"old: {c.old}", f"new: {c.new}"]
            lines += ["```", *(f"- {d}" for d in c.details)]
    return "\n".join(lines).rstrip() + "\n"
