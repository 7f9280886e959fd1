"""Small image files written byte by byte for the multimodal tests (no imaging library needed)."""

from __future__ import annotations

import random
import struct
import zlib


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming `width` x `height` RGB pixels (no image data follows)."""
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A complete RGB PNG of random pixels (the seed picks them)."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + bytes(rng.randrange(256) for _ in range(3 * width)) for _ in range(height))
    return png_header(width, height) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def bmp(width: int, height: int, seed: int = 0) -> bytes:
    """A complete 24-bit BMP of random pixels."""
    rng = random.Random(seed)
    row = ((width * 24 + 31) // 32) * 4
    pixels = b"".join(bytes(rng.randrange(256) for _ in range(3 * width)).ljust(row, b"\0") for _ in range(height))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + info + pixels


def wav(seconds: float = 0.5, seed: int = 0, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV of random noise."""
    import io
    import wave

    rng = random.Random(seed)
    frames = b"".join(struct.pack("<h", rng.randrange(-8000, 8000)) for _ in range(int(seconds * rate)))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buf.getvalue()
