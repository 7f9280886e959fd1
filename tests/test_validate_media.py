"""llamarcp.validate.media and multimodal.load_media: image bytes are checked before libmtmd (stb_image) sees them."""

from __future__ import annotations

import base64
import http.server
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from media_files import bmp, png, png_header

from llamarcp.errors import ChatMessageError, MediaError
from llamarcp.multimodal import load_media, split_media_messages
from llamarcp.validate import media
from llamarcp.validate.media import ImageInfo, check_audio, check_image, check_request_images


def test_complete_images_pass_with_format_and_size() -> None:
    assert check_image(png(7, 5)) == ImageInfo("png", 7, 5)
    assert check_image(bmp(6, 4)) == ImageInfo("bmp", 6, 4)
    gif = (
        b"GIF89a"
        + (3).to_bytes(2, "little")
        + (2).to_bytes(2, "little")
        + b"\x00\x00\x00"
        + b"\x2c"
        + b"\0" * 9
        + b"\x3b"
    )
    assert check_image(gif) == ImageInfo("gif", 3, 2)
    jpeg = (
        b"\xff\xd8" + b"\xff\xc0\x00\x11\x08" + (9).to_bytes(2, "big") + (12).to_bytes(2, "big") + b"\x03" + b"\0" * 9
    )
    jpeg += b"\xff\xda\x00\x02" + b"\x12\x34" + b"\xff\xd9"
    assert check_image(jpeg) == ImageInfo("jpeg", 12, 9)


def test_a_giant_png_header_is_refused_without_allocating() -> None:
    header = png_header(60000, 60000) + b"\0" * 64
    tracemalloc.start()
    try:
        with pytest.raises(MediaError, match="60000x60000"):
            check_image(header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # a header check, not a 10 GB decode
    with pytest.raises(MediaError, match="MAX_IMAGE_PIXELS"):
        check_image(png_header(8000, 8000))
    with pytest.raises(MediaError, match="MAX_IMAGE_SIDE"):
        check_image(png_header(media.MAX_IMAGE_SIDE + 1, 1))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"hello, this is text", "not a PNG, JPEG, GIF or BMP"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "WebP"),
        (png(8, 8)[:-20], "truncated or corrupt PNG"),  # cut before IEND
        (png(8, 8)[:40], "truncated or corrupt PNG"),
        (png_header(8, 8), "truncated or corrupt PNG"),  # no IDAT, no IEND
        (png(8, 8)[:45] + b"XXXX" + png(8, 8)[49:], "CRC"),  # IDAT corrupted
        (png_header(0, 8), "empty 0x8"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\0" * 20, "end-of-image marker"),
        (bmp(16, 16)[:200], "truncated or corrupt BMP"),
        (b"GIF89a\x10\x00\x10\x00" + b"\0" * 10, "trailer"),
    ],
    ids=[
        "empty",
        "text",
        "webp",
        "png-cut",
        "png-short",
        "png-no-data",
        "png-crc",
        "png-zero",
        "jpeg-cut",
        "bmp-cut",
        "gif-cut",
    ],
)
def test_garbage_and_truncated_images_are_errors(data: bytes, words: str) -> None:
    with pytest.raises(MediaError, match=words):
        check_image(data)


def test_request_limits_are_named_constants() -> None:
    small = ImageInfo("png", 10, 10)
    check_request_images([small] * media.MAX_IMAGES_PER_REQUEST)
    with pytest.raises(MediaError, match="MAX_IMAGES_PER_REQUEST"):
        check_request_images([small] * (media.MAX_IMAGES_PER_REQUEST + 1))
    big = ImageInfo("png", 6000, 6000)
    with pytest.raises(MediaError, match="MAX_TOTAL_PIXELS_PER_REQUEST"):
        check_request_images([big] * 3)
    assert issubclass(MediaError, ChatMessageError)  # a 400 on the server


def test_audio_formats() -> None:
    wav = b"RIFF" + (36).to_bytes(4, "little") + b"WAVEfmt " + b"\0" * 28
    assert check_audio(wav) == "wav"
    assert check_audio(b"fLaC" + b"\0" * 10) == "flac"
    assert check_audio(b"ID3" + b"\0" * 10) == "mp3"
    with pytest.raises(MediaError, match="truncated"):
        check_audio(b"RIFF" + (9999).to_bytes(4, "little") + b"WAVE")
    with pytest.raises(MediaError, match="not a WAV"):
        check_audio(b"OggS" + b"\0" * 10)


# -- sources ---------------------------------------------------------------------------------------------------------


def test_data_uris_and_files(tmp_path: Path) -> None:
    image = png(5, 5, seed=1)
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    assert load_media(uri).data == image
    path = tmp_path / "a.png"
    path.write_bytes(image)
    assert load_media(str(path)).data == image
    assert load_media(path.as_uri()).data == image
    with pytest.raises(MediaError, match="not local files"):
        load_media(str(path), allow_files=False)
    with pytest.raises(MediaError, match="could not read"):
        load_media(str(tmp_path / "missing.png"))
    with pytest.raises(MediaError, match="not valid base64"):
        load_media("data:image/png;base64,@@@@")
    with pytest.raises(MediaError, match="needs a ','"):
        load_media("data:image/png;base64")
    with pytest.raises(MediaError, match="larger than"):
        load_media("data:image/png;base64," + "A" * (media.MAX_IMAGE_BYTES * 2))
    with pytest.raises(MediaError, match="truncated"):
        load_media("data:image/png;base64," + base64.b64encode(image[:-15]).decode())


@pytest.fixture()
def http_images() -> Iterator[str]:
    """A local HTTP server: /ok.png is an image, /huge.png claims a size above the limit, /missing is a 404."""
    image = png(6, 6, seed=2)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/ok.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)
            elif self.path == "/huge.png":
                self.send_response(200)
                self.send_header("Content-Length", str(media.MAX_IMAGE_BYTES + 1))
                self.end_headers()
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_images_with_a_size_limit(http_images: str) -> None:
    assert check_image(load_media(http_images + "/ok.png").data) == ImageInfo("png", 6, 6)
    with pytest.raises(MediaError, match="larger than"):
        load_media(http_images + "/huge.png")
    with pytest.raises(MediaError, match="could not download"):
        load_media(http_images + "/missing")


def test_messages_get_one_marker_per_image_in_order(tmp_path: Path) -> None:
    a, b = png(4, 4, seed=1), png(4, 4, seed=2)
    (tmp_path / "b.png").write_bytes(b)
    messages = [
        {"role": "system", "content": "s"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(a).decode()}},
                {"type": "text", "text": "and"},
                {"type": "image_url", "image_url": str(tmp_path / "b.png")},
            ],
        },
    ]
    out, found = split_media_messages(messages, "<M>")
    assert [m.data for m in found] == [a, b]
    assert out[1]["content"] == "<M>and<M>"  # llama.cpp's joining: no newline next to a marker
    two_texts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, messages[1]["content"][0]]
    assert split_media_messages([{"role": "user", "content": two_texts}], "<M>")[0][0]["content"] == "a\nb<M>"
    assert messages[1]["content"][0]["type"] == "image_url"  # the caller's messages are untouched
    with pytest.raises(MediaError, match="image_url must be"):
        split_media_messages([{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}], "<M>")
