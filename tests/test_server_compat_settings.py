"""llama-cpp-python's programmatic server start (llamarcp.server.compat_settings, `llama_cpp.server.settings`):
its settings classes are checked like its config files, and `create_app` takes its arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llamarcp.server import ServerSettings as LlamarcpServerSettings
from llamarcp.server.compat import CompatError
from llamarcp.server.compat_settings import (
    ConfigFileSettings,
    ModelSettings,
    ServerSettings,
    Settings,
    to_server_settings,
)

ROOT = Path(__file__).resolve().parent.parent


def test_fields_are_parsed_and_unknown_ones_refused_by_name() -> None:
    model = ModelSettings(model="m.gguf", n_ctx="4096", chat_format="chatml", flash_attn="true", model_alias="m")
    assert (model.n_ctx, model.flash_attn, model.chat_format, model.n_batch) == (4096, True, "chatml", None)
    with pytest.raises(CompatError, match=r"unknown setting 'n_ctxx' \(did you mean 'n_ctx'\?\)"):
        ModelSettings(model="m.gguf", n_ctxx=1)
    with pytest.raises(CompatError, match="model .* is required"):
        ModelSettings(n_ctx=8)
    with pytest.raises(CompatError, match="n_ctx"):
        ModelSettings(model="m.gguf", n_ctx="lots")
    server = ServerSettings(api_key="secret", interrupt_requests=True, port=9000, max_queue=4)
    assert server.port == 9000 and server.host is None and "secret" not in repr(server)


def test_conversion_to_llamarcps_settings() -> None:
    settings = to_server_settings(
        server_settings=ServerSettings(api_key="k", disable_ping_events=True, max_queue=3),
        model_settings=[ModelSettings(model="a.gguf", model_alias="a", n_ctx=512), ModelSettings(model="b.gguf")],
    )
    assert isinstance(settings, LlamarcpServerSettings)
    assert (settings.api_key, settings.disable_ping_events, settings.max_queue) == ("k", True, 3)
    assert settings.models is not None and [m.model for m in settings.models] == ["a.gguf", "b.gguf"]
    assert (settings.models[0].alias, settings.models[0].n_ctx) == ("a", 512)
    single = to_server_settings(Settings(model="c.gguf", n_threads=2, api_key="z"))
    assert single.api_key == "z" and single.models is not None and single.models[0].n_threads == 2
    from_file = to_server_settings(ConfigFileSettings(models=[ModelSettings(model="d.gguf")], root_path="/p"))
    assert from_file.root_path == "/p" and from_file.models is not None and from_file.models[0].model == "d.gguf"


def test_what_llamarcp_cannot_honour_is_refused_when_the_app_is_made() -> None:
    vision = to_server_settings(model_settings=[ModelSettings(model="m.gguf", chat_format="llava-1-5",
                                                              clip_model_path="mmproj.gguf")])  # fmt: skip
    assert vision.models is not None and (vision.models[0].mmproj, vision.models[0].vision_format) == (
        "mmproj.gguf",
        "llava-1-5",
    )
    with pytest.raises(CompatError, match="hf_model_repo_id is not supported"):
        to_server_settings(model_settings=[ModelSettings(model="m.gguf", hf_model_repo_id="x/y")])
    with pytest.raises(CompatError, match="at least one ModelSettings"):
        to_server_settings(server_settings=ServerSettings())
    with pytest.raises(CompatError, match="not both"):
        to_server_settings(Settings(model="m.gguf"), model_settings=[ModelSettings(model="m.gguf")])
    with pytest.raises(TypeError, match="model_settings\\[0\\] must be a ModelSettings"):
        to_server_settings(model_settings=[{"model": "m.gguf"}])  # type: ignore[list-item]
    with pytest.raises(CompatError, match="non-empty list of ModelSettings"):
        ConfigFileSettings(models=[])


def test_create_app_the_llama_cpp_python_way_serves_requests(tiny_model_path: Path) -> None:
    from fastapi.testclient import TestClient

    from llamarcp.server import create_app

    app = create_app(
        server_settings=ServerSettings(api_key="k"),
        model_settings=[ModelSettings(model=str(tiny_model_path), model_alias="tiny", n_ctx=256, n_threads=1)],
    )
    with TestClient(app) as client:
        headers = {"Authorization": "Bearer k"}
        assert client.get("/v1/models", headers=headers).json()["data"][0]["id"] == "tiny"
        body = {"prompt": "Hi", "max_tokens": 3, "temperature": 0}
        reply = client.post("/v1/completions", json=body, headers=headers)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
        assert client.post("/v1/completions", json=body).status_code == 401
    with pytest.raises(TypeError, match="needs settings"):
        create_app()


def test_the_llama_cpp_python_imports_resolve_to_these_classes(tiny_model_path: Path) -> None:
    code = """
import llamarcp
llamarcp.install_as_llama_cpp()
from llama_cpp.server.app import create_app
from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings
import llamarcp.server.compat_settings as ours
assert ModelSettings is ours.ModelSettings and Settings is ours.Settings
print(type(create_app(settings=Settings(model="m.gguf"))).__name__)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "FastAPI"
