"""Image and audio bytes checked in Python before libmtmd decodes them.

libmtmd decodes images with stb_image, which allocates `width * height * 3` bytes from the header before it reads
a pixel: a 60000x60000 PNG header of a few hundred bytes asks for 10 GB. It also accepts some truncated files and
hands back whatever it decoded. `check_image` reads only the headers (and, for PNG, every chunk's CRC; for the
other formats, the end marker) and refuses anything that is not a complete image of a format stb_image decodes,
or whose size exceeds the named limits. `check_audio` does the same for the audio formats libmtmd's miniaudio
reads. Errors are `MediaError` (a ChatMessageError: a 400 on the server).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from llamarcp.errors import MediaError

__all__ = [
    "MAX_AUDIO_BYTES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE",
    "MAX_IMAGES_PER_REQUEST",
    "MAX_TOTAL_PIXELS_PER_REQUEST",
    "ImageInfo",
    "check_audio",
    "check_image",
    "check_request_images",
]

#: Largest encoded image accepted (a data URI, a file, a download).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Largest width or height (stb_image's own limit is 2^24).
MAX_IMAGE_SIDE = 16384
#: Most pixels in one image (stb_image allocates 3 bytes per pixel before decoding).
MAX_IMAGE_PIXELS = 40_000_000
#: Most images (and audio clips) in one request.
MAX_IMAGES_PER_REQUEST = 16
#: Most pixels of all the images of one request together.
MAX_TOTAL_PIXELS_PER_REQUEST = 100_000_000
#: Largest encoded audio clip accepted.
MAX_AUDIO_BYTES = 50 * 1024 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def check_image(data: bytes, what: str = "image") -> ImageInfo:
    """The format and size of a complete PNG, JPEG, GIF or BMP within the limits; MediaError otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MediaError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise MediaError(f"{what} is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise MediaError(f"{what} is {len(data)} bytes, more than the {MAX_IMAGE_BYTES}-byte limit (MAX_IMAGE_BYTES)")
    if data.startswith(_PNG_SIGNATURE):
        info = _png(data, what)
    elif data.startswith(b"\xff\xd8\xff"):
        info = _jpeg(data, what)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        info = _gif(data, what)
    elif data.startswith(b"BM"):
        info = _bmp(data, what)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        raise MediaError(f"{what} is WebP, which libmtmd cannot decode (use PNG, JPEG, GIF or BMP)")
    else:
        raise MediaError(f"{what} is not a PNG, JPEG, GIF or BMP image (unrecognised bytes {data[:8]!r})")
    return info


def _sized(fmt: str, width: int, height: int, what: str) -> ImageInfo:
    """The header's size checked against the limits at once, before the rest of the file is looked at."""
    info = ImageInfo(fmt, width, height)
    if width <= 0 or height <= 0:
        raise MediaError(f"{what}: {fmt} header gives an empty {width}x{height} image")
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise MediaError(
            f"{what} is {width}x{height}; a side above {MAX_IMAGE_SIDE} pixels is refused (MAX_IMAGE_SIDE)"
        )
    if info.pixels > MAX_IMAGE_PIXELS:
        raise MediaError(
            f"{what} is {width}x{height} = {info.pixels} pixels, above the {MAX_IMAGE_PIXELS} limit (MAX_IMAGE_PIXELS)"
        )
    return info


def check_request_images(infos: list[ImageInfo]) -> None:
    """The per-request limits (count, total pixels)."""
    if len(infos) > MAX_IMAGES_PER_REQUEST:
        raise MediaError(
            f"{len(infos)} images in one request; at most {MAX_IMAGES_PER_REQUEST} (MAX_IMAGES_PER_REQUEST)"
        )
    total = sum(i.pixels for i in infos)
    if total > MAX_TOTAL_PIXELS_PER_REQUEST:
        raise MediaError(
            f"the request's images hold {total} pixels together, above {MAX_TOTAL_PIXELS_PER_REQUEST} "
            "(MAX_TOTAL_PIXELS_PER_REQUEST)"
        )


def _truncated(what: str, fmt: str, detail: str) -> MediaError:
    return MediaError(f"{what} is a truncated or corrupt {fmt}: {detail}")


def _png(data: bytes, what: str) -> ImageInfo:
    pos = len(_PNG_SIGNATURE)
    width = height = -1
    seen_idat = False
    first = True
    while True:
        if pos + 8 > len(data):
            raise _truncated(what, "PNG", "it ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise _truncated(what, "PNG", f"chunk {kind!r} runs past the end of the file")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(kind + body) != crc:
            raise _truncated(what, "PNG", f"chunk {kind!r} fails its CRC check")
        if first:
            if kind != b"IHDR" or length != 13:
                raise _truncated(what, "PNG", "the first chunk is not a 13-byte IHDR")
            width, height, depth, color = struct.unpack_from(">IIBB", body)
            if depth not in (1, 2, 4, 8, 16) or color not in (0, 2, 3, 4, 6):
                raise _truncated(what, "PNG", f"bit depth {depth} / colour type {color} is not valid")
            _sized("png", width, height, what)
            first = False
        elif kind == b"IDAT":
            seen_idat = True
        elif kind == b"IEND":
            break
        pos = end
    if not seen_idat:
        raise _truncated(what, "PNG", "it has no image data (IDAT)")
    return _sized("png", width, height, what)


# JPEG start-of-frame markers (baseline, progressive, ...): not DHT (C4), JPG (C8) or DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(data: bytes, what: str) -> ImageInfo:
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise _truncated(what, "JPEG", "it does not end with the end-of-image marker")
    pos = 2
    size: tuple[int, int] | None = None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise _truncated(what, "JPEG", f"no segment marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > len(data):
            raise _truncated(what, "JPEG", f"segment {marker:#04x} runs past the end of the file")
        if marker in _SOF_MARKERS:
            if length < 8:
                raise _truncated(what, "JPEG", "its frame header is too short")
            height, width = struct.unpack_from(">HH", data, pos + 5)
            components = data[pos + 9]
            if components not in (1, 3):
                raise MediaError(f"{what} is a JPEG with {components} colour components (CMYK is not supported)")
            size = (width, height)
            _sized("jpeg", width, height, what)
        if marker == 0xDA:  # start of scan: entropy-coded data follows up to the end marker
            break
        pos += 2 + length
    if size is None:
        raise _truncated(what, "JPEG", "it has no frame header before its image data")
    return _sized("jpeg", *size, what)


def _gif(data: bytes, what: str) -> ImageInfo:
    if len(data) < 14:
        raise _truncated(what, "GIF", "it is shorter than its header")
    width, height = struct.unpack_from("<HH", data, 6)
    _sized("gif", width, height, what)
    if not data.rstrip(b"\x00").endswith(b"\x3b"):
        raise _truncated(what, "GIF", "it does not end with the trailer byte")
    if b"\x2c" not in data[13:]:
        raise _truncated(what, "GIF", "it has no image descriptor")
    return _sized("gif", width, height, what)


def _bmp(data: bytes, what: str) -> ImageInfo:
    if len(data) < 26:
        raise _truncated(what, "BMP", "it is shorter than its header")
    offset, header_size = struct.unpack_from("<II", data, 10)
    if header_size == 12:
        width, height = struct.unpack_from("<HH", data, 18)
        bpp = struct.unpack_from("<H", data, 24)[0]
    elif header_size >= 40 and len(data) >= 30:
        width, height = struct.unpack_from("<ii", data, 18)
        bpp = struct.unpack_from("<H", data, 28)[0]
        compression = struct.unpack_from("<I", data, 30)[0] if len(data) >= 34 else 0
        height = abs(height)
        if compression not in (0, 3):  # RLE: the size cannot be checked from the header
            raise MediaError(f"{what} is a compressed (RLE) BMP; use PNG or an uncompressed BMP")
    else:
        raise _truncated(what, "BMP", f"unknown info header size {header_size}")
    _sized("bmp", width, height, what)
    if bpp not in (1, 4, 8, 16, 24, 32):
        raise _truncated(what, "BMP", f"{bpp} bits per pixel is not valid")
    row = ((width * bpp + 31) // 32) * 4
    if width > 0 and height > 0 and offset + row * height > len(data):
        raise _truncated(
            what, "BMP", f"its {width}x{height} pixels need {offset + row * height} bytes, it has {len(data)}"
        )
    return _sized("bmp", width, height, what)


def check_audio(data: bytes, what: str = "audio") -> str:
    """The format ("wav", "mp3", "flac") of an audio clip libmtmd can decode; MediaError otherwise."""
    if not data:
        raise MediaError(f"{what} is empty")
    if len(data) > MAX_AUDIO_BYTES:
        raise MediaError(f"{what} is {len(data)} bytes, more than the {MAX_AUDIO_BYTES}-byte limit (MAX_AUDIO_BYTES)")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        (riff_size,) = struct.unpack_from("<I", data, 4)
        if riff_size + 8 > len(data):
            raise _truncated(what, "WAV", f"its header announces {riff_size + 8} bytes, it has {len(data)}")
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    raise MediaError(f"{what} is not a WAV, MP3 or FLAC clip (unrecognised bytes {data[:8]!r})")
