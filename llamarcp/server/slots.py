"""llama-server's slot routes: `GET /slots` (each slot's state; `--no-slots` turns it off) and
`POST /slots/{id}?action=save|restore|erase` (with `--slot-save-path DIR`).

A slot's KV cache is saved to `DIR/<filename>` in `llamarcp.state`'s checked container around llama.cpp's
sequence file (`llamarcp.sequence_state`): a file with a flipped bit, cut short or saved by another model is
refused with a 400 naming the problem and never reaches llama.cpp. A save with `"format": "llama.cpp"` writes
the bare sequence file llama-server reads, and a restore accepts llama-server's bare files too (checked as far
as that format allows; the answer's `format` says which it read). The file name is a plain name inside DIR:
path separators, `..`, a leading dot (the temporary files' prefix) and control characters are refused (400), a
symlink or non-regular file at the name is refused, and restoring never follows a symlink. Only an idle slot is
saved, restored or erased (409 while it runs a request).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query

from llamarcp.errors import StateError
from llamarcp.sequence_state import (
    FORMAT_LLAMARCP,
    FORMATS,
    SlotBusyError,
    erase_sequence,
    read_sequence_file,
    restore_sequence,
    sequence_file_limit,
    sequence_states,
    snapshot_sequence,
    write_sequence_file,
)
from llamarcp.server.dispatch import Dispatcher
from llamarcp.server.errors import ApiError
from llamarcp.server.pool import ModelEntry
from llamarcp.server.settings import ServerSettings

__all__ = ["add_slot_routes", "slot_file"]

MAX_FILENAME_BYTES = 255


def slot_file(directory: Path, filename: Any) -> Path:
    """`directory/filename` for a plain file name, or a 400 naming `filename`."""
    if not isinstance(filename, str) or not filename:
        raise ApiError(400, "filename must be a non-empty string", param="filename")
    plain = (
        len(filename.encode("utf-8", errors="replace")) <= MAX_FILENAME_BYTES
        and not any(c in filename for c in "/\\")
        and not filename.startswith(".")
        and all(ord(c) >= 32 and ord(c) != 127 for c in filename)
    )
    path = directory / filename
    if not plain or path.parent != directory:
        raise ApiError(
            400,
            "filename must be a plain file name inside --slot-save-path (no path separators, no leading dot, "
            f"at most {MAX_FILENAME_BYTES} bytes)",
            param="filename",
        )
    return path


def _check_slot(entry: ModelEntry, id_slot: int) -> None:
    n_slots = entry.runner.n_parallel
    if not 0 <= id_slot < n_slots:
        raise ApiError(400, f"id_slot must be in 0..{n_slots - 1}, got {id_slot}", param="id_slot")


def _slot_error(exc: BaseException, filename: str | None) -> ApiError:
    if isinstance(exc, SlotBusyError):
        return ApiError(409, str(exc), code="slot_busy")
    if isinstance(exc, FileNotFoundError):
        return ApiError(404, f"no slot file named {filename!r}", "not_found_error", param="filename")
    if isinstance(exc, StateError):
        return ApiError(400, str(exc), param="filename", code="invalid_slot_file")
    raise exc


def add_slot_routes(
    app: FastAPI, dispatcher: Dispatcher, settings: ServerSettings, require_key: Callable[..., Any]
) -> None:
    pool = dispatcher.pool
    guarded: list[Any] = [Depends(require_key)]
    directory = Path(settings.slot_save_path).expanduser().resolve() if settings.slot_save_path else None
    limits: dict[str, int] = {}

    @app.get("/slots", dependencies=guarded)
    async def get_slots(fail_on_no_slot: str | None = Query(None), model: str | None = Query(None)) -> Any:
        if not settings.endpoint_slots:
            raise ApiError(
                501, "This server does not support slots endpoint (started with --no-slots)", "not_supported_error"
            )
        entry = pool.resolve(model)
        states = await dispatcher.on_model(entry, sequence_states)
        n_ctx = entry.n_ctx()
        slots = []
        for state in states:
            processing = state["is_processing"]
            slots.append(
                {
                    "id": state["id"],
                    "n_ctx": n_ctx,
                    "speculative": False,
                    "is_processing": processing,
                    "n_tokens": state["n_tokens"],
                    "next_token": {
                        "has_next_token": processing,
                        "n_remain": state.get("n_remain", -1),
                        "n_decoded": state.get("n_decoded", 0),
                    },
                }
            )
        if fail_on_no_slot and not any(not s["is_processing"] for s in slots):
            raise ApiError(503, "no slot available", "unavailable_error", code="no_slot_available")
        return slots

    @app.post("/slots/{id_slot}", dependencies=guarded)
    async def post_slot(
        id_slot: int,
        action: str | None = Query(None),
        model: str | None = Query(None),
        body: Annotated[dict[str, Any] | None, Body()] = None,
    ) -> Any:
        if directory is None:
            raise ApiError(
                501,
                "This server does not support slots action. Start it with `--slot-save-path`",
                "not_supported_error",
            )
        entry = pool.resolve(model)
        _check_slot(entry, id_slot)
        body = body or {}
        unknown = sorted(set(body) - {"filename", "format"})
        if unknown:
            raise ApiError(400, f"'{unknown[0]}' is not supported by this route", param=unknown[0])
        started = time.perf_counter()
        if action == "erase":
            try:
                n_erased = await dispatcher.on_model(entry, lambda llama: erase_sequence(llama, id_slot))
            except (SlotBusyError, StateError) as exc:
                raise _slot_error(exc, None) from None
            return {"id_slot": id_slot, "n_erased": n_erased}
        if action not in ("save", "restore"):
            raise ApiError(400, "action must be save, restore or erase", param="action")
        filename = body.get("filename")
        path = slot_file(directory, filename)
        file_format = body.get("format", FORMAT_LLAMARCP)
        if action != "save" and "format" in body:
            raise ApiError(400, "format is only read by action=save (restore detects it)", param="format")
        if file_format not in FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(map(repr, FORMATS))}", param="format")
        if action == "save":

            def save(llama: Any) -> tuple[int, int]:
                snapshot = snapshot_sequence(llama, id_slot)
                return len(snapshot.tokens), write_sequence_file(path, snapshot, llama._model, file_format)

            try:
                n_saved, n_written = await dispatcher.on_model(entry, save)
            except (SlotBusyError, StateError) as exc:
                raise _slot_error(exc, filename) from None
            elapsed = (time.perf_counter() - started) * 1e3
            return {
                "id_slot": id_slot,
                "filename": filename,
                "n_saved": n_saved,
                "n_written": n_written,
                "format": file_format,
                "timings": {"save_ms": elapsed},
            }

        def restore(llama: Any) -> tuple[int, int, str]:
            key = entry.model_id
            if key not in limits:
                limits[key] = sequence_file_limit(llama)
            read = read_sequence_file(path, llama._model, int(llama.n_ctx), limits[key])
            restore_sequence(llama, id_slot, read.snapshot)
            return len(read.snapshot.tokens), read.n_bytes, read.file_format

        try:
            n_restored, n_read, read_format = await dispatcher.on_model(entry, restore)
        except (SlotBusyError, StateError, FileNotFoundError) as exc:
            raise _slot_error(exc, filename) from None
        elapsed = (time.perf_counter() - started) * 1e3
        return {
            "id_slot": id_slot,
            "filename": filename,
            "n_restored": n_restored,
            "n_read": n_read,
            "format": read_format,
            "timings": {"restore_ms": elapsed},
        }
