"""The named chat handler table (llamarcp.chat.handlers) and how the chat path consults it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llamarcp.chat import handlers

ROOT = Path(__file__).resolve().parent.parent


def test_register_lookup_unregister() -> None:
    def handler(**kwargs: object) -> str:
        return "ok"

    handlers.register("test-handlers-a", handler)
    try:
        assert handlers.registered("test-handlers-a") is handler and "test-handlers-a" in handlers.names()
        with pytest.raises(ValueError, match="already registered"):
            handlers.register("test-handlers-a", handler)
        handlers.register("test-handlers-a", print, overwrite=True)
        assert handlers.registered("test-handlers-a") is print
    finally:
        handlers.unregister("test-handlers-a")
    assert handlers.registered("test-handlers-a") is None
    with pytest.raises(ValueError, match="no chat handler"):
        handlers.unregister("test-handlers-a")


def test_bad_registrations() -> None:
    with pytest.raises(ValueError, match="already registered"):
        handlers.register("chatml", print, taken={"chatml"})
    with pytest.raises(ValueError, match="non-empty name"):
        handlers.register("", print)
    with pytest.raises(TypeError, match="callable"):
        handlers.register("test-handlers-b", 42)  # type: ignore[arg-type]


def test_plain_chats_do_not_load_the_compat_layer() -> None:
    code = (
        "import sys\n"
        "from llamarcp.chat.completion import _chat_handler\n"
        "class L:\n    chat_handler = None\n    chat_format = 'chatml'\n"
        "assert _chat_handler(L(), None) is None\n"
        "print(_chat_handler(L(), 'chatml-function-calling').__name__)\n"
        "print(sorted(m for m in sys.modules if m.startswith('llamarcp.compat') or m.endswith('legacy_formats')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["chatml_function_calling", "[]"]
