"""Media inputs of a chat request: OpenAI `image_url` / `input_audio` parts loaded, checked and turned into markers.

`load_media` reads a data URI, an http(s) URL (size and time limited) or a local file (when allowed) and checks
the bytes (`validate.media`) before anything decodes them; `split_media_messages` replaces each media part of
the messages by the projector's marker, joining a message's parts into one string as llama.cpp's server does.
`llamarcp.multimodal` turns the result into a prompt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamarcp.errors import MediaError
from llamarcp.validate.media import (
    MAX_AUDIO_BYTES,
    MAX_IMAGE_BYTES,
    check_audio,
    check_image,
    check_request_images,
)

__all__ = ["MEDIA_FETCH_TIMEOUT_S", "Media", "has_media", "load_media", "split_media_messages"]

#: The longest an http(s) image download may take, all of it.
MEDIA_FETCH_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Media:
    """One image or audio clip of a request, as validated bytes."""

    kind: str  # "image" or "audio"
    data: bytes
    source: str = ""

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _read_limited(stream: Any, limit: int, deadline: float, what: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise MediaError(f"{what}: the download took longer than {MEDIA_FETCH_TIMEOUT_S:g} s")
        block = stream.read(65536)
        if not block:
            return b"".join(parts)
        size += len(block)
        if size > limit:
            raise MediaError(f"{what} is larger than the {limit}-byte limit")
        parts.append(block)


def load_media(url: str, kind: str = "image", *, allow_files: bool = True) -> Media:
    """The bytes of an OpenAI `image_url` / `input_audio` source: a data URI, an http(s) URL (size and time
    limited) or, when `allow_files`, a local path or file:// URL. Validated (format, size) before returning."""
    if not isinstance(url, str) or not url:
        raise MediaError(f"{kind} source must be a non-empty string (a data: URI, an http(s) URL or a file path)")
    limit = MAX_IMAGE_BYTES if kind == "image" else MAX_AUDIO_BYTES
    shown = url if len(url) < 80 else url[:77] + "..."
    what = f"{kind} {shown!r}"
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep:
            raise MediaError(f"{what}: a data URI needs a ',' before its payload")
        if len(payload) > limit * 4 // 3 + 4:
            raise MediaError(f"{kind} data URI is larger than the {limit}-byte limit")
        if header.endswith(";base64"):
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise MediaError(f"{kind} data URI is not valid base64: {exc}") from exc
        else:
            data = urllib.parse.unquote_to_bytes(payload)
        what = f"{kind} (data URI)"
    elif url.startswith(("http://", "https://")):
        from urllib import request as urlrequest  # only for downloads: it is slow to import

        deadline = time.monotonic() + MEDIA_FETCH_TIMEOUT_S
        request = urlrequest.Request(url, headers={"User-Agent": "llamarcp"})
        try:
            with urlrequest.urlopen(request, timeout=MEDIA_FETCH_TIMEOUT_S) as response:  # noqa: S310
                length = response.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise MediaError(f"{what} is {length} bytes, larger than the {limit}-byte limit")
                data = _read_limited(response, limit, deadline, what)
        except MediaError:
            raise
        except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts
            raise MediaError(f"could not download {what}: {exc}") from exc
    else:
        if not allow_files:
            raise MediaError(f"{what}: only data: URIs and http(s) URLs are accepted here, not local files")
        path = Path(urllib.parse.unquote(url[len("file://") :])) if url.startswith("file://") else Path(url)
        try:
            size = path.stat().st_size
            if size > limit:
                raise MediaError(f"{what} is {size} bytes, larger than the {limit}-byte limit")
            with path.open("rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            raise MediaError(f"could not read {what}: {exc.strerror or exc}") from exc
    if kind == "image":
        check_image(data, what)
    else:
        check_audio(data, what)
    return Media(kind, data, url)


def _audio_bytes(part: Mapping[str, Any], where: str) -> Media:
    audio = part.get("input_audio")
    if not isinstance(audio, Mapping) or not isinstance(audio.get("data"), str):
        raise MediaError(f"{where}: input_audio must be {{'data': <base64>, 'format': 'wav' | 'mp3'}}")
    try:
        data = base64.b64decode(audio["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"{where}: input_audio data is not valid base64: {exc}") from exc
    check_audio(data, where)
    return Media("audio", data, "input_audio")


def _image_url(part: Mapping[str, Any], where: str) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, Mapping) else value
    if not isinstance(url, str):
        raise MediaError(f"{where}: image_url must be a string or {{'url': ...}}")
    return url


def has_media(messages: Sequence[Mapping[str, Any]]) -> bool:
    """True when a message holds an image_url or input_audio part."""
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, (list, tuple)):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") in ("image_url", "input_audio"):
                    return True
    return False


def split_media_messages(
    messages: Sequence[Mapping[str, Any]], marker: str, *, allow_files: bool = True
) -> tuple[list[dict[str, Any]], list[Media]]:
    """Messages whose image_url / input_audio parts became `marker` in their (now string) content, and the media
    in prompt order (loaded and validated)."""
    out: list[dict[str, Any]] = []
    media: list[Media] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, (list, tuple)):
            out.append(dict(message) if isinstance(message, Mapping) else message)
            continue
        if not any(isinstance(p, Mapping) and p.get("type") in ("image_url", "input_audio") for p in content):
            out.append(dict(message))
            continue
        # As llama.cpp's server: the parts become one string, text parts joined by newlines, none around markers.
        text, after_marker = "", False
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            where = f"messages[{i}].content[{j}]"
            if kind in ("image_url", "input_audio"):
                if kind == "image_url":
                    media.append(load_media(_image_url(part, where), "image", allow_files=allow_files))
                else:
                    media.append(_audio_bytes(part, where))
                text, after_marker = text + marker, True
            elif kind == "text" and isinstance(part.get("text"), str):
                text += ("\n" if text and not after_marker else "") + part["text"]
                after_marker = False
            else:
                raise MediaError(f"{where}: a message with images takes text, image_url and input_audio parts only")
        out.append({**message, "content": text})
    check_request_images([check_image(m.data) for m in media if m.kind == "image"])
    return out, media
