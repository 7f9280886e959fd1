"""Seeded GGUF mutation fuzzer: mutated tiny models must load or fail with a Python error, never kill the process.

Each case patches the header of a tiny model (tests/tiny_model.py): a hyperparameter set to an edge value, a
value type or length rewritten, a tensor's dims/type/offset changed, random header bytes flipped, or the file
truncated. Cases run in worker subprocesses (a crash takes only the worker down), each load followed by a short
generation (or an embedding for the BERT base) since some bad values only assert at the first decode. A case
that kills its worker is re-run alone in a fresh process to confirm it, then reported with its mutation.

    LLAMARCP_GGUF_FUZZ_CASES=2000 pytest -s tests/test_gguf_fuzz.py   # a longer run; the seed is
    LLAMARCP_GGUF_FUZZ_SEED=...                                       # printed with the figures
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CASES = int(os.environ.get("LLAMARCP_GGUF_FUZZ_CASES", "300"))
SEED = int(os.environ.get("LLAMARCP_GGUF_FUZZ_SEED", "15"))
#: Liveness bound for one case (a load plus two tokens takes well under a second); a case past it is a hang.
CASE_TIMEOUT_S = 120.0
#: Address-space cap of a worker: a runaway allocation fails instead of swapping the machine.
WORKER_MEMORY_BYTES = 8 * 1024**3

_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass
class Sites:
    """Byte offsets of the parts of a GGUF header a mutation can target."""

    scalars: list[tuple[int, str, str]]  # (offset, struct format, key)
    types: list[tuple[int, str]]  # (offset of a value-type field, key)
    lengths: list[tuple[int, str]]  # (offset of a string/array length, key)
    tensor_fields: list[tuple[int, str, str]]  # (offset, struct format, "tensor.part")
    counts: list[int]  # offsets of version, tensor_count, kv_count
    data_offset: int
    size: int


def find_sites(path: Path) -> Sites:
    import gguf

    reader = gguf.GGUFReader(str(path))
    sites = Sites([], [], [], [], [], int(reader.data_offset), path.stat().st_size)
    for key, fld in reader.fields.items():
        offsets = [fld.offset]
        for part in fld.parts:
            offsets.append(offsets[-1] + part.nbytes)
        if key.startswith("GGUF."):
            sites.counts.append(fld.offset)
            continue
        sites.types.append((offsets[2], key))
        kind = int(fld.types[0])
        if kind == 8:  # string: length then bytes
            sites.lengths.append((offsets[3], key))
        elif kind == 9:  # array: element type, count, items
            sites.types.append((offsets[3], key + "[type]"))
            sites.lengths.append((offsets[4], key))
            if int(fld.types[-1]) in _SCALAR_FORMATS and len(fld.data) <= 64:
                fmt = _SCALAR_FORMATS[int(fld.types[-1])]
                for i in fld.data:
                    sites.scalars.append((offsets[i], fmt, f"{key}[{i}]"))
        elif kind in _SCALAR_FORMATS:
            sites.scalars.append((offsets[fld.data[0]], _SCALAR_FORMATS[kind], key))
    for tensor in reader.tensors:
        parts = tensor.field.parts
        offsets = [tensor.field.offset]
        for part in parts:
            offsets.append(offsets[-1] + part.nbytes)
        sites.tensor_fields.append((offsets[2], "<I", f"{tensor.name}.n_dims"))
        for d in range(int(parts[2][0])):
            sites.tensor_fields.append((offsets[3] + 8 * d, "<Q", f"{tensor.name}.ne[{d}]"))
        sites.tensor_fields.append((offsets[4], "<I", f"{tensor.name}.type"))
        sites.tensor_fields.append((offsets[5], "<Q", f"{tensor.name}.offset"))
    return sites


def _edge_value(rng: random.Random, fmt: str) -> Any:
    code = fmt[1]
    if code == "f" or code == "d":
        return rng.choice([0.0, -0.0, -1.0, -1e-6, 1e-30, 1e30, 3.4e38, math.nan, math.inf, -math.inf, rng.random()])
    bits = struct.calcsize(fmt) * 8
    signed = code.islower()
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    pool = [0, 1, 2, 3, 7, 8, 16, 255, 256, 511, 512, 513, 1000, 1024, 1025, 65535, 2**31 - 1, 2**31, 2**32 - 1]
    pool += [2**63, 2**64 - 1, -1, -2, -(2**31), rng.randint(low, high)]
    return rng.choice([v for v in pool if low <= v <= high])


def make_case(sites: Sites, seed: int, index: int) -> tuple[str, list[tuple[int, bytes]] | int]:
    """(description, patches) for case `index`: [(offset, bytes), ...], or an int: truncate to that length."""
    rng = random.Random(f"{seed}:{index}")
    kind = rng.choices(
        ["hparam", "scalar", "type", "length", "tensor", "flip", "count", "truncate"],
        weights=[30, 10, 10, 10, 15, 15, 4, 6],
    )[0]
    if kind == "truncate":
        cut = rng.choice([rng.randrange(0, sites.data_offset), rng.randrange(sites.data_offset, sites.size)])
        return f"truncate to {cut} bytes", cut
    if kind == "flip":
        patches = []
        for _ in range(rng.randint(1, 8)):
            offset = rng.randrange(0, sites.data_offset)
            patches.append((offset, bytes([rng.randrange(256)])))
        return f"flip bytes at {[p[0] for p in patches]}", patches
    if kind in ("hparam", "scalar"):
        pool = sites.scalars
        if kind == "hparam":
            pool = [s for s in sites.scalars if not s[2].startswith(("tokenizer.", "general."))] or pool
        offset, fmt, key = rng.choice(pool)
        value = _edge_value(rng, fmt)
        return f"{key} = {value!r}", [(offset, struct.pack(fmt, value))]
    if kind == "type":
        offset, key = rng.choice(sites.types)
        value = rng.choice([*range(14), 2**32 - 1, rng.randrange(2**32)])
        return f"type of {key} = {value}", [(offset, struct.pack("<I", value))]
    if kind == "length":
        offset, key = rng.choice(sites.lengths)
        value = _edge_value(rng, "<Q")
        return f"length of {key} = {value}", [(offset, struct.pack("<Q", value))]
    if kind == "tensor":
        offset, fmt, name = rng.choice(sites.tensor_fields)
        value = _edge_value(rng, fmt) if rng.random() < 0.8 else rng.randrange(43)
        return f"{name} = {value}", [(offset, struct.pack(fmt, value))]
    offset = rng.choice(sites.counts)
    value = _edge_value(rng, "<Q" if offset > 4 else "<I")
    return f"header count at {offset} = {value}", [(offset, struct.pack("<Q" if offset > 4 else "<I", value))]


# -- worker side -------------------------------------------------------------------------------------------------


def _run_worker(base: Path, embedding: bool, seed: int, indexes: list[int]) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    from llamarcp import Llama

    if os.environ.get("LLAMARCP_GGUF_FUZZ_BASELINE"):  # measure llama.cpp alone: no header checks in Python
        import llamarcp._core

        llamarcp._core.check_gguf_hparams = lambda *args, **kwargs: None  # type: ignore[assignment]
    sites = find_sites(base)
    original = base.read_bytes()
    work = Path(tempfile.mkdtemp(prefix="llamarcp-fuzz-"))
    try:
        target = work / "case.gguf"
        target.write_bytes(original)
        for index in indexes:
            description, patches = make_case(sites, seed, index)
            path = target
            if isinstance(patches, int):
                path = work / "truncated.gguf"
                path.write_bytes(original[:patches])
            else:
                with target.open("r+b") as handle:
                    for offset, data in patches:
                        handle.seek(offset)
                        handle.write(data)
            print(json.dumps({"start": index}), flush=True)
            try:
                with Llama(str(path), n_ctx=64, n_batch=64, n_threads=1, embedding=embedding, verbose=False) as llm:
                    if embedding:
                        llm.embed("hello world")
                    else:
                        llm("hello", max_tokens=2, temperature=0)
                status, detail = "loaded", ""
            except Exception as exc:  # every Python exception is a clean refusal here; signals are what we hunt
                status, detail = "clean", f"{type(exc).__name__}: {str(exc)[:160]}"
            print(json.dumps({"done": index, "status": status, "what": description, "detail": detail}), flush=True)
            if not isinstance(patches, int):
                with target.open("r+b") as handle:
                    for offset, data in patches:
                        handle.seek(offset)
                        handle.write(original[offset : offset + len(data)])
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- parent side -------------------------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    tried: int = 0
    clean: int = 0
    loaded: int = 0
    signals: list[str] | None = None
    hangs: list[str] | None = None

    def line(self) -> str:
        return (
            f"GGUF fuzz seed {SEED}: {self.tried} cases tried, {self.clean} clean errors, {self.loaded} loaded, "
            f"{len(self.signals or [])} signals, {len(self.hangs or [])} hangs"
        )


def _start_worker(base: Path, embedding: bool, indexes: list[int]) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--worker", str(base), str(int(embedding)), str(SEED)]
    command += [str(i) for i in indexes]
    env = dict(os.environ, GGML_NO_BACKTRACE="1")  # an abort would otherwise attach gdb to print a backtrace
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True, env=env
    )


def _run_cases(base: Path, embedding: bool, indexes: list[int], report: FuzzReport) -> None:
    import selectors

    pending = list(indexes)
    while pending:
        proc = _start_worker(base, embedding, pending)
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        current: int | None = None
        hung = False
        while True:
            if not selector.select(timeout=CASE_TIMEOUT_S):
                hung = True
                break
            line = proc.stdout.readline()
            if not line:
                break
            if not line.startswith("{"):
                continue  # anything llama.cpp itself printed
            message = json.loads(line)
            if "start" in message:
                current = message["start"]
                continue
            report.tried += 1
            report.clean += message["status"] == "clean"
            report.loaded += message["status"] == "loaded"
            pending.remove(message["done"])
            current = None
        if hung:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        selector.close()
        proc.stdout.close()
        if current is None:
            if proc.returncode != 0 and pending:
                raise AssertionError(f"fuzz worker exited with {proc.returncode} between cases")
            continue
        # The worker died (or hung) inside case `current`: confirm it alone in a fresh process, then move on.
        pending.remove(current)
        report.tried += 1
        sites = find_sites(base)
        description = make_case(sites, SEED, current)[0]
        entry = f"case {current} ({base.name}): {description}"
        if hung:
            assert report.hangs is not None
            report.hangs.append(entry)
        else:
            assert report.signals is not None
            report.signals.append(f"{entry} -> exit {proc.returncode}")


def run_fuzz(llama_base: Path, bert_base: Path, cases: int) -> FuzzReport:
    report = FuzzReport(signals=[], hangs=[])
    n_bert = cases // 5
    _run_cases(llama_base, False, list(range(cases - n_bert)), report)
    _run_cases(bert_base, True, list(range(cases - n_bert, cases)), report)
    return report


def test_make_case_is_deterministic(tiny_model_path: Path) -> None:
    sites = find_sites(tiny_model_path)
    assert sites.scalars and sites.tensor_fields and 0 < sites.data_offset < sites.size
    assert [make_case(sites, 3, i) for i in range(20)] == [make_case(sites, 3, i) for i in range(20)]
    assert make_case(sites, 3, 0) != make_case(sites, 4, 0) or make_case(sites, 3, 1) != make_case(sites, 4, 1)


def test_mutated_gguf_files_never_kill_the_process(tiny_model_path: Path, tiny_bert_path: Path) -> None:
    report = run_fuzz(tiny_model_path, tiny_bert_path, CASES)
    print(report.line())
    assert report.tried == CASES
    assert report.signals == [], "\n".join(report.signals or [])
    assert report.hangs == [], "\n".join(report.hangs or [])
    # Both outcomes must occur, or the mutations are too mild (all load) or too wild (all refused).
    assert report.clean > 0 and report.loaded > 0, report.line()


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    _run_worker(Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), [int(i) for i in sys.argv[5:]])
elif __name__ == "__main__":
    pytest.main([__file__, "-s", *sys.argv[1:]])
